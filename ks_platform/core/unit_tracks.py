"""Unit tracks: the same neuron across the sessions of one implant, found by UnitMatch on bombcell's waveforms.

An implant is a subject (``subject.json``'s ``subject_id``) and a probe (the session config's ``implant``, by default
the probe's own name), so two probes of one animal are tracked apart. Labelling a session registers it there
(``register_member``: ``<store>/subjects/<subject>__<implant>/members/<session key>.json``). ``track_units`` runs
UnitMatch (PyPI ``UnitMatchPy``) on the members' current sortings, with the two half-recording raw waveforms bombcell
saved for every unit, and writes ``<store>/subjects/<key>/unit_tracks/`` atomically:

- ``unit_tracks.tsv``: one row per unit that went in (session, cluster id, track id, match probability), a track id
  being one neuron across sessions (UnitMatch's "intermediate" unique id; kept from the previous tracking where its
  units were the same);
- ``match_probability.npy``: UnitMatch's probability for every pair of units (both half-recording directions);
- ``unit_tracks.json``: UnitMatchPy's version and parameters, every session version that went in (sorting and label
  versions), the sessions left out and why;
- two figures: units on the probe across days (a line per track) and the match-probability matrix.

A session that cannot be tracked (no labels for its current sorting, no unit to track, a probe geometry that
differs from the implant's other sessions, no unit matching any other session) is left out or flagged with one
message naming the file and the fix; the others are tracked all the same.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import importlib.util
import io
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ks_platform.core.errors import SessionInputError
from ks_platform.core.figures import new_figure, save_figure
from ks_platform.core.names import RETIRED_MARKER, SUBJECT_JSON, SUBJECTS_DIR, SUMMARY_FILE, TRACK_ID_TSV
from ks_platform.core.session_config import CONFIG_FILE, ProbeConfig
from ks_platform.core.sessions import KEY_SEPARATOR, SessionRef, key_name
from ks_platform.core.settings import settings_hash
from ks_platform.core.store import SessionStore, atomic_directory, atomic_file, read_json, write_json_atomic
from ks_platform.core.unit_labels import RAW_WAVEFORMS, current_labels, json_safe, labels_dir

MEMBERS = "members"
TRACKS_DIR = "unit_tracks"
TRACKS_TSV = "unit_tracks.tsv"
TRACKS_JSON = "unit_tracks.json"
PROBABILITY_NPY = "match_probability.npy"
FIGURES = ("units_across_days", "match_probability")
#: Units UnitMatch compares: bombcell's GOOD ones (UnitMatch's own advice: curated units) or all of them.
UNIT_CHOICES = {"good": ("GOOD", "NON-SOMA GOOD"), "all": None}
#: Parameters the waveforms decide (bombcell's Kilosort 4 window: 61 samples, the spike at sample 20).
FIXED = ("spike_width", "peak_loc", "waveidx", "score_vector", "bins", "KS_dirs", "n_units", "n_sessions")
BOMBCELL_KS4_HALF_WIDTH = 20
SUBJECT_FIX = 'write {"subject_id": "mouse12", ...} into the session folder\'s subject.json (NWB Subject fields)'


# ------------------------------------------------------------------------------------------ the implant of a session
def read_subject_id(session_dir: Path) -> str | None:
    """``subject_id`` from the session folder's ``subject.json``; None without the file."""
    path = Path(session_dir) / SUBJECT_JSON
    if not path.is_file():
        return None
    try:
        subject = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SessionInputError(path, f"not valid JSON ({exc})", SUBJECT_FIX) from None
    subject_id = subject.get("subject_id") if isinstance(subject, dict) else None
    if not isinstance(subject_id, str) or not subject_id.strip():
        raise SessionInputError(path, "no subject_id (a non-empty string)", SUBJECT_FIX)
    return subject_id.strip()


def track_key(subject_id: str, implant: str) -> str:
    """The partition key of an implant: ``<subject>__<implant>`` (each part a safe key name)."""
    return f"{key_name(subject_id)}{KEY_SEPARATOR}{key_name(implant)}"


