"""The session config files: Kilosort settings per probe, a probe file, a recording date.

Lookup rule (docs/session-folders.md): every ``ks_session.json`` and every ``kilosort4-settings.json``
inside the session folder, at any depth, applies to the probes that have a file in its folder or below it (so a
file next to ``<run>_g0_imec0/…imec0.ap.bin`` applies to imec0 only). For each probe the files that apply are layered
from the session folder down: the file nearest to the recording wins, key by key. A file that applies to no
probe, or that names a probe the folder does not hold, is an error: nothing found is ever silently ignored.

``ks_session.json``::

    {"recording_date": "2026-03-02",            # overrides the recording's own date; required when it has none
     "probe_file": "probe.json",                # for formats without geometry; relative to this file
     "kilosort": {"Th_universal": 10},          # Kilosort settings for every probe below this folder
     "max_gap_fill_s": 120,                     # fill gaps between a recording's files with zeros up to 120 s
     "sorter": ["kilosort4", "spykingcircus2"], # the probe's sorter (default kilosort4), or a list: the first makes
                                                # the probe's sorting, the others are sorted beside it and compared
     "spykingcircus2": {"detection": {"method_kwargs": {"detect_threshold": 6}}},  # a SpikeInterface sorter's
                                                # parameters (spykingcircus2, tridesclous2, mountainsort5)
     "probes": {"imec1": {"kilosort": {"batch_size": 30000}, "probe_file": "imec1_probe.json"},
                "imec0": {"split_segments": true}},    # sort each gate of imec0 on its own (imec0-g0, imec0-g1)
     "bombcell": {"minNumSpikes": 100},         # bombcell parameters (its own names) for unit_labels
     "unitmatch": {"match_threshold": 0.6},     # UnitMatch parameters (its own names) for unit_tracks
     "implant": "left_hpc"}                     # what tracks this probe across sessions (default: the probe's name)

``kilosort4-settings.json`` holds Kilosort settings only (the same as ``{"kilosort": {...}}``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import SESSION_SETTINGS_FILE
from ks_platform.core.settings import read_json_object, validate_overrides
from ks_platform.core.sorters import (
    DEFAULT_SORTER,
    SI_SECTIONS,
    SORTER_KEY,
    merge,
    parse_sorters,
    validate_sorter_params,
)

CONFIG_FILE = "ks_session.json"
CONFIG_NAMES = (CONFIG_FILE, SESSION_SETTINGS_FILE)
PROBE_KEYS = ("recording_date", "probe_file", "kilosort", "split_segments", "max_gap_fill_s", SORTER_KEY, *SI_SECTIONS)
#: Parameter sections of the steps after the sort (issue #28); each step checks the names in its own section.
STEP_SECTIONS = ("bombcell", "unitmatch")
PROBE_KEYS += (*STEP_SECTIONS, "implant")
CONFIG_KEYS = (*PROBE_KEYS, "probes")
_FIX_SYNTAX = 'write a JSON object such as {"kilosort": {"Th_universal": 10}, "probes": {"imec0": {...}}}'


@dataclass(frozen=True)
class ProbeConfig:
    """What the session's config files say about one probe, with the files it came from (nearest last)."""

    kilosort: dict[str, Any] = field(default_factory=dict)
    probe_file: Path | None = None
    recording_date: dt.date | None = None
    files: tuple[Path, ...] = ()
    #: Sort each segment (SpikeGLX gate, Open Ephys recording) as its own partition instead of concatenating them.
    split_segments: bool = False
    #: Longest gap between two files of the recording filled with zeros (seconds); None: the platform's default.
    max_gap_fill_s: float | None = None
    #: bombcell parameters for ``unit_labels`` and UnitMatch parameters for ``unit_tracks`` (their own names).
    bombcell: dict[str, Any] = field(default_factory=dict)
    unitmatch: dict[str, Any] = field(default_factory=dict)
    #: The implant this probe is tracked as across the subject's sessions; None: the probe's own name.
    implant: str | None = None
    #: The file that set each ``bombcell``/``unitmatch`` parameter (``"bombcell.minNumSpikes"`` → file), for errors.
    sources: dict[str, Path] = field(default_factory=dict)
    #: The sorters named for the probe (first: its sorting; the others are compared with it); empty: the default.
    sorter: tuple[str, ...] = ()
    #: Parameters of the SpikeInterface sorters, by section name (``spykingcircus2``…), layered like ``kilosort``.
    sorter_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def sorters(self) -> tuple[str, ...]:
        """The probe's sorters, its own sorting first (``kilosort4`` when no file names one)."""
        return self.sorter or (DEFAULT_SORTER,)


