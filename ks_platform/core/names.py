"""The one home of every name more than one module shares: plain strings, no imports.

Environment variables, run/op tags, Dagster group, pool, partitions, job, sensor and executor names, and the file
names of the store and landing layouts. Import them from here; do not type the strings again.
"""

# --- Environment variables (``KS_PLATFORM_*``) ---------------------------------------------------------------------
#: Store root (default ``data/store``).
STORE_ENV = "KS_PLATFORM_STORE"
#: Landing roots, ``name=path,name=path``.
LANDING_ENV = "KS_PLATFORM_LANDING"
#: Compute backend of the sorter: ``auto``, ``cpu``, ``cuda[:N]``, ``rocm[:N]``, ``mps``.
BACKEND_ENV = "KS_PLATFORM_BACKEND"
#: Kilosort batch size planned by the placing executor for the GPU it picked.
BATCH_SIZE_ENV = "KS_PLATFORM_BATCH_SIZE"
#: Executor name set in every step container/job (``ks_platform_docker`` or ``ks_platform_slurm``).
EXECUTOR_ENV = "KS_PLATFORM_EXECUTOR"
#: The deployment file (YAML/JSON): which engine runs the steps (local, docker, slurm, kubernetes) and its hosts.
DEPLOYMENT_ENV = "KS_PLATFORM_DEPLOYMENT"
#: Earlier versions' one-engine files, still read as the deployment they describe (``execution/deployment.py``):
#: a Docker host inventory, a Kubernetes deployment, SLURM settings.
INVENTORY_ENV = "KS_PLATFORM_INVENTORY"
KUBERNETES_ENV = "KS_PLATFORM_KUBERNETES"
SLURM_SETTINGS_ENV = "KS_PLATFORM_SLURM"
#: Every variable that chooses where steps run (a benchmark or test that needs this machine's executor unsets them).
EXECUTION_ENVS = (DEPLOYMENT_ENV, INVENTORY_ENV, EXECUTOR_ENV, SLURM_SETTINGS_ENV, KUBERNETES_ENV)
#: GRES the SLURM executor requested for the step (lineage).
REQUESTED_GRES_ENV = "KS_PLATFORM_SLURM_GRES"
#: Image name and digest a step container runs in (lineage).
IMAGE_ENV = "KS_PLATFORM_IMAGE"
IMAGE_DIGEST_ENV = "KS_PLATFORM_IMAGE_DIGEST"
#: Git commit baked into an image (lineage).
GIT_COMMIT_ENV = "KS_PLATFORM_GIT_COMMIT"
#: Set by the SLURM executor: ``venv`` or ``apptainer`` (lineage).
ENVIRONMENT_KIND_ENV = "KS_PLATFORM_ENVIRONMENT"
#: ``ks-platform sort --link`` default: symlink or copy the raw file.
LINK_ENV = "KS_PLATFORM_LINK"
#: Docker engine URL for ``ks-platform doctor``.
DOCKER_URL_ENV = "KS_PLATFORM_DOCKER_URL"
#: Lab time zone for recording clocks without one (default UTC).
TIMEZONE_ENV = "KS_PLATFORM_TIMEZONE"
#: First recording date of the daily rollup partitions.
ROLLUP_START_ENV = "KS_PLATFORM_ROLLUP_START"
#: Landing sensor: seconds a session folder must stay unchanged, and the marker file that says it is complete.
SETTLE_ENV = "KS_PLATFORM_SETTLE_SECONDS"
MARKER_ENV = "KS_PLATFORM_READY_MARKER"
#: How long a session folder must be absent from an available landing root before its partitions are retired (s).
RETIRE_AFTER_ENV = "KS_PLATFORM_RETIRE_AFTER_SECONDS"
#: How long a command or a sensor tick waits for the landing catalog while another one holds it (s).
CATALOG_WAIT_ENV = "KS_PLATFORM_CATALOG_WAIT_SECONDS"
#: The Dagster run a step process works for (set by the Dagster layer): steps of one run take the session lock in turn
#: silently, another run's wait is logged.
RUN_ID_ENV = "KS_PLATFORM_RUN_ID"

# --- Run and op tags -----------------------------------------------------------------------------------------------
#: Op tag: what a step needs (``gpu``); the placing executors read it.
NEEDS_TAG = "ks_platform/needs"
#: Op tag of a sort step: which of the partition's sorters it runs (``primary``: the probe's own sorting, ``compared``:
#: the others). A ``gpu`` step whose sorters all run on CPU (``core/sorters.py``) is placed on a CPU slot.
SORTERS_TAG = "ks_platform/sorters"
PRIMARY_SORTERS = "primary"
COMPARED_SORTERS = "compared"
#: Run tag of the doctor job.
KIND_TAG = "ks_platform/kind"
#: Dagster's own partition run tag.
PARTITION_TAG = "dagster/partition"
#: Tags of runs the landing sensor requests.
LANDING_ROOT_TAG = "ks_platform/landing_root"
SESSION_FOLDER_TAG = "ks_platform/session_folder"
FINGERPRINT_TAG = "ks_platform/fingerprint"
#: Tags of backfills.
RECORDING_DATES_TAG = "ks_platform/recording_dates"
ONLY_STALE_TAG = "ks_platform/only_stale"