def session_track_key(session_dir: Path, probe: str, config: ProbeConfig | None = None) -> str | None:
    """The implant a session's probe belongs to, or None when the session has no ``subject.json``."""
    subject_id = read_subject_id(session_dir)
    if subject_id is None:
        return None
    implant = config.implant if config is not None and config.implant else probe
    return track_key(subject_id, implant)


def subject_dir(store_root: Path, key: str) -> Path:
    return Path(store_root) / SUBJECTS_DIR / key


def tracks_dir(store_root: Path, key: str) -> Path:
    return subject_dir(store_root, key) / TRACKS_DIR


def register_member(store: SessionStore, key: str | None, config: ProbeConfig | None = None) -> Path | None:
    """Record that ``store``'s session belongs to implant ``key`` (None: to none), with the versions of its sorting and
    labels, and drop it from any other implant it was registered with (its subject.json or implant changed)."""
    root = store.root
    mine = f"{store.key}.json"
    for other in (root / SUBJECTS_DIR).glob(f"*/{MEMBERS}/{mine}"):
        if other.parent.parent.name != key:
            other.unlink(missing_ok=True)
    if key is None:
        return None
    labels = current_labels(store)
    path = subject_dir(root, key) / MEMBERS / mine
    write_json_atomic(
        path,
        {
            "session": store.key,
            "sorting_checksum": labels.summary["sorting_checksum"] if labels else None,
            "labels_version": labels.summary["version"] if labels else None,
            "unitmatch": dict(config.unitmatch) if config is not None else {},
            "unitmatch_sources": {
                k: str(v) for k, v in (config.sources if config else {}).items() if "unitmatch." in k
            },
        },
    )
    return path


def implants_of(store_root: Path, session_key: str) -> list[str]:
    """The implants a session is registered with (at most one)."""
    return sorted(
        p.parent.parent.name for p in (Path(store_root) / SUBJECTS_DIR).glob(f"*/{MEMBERS}/{session_key}.json")
    )


def member_keys(store_root: Path, key: str) -> list[str]:
    """The implant's sessions, in recording order; retired partitions (``RETIRED.json``) are left out."""
    folder = subject_dir(store_root, key) / MEMBERS
    keys = [p.stem for p in folder.glob("*.json")] if folder.is_dir() else []
    live = [k for k in keys if not (Path(store_root) / "sessions" / k / RETIRED_MARKER).exists()]
    return sorted(live, key=lambda k: (_date(k), k))


def _date(session_key: str) -> dt.date:
    try:
        return SessionRef.parse(session_key).date
    except ValueError:
        return dt.date.min


def _sorting_checksum(store: SessionStore) -> str | None:
    path = store.sorting_dir / SUMMARY_FILE
    return read_json(path).get("output_checksum") if path.is_file() else None


def inputs_version(store_root: Path, key: str) -> str:
    """Changes when a session joins or leaves the implant, or one is re-sorted, re-labelled or given other UnitMatch
    parameters: what makes its tracks stale."""
    rows = []
    for session in member_keys(store_root, key):
        store = SessionStore(Path(store_root), session)
        labels = current_labels(store)
        record = read_json(subject_dir(store_root, key) / MEMBERS / f"{session}.json")
        rows.append(
            [session, _sorting_checksum(store), labels.summary["version"] if labels else None, record["unitmatch"]]
        )
    return settings_hash({"sessions": rows})


