"""The sorters a probe can be sorted with, and their parameters: names, where their settings live in the session
config, whether they may use a GPU, and the validation of their parameter sections.

Kilosort 4 (the default) runs through its own path (``core/sorting.py``) with its settings in ``"kilosort"``; every
other sorter runs through SpikeInterface's ``run_sorter`` in-process (``core/si_sorting.py``) with its settings in a
section named after it (``"spykingcircus2": {...}``), checked against SpikeInterface's own default parameters.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ks_platform.core.errors import SessionInputError

KILOSORT4 = "kilosort4"
DEFAULT_SORTER = KILOSORT4


@dataclass(frozen=True)
class SorterInfo:
    """One sorter the platform can run."""

    name: str
    label: str
    #: Key of its parameter section in ks_session.json (``kilosort`` for Kilosort 4, else its name).
    section: str
    #: Whether it can use a GPU (its sort step is then placed on one where the inventory has one).
    uses_gpu: bool
    #: The distribution whose version is the sorter's version (lineage).
    package: str
    #: Platform defaults over the sorter's own (seeds, so that a sort is repeatable); recorded as a layer.
    platform_defaults: Mapping[str, Any] = field(default_factory=dict)


SORTERS: dict[str, SorterInfo] = {
    KILOSORT4: SorterInfo(KILOSORT4, "Kilosort 4", "kilosort", True, "kilosort"),
    "spykingcircus2": SorterInfo("spykingcircus2", "SpykingCircus2", "spykingcircus2", False, "spikeinterface"),
    "tridesclous2": SorterInfo("tridesclous2", "Tridesclous2", "tridesclous2", False, "spikeinterface", {"seed": 42}),
    "mountainsort5": SorterInfo(
        "mountainsort5", "MountainSort5", "mountainsort5", False, "mountainsort5", {"whitening_seed": 42}
    ),
}
#: Parameter sections of the sorters that run through SpikeInterface (``kilosort`` is checked by ``core/settings.py``).
SI_SECTIONS = tuple(info.section for info in SORTERS.values() if info.name != KILOSORT4)
SORTER_KEY = "sorter"

#: String parameters with a fixed set of values (SpikeInterface does not declare them): name path → allowed values.
CHOICES: dict[str, tuple[Any, ...]] = {
    "mountainsort5.scheme": ("1", "2", "3"),
    "mountainsort5.detect_sign": (-1, 0, 1),
    "mountainsort5.scheme2_training_recording_sampling_mode": ("initial", "uniform"),
    "tridesclous2.peak_sign": ("neg", "pos", "both"),
    "tridesclous2.gather_mode": ("memory", "npy"),
    "spykingcircus2.detection.method_kwargs.peak_sign": ("neg", "pos", "both"),
}
#: Parameters whose default is an empty dict that the sorter passes on as keyword arguments: any keys.
JOB_KWARGS = "job_kwargs"


def sorter_version(name: str) -> str:
    """The version the sorter reports (Kilosort's and MountainSort5's package, SpikeInterface's internal sorters' own)."""
    from importlib import metadata

    if name == KILOSORT4:
        return metadata.version("kilosort")
    from spikeinterface.sorters import sorter_dict

    return str(sorter_dict[name].get_sorter_version())


def parse_sorters(value: Any, path: Path) -> tuple[str, ...]:
    """The ``sorter`` value of a config file (a name or a list of names, first = the probe's sorting) as a tuple."""
    names = [value] if isinstance(value, str) else value
    fix = f'write "sorter": "{DEFAULT_SORTER}" or a list such as ["{DEFAULT_SORTER}", "spykingcircus2"] (known: {", ".join(SORTERS)})'
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SessionInputError(
            path, f"'sorter' must be a sorter name or a non-empty list of names, got {value!r}", fix
        )
    for name in names:
        if name not in SORTERS:
            close = difflib.get_close_matches(name.lower(), list(SORTERS), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SessionInputError(path, f"'sorter' names {name!r}, which the platform does not run{hint}", fix)
    if len(set(names)) != len(names):
        raise SessionInputError(path, f"'sorter' names a sorter twice: {names}", "name each sorter once")
    return tuple(names)


def needs_gpu(names: tuple[str, ...] | list[str]) -> bool:
    """Whether any of these sorters uses a GPU."""
    return any(SORTERS[name].uses_gpu for name in names if name in SORTERS)


def default_params(name: str) -> dict[str, Any]:
    """SpikeInterface's default parameters of a sorter it runs."""
    from spikeinterface.sorters import get_default_sorter_params

    return copy.deepcopy(get_default_sorter_params(name))


def _fail(path: Path, where: str, problem: str, fix: str) -> SessionInputError:
    return SessionInputError(path, f"{where}: {problem}", fix)


def _check(path: Path, where: str, value: Any, default: Any) -> Any:
    """One value against the type (and, where known, the values) of its default; nested sections recursively."""
    shown = json.dumps(default)
    keep = f"or remove it to use the default ({shown})"
    if where in CHOICES:
        allowed = CHOICES[where]
        if value not in allowed or isinstance(value, bool):
            raise _fail(path, where, f"{value!r} is not one of {list(allowed)}", f"set one of {list(allowed)}, {keep}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise _fail(path, where, f"must be an object, got {value!r}", f"write an object like {shown}, {keep}")
        if where.endswith(JOB_KWARGS):
            from spikeinterface.core.job_tools import job_keys

            unknown = sorted(set(value) - set(job_keys))
            if unknown:
                raise _fail(path, where, f"unknown job setting(s) {unknown}", f"use only {list(job_keys)}")
            return dict(value)
        if not default:  # an open set of keyword arguments (e.g. a method's kwargs): any JSON object
            return dict(value)
        return {k: _check_key(path, where, k, v, default) for k, v in value.items()}
    if default is None:
        if (
            "seed" in where.rsplit(".", 1)[-1]
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, int))
        ):
            raise _fail(path, where, f"a seed must be a whole number or null, got {value!r}", "set an integer seed")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _fail(path, where, f"must be true or false, got {value!r}", f"set true or false, {keep}")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(path, where, f"must be a finite number, got {value!r}", f"set a number, {keep}")
        if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            raise _fail(path, where, f"must be a whole number, got {value!r}", f"set a whole number, {keep}")
        if default > 0 and value < 0:
            raise _fail(path, where, f"must not be negative, got {value!r}", f"set a number >= 0, {keep}")
        return int(value) if isinstance(default, int) else float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise _fail(path, where, f"must be a string, got {value!r}", f"set a string, {keep}")
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, list):
            raise _fail(path, where, f"must be a list, got {value!r}", f"write a list, {keep}")
        return value
    return value


