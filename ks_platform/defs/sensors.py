"""``new_session_sensor``: new or changed session folders in the landing roots become partitions and runs.

README-ready summary: *The `new_session_sensor` (default **stopped**; start it in the UI under
Automation, or with `dagster sensor start new_session_sensor`) checks the landing roots every 60 s. A
folder is taken once it is complete: when the marker file named by `KS_PLATFORM_READY_MARKER` (e.g.
`.ready`, written last by the copy script) exists, or, with no marker configured, when nothing in it has
changed for `KS_PLATFORM_SETTLE_SECONDS` (default 120 s). Each complete session is added as a partition,
observed as `raw_recording` (format, size, date, channels, duration, fingerprint) and sorted by one
`sort_session` run whose run key is `<partition key>:<fingerprint>`: the same data is never sorted twice
by the sensor, changed data is sorted again. Folders that are not valid sessions are reported once in the
tick's log (with the reason and the fix) and skipped until they change.*

Why stopped by default: turned on over a landing root that already holds sessions, the sensor requests a
Kilosort run for every one of them (minutes to hours each); that should be a decision, not a side effect
of ``make dev``. Pass ``default_status=dg.DefaultSensorStatus.RUNNING`` to the factory for unattended
deployments.

Each tick costs one ``stat`` walk of every landing folder (names, sizes, mtimes, ctimes: no file is read;
~0.5 s for 10,000 SpikeGLX-like sessions on 2 busy cores, ``bench/sensor_tick.py``) and opens/fingerprints
only folders that are new or whose walk signature changed since they were handled
(the cursor maps ``root → {folder: signature}``, ~36 bytes per session; Dagster stores it with every tick). At most ``max_sessions_per_tick`` folders are opened
per tick; the rest wait for the next tick, so the first tick over a full landing root stays within the
sensor timeout. Run-key deduplication is Dagster's: a run request whose key already has a run *launched
by this same sensor* (same name, same code location) is skipped, whatever the cursor says.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from ks_platform.core.discovery import FoundSession, identify_session, landing_root_problems
from ks_platform.core.errors import PlatformConfigError, SessionInputError
from ks_platform.core.readiness import scan_folder, session_ready
from ks_platform.defs.ingest import raw_recording
from ks_platform.defs.partitions import session_partitions
from ks_platform.defs.resources import PlatformResource

SENSOR_NAME = "new_session_sensor"
#: The job the sensor launches (defined in ``ks_platform.definitions``; referenced by name, no import cycle).
SORT_JOB_NAME = "sort_session"
DEFAULT_SETTLE_SECONDS = 120.0
DEFAULT_MIN_INTERVAL_SECONDS = 60
DEFAULT_MAX_SESSIONS_PER_TICK = 100
SETTLE_ENV = "KS_PLATFORM_SETTLE_SECONDS"
MARKER_ENV = "KS_PLATFORM_READY_MARKER"
CURSOR_VERSION = 1
#: Tags on every run the sensor requests (plus ``dagster/partition``).
TAG_ROOT = "ks_platform/landing_root"
TAG_FOLDER = "ks_platform/session_folder"
TAG_FINGERPRINT = "ks_platform/fingerprint"
#: Cursor value of a folder that could not be listed (warned about once).
UNREADABLE = "unreadable"
#: How many waiting folders the skip message names.
_WAITING_SHOWN = 5


def settle_seconds_from_env() -> float:
    text = os.environ.get(SETTLE_ENV, "").strip()
    if not text:
        return DEFAULT_SETTLE_SECONDS
    try:
        value = float(text)
    except ValueError:
        raise PlatformConfigError(f"{SETTLE_ENV}={text!r} is not a number of seconds (e.g. 120)") from None
    if value < 0:
        raise PlatformConfigError(f"{SETTLE_ENV}={text!r} must be ≥ 0")
    return value


def marker_from_env() -> str | None:
    return os.environ.get(MARKER_ENV, "").strip() or None


def _check_marker(marker: str | None) -> str | None:
    if marker and (os.sep in marker or "/" in marker or marker in (".", "..")):
        raise PlatformConfigError(
            f"ready marker {marker!r} must be a plain file name inside the session folder (e.g. .ready)"
        )
    return marker or None


def list_landing_folders(root: Path) -> list[tuple[str, str]]:
    """``(name, path)`` of the folders directly under a landing root, by name, hidden ones skipped
    (as ``sessions.candidate_folders``). One ``scandir`` of the root; a folder's type comes from its
    directory entry, so there is no ``stat`` per name.
    """
    try:
        with os.scandir(root) as entries:
            return sorted((e.name, e.path) for e in entries if not e.name.startswith(".") and e.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def load_cursor(cursor: str | None) -> dict[str, dict[str, str]]:
    """``{root name: {folder name: signature handled}}``; an unreadable or older cursor starts afresh.

    Starting afresh only re-examines folders: the run keys are the same, so Dagster launches nothing twice.
    """
    if not cursor:
        return {}
    try:
        payload = json.loads(cursor)
    except json.JSONDecodeError:
        return {}
    if not isinstance(payload, dict) or payload.get("v") != CURSOR_VERSION or not isinstance(payload.get("seen"), dict):
        return {}
    return {root: dict(folders) for root, folders in payload["seen"].items() if isinstance(folders, dict)}


def dump_cursor(seen: dict[str, dict[str, str]]) -> str:
    return json.dumps({"v": CURSOR_VERSION, "seen": seen}, separators=(",", ":"), sort_keys=True)


def run_key(partition_key: str, fingerprint: str) -> str:
    return f"{partition_key}:{fingerprint}"


def _observation(found: FoundSession, root_name: str) -> dg.AssetObservation:
    summary, fingerprint, folder = found.summary, found.fingerprint, found.folder
    return dg.AssetObservation(
        asset_key=raw_recording.key,
        partition=found.ref.key,
        description="Complete session found in the landing root by new_session_sensor (one probe of it).",
        metadata={
            **found.metadata(),
            "format": summary["format"],
            "size_bytes": dg.MetadataValue.int(int(summary["size_bytes"])),
            "recording_date": summary["recording_date"],
            "n_channels": dg.MetadataValue.int(int(summary["n_channels"])),
            "n_sorting_channels": dg.MetadataValue.int(int(summary["n_sorting_channels"])),
            "sampling_frequency": dg.MetadataValue.float(float(summary["sampling_frequency"])),
            "duration_s": dg.MetadataValue.float(float(summary["duration_s"])),
            "fingerprint": fingerprint,
            "landing_root": root_name,
            "session_dir": dg.MetadataValue.path(str(folder)),
        },
    )


def _sort_request(found: FoundSession, root_name: str) -> dg.RunRequest:
    key = found.ref.key
    return dg.RunRequest(
        run_key=run_key(key, found.fingerprint),
        partition_key=key,
        tags={
            "dagster/partition": key,
            TAG_ROOT: root_name,
            TAG_FOLDER: str(found.folder),
            TAG_FINGERPRINT: found.fingerprint,
        },
    )


def build_new_session_sensor(
    *,
    name: str = SENSOR_NAME,
    settle_seconds: float | None = None,
    marker_name: str | None = None,
    minimum_interval_seconds: int = DEFAULT_MIN_INTERVAL_SECONDS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    max_sessions_per_tick: int | None = DEFAULT_MAX_SESSIONS_PER_TICK,
    clock: Callable[[], float] = time.time,
) -> dg.SensorDefinition:
    """The landing-root sensor. ``settle_seconds``/``marker_name`` default to ``KS_PLATFORM_SETTLE_SECONDS``
    (120) and ``KS_PLATFORM_READY_MARKER`` (unset = use the settle time); pass ``marker_name=""`` to ignore
    the variable. ``max_sessions_per_tick=None`` removes the per-tick limit; ``clock`` is for tests.
    """
    settle = settle_seconds_from_env() if settle_seconds is None else float(settle_seconds)
    marker = _check_marker(marker_from_env() if marker_name is None else marker_name)
    rule = f"marker file {marker!r}" if marker else f"{settle:g} s without changes"

    @dg.sensor(
        name=name,
        job_name=SORT_JOB_NAME,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description=(
            f"Adds complete session folders from the landing roots as partitions and sorts each once per content "
            f"fingerprint (run key <partition>:<fingerprint>). Complete = {rule}. Bad folders are logged and skipped until they change."
        ),
    )
    def new_session_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource) -> dg.SensorResult:
        now = clock()
        for problem in landing_root_problems(platform.roots(), Path(platform.store_root)):
            context.log.warning(problem)
        previous = load_cursor(context.cursor)
        seen: dict[str, dict[str, str]] = {}
        run_requests: list[dg.RunRequest] = []
        observations: list[dg.AssetObservation] = []
        new_keys: list[str] = []
        waiting: list[str] = []
        deferred = examined = 0
        for root_name, root in sorted(platform.roots().items()):
            handled = previous.get(root_name, {})
            kept: dict[str, str] = {}
            for name, path in list_landing_folders(root):
                try:
                    scan = scan_folder(path)
                except PermissionError as exc:
                    if handled.get(name) != UNREADABLE:
                        context.log.warning(
                            f"skipped landing folder {root_name}/{name}: cannot list it ({exc.strerror}). Fix: give the Dagster user read access"
                        )
                    kept[name] = UNREADABLE
                    continue
                except OSError:  # removed or renamed since the listing; the next tick sees the new state
                    continue
                if handled.get(name) == scan.signature:
                    kept[name] = scan.signature
                    continue
                folder = Path(path)
                ready, why = session_ready(folder, settle, marker, now, scan=scan)
                if not ready:
                    waiting.append(f"{root_name}/{name} ({why})")
                    continue
                if max_sessions_per_tick is not None and examined >= max_sessions_per_tick:
                    deferred += 1
                    continue
                examined += 1
                try:
                    probes = identify_session(root_name, root, folder)
                    probe_observations = [_observation(found, root_name) for found in probes]
                except SessionInputError as exc:
                    context.log.warning(f"skipped landing folder {root_name}/{name}: {exc}")
                    kept[name] = scan.signature  # reported once; examined again when it changes
                    continue
                except OSError as exc:  # a file vanished or is locked mid-read: try again next tick
                    context.log.info(
                        f"could not read landing folder {root_name}/{name} yet ({exc}); retrying next tick"
                    )
                    continue
                except Exception as exc:  # a reader bug or an input no check foresaw: never stops the other sessions
                    context.log.warning(
                        f"skipped landing folder {root_name}/{name}: unexpected {type(exc).__name__} while reading it: {exc}"
                    )
                    kept[name] = scan.signature
                    continue
                kept[name] = scan.signature
                observations.extend(probe_observations)
                for found in probes:
                    new_keys.append(found.ref.key)
                    run_requests.append(_sort_request(found, root_name))
                keys = ", ".join(found.ref.key for found in probes)
                context.log.info(
                    f"session {root_name}/{name} is complete ({why}); requesting sort_session for {len(probes)} probe(s): {keys}"
                )
            if kept:
                seen[root_name] = kept
        if waiting:
            context.log.debug("not complete yet: " + "; ".join(waiting))
        if deferred:
            context.log.info(
                f"{deferred} more complete folder(s) wait for the next tick (max_sessions_per_tick={max_sessions_per_tick})"
            )
        skip = None
        if not run_requests:
            skip = "no new complete session"
            if waiting:
                shown = "; ".join(waiting[:_WAITING_SHOWN]) + (
                    f"; +{len(waiting) - _WAITING_SHOWN} more" if len(waiting) > _WAITING_SHOWN else ""
                )
                skip += f"; {len(waiting)} folder(s) not complete yet: {shown}"
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[session_partitions.build_add_request(new_keys)] if new_keys else [],
            asset_events=observations,
            cursor=dump_cursor(seen),
            skip_reason=skip,
        )

    return new_session_sensor