# ------------------------------------------------------------------------------------------------------ UnitMatch
def _unitmatch():
    """UnitMatchPy's computing modules. Its package ``__init__`` also imports its Tk GUI; where Python has no Tk
    (slim images), the package is bound without running ``__init__`` and only the computing modules are loaded."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import UnitMatchPy  # noqa: F401
    except ImportError as exc:
        if "tkinter" not in str(exc).lower():
            raise
        spec = importlib.util.find_spec("UnitMatchPy")
        sys.modules["UnitMatchPy"] = importlib.util.module_from_spec(spec)
    from UnitMatchPy import assign_unique_id, bayes_functions, default_params, overlord, utils

    return assign_unique_id, bayes_functions, default_params, overlord, utils


def unitmatch_version() -> str:
    from importlib.metadata import version

    return version("UnitMatchPy")


def default_parameters() -> dict[str, Any]:
    return _unitmatch()[2].get_default_param()


def _fits(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float, np.integer, np.floating)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    return not isinstance(default, np.ndarray)


def validate_overrides(values: dict[str, Any], sources: dict[str, Path] | None = None) -> dict[str, Any]:
    """The session config's ``unitmatch`` section checked against UnitMatch's own parameters, plus the platform's
    ``units`` (``good``: bombcell's GOOD units, UnitMatch's advice; ``all``)."""
    defaults = default_parameters()
    sources = sources or {}
    checked = {}
    for name, value in values.items():
        where = Path(sources.get(f"unitmatch.{name}", CONFIG_FILE))
        if name == "units":
            if value not in UNIT_CHOICES:
                raise SessionInputError(
                    where,
                    f"unitmatch units must be one of {list(UNIT_CHOICES)}, got {value!r}",
                    '"units": "good" (bombcell GOOD units) or "all"',
                )
        elif name in FIXED:
            raise SessionInputError(
                where, f"UnitMatch parameter {name!r} is decided by the waveforms bombcell saved", f"remove {name!r}"
            )
        elif name not in defaults:
            close = difflib.get_close_matches(name, [k for k in defaults if k not in FIXED] + ["units"], n=1)
            raise SessionInputError(
                where,
                f"{name!r} is not a UnitMatch parameter",
                (f"did you mean {close[0]!r}? " if close else "")
                + "use UnitMatch's own names (UnitMatchPy.default_params.get_default_param), or remove it",
            )
        elif not _fits(value, defaults[name]):
            raise SessionInputError(
                where,
                f"UnitMatch parameter {name!r} must be like its default {defaults[name]!r}, got {value!r}",
                f"set {name!r} to a value of that type, or remove it",
            )
        checked[name] = value
    return checked


@dataclass
class SessionUnits:
    """One session as UnitMatch sees it."""

    key: str
    clusters: np.ndarray
    waveforms_dir: Path
    channel_positions: np.ndarray
    sorting_dir: Path
    versions: dict[str, Any]


@dataclass
class Tracks:
    """What ``track_units`` made: the table, the probability matrix, the summary and the figures."""

    table: pd.DataFrame
    probability: np.ndarray
    summary: dict[str, Any]
    figures: dict[str, Path] = field(default_factory=dict)


def _left_out(session: str, path: Path, problem: str, fix: str) -> dict[str, str]:
    return {"session": session, "file": str(path), "problem": problem, "fix": fix}


def gather_sessions(store_root: Path, key: str, units: str = "good") -> tuple[list[SessionUnits], list[dict[str, str]]]:
    """The implant's sessions UnitMatch can compare, and those left out with the reason (one message each)."""
    sessions: list[SessionUnits] = []
    left_out: list[dict[str, str]] = []
    keep = UNIT_CHOICES[units]
    for session in member_keys(store_root, key):
        store = SessionStore(Path(store_root), session)
        labels = current_labels(store)
        if labels is None:
            left_out.append(
                _left_out(
                    session,
                    labels_dir(store),
                    "no bombcell labels for its current sorting",
                    "materialize unit_labels for this session",
                )
            )
            continue
        chosen = labels.table if keep is None else labels.table[labels.table["bombcell_label"].isin(keep)]
        folder = labels_dir(store) / RAW_WAVEFORMS
        clusters = np.array(
            [c for c in chosen["cluster_id"].astype(int) if (folder / f"Unit{c}_RawSpikes.npy").is_file()], dtype=int
        )
        if clusters.size == 0:
            left_out.append(
                _left_out(
                    session,
                    labels_dir(store) / "cluster_bc_unitType.tsv",
                    f"no {'GOOD ' if keep else ''}unit with raw waveforms to track",
                    'check its labels, or track every unit with "unitmatch": {"units": "all"} in ks_session.json',
                )
            )
            continue
        sessions.append(
            SessionUnits(
                session,
                clusters,
                folder,
                np.load(store.sorting_dir / "channel_positions.npy").astype(float),
                store.sorting_dir,
                {"sorting_checksum": labels.summary["sorting_checksum"], "labels_version": labels.summary["version"]},
            )
        )
    return _same_geometry(sessions, left_out)