def _check_key(path: Path, where: str, key: str, value: Any, defaults: Mapping[str, Any]) -> Any:
    name = f"{where}.{key}"
    if key not in defaults:
        close = difflib.get_close_matches(key, list(defaults), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"valid: {', '.join(sorted(defaults))}"
        raise SessionInputError(path, f"unknown {where} parameter {name!r} ({hint})", f"rename or remove {key!r}")
    return _check(path, name, value, defaults[key])


def validate_sorter_params(section: str, overrides: Any, path: Path) -> dict[str, Any]:
    """A sorter's parameter section of a config file, each key and value checked against SpikeInterface's defaults
    (unknown keys get the closest valid name); raises one :class:`SessionInputError` naming the file and the key."""
    if not isinstance(overrides, dict):
        raise SessionInputError(
            path,
            f"'{section}' must be an object of {section} parameters, got {type(overrides).__name__}",
            f'write "{section}": {{"parameter": value, ...}}',
        )
    defaults = default_params(section)
    return {key: _check_key(path, section, key, value, defaults) for key, value in overrides.items()}


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` layered on ``base``; nested objects are merged key by key (a nearer file changes one sub-key)."""
    merged = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and merged[key]:
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass(frozen=True)
class SorterParams:
    """The exact parameters a SpikeInterface sorter runs with, and the layers they came from."""

    sorter: str
    params: dict[str, Any]
    layers: dict[str, dict[str, Any]]

    @property
    def params_hash(self) -> str:
        from ks_platform.core.settings import settings_hash

        return settings_hash({"sorter": self.sorter, "params": self.params})

    def record(self) -> dict[str, Any]:
        return {"sorter": self.sorter, "settings": self.params, "layers": self.layers, "params_hash": self.params_hash}


def effective_params(name: str, session_overrides: Mapping[str, Any] | None = None) -> SorterParams:
    """SpikeInterface's defaults < the platform's (seeds) < the session's overrides, for a non-Kilosort sorter."""
    info = SORTERS[name]
    session = dict(session_overrides or {})
    params = merge(merge(default_params(name), info.platform_defaults), session)
    return SorterParams(name, params, {"platform": dict(info.platform_defaults), "session": session})


def seeds_of(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every ``*seed*`` parameter (nested ones as ``a.b``) and its value: the seeds of a sort, for the lineage."""
    found: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            found.update(seeds_of(value, f"{prefix}{key}."))
        elif "seed" in key:
            found[f"{prefix}{key}"] = value
    return found


def step_needs_gpu(raw_manifest: Path, role: str | None) -> bool:
    """Whether a sort step tagged ``gpu`` uses a GPU for this partition: the sorters ``raw_recording.json`` lists
    (``role`` ``primary``: the probe's own, the first; ``compared``: the others). True when that is unknown (no
    manifest yet, no role), as before there was a choice of sorter; False for a step with nothing to sort."""
    from ks_platform.core.names import COMPARED_SORTERS, PRIMARY_SORTERS

    if role not in (PRIMARY_SORTERS, COMPARED_SORTERS):
        return True
    try:
        names = json.loads(Path(raw_manifest).read_text())["sorters"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    if not isinstance(names, list) or not names or not all(name in SORTERS for name in names):
        return True
    return needs_gpu(names[:1] if role == PRIMARY_SORTERS else names[1:])
