"""Daily rollup: what happened to the probe partitions recorded on one date, grouped by session (counts, units, failures, times, devices).

Reads only the session store (``raw_recording.json``, ``sorting/sorting_summary.json``); which sessions
exist and which last sort failed come from the caller (the Dagster layer asks the instance). Written
atomically under ``<store>/rollups/<date>/`` as ``rollup.json`` and ``rollup.png``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from ks_platform.core import curation
from ks_platform.core.names import SUMMARY_FILE
from ks_platform.core.sessions import KEY_SEPARATOR, SessionRef
from ks_platform.core.store import SessionStore, atomic_file, read_json, write_json_atomic

ROLLUP_JSON = "rollup.json"
ROLLUP_PNG = "rollup.png"
#: Session states in a rollup.
SORTED, FAILED, PENDING = "sorted", "failed", "pending"


@dataclass(frozen=True)
class SessionOutcome:
    """One session of the day. Units and times come from its latest successful sorting, if any."""

    key: str
    status: str
    recording_seconds: float | None = None
    n_units: int | None = None
    n_good_units: int | None = None
    sorting_seconds: float | None = None
    device: str | None = None
    error: str | None = None
    #: Phy curation of the current sorting (``curated``/``uncurated``/``stale``, None before ``curated_units``).
    curation_status: str | None = None
    n_curated_good_units: int | None = None
    #: bombcell's units per label (``GOOD``, ``MUA``, …) of the current sorting, None before ``unit_labels``.
    bombcell_counts: dict[str, int] | None = None


@dataclass(frozen=True)
class DailyRollup:
    date: dt.date
    sessions: list[SessionOutcome] = field(default_factory=list)
    #: Partitions of that date retired since (key, cause, reason, successor): their folder was deleted, renamed or
    #: re-dated, or is no longer a session. Their outputs are kept; they are not counted above.
    retired: list[dict[str, Any]] = field(default_factory=list)

    def _count(self, status: str) -> int:
        return sum(1 for s in self.sessions if s.status == status)

    @property
    def n_sessions(self) -> int:
        return len(self.sessions)

    @property
    def n_sorted(self) -> int:
        return self._count(SORTED)

    @property
    def n_failed(self) -> int:
        return self._count(FAILED)

    @property
    def n_pending(self) -> int:
        return self._count(PENDING)

    @property
    def n_units(self) -> int:
        return sum(s.n_units or 0 for s in self.sessions)

    @property
    def n_good_units(self) -> int:
        return sum(s.n_good_units or 0 for s in self.sessions)

    @property
    def n_curated_good_units(self) -> int:
        """Units labelled good in Phy, over the sessions whose curation applies to their current sorting."""
        return sum(s.n_curated_good_units or 0 for s in self.sessions)

    @property
    def units_by_label(self) -> dict[str, int]:
        """bombcell's labels summed over the day's sessions labelled on their current sorting."""
        total: dict[str, int] = {}
        for session in self.sessions:
            for label, n in (session.bombcell_counts or {}).items():
                total[label] = total.get(label, 0) + n
        return dict(sorted(total.items()))

    @property
    def recording_seconds(self) -> float:
        return round(sum((s.recording_seconds or 0.0 for s in self.sessions), 0.0), 3)  # a float on empty days too

    @property
    def sorting_seconds(self) -> float:
        return round(sum((s.sorting_seconds or 0.0 for s in self.sessions), 0.0), 2)

    @property
    def devices(self) -> list[str]:
        return sorted({s.device for s in self.sessions if s.device})

    @property
    def by_session(self) -> dict[str, dict[str, str]]:
        """Each recorded session (``<date>__<root>__<folder>``) with its probes side by side: probe → status."""
        grouped: dict[str, dict[str, str]] = {}
        for outcome in self.sessions:
            ref = SessionRef.parse(outcome.key)
            grouped.setdefault(ref.session_key, {})[ref.probe] = outcome.status
        return grouped

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.date.isoformat(),
            "n_recording_sessions": len(self.by_session),
            "n_sessions": self.n_sessions,
            "n_sorted": self.n_sorted,
            "n_failed": self.n_failed,
            "n_pending": self.n_pending,
            "n_units": self.n_units,
            "n_good_units": self.n_good_units,
            "n_curated_good_units": self.n_curated_good_units,
            "units_by_label": self.units_by_label,
            "recording_seconds": self.recording_seconds,
            "sorting_seconds": self.sorting_seconds,
            "devices": self.devices,
            "sessions": [asdict(s) for s in self.sessions],
            "recording_sessions": self.by_session,
            "retired": self.retired,
        }

    def content_hash(self) -> str:
        """Changes exactly when the rollup's content changes (a data version for the asset)."""
        return xxhash.xxh3_64_hexdigest(json.dumps(self.to_json(), sort_keys=True).encode())


def keys_for_date(keys: Iterable[str], date: dt.date) -> list[str]:
    prefix = date.isoformat() + KEY_SEPARATOR
    return sorted({k for k in keys if k.startswith(prefix)})