def _geometry(session: SessionUnits) -> tuple[tuple[int, ...], bytes]:
    return session.channel_positions.shape, np.round(session.channel_positions, 3).tobytes()


def _same_geometry(
    sessions: list[SessionUnits], left_out: list[dict[str, str]]
) -> tuple[list[SessionUnits], list[dict[str, str]]]:
    """Keep the sessions whose contact positions are the implant's (those of most of its sessions)."""
    if not sessions:
        return sessions, left_out
    geometries = Counter(_geometry(s) for s in sessions)
    common = geometries.most_common(1)[0][0]
    reference = next(s for s in sessions if _geometry(s) == common)
    kept = []
    for s in sessions:
        same = s.channel_positions.shape == reference.channel_positions.shape and np.allclose(
            s.channel_positions, reference.channel_positions, atol=1e-3
        )
        if same:
            kept.append(s)
        else:
            left_out.append(
                _left_out(
                    s.key,
                    s.sorting_dir / "channel_positions.npy",
                    f"its probe geometry ({len(s.channel_positions)} contacts) differs from the implant's other "
                    f"sessions' (as in {reference.key})",
                    "record with the implant's channel map (the same imro table / sorted channels), or give this "
                    'probe its own "implant" in ks_session.json',
                )
            )
    return kept, left_out


def _unitmatch_parameters(overrides: dict[str, Any], waveform_width: int) -> dict[str, Any]:
    param = default_parameters()
    param.update({k: v for k, v in overrides.items() if k != "units"})
    param["spike_width"] = int(waveform_width)
    param["peak_loc"] = BOMBCELL_KS4_HALF_WIDTH if waveform_width == 61 else waveform_width // 2
    param["waveidx"] = np.arange(param["peak_loc"] - 8, param["peak_loc"] + 15, dtype=int)
    return param


def run_unitmatch(sessions: list[SessionUnits], overrides: dict[str, Any], log: Callable[[str], None] | None = None):
    """UnitMatch over ``sessions`` (at least two): ``(probability matrix, unique ids, parameters)``."""
    aid, bf, _, ov, util = _unitmatch()
    first = np.load(sessions[0].waveforms_dir / f"Unit{sessions[0].clusters[0]}_RawSpikes.npy")
    param = _unitmatch_parameters(overrides, first.shape[0])
    param["KS_dirs"] = [str(s.sorting_dir) for s in sessions]
    good_units = [s.clusters[:, np.newaxis] for s in sessions]
    channel_pos = [np.insert(s.channel_positions, 0, np.ones(len(s.channel_positions)), axis=1) for s in sessions]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        param = util.get_probe_geometry(sessions[0].channel_positions, param)
        waveform, session_id, session_switch, within_session, param = util.load_good_units(
            good_units, [str(s.waveforms_dir) for s in sessions], param
        )
        clus_info = {
            "good_units": good_units,
            "session_switch": session_switch,
            "session_id": session_id,
            "original_ids": np.concatenate(good_units),
        }
        properties = ov.extract_parameters(waveform, channel_pos, clus_info, param)
        _, candidates, scores, predictors = ov.extract_metric_scores(
            properties, session_switch, within_session, param, niter=2
        )
        prior = 1 - (param["n_expected_matches"] / param["n_units"] ** 2)
        labels = candidates.astype(int)
        conditions = np.unique(labels)
        if conditions.size < 2:
            raise NoOverlap(sessions)
        kernels = bf.get_parameter_kernels(scores, labels, conditions, param, add_one=1)
        probability = bf.apply_naive_bayes(kernels, np.array((prior, 1 - prior)), predictors, param, conditions)
        matrix = probability[:, 1].reshape(param["n_units"], param["n_units"])
        unique_ids = aid.assign_unique_id(matrix, param, clus_info)
    if log is not None:
        log("UnitMatch: " + " ".join(printed.getvalue().split())[-1500:])
    # avg_centroid: (3, units, halves) over the channel positions [1, x, y] UnitMatch is given: depth is y.
    depth = np.nanmean(properties["avg_centroid"][2], axis=-1) if "avg_centroid" in properties else None
    return matrix, np.asarray(unique_ids[1]), param, depth


