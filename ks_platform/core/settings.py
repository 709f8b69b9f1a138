"""Kilosort 4 parameter sets: validated against Kilosort's own settings table, layered, hashed.

Layers, lowest first: Kilosort's defaults < platform defaults < probe-type defaults < session overrides
(``kilosort4-settings.json`` in the session folder). ``n_chan_bin`` and ``fs`` always come from the data.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ks_platform.core.errors import SessionInputError

DATA_DERIVED = ("n_chan_bin", "fs")
#: Settings that are ``run_kilosort`` arguments rather than entries of Kilosort's table, in the same format.
PLATFORM_SETTINGS: dict[str, dict[str, Any]] = {
    "clear_cache": {
        "type": bool,
        "min": None,
        "max": None,
        "exclude": [],
        "default": False,
        "description": "Free cached GPU memory between Kilosort's steps (slower, fits smaller GPUs).",
    },
}
#: ``drift_smoothing`` is Kilosort's 3-element Gaussian smoothing (batches, depth bins, x bins).
LIST_LENGTHS = {"drift_smoothing": 3}

#: Platform defaults over Kilosort's own. Empty on purpose: Kilosort's defaults are the reference, so a
#: platform sort equals a plain ``run_kilosort`` call unless the lab decides otherwise.
PLATFORM_DEFAULTS: dict[str, Any] = {}

#: Probe-type defaults, keyed by :func:`probe_kind`. Neuropixels use Kilosort's defaults (they were tuned for them).
PROBE_TYPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "neuropixels": {},
    "generic": {},
}


def kilosort_settings_table() -> dict[str, dict[str, Any]]:
    """Kilosort's own parameter table (name → type, min, max, exclude, default)."""
    from kilosort.parameters import EXTRA_PARAMETERS, MAIN_PARAMETERS

    return {**MAIN_PARAMETERS, **EXTRA_PARAMETERS, **PLATFORM_SETTINGS}


def _value_fix(key: str, spec: dict[str, Any]) -> str:
    """The fix sentence of a bad value: the allowed type and range, and Kilosort's default."""
    kind = spec["type"]
    default = spec.get("default")
    if kind is bool:
        allowed = "true or false"
    elif kind is list:
        allowed = f"a list of {LIST_LENGTHS.get(key, 'some')} non-negative numbers"
    else:
        noun = "a whole number" if kind is int else "a number"
        allowed = f"{noun} in [{spec['min']}, {spec['max']}]" + (
            f" other than {', '.join(map(str, spec['exclude']))}" if spec.get("exclude") else ""
        )
    nullable = " (or null for Kilosort's automatic choice)" if default is None and key not in DATA_DERIVED else ""
    return (
        f"set {key!r} to {allowed}{nullable}, or remove it to use Kilosort's default "
        f"({json.dumps(default, default=str)})"
    )


