"""The code location as Dagster loads it: a snapshot of what it holds, and nothing a defs/ module defines left out."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import dagster as dg
import yaml

import ks_platform.defs

SNAPSHOT = Path(__file__).with_name("definitions_snapshot.json")
DEPLOYMENT_EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "deployment.example.yaml"
ENGINES = ("local", "docker", "slurm", "kubernetes")
#: A job object (``dg.define_asset_job`` returns an unresolved one, not exported by ``dagster``).
JOB_TYPES = ("JobDefinition", "UnresolvedAssetJobDefinition")


def loaded(defs: dg.Definitions) -> dict[str, list[str]]:
    """Asset keys, checks (``asset:check``), jobs and sensors of ``defs``, sorted."""
    repo = defs.get_repository_def()
    return {
        "assets": sorted(k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()),
        "checks": sorted(f"{c.asset_key.to_user_string()}:{c.name}" for c in repo.asset_graph.asset_check_keys),
        "jobs": sorted(job.name for job in repo.get_all_jobs()),
        "sensors": sorted(sensor.name for sensor in repo.sensor_defs),
    }


def executors_by_engine(folder: Path) -> dict[str, str]:
    """The executor the code location gets for each engine of the example deployment file."""
    import os

    from ks_platform.definitions import executor_from_env

    names = {}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in ("KS_PLATFORM_DEPLOYMENT", "KS_PLATFORM_EXECUTOR")}
    try:
        for engine in ENGINES:
            path = folder / f"{engine}.yaml"
            path.write_text(yaml.safe_dump({**yaml.safe_load(DEPLOYMENT_EXAMPLE.read_text()), "engine": engine}))
            os.environ["KS_PLATFORM_DEPLOYMENT"] = str(path)
            names[engine] = executor_from_env().name
    finally:
        os.environ.pop("KS_PLATFORM_DEPLOYMENT", None)
        os.environ.update(saved)
    return names


def snapshot(folder: Path) -> dict:
    from ks_platform.definitions import defs

    return {**loaded(defs), "executor_by_engine": executors_by_engine(folder)}


def test_the_loaded_definitions_match_their_snapshot(tmp_path):
    assert snapshot(tmp_path) == json.loads(SNAPSHOT.read_text()), (
        "the code location changed: if that is meant, refresh the snapshot with "
        "`.venv/bin/python -m ks_platform_tests.test_definitions` and commit it with the change"
    )


def test_every_definition_of_a_defs_module_is_in_the_code_location():
    """A definition written in a defs/ module but not added to ``ks_platform.definitions`` is never silently lost."""
    from ks_platform.definitions import defs

    held = loaded(defs)
    missing = []
    for module_info in pkgutil.iter_modules(ks_platform.defs.__path__):
        module = importlib.import_module(f"ks_platform.defs.{module_info.name}")
        for name, value in vars(module).items():
            if isinstance(value, dg.AssetChecksDefinition):
                keys = [f"{k.asset_key.to_user_string()}:{k.name}" for k in value.check_keys]
                missing += [f"{module.__name__}.{name} ({k})" for k in keys if k not in held["checks"]]
            elif isinstance(value, dg.AssetsDefinition):
                keys = [k.to_user_string() for k in value.keys]
                missing += [f"{module.__name__}.{name} ({k})" for k in keys if k not in held["assets"]]
            elif type(value).__name__ in JOB_TYPES:
                if value.name not in held["jobs"]:
                    missing.append(f"{module.__name__}.{name} (job {value.name})")
    assert missing == [], f"defined in ks_platform/defs but not loaded by ks_platform.definitions: {missing}"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        SNAPSHOT.write_text(json.dumps(snapshot(Path(folder)), indent=1) + "\n")
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