class NoOverlap(SessionInputError):
    """UnitMatch found no pair of units alike enough to be a candidate match."""

    def __init__(self, sessions: list[SessionUnits]) -> None:
        super().__init__(
            sessions[-1].sorting_dir,
            f"UnitMatch found no overlap between {len(sessions)} sessions ({', '.join(s.key for s in sessions)}): no "
            "pair of units was alike enough to be a candidate match",
            'check that these sessions are of the same implant (subject.json, "implant") and that the probe did not '
            "move further than UnitMatch's max_dist (µm) between them",
        )


def _stable_ids(table: pd.DataFrame, previous: pd.DataFrame | None) -> np.ndarray:
    """Track ids that keep the previous tracking's id where a track holds the same units (1, 2, … for new ones)."""
    group = table["group"].to_numpy()
    if previous is None or previous.empty:
        _, ids = np.unique(group, return_inverse=True)
        return ids + 1
    old = {(r.session, int(r.cluster_id)): int(r.track_id) for r in previous.itertuples()}
    next_id = max(old.values(), default=0) + 1
    taken: set[int] = set()
    result = np.zeros(len(table), dtype=int)
    for g in pd.unique(group):
        rows = np.flatnonzero(group == g)
        votes = Counter(
            old[(table["session"].iat[i], int(table["cluster_id"].iat[i]))]
            for i in rows
            if (table["session"].iat[i], int(table["cluster_id"].iat[i])) in old
        )
        choice = next((tid for tid, _ in votes.most_common() if tid not in taken), None)
        if choice is None:
            choice, next_id = next_id, next_id + 1
        taken.add(choice)
        result[rows] = choice
    return result


def _match_probability(matrix: np.ndarray, group: np.ndarray, session: np.ndarray) -> np.ndarray:
    """Per unit: its highest UnitMatch probability (both directions averaged) with a unit of its track in another
    session; NaN when its track has no unit elsewhere."""
    symmetric = (matrix + matrix.T) / 2
    best = np.full(len(group), np.nan)
    for i in range(len(group)):
        partners = np.flatnonzero((group == group[i]) & (session != session[i]))
        if partners.size:
            best[i] = float(symmetric[i, partners].max())
    return best