def _check_value(key: str, value: Any, spec: dict[str, Any], path: Path) -> Any:
    kind = spec["type"]
    fix = _value_fix(key, spec)
    if value is None:
        if spec.get("default") is None:
            return None  # Kilosort computes these itself when they are None (e.g. nt0min, dmin, x_centers)
        raise SessionInputError(path, f"{key!r} cannot be null", fix)
    if kind is bool:
        if not isinstance(value, bool):
            raise SessionInputError(path, f"{key!r} must be true or false, got {value!r}", fix)
        return value
    if kind is list:
        numbers = isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in value
        )
        if not numbers or (key in LIST_LENGTHS and len(value) != LIST_LENGTHS[key]):
            raise SessionInputError(
                path,
                f"{key!r} must be a list of {LIST_LENGTHS.get(key, 'some')} non-negative numbers, got {value!r}",
                fix,
            )
        return [float(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SessionInputError(path, f"{key!r} must be a number, got {type(value).__name__} {value!r}", fix)
    if kind is int and (isinstance(value, float) and not value.is_integer()):
        raise SessionInputError(path, f"{key!r} must be a whole number, got {value!r}", fix)
    number = kind(value)
    if isinstance(number, float) and not math.isfinite(number):
        raise SessionInputError(path, f"{key!r} must be finite, got {value!r}", fix)
    if number < spec["min"] or number > spec["max"]:
        raise SessionInputError(path, f"{key!r}={value!r} is out of range [{spec['min']}, {spec['max']}]", fix)
    if number in spec.get("exclude", []):
        raise SessionInputError(path, f"{key!r}={value!r} is not allowed (Kilosort excludes {spec['exclude']})", fix)
    return number


def validate_overrides(overrides: dict[str, Any], path: Path) -> dict[str, Any]:
    """Check every key and value against Kilosort's table; unknown keys get the closest valid name."""
    if not isinstance(overrides, dict):
        raise SessionInputError(
            path,
            f"Kilosort settings must be a JSON object, got {type(overrides).__name__}",
            'write {"setting_name": value, ...}',
        )
    table = kilosort_settings_table()
    clean: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in DATA_DERIVED:
            raise SessionInputError(
                path, f"{key!r} is taken from the recording and cannot be overridden", f"remove {key!r}"
            )
        if key not in table:
            close = difflib.get_close_matches(key, list(table), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else "see kilosort.parameters for valid names"
            raise SessionInputError(path, f"unknown Kilosort setting {key!r} ({hint})", f"rename or remove {key!r}")
        clean[key] = _check_value(key, value, table[key], path)
    return clean


#: The largest config or settings file read (a settings file holds a few parameters).
MAX_CONFIG_BYTES = 1024 * 1024


def read_json_object(
    path: Path, read: Callable[[Path], bytes] | None = None, fix_shape: str = "write a JSON object of settings"
) -> dict[str, Any]:
    """A config or settings file as a JSON object (its bytes from ``read`` when given); every way it can be
    unreadable (not a file, too large, not UTF-8, bad JSON, too deep, not an object) is one clear error."""
    if not path.is_file():
        raise SessionInputError(
            path, "the config file is not a regular file", f"make {path.name} a JSON file (or remove it)"
        )
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise SessionInputError(
                path, f"the config file is larger than {MAX_CONFIG_BYTES // 1024} KiB", "keep only settings in it"
            )
        payload = json.loads((read or Path.read_bytes)(path).decode("utf-8"))
    except UnicodeDecodeError:
        raise SessionInputError(path, "the config file is not UTF-8 text", "save it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise SessionInputError(
            path,
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
            "fix the JSON syntax (e.g. with `python -m json.tool`)",
        ) from None
    except RecursionError:
        raise SessionInputError(path, "the JSON is nested too deeply to be a config file", fix_shape) from None
    except PermissionError:
        raise
    except OSError as exc:
        raise SessionInputError(
            path, f"cannot read the config file ({exc.strerror})", "check the file's permissions"
        ) from None
    if not isinstance(payload, dict):
        raise SessionInputError(
            path, f"the config file must hold a JSON object, not {type(payload).__name__}", fix_shape
        )
    return payload


def read_overrides_file(path: Path) -> dict[str, Any]:
    """A Kilosort settings JSON file (``--settings``), validated against Kilosort's own table."""
    return validate_overrides(read_json_object(path), path)


def probe_kind(probe_annotations: dict[str, Any]) -> str:
    """``neuropixels`` for imec probes, else ``generic``."""
    manufacturer = str(probe_annotations.get("manufacturer", "")).lower()
    return "neuropixels" if manufacturer == "imec" else "generic"


@dataclass(frozen=True)
class EffectiveSettings:
    """The exact settings passed to Kilosort, with where each layer came from and a stable hash."""

    settings: dict[str, Any]
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def params_hash(self) -> str:
        return settings_hash(self.settings)

    def record(self) -> dict[str, Any]:
        return {"settings": self.settings, "layers": self.layers, "params_hash": self.params_hash}


def settings_hash(settings: dict[str, Any]) -> str:
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=float)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def effective_settings(
    n_chan_bin: int,
    sampling_frequency: float,
    kind: str = "generic",
    session_overrides: dict[str, Any] | None = None,
    platform_defaults: dict[str, Any] | None = None,
) -> EffectiveSettings:
    """Layer the parameter sets; the data-derived keys are set last."""
    platform = PLATFORM_DEFAULTS if platform_defaults is None else platform_defaults
    probe_defaults = PROBE_TYPE_DEFAULTS.get(kind, {})
    session = session_overrides or {}
    settings = {**platform, **probe_defaults, **session, "n_chan_bin": int(n_chan_bin), "fs": float(sampling_frequency)}
    layers = {"platform": dict(platform), f"probe:{kind}": dict(probe_defaults), "session": dict(session)}
    return EffectiveSettings(settings=settings, layers=layers)