def _device(summary: Mapping[str, Any]) -> str | None:
    backend = summary.get("backend") or {}
    if not backend:
        return None
    name = backend.get("device_name") or backend.get("device") or ""
    return f"{backend.get('backend', '?')}: {name}" if name else str(backend.get("backend"))


def session_outcome(store_root: Path, key: str, failure: str | None = None) -> SessionOutcome:
    """What the store says about one session; ``failure`` (the latest run's error) marks it failed."""
    store = SessionStore(Path(store_root), key)
    recording_seconds = None
    if store.raw_manifest.is_file():
        recording_seconds = float(read_json(store.raw_manifest).get("duration_s", 0.0))
    summary_path = store.sorting_dir / SUMMARY_FILE
    summary = read_json(summary_path) if summary_path.is_file() else None
    status = FAILED if failure is not None else (SORTED if summary else PENDING)
    record = curation.load_record(store) if summary else None
    if record is not None and record.sorting_checksum != summary.get("output_checksum"):
        record = None  # made for an earlier sorting: curated_units has not run since the re-sort
    return SessionOutcome(
        key=key,
        status=status,
        recording_seconds=recording_seconds,
        n_units=int(summary["n_units"]) if summary else None,
        n_good_units=int(summary["n_good_units"]) if summary else None,
        sorting_seconds=float(summary["seconds"]) if summary else None,
        device=_device(summary) if summary else None,
        error=failure,
        curation_status=record.status if record else None,
        n_curated_good_units=record.counts.get("good", 0) if record and record.status == curation.CURATED else None,
        bombcell_counts=_bombcell_counts(store) if summary else None,
    )


def _bombcell_counts(store: SessionStore) -> dict[str, int] | None:
    from ks_platform.core.unit_labels import current_labels

    labels = current_labels(store)
    return dict(labels.summary["counts"]) if labels is not None else None


def build_daily_rollup(
    store_root: Path, date: dt.date, registered_keys: Iterable[str], failures: Mapping[str, str] | None = None
) -> DailyRollup:
    """The rollup of ``date`` over the registered sessions recorded that day (other dates' keys are ignored).

    ``failures`` maps a session key to the error of its latest run when that run failed.
    """
    failures = failures or {}
    keys = [key for key in keys_for_date(registered_keys, date) if _is_session_key(key)]
    return DailyRollup(date, [session_outcome(store_root, key, failures.get(key)) for key in keys])


def _is_session_key(key: str) -> bool:
    """A registered key that is not a session key (a hostile or hand-made partition) is left out of the rollup; it
    never names a store path, and it never stops the day's other sessions from being counted."""
    try:
        SessionRef.parse(key)
    except ValueError:
        return False
    return True


def rollup_dir(store_root: Path, date: dt.date) -> Path:
    return Path(store_root) / "rollups" / date.isoformat()


def _label(ref: SessionRef) -> str:
    return f"{ref.root}/{ref.name}/{ref.probe}"


def plot_daily_rollup(rollup: DailyRollup, path: Path) -> Path:
    """Units and good units per session (bars; failed sessions hatched red), sorting time on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [_label(SessionRef.parse(s.key)) for s in rollup.sessions] or ["(no sessions)"]
    units = [s.n_units or 0 for s in rollup.sessions] or [0]
    good = [s.n_good_units or 0 for s in rollup.sessions] or [0]
    width = max(4.0, min(12.0, 1.2 + 0.6 * len(names)))
    fig, ax = plt.subplots(figsize=(width, 3.0), dpi=80)
    try:
        xs = range(len(names))
        bars = ax.bar(xs, units, color="#9ecae1", label="units")
        ax.bar(xs, good, color="#3182bd", width=0.5, label="good units")
        for bar, session in zip(bars, rollup.sessions):
            if session.status == FAILED:
                bar.set_hatch("//")
                bar.set_edgecolor("#d62728")
            elif session.status == PENDING:
                bar.set_alpha(0.3)
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("units")
        sort_minutes = [(s.sorting_seconds or 0.0) / 60 for s in rollup.sessions]
        if any(sort_minutes):
            twin = ax.twinx()
            twin.plot(list(xs), sort_minutes, "o", color="#e6550d", label="sorting time")
            twin.set_ylabel("sorting (min)", color="#e6550d")
            twin.set_ylim(bottom=0)
        ax.set_title(
            f"{rollup.date}: {rollup.n_sessions} sessions, {rollup.n_sorted} sorted, {rollup.n_failed} failed, "
            f"{rollup.n_good_units}/{rollup.n_units} good units",
            fontsize=8,
        )
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        with atomic_file(path) as staged:
            fig.savefig(staged, format="png")
    finally:
        plt.close(fig)
    return path


@dataclass(frozen=True)
class RollupFiles:
    json_path: Path
    png_path: Path


def write_daily_rollup(store_root: Path, rollup: DailyRollup) -> RollupFiles:
    folder = rollup_dir(store_root, rollup.date)
    json_path, png_path = folder / ROLLUP_JSON, folder / ROLLUP_PNG
    write_json_atomic(json_path, rollup.to_json())
    plot_daily_rollup(rollup, png_path)
    return RollupFiles(json_path, png_path)