def track_units(
    store_root: Path,
    key: str,
    overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    parameters_from: str | None = None,
) -> Tracks:
    """UnitMatch over the implant's sessions; ``unit_tracks/`` written atomically (see the module docstring)."""
    overrides = overrides or {}
    units = overrides.get("units", "good")
    sessions, left_out = gather_sessions(store_root, key, units)
    if not sessions:
        raise SessionInputError(
            subject_dir(store_root, key) / MEMBERS,
            "no session of this implant can be tracked"
            + (" (" + "; ".join(f"{x['session']}: {x['problem']}" for x in left_out) + ")" if left_out else ""),
            "; ".join(x["fix"] for x in left_out) or "label a session of this subject (unit_labels)",
        )
    flagged: list[dict[str, str]] = []
    depth = None
    param: dict[str, Any] = {}
    if len(sessions) > 1:
        matrix, groups, param, depth = run_unitmatch(sessions, overrides, log)
    else:
        n = len(sessions[0].clusters)
        matrix, groups = np.eye(n), np.arange(n)
    rows = [(s.key, int(c)) for s in sessions for c in s.clusters]
    table = pd.DataFrame(rows, columns=["session", "cluster_id"])
    table["group"] = groups
    session_index = table["session"].map({s.key: i for i, s in enumerate(sessions)}).to_numpy()
    previous_path = tracks_dir(store_root, key) / TRACKS_TSV
    previous = pd.read_csv(previous_path, sep="\t") if previous_path.is_file() else None
    table["track_id"] = _stable_ids(table, previous)
    table["match_probability"] = np.round(_match_probability(matrix, table["group"].to_numpy(), session_index), 4)
    table = table.drop(columns="group")
    if len(sessions) > 1:
        for s in sessions:
            mine = table[table["session"] == s.key]
            if mine["match_probability"].isna().all():
                flagged.append(
                    _left_out(
                        s.key,
                        s.sorting_dir,
                        "no unit of this session matched a unit of the implant's other sessions (UnitMatch found no "
                        "overlap)",
                        'check that it is the same implant (subject.json, "implant") and that the probe did not move '
                        "further than UnitMatch's max_dist between sessions",
                    )
                )
    n_tracks = int(table["track_id"].nunique())
    across = table.groupby("track_id")["session"].nunique()
    summary = {
        "track_key": key,
        "unitmatch_version": unitmatch_version(),
        "parameters": json_safe({k: v for k, v in param.items() if k != "KS_dirs"}),
        "overrides": overrides,
        "parameters_from": parameters_from,
        "units": units,
        "sessions": [{"session": s.key, "n_units": int(len(s.clusters)), **s.versions} for s in sessions],
        "left_out": left_out,
        "no_overlap": flagged,
        "n_units": int(len(table)),
        "n_tracks": n_tracks,
        "n_tracks_across_sessions": int((across > 1).sum()),
        "inputs_version": inputs_version(store_root, key),
    }
    with atomic_directory(tracks_dir(store_root, key)) as staged:
        table.to_csv(staged / TRACKS_TSV, sep="\t", index=False)
        np.save(staged / PROBABILITY_NPY, matrix.astype(np.float32))
        (staged / TRACKS_JSON).write_text(json.dumps(summary, indent=2, default=str) + "\n")
        plot_units_across_days(table, sessions, depth, staged / "units_across_days.png")
        plot_match_probability(matrix, sessions, staged / "match_probability.png")
    folder = tracks_dir(store_root, key)
    return Tracks(table, matrix, summary, {name: folder / f"{name}.png" for name in FIGURES})


def load_tracks(store_root: Path, key: str) -> Tracks | None:
    folder = tracks_dir(store_root, key)
    if not (folder / TRACKS_JSON).is_file():
        return None
    return Tracks(
        pd.read_csv(folder / TRACKS_TSV, sep="\t"),
        np.load(folder / PROBABILITY_NPY),
        read_json(folder / TRACKS_JSON),
        {name: folder / f"{name}.png" for name in FIGURES},
    )


def current_track_ids(store: SessionStore) -> dict[int, int] | None:
    """``{cluster: track id}`` of the session's current sorting from its implant's tracks (None: not tracked, or
    tracked on an earlier sorting)."""
    members = list((store.root / SUBJECTS_DIR).glob(f"*/{MEMBERS}/{store.key}.json"))
    if not members:
        return None
    key = members[0].parent.parent.name
    tracks = load_tracks(store.root, key)
    if tracks is None:
        return None
    went_in = {s["session"]: s for s in tracks.summary["sessions"]}
    mine = went_in.get(store.key)
    if mine is None or mine["sorting_checksum"] != _sorting_checksum(store):
        return None
    rows = tracks.table[tracks.table["session"] == store.key]
    return dict(zip(rows["cluster_id"].astype(int), rows["track_id"].astype(int)))