def config_files(session_dir: Path) -> list[Path]:
    """Every config file in the session folder, shallowest first (hidden folders skipped)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(session_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder) / name for name in CONFIG_NAMES if name in files or name in dirs)
    return sorted(found, key=lambda p: (len(p.parts), p.name != SESSION_SETTINGS_FILE, str(p)))


def applies_to(config: Path, probe_files: tuple[Path, ...] | list[Path]) -> bool:
    """Whether a config file applies to a probe: one of the probe's files lies in the config's folder or below."""
    return any(config.parent in Path(p).parents for p in probe_files)


def _load(path: Path, read: Callable[[Path], bytes] | None = None) -> dict[str, Any]:
    """One config file as a JSON object (its bytes from ``read`` when given); a ``kilosort4-settings.json`` is the
    ``kilosort`` section of one."""
    payload = read_json_object(path, read, fix_shape=_FIX_SYNTAX)
    return {"kilosort": payload} if path.name == SESSION_SETTINGS_FILE else payload


def _check_keys(payload: Mapping[str, Any], allowed: tuple[str, ...], path: Path, where: str) -> None:
    unknown = sorted(set(payload) - set(allowed))
    if unknown:
        raise SessionInputError(path, f"unknown key(s) {unknown} {where}", f"use only {list(allowed)} there")


def _layer(
    config: ProbeConfig, section: Mapping[str, Any], path: Path, session_dir: Path, check_kilosort: bool
) -> ProbeConfig:
    """``config`` with one section of a config file layered over it (validated; Kilosort values only when
    ``check_kilosort``)."""
    _check_keys(section, PROBE_KEYS, path, "in a probe section")
    kilosort = config.kilosort
    if "kilosort" in section:
        values = section["kilosort"]
        if check_kilosort:
            values = validate_overrides(values, path)
        kilosort = {**kilosort, **(values if isinstance(values, dict) else {})}
    probe_file = config.probe_file
    if "probe_file" in section:
        name = section["probe_file"]
        if not isinstance(name, str) or not name:
            raise SessionInputError(
                path, f"probe_file must be a file name, got {name!r}", "name a probe file next to the config file"
            )
        probe_file = (path.parent / name).resolve()
        if probe_file != Path(session_dir).resolve() and Path(session_dir).resolve() not in probe_file.parents:
            raise SessionInputError(
                path,
                f"probe_file {name!r} resolves to {probe_file}, outside the session folder",
                "copy the probe file into the session folder and name it relative to the config file",
            )
        if not probe_file.is_file():
            raise SessionInputError(
                path,
                f"probe_file {name!r} does not exist next to the config file",
                "copy the probe file there or fix its name",
            )
    date = config.recording_date
    if "recording_date" in section:
        date = _date(section["recording_date"], path)
    split = config.split_segments
    if "split_segments" in section:
        split = section["split_segments"]
        if not isinstance(split, bool):
            raise SessionInputError(
                path, f"split_segments must be true or false, got {split!r}", '"split_segments": true'
            )
    gap = config.max_gap_fill_s
    if "max_gap_fill_s" in section:
        gap = section["max_gap_fill_s"]
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not (0 <= gap < 1e7):
            raise SessionInputError(
                path, f"max_gap_fill_s must be a number of seconds >= 0, got {gap!r}", '"max_gap_fill_s": 120'
            )
        gap = float(gap)
    sorter = config.sorter
    if SORTER_KEY in section:
        try:
            sorter = parse_sorters(section[SORTER_KEY], path)
        except SessionInputError:
            if check_kilosort:
                raise
            # finding sessions: the probe's sort fails with this message instead (as for a bad Kilosort value)
    sorter_params = dict(config.sorter_params)
    for name in SI_SECTIONS:
        if name in section:
            values = section[name]
            if check_kilosort:
                values = validate_sorter_params(name, values, path)
            sorter_params[name] = merge(sorter_params.get(name, {}), values if isinstance(values, dict) else {})
    config = dataclasses.replace(
        config,
        kilosort=kilosort,
        probe_file=probe_file,
        recording_date=date,
        split_segments=split,
        max_gap_fill_s=gap,
        sorter=sorter,
        sorter_params=sorter_params,
    )
    return _layer_after_sort(config, section, path)


def _layer_after_sort(config: ProbeConfig, section: Mapping[str, Any], path: Path) -> ProbeConfig:
    """The ``bombcell``/``unitmatch`` sections (JSON objects merged key by key; their names are checked by the step
    that uses them) and ``implant`` of one config section layered over ``config``."""
    updates: dict[str, Any] = {}
    sources = dict(config.sources)
    for name in STEP_SECTIONS:
        if name not in section:
            continue
        values = section[name]
        if not isinstance(values, dict):
            raise SessionInputError(
                path,
                f"{name!r} must be a JSON object of {name} parameters, got {values!r}",
                f'write "{name}": {{"parameter": value}} with {name}\'s own parameter names',
            )
        updates[name] = {**getattr(config, name), **values}
        sources.update({f"{name}.{key}": path for key in values})
    if "implant" in section:
        implant = section["implant"]
        if not isinstance(implant, str) or not implant.strip() or len(implant) > 80:
            raise SessionInputError(
                path,
                f"implant must be a short name (1-80 characters), got {implant!r}",
                'name the implant this probe belongs to, e.g. "implant": "left_hpc"',
            )
        updates["implant"] = implant.strip()
    return dataclasses.replace(config, **updates, sources=sources) if updates else config


def _date(value: Any, path: Path) -> dt.date:
    if not isinstance(value, str):
        raise SessionInputError(
            path, f"recording_date must be a YYYY-MM-DD string, got {value!r}", 'write "recording_date": "2026-03-02"'
        )
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
            raise ValueError(value)
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise SessionInputError(
            path, f"recording_date {value!r} is not a YYYY-MM-DD date", 'write "recording_date": "2026-03-02"'
        ) from None


def missing_date_error(path: Path, source: str, how: str) -> SessionInputError:
    """The error for a recording that holds no date: the date is never guessed from a file's modification time."""
    return SessionInputError(
        path,
        f"the recording holds no recording date ({source}); a file's modification time is never used",
        f'{how}, or set "recording_date": "YYYY-MM-DD" in {CONFIG_FILE} in the session folder',
    )


