"""``ks-platform make-session | register | demo``: demo sessions and the pipeline on the embedded Dagster instance."""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ks_platform.core.names import SORT_JOB_NAME, SUMMARY_FILE

if TYPE_CHECKING:
    from dagster import DagsterInstance

    from ks_platform.defs.resources import PlatformResource


def _cmd_make_session(args: argparse.Namespace) -> int:
    from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session

    spec = DemoSessionSpec(
        duration_s=args.duration,
        n_channels=args.channels,
        n_units=args.units,
        seed=args.seed,
        recording_date=dt.date.fromisoformat(args.date),
    )
    folder = make_spikeglx_session(Path(args.out), spec)
    print(f"wrote SpikeGLX session with ground truth: {folder}")
    return 0


#: The project's embedded instance config (the checkout's top-level dagster.yaml).
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"


def _instance():
    """The Dagster instance of ``DAGSTER_HOME``; unset: ``data/dagster_home`` with the project's dagster.yaml."""
    from dagster import DagsterInstance

    if "DAGSTER_HOME" not in os.environ:
        home = Path("data/dagster_home").resolve()
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "dagster.yaml").exists():
            if PROJECT_DAGSTER_YAML.is_file():
                (home / "dagster.yaml").write_text(PROJECT_DAGSTER_YAML.read_text())
            else:
                print(
                    f"DAGSTER_HOME is not set and {PROJECT_DAGSTER_YAML} does not exist: using Dagster's defaults in {home} (set DAGSTER_HOME to your instance)",
                    file=sys.stderr,
                )
        os.environ["DAGSTER_HOME"] = str(home)
    with _first_start_lock(Path(os.environ["DAGSTER_HOME"])):
        return DagsterInstance.get()


#: Lock file in ``DAGSTER_HOME`` that commands starting the instance take turns on.
INSTANCE_LOCK = ".ks_platform_instance.lock"


@contextmanager
def _first_start_lock(home: Path) -> Iterator[None]:
    """Commands open the instance one at a time: Dagster creates a fresh SQLite instance's tables without a guard, so
    two `register`s on a new ``DAGSTER_HOME`` failed with "table runs already exists". Unguarded when the folder
    cannot hold the lock file (the instance then says what is wrong)."""
    try:
        handle = open(home / INSTANCE_LOCK, "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def report_landing_roots(platform) -> None:
    """Each configured landing root that cannot hold sessions (missing, a file, a bad name), with its fix (on stderr);
    the other roots are still searched."""
    from ks_platform.core.discovery import landing_root_problems
    from ks_platform.core.errors import PlatformConfigError

    try:
        roots = platform.roots()
    except ValueError as exc:
        raise PlatformConfigError(
            f"KS_PLATFORM_LANDING={platform.landing_roots!r}: {exc}. "
            "Fix: write it as name=path[,name=path...], e.g. rig1=/data/landing/rig1"
        ) from None
    for problem in landing_root_problems(roots, Path(platform.store_root)):
        print(f"warning: {problem}", file=sys.stderr)


def report_skipped(skipped: Sequence[tuple[Path, str]]) -> None:
    """Each landing folder that is not a session, ``(folder, reason)``, then how many (on stderr)."""
    for folder, reason in skipped:
        print(f"skipped {folder}: {reason}", file=sys.stderr)
    if skipped:
        print(
            f"skipped {len(skipped)} landing folder(s) that are not sessions (reasons above); the others go on",
            file=sys.stderr,
        )


def report_lifecycle(outcome) -> None:
    """A rebuilt catalog, unavailable landing roots, absent folders not retired yet, retired partitions (stderr)."""
    from ks_platform.core.catalog import retire_after_from_env
    from ks_platform.core.readiness import format_duration

    if outcome.rebuilt_because:
        print(f"warning: {outcome.rebuilt_because}", file=sys.stderr)
    for root in outcome.unavailable:
        print(f"warning: {root.message}", file=sys.stderr)
    if outcome.absent:
        shown = ", ".join(label for label, _ in outcome.absent[:5])
        more = f" (+{len(outcome.absent) - 5} more)" if len(outcome.absent) > 5 else ""
        print(
            f"{len(outcome.absent)} folder(s) absent from their landing root, not retired yet: {shown}{more}; they are "
            f"retired once absent for {format_duration(retire_after_from_env())} (KS_PLATFORM_RETIRE_AFTER_SECONDS)",
            file=sys.stderr,
        )
    for record in outcome.retired:
        then = f"; now {record.successor}" if record.successor else ""
        print(f"retired partition {record.key} ({record.cause}: {record.reason}){then}", file=sys.stderr)
    for key, cause, _ in outcome.held:
        print(f"partition {key} is not retired yet ({cause}): a run of it is queued or running", file=sys.stderr)


def register_sessions(
    instance: DagsterInstance, platform: PlatformResource, accept_roots: Sequence[str] = ()
) -> list[str]:
    """Sync the partitions with the landing catalog (``operations.sessions``); report skipped and retired ones."""
    from ks_platform.core.errors import PlatformConfigError
    from ks_platform.operations.sessions import register_sessions as sync

    report_landing_roots(platform)
    roots = platform.roots()
    unknown = sorted(set(accept_roots) - set(roots))
    if unknown:
        raise PlatformConfigError(
            f"--accept-root {', '.join(unknown)}: no such landing root (configured: {', '.join(sorted(roots))}). "
            "Fix: name a root of KS_PLATFORM_LANDING"
        )
    outcome = sync(instance, roots, Path(platform.store_root), accept_roots=accept_roots)
    report_skipped(outcome.skipped)
    report_lifecycle(outcome)
    return outcome.active


def _cmd_register(args: argparse.Namespace) -> int:
    from ks_platform.defs.resources import PlatformResource

    keys = register_sessions(_instance(), PlatformResource.from_env(), args.accept_root)
    print("\n".join(keys))
    return 0


def run_session(instance, platform, key: str):
    """Materialize the five assets (and checks) of one session in this process."""
    from ks_platform.definitions import build_definitions

    defs = build_definitions(platform)
    job = defs.resolve_job_def(SORT_JOB_NAME)
    return job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False)


