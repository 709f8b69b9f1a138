"""Where steps run: host inventory, placement policy, the resource-aware Docker executor, Kubernetes tags.

``inventory``, ``placement`` and ``kubernetes`` are plain Python (no Dagster import); ``slots`` and
``docker_executor``, ``slurm_executor`` and ``step_executor`` are the Dagster side.
"""