# --- Dagster names: groups, pools, partitions, jobs, sensors, executors --------------------------------------------
#: Asset groups.
SESSION_GROUP = "session_pipeline"
CURATION_GROUP = "session_curation"
#: The sorters compared with a probe's own and their agreement (in the sort_session job and date-range backfills).
COMPARISON_GROUP = "sorter_comparison"
ROLLUP_GROUP = "daily_rollups"
LANDING_GROUP = "landing"
#: The asset that lists every landing folder that is not a partition, with why (observed by the sensor).
LANDING_FOLDERS_ASSET = "landing_folders"
#: Concurrency pool of the Kilosort step (dagster.yaml sets its limit).
SORT_POOL = "kilosort"
#: The dynamic partitions of sessions, named uniquely for this code location (dagster#29693).
SESSIONS_PARTITIONS_NAME = "ks_platform_sessions"
#: Jobs referred to by name.
SORT_JOB_NAME = "sort_session"
OBSERVE_SETTINGS_JOB_NAME = "observe_session_settings"
ROLLUP_JOB_NAME = "daily_rollup_job"
#: Sensors.
NEW_SESSION_SENSOR_NAME = "new_session_sensor"
ROLLUP_SENSOR_NAME = "daily_rollup_sensor"
#: Executors (also the value of ``KS_PLATFORM_EXECUTOR`` in their steps).
DOCKER_EXECUTOR_NAME = "ks_platform_docker"
SLURM_EXECUTOR_NAME = "ks_platform_slurm"
#: Dagster's in-process executor: a run's steps in its run worker (no process start per step).
IN_PROCESS_EXECUTOR_NAME = "in_process"
#: What the default executor's forkserver imports once per run before it forks the step processes
#: (``execution/step_processes.py``; checked on a GPU node by ``bench/gpu_acceptance.py``). A module that fails to
#: import is skipped by multiprocessing, and its step imports it itself.
STEP_PRELOAD_MODULES: tuple[str, ...] = (
    "ks_platform.definitions",
    "ks_platform.core.pipeline",
    "spikeinterface.core",
    "probeinterface",
    "torch",
    "kilosort",
)

# --- File names of the store and landing layouts -------------------------------------------------------------------
#: ``probe/``: the probe manifest and the Kilosort probe.
PROBE_MANIFEST = "probe_map.json"
KILOSORT_PROBE_JSON = "kilosort_probe.json"
#: ``binary/``: the Kilosort input and its manifest.
BINARY_NAME = "recording.bin"
MANIFEST_NAME = "binary.json"
#: ``sorting/``: summary, the settings Kilosort ran with, and lineage.
SUMMARY_FILE = "sorting_summary.json"
EFFECTIVE_SETTINGS_FILE = "effective_settings.json"
LINEAGE_FILE = "lineage.json"
#: ``quality/``: per-unit metrics.
METRICS_CSV = "unit_metrics.csv"
#: ``nwb/``: the units file.
NWB_FILE = "units.nwb"
#: Landing session folder: the animal (NWB Subject) and the Kilosort settings.
SUBJECT_JSON = "subject.json"
SESSION_SETTINGS_FILE = "kilosort4-settings.json"
#: Ground truth written beside a synthetic recording.
GROUND_TRUTH_SPEC = "ground_truth.json"
#: The landing-roots catalog under the store root (``core/catalog.py``) and the mark of a retired partition's outputs.
CATALOG_DIR = ".catalog"
CATALOG_FILE = "sessions.sqlite"
RETIRED_MARKER = "RETIRED.json"

# --- Unit labels and tracks across sessions (issue #28) --------------------------------------------------------------
#: ``labels/``: bombcell's output for a probe's sorting; ``label_agreement/``: bombcell vs the lab's Phy labels.
LABELS_DIR = "labels"
AGREEMENT_DIR = "label_agreement"
#: Phy columns: bombcell's own file name for its label, and the unit's track id across the subject's sessions.
BOMBCELL_TSV = "cluster_bc_unitType.tsv"
TRACK_ID_TSV = "cluster_track_id.tsv"
#: ``<store>/subjects/<subject>__<implant>/``: the sessions of one implant and its unit tracks.
SUBJECTS_DIR = "subjects"
#: Dagster: the group of subject-level assets, their dynamic partitions (one per implant), job and sensor.
TRACKING_GROUP = "unit_tracking"
SUBJECTS_PARTITIONS_NAME = "ks_platform_subjects"
TRACK_JOB_NAME = "track_units"
TRACKS_SENSOR_NAME = "unit_tracks_sensor"