#: The landing root the demo writes into, and where it is when ``KS_PLATFORM_LANDING`` names no root ``demo``.
DEMO_ROOT = "demo"
DEMO_LANDING = Path("data/landing/demo")


def demo_platform(platform: PlatformResource) -> PlatformResource:
    """The platform of ``ks-platform demo``: the same store and backend, and only its own landing root ``demo`` (the
    configured one, else ``data/landing/demo``): the demo never writes into, registers or retires anything of another
    landing root."""
    from ks_platform.defs.resources import PlatformResource

    root = platform.roots().get(DEMO_ROOT, DEMO_LANDING.resolve())
    return PlatformResource(
        store_root=platform.store_root,
        landing_roots=f"{DEMO_ROOT}={root}",
        backend=platform.backend,
        allow_zero_copy=platform.allow_zero_copy,
    )


def check_lines(instance, result) -> list[str]:
    """One line per asset check of a run: passed / FAILED with its metadata, or skipped (planned, no result: e.g. the
    ground-truth check of a session without ground truth). The planned events are in the instance's log of the run
    (written when the run is created), not in ``result.all_events``."""
    from dagster import DagsterEventType

    lines = []
    evaluated = {check.check_name: check for check in result.get_asset_check_evaluations()}
    planned = [
        entry.dagster_event.event_specific_data.check_name
        for entry in instance.all_logs(result.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED)
    ]
    for name in dict.fromkeys([*planned, *evaluated]):
        check = evaluated.get(name)
        if check is None:
            lines.append(f"check {name}: skipped (nothing to check in this session)")
            continue
        metadata = {k: v.value for k, v in check.metadata.items() if k != "per_unit"}
        lines.append(f"check {name}: {'passed' if check.passed else 'FAILED'} {json.dumps(metadata, default=str)}")
    return lines


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from ks_platform.core.sessions import SessionRef, key_name
    from ks_platform.core.store import read_json
    from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
    from ks_platform.defs.resources import PlatformResource

    started = time.monotonic()
    platform = demo_platform(PlatformResource.from_env())
    root = platform.roots()[DEMO_ROOT]
    folder = root / f"demo_seed{args.seed}"
    if not folder.exists():
        make_spikeglx_session(folder, DemoSessionSpec(duration_s=args.duration, seed=args.seed))
        print(f"made demo session {folder}")
    instance = _instance()
    keys = [
        k
        for k in register_sessions(instance, platform)
        if SessionRef.parse(k).session_key.endswith(f"__{DEMO_ROOT}__{key_name(folder.name)}")
    ]
    key = keys[0]
    print(
        f"materializing session {key} (Kilosort 4 on {platform.backend}; 2-15 minutes on 2 CPU cores, more when the "
        "machine is busy; the run's log shows each stage's progress)",
        flush=True,
    )
    result = run_session(instance, platform, key)
    store = platform.store(key)
    home = os.environ["DAGSTER_HOME"]
    if not result.success:
        for event in result.all_events:
            if event.is_failure and event.event_specific_data and getattr(event.event_specific_data, "error", None):
                print(f"FAILED {event.step_key}: {event.event_specific_data.error.message.strip()}", file=sys.stderr)
        print(f"the run's whole log: `make dev`, then Runs → {result.run_id} (instance {home})", file=sys.stderr)
        return 1
    summary = read_json(store.sorting_dir / SUMMARY_FILE)
    print(f"\nPhy folder: {store.phy_dir}\n  open it with: phy template-gui {store.phy_dir / 'params.py'}")
    print(
        f"units: {summary['n_units']} ({summary['n_good_units']} good), spikes: {summary['n_spikes']}, "
        f"sort time {summary['seconds']} s, whole run {time.monotonic() - started:.0f} s"
    )
    print("\n".join(check_lines(instance, result)))
    print(
        f"\nThe run is recorded in the Dagster instance in {home} (DAGSTER_HOME). To see it, its log and every asset "
        f"in the UI: `make dev` (or `make dev PORT=3001`), then open the printed address → Runs → {result.run_id[:8]}."
    )
    return 0