def _probe_section(payload: Mapping[str, Any], names: tuple[str, ...], path: Path) -> Mapping[str, Any] | None:
    """The section of ``payload["probes"]`` for a probe known by any of ``names`` (its name, key name, unsplit name)."""
    sections = payload.get("probes", {})
    if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
        raise SessionInputError(
            path, "'probes' must map probe names to objects", '"probes": {"imec0": {"kilosort": {...}}}'
        )
    from ks_platform.core.sessions import key_name

    known = {alias for name in names for alias in (name, key_name(name))}
    return next((section for name, section in sections.items() if name in known), None)


@dataclass(frozen=True)
class SessionConfig:
    """Every config file of a session folder, each read and parsed once (shallowest first)."""

    folder: Path
    payloads: tuple[tuple[Path, dict[str, Any]], ...] = ()

    @classmethod
    def load(cls, session_dir: Path, read: Callable[[Path], bytes] | None = None) -> SessionConfig:
        """The folder's config files, each read once (through ``read`` when given: a scan's header files)."""
        return cls(Path(session_dir), tuple((path, _load(path, read)) for path in config_files(session_dir)))

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(path for path, _ in self.payloads)

    def for_probe(
        self,
        probes: Mapping[str, tuple[Path, ...]],
        probe: str,
        split_from: Mapping[str, str] | None = None,
        check_kilosort: bool = True,
    ) -> ProbeConfig:
        """The layered config of ``probe`` (a name in ``probes``, the folder's probe → files map). ``split_from``
        maps segment partitions (``imec0-g1``) to the probe they were split from, whose sections apply to them
        too. ``check_kilosort=False`` (finding sessions): Kilosort values are checked when the probe is sorted, so
        a typo there fails that probe's sort with the file and the fix, visible in the UI, instead of hiding the
        session."""
        split_from = split_from or {}
        names = (probe,) if probe not in split_from else (split_from[probe], probe)
        config = ProbeConfig()
        for path, payload in self.payloads:
            if not applies_to(path, probes[probe]):
                continue
            config = dataclasses.replace(config, files=(*config.files, path))
            top = {k: v for k, v in payload.items() if k != "probes"}
            config = _layer(config, top, path, self.folder, check_kilosort)
            for name in names:
                section = _probe_section(payload, (name,), path)
                if section is not None:
                    config = _layer(config, section, path, self.folder, check_kilosort)
        return config

    def check_apply(self, probes: Mapping[str, tuple[Path, ...]], unsplit: tuple[str, ...] = ()) -> None:
        """Refuse a config file that applies to no probe, names an unknown probe or has unknown keys (``unsplit``:
        names of probes that are listed split into segments, which config files may still name)."""
        from ks_platform.core.sessions import key_name

        known = {alias for name in (*probes, *unsplit) for alias in (name, key_name(name))}
        for path, payload in self.payloads:
            covered = [name for name, files in probes.items() if applies_to(path, files)]
            if not covered:
                raise SessionInputError(
                    path,
                    f"this config file applies to no probe (probes: {', '.join(sorted(probes))}; a file applies to "
                    "the recordings in its folder and below)",
                    "move it to the session folder or next to the probe's recording, or remove it",
                )
            _check_keys(payload, CONFIG_KEYS, path, "at the top level")
            sections = payload.get("probes", {})
            _probe_section(payload, (), path)
            for name in sections:
                if name not in known:
                    raise SessionInputError(
                        path,
                        f"'probes' names {name!r}, which this folder does not hold (it holds {', '.join(sorted(probes))})",
                        f"use one of {sorted(probes)}",
                    )
                if unsplit and name in unsplit:
                    continue
                if not any(name in (covered_name, key_name(covered_name)) for covered_name in covered):
                    raise SessionInputError(
                        path,
                        f"'probes' names {name!r}, whose recording is not in this file's folder or below",
                        "put the section in a config file above that probe's recording",
                    )