def write_phy_track_column(store: SessionStore) -> Path | None:
    """``phy/cluster_track_id.tsv``: each unit's track id across the implant's sessions (Phy shows it as a column);
    removed when the session has no tracks for its current sorting."""
    path = store.phy_dir / TRACK_ID_TSV
    if not store.phy_dir.is_dir():
        return None
    ids = current_track_ids(store)
    if ids is None:
        path.unlink(missing_ok=True)
        return None
    with atomic_file(path) as staged:
        staged.write_text("cluster_id\ttrack_id\n" + "".join(f"{c}\t{t}\n" for c, t in sorted(ids.items())))
    return path


# ---------------------------------------------------------------------------------------------------------- figures
def plot_units_across_days(
    table: pd.DataFrame, sessions: list[SessionUnits], depth: np.ndarray | None, path: Path
) -> Path:
    """Each unit at its depth on the probe (UnitMatch's centroid), one column per session; a line joins the units of a
    track from session to session."""
    plt, fig = new_figure(max(4.0, 1.6 * len(sessions) + 2), 5)
    ax = fig.add_subplot(1, 1, 1)
    index = {s.key: i for i, s in enumerate(sessions)}
    x = table["session"].map(index).to_numpy(dtype=float)
    y = (
        np.asarray(depth, dtype=float)
        if depth is not None and len(depth) == len(table)
        else _peak_depths(table, sessions)
    )
    for track, rows in table.assign(x=x, y=y).groupby("track_id"):
        rows = rows.sort_values("x")
        color = f"C{int(track) % 10}"
        if rows["x"].nunique() > 1:
            ax.plot(rows["x"], rows["y"], "-", color=color, alpha=0.6, linewidth=1)
        ax.scatter(rows["x"], rows["y"], s=18, color=color, edgecolors="k", linewidths=0.3)
    ax.set_xticks(range(len(sessions)), [_short(s.key) for s in sessions], rotation=20, ha="right", fontsize=7)
    ax.set(ylabel="depth on the probe (µm)", title=f"{len(table)} units, {table['track_id'].nunique()} tracks")
    return save_figure(plt, fig, path)


def _peak_depths(table: pd.DataFrame, sessions: list[SessionUnits]) -> np.ndarray:
    """A unit's depth as the position of its largest raw waveform channel (when UnitMatch did not run)."""
    by_key = {s.key: s for s in sessions}
    depths = []
    for row in table.itertuples():
        s = by_key[row.session]
        waveform = np.load(s.waveforms_dir / f"Unit{row.cluster_id}_RawSpikes.npy").mean(axis=-1)
        channel = int(np.nanargmax(np.nanmax(waveform, axis=0) - np.nanmin(waveform, axis=0)))
        depths.append(s.channel_positions[min(channel, len(s.channel_positions) - 1), 1])
    return np.asarray(depths, dtype=float)


def _short(session_key: str) -> str:
    try:
        ref = SessionRef.parse(session_key)
        return f"{ref.date} {ref.name}"
    except ValueError:
        return session_key


def plot_match_probability(matrix: np.ndarray, sessions: list[SessionUnits], path: Path) -> Path:
    """UnitMatch's probability for every pair of units, sessions separated by lines."""
    plt, fig = new_figure(5.5, 5)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    edges = np.cumsum([len(s.clusters) for s in sessions])[:-1] - 0.5
    for edge in edges:
        ax.axhline(edge, color="w", linewidth=0.8)
        ax.axvline(edge, color="w", linewidth=0.8)
    centers = np.cumsum([0, *[len(s.clusters) for s in sessions]])
    ticks = (centers[:-1] + centers[1:]) / 2 - 0.5
    ax.set_xticks(ticks, [_short(s.key) for s in sessions], rotation=20, ha="right", fontsize=7)
    ax.set_yticks(ticks, [_short(s.key) for s in sessions], fontsize=7)
    ax.set_title("UnitMatch match probability")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return save_figure(plt, fig, path)