def register(sub) -> None:
    """Add make-session, register and demo."""
    make = sub.add_parser("make-session", help="write a synthetic SpikeGLX session with ground truth")
    make.add_argument("--out", required=True)
    make.add_argument("--duration", type=float, default=15.0)
    make.add_argument("--channels", type=int, default=32)
    make.add_argument("--units", type=int, default=10)
    make.add_argument("--seed", type=int, default=42)
    make.add_argument("--date", default="2026-03-02")
    make.set_defaults(func=_cmd_make_session)

    register_cmd = sub.add_parser(
        "register",
        help="add every session under the landing roots as a partition, retire vanished ones",
        description="Add every session under the landing roots as a partition and print the active keys; partitions "
        "whose folder was deleted, renamed or re-dated are retired (see `ks-platform sessions --retired`). Only new or "
        "changed folders are read (the landing catalog in the store remembers the others). Folders that are not "
        "valid sessions, and landing roots that cannot be searched, are reported on stderr (file, problem, fix) with "
        "how many were skipped; the other sessions are registered all the same. A folder is retired once it has been "
        "absent for KS_PLATFORM_RETIRE_AFTER_SECONDS (one day) from a landing root that is available; a root that is "
        "missing, empty or lost most of its folders at once retires nothing and is reported. Exit status: 0 when the "
        "roots were searched (even if folders were skipped), 2 when the platform's configuration or the store is "
        "unusable (one error line naming the fix).",
    )
    register_cmd.add_argument(
        "--accept-root",
        action="append",
        default=[],
        metavar="NAME",
        help="the landing root NAME lost its folders on purpose: take its listing as it is now (its absent folders "
        "are retired after the usual time); repeatable",
    )
    register_cmd.set_defaults(func=_cmd_register)

    demo = sub.add_parser(
        "demo",
        help="make a demo session and materialize all its assets on the embedded instance",
        description="Write a synthetic SpikeGLX session with ground truth into the landing root `demo` (the one "
        "KS_PLATFORM_LANDING names, else data/landing/demo; never another root), register it and materialize its "
        "assets in this process; prints the Phy folder, the units, the checks and where the run is recorded.",
    )
    demo.add_argument("--duration", type=float, default=15.0)
    demo.add_argument("--seed", type=int, default=42)
    demo.set_defaults(func=_cmd_demo)
