"""Real SpikeGLX headers next to small generated binaries, laid out as SpikeGLX nests a run.

Each file's meta is a real meta of ``ks_platform_tests/data/spikeglx`` with only what SpikeGLX writes per file
changed: ``fileSizeBytes``/``fileTimeSecs`` (the data's size), ``fileName`` (the template's folder with this file's
name), ``firstSample`` and, when asked, ``snsSaveChanSubset``. ``raw_from_catgt`` undoes what CatGT adds to a meta
(its ``cat*`` keys and the moved ``fileCreateTime``) to get the meta SpikeGLX wrote for the raw files.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path, PureWindowsPath

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data" / "spikeglx"
#: NP1.0 (imro type 0, 385 channels: 384 AP + sync at acquired id 768), SpikeGLX 20190327, imSampRate 30000.
NP1 = "Noise_g0_t0.imec0.ap.meta"
#: CatGT output of an NP1.0 run (catGVals=0,0, catTVals=0,0), imSampRate 30000.149579831934.
CATGT = "catgt.meta"
#: The keys CatGT adds to the meta of its output.
CATGT_KEYS = ("catGTCmdline0", "catGVals", "catNFiles", "catTVals", "fileCreateTime_original")


def values(text: str) -> dict[str, str]:
    """``key=value`` lines of a meta text (``~`` kept)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def template(name: str) -> str:
    return (DATA / name).read_text()


def set_key(text: str, key: str, value: str) -> str:
    """The meta text with ``key`` (``~key`` too) set to ``value``; added at the end when missing."""
    pattern = re.compile(rf"^(~?){re.escape(key)}=.*$", flags=re.MULTILINE)
    if pattern.search(text):
        return pattern.sub(lambda m: f"{m.group(1)}{key}={value}", text)
    return text.rstrip("\n") + f"\n{key}={value}\n"


def drop_keys(text: str, keys: tuple[str, ...]) -> str:
    return "".join(line + "\n" for line in text.splitlines() if line.split("=", 1)[0].lstrip("~") not in keys)


def raw_from_catgt(text: str) -> str:
    """The meta SpikeGLX wrote for the raw files CatGT read (CatGT's keys removed, its original creation time)."""
    original = values(text).get("fileCreateTime_original")
    text = drop_keys(text, CATGT_KEYS)
    return set_key(text, "fileCreateTime", original) if original else text


def write_ap(
    bin_path: Path,
    meta_text: str,
    data: np.ndarray,
    *,
    first_sample: int | None = None,
    written_as: str | None = None,
    subset: str | None = None,
) -> Path:
    """Write ``data`` (int16 ``[samples, nSavedChans]``) to ``bin_path`` and its ``.meta`` from ``meta_text``.

    ``written_as``: the file name SpikeGLX gave the file (default: ``bin_path``'s); ``fileName`` keeps the
    template's folder, as SpikeGLX writes the full path it saved to."""
    meta = values(meta_text)
    n_channels, fs = int(meta["nSavedChans"]), float(meta["imSampRate"])
    assert data.dtype == np.int16 and data.shape[1] == n_channels, (data.dtype, data.shape, n_channels)
    folder = PureWindowsPath(meta["fileName"]).parent.as_posix()
    text = set_key(meta_text, "fileSizeBytes", str(data.nbytes))
    text = set_key(text, "fileTimeSecs", repr(len(data) / fs))
    text = set_key(text, "fileName", f"{folder}/{written_as or bin_path.name}")
    if first_sample is not None:
        text = set_key(text, "firstSample", str(first_sample))
    if subset is not None:
        text = set_key(text, "snsSaveChanSubset", subset)
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    data.tofile(bin_path)
    bin_path.with_suffix(".meta").write_text(text)
    return bin_path


def noise(n_samples: int, n_channels: int, seed: int, low: int = -512, high: int = 512) -> np.ndarray:
    """Random int16 frames in the NP1.0 ADC's range (10 bits) by default."""
    return np.random.default_rng(seed).integers(low, high, (n_samples, n_channels), dtype=np.int16)


def frames(path: Path, n_channels: int) -> np.ndarray:
    return np.fromfile(path, np.int16).reshape(-1, n_channels)


def spikeinterface_segments(folder: Path, stream: str = "imec0.ap"):
    """SpikeInterface's ``read_spikeglx`` of the folder (the reference), warnings silenced."""
    import spikeinterface.extractors as se

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return se.read_spikeglx(folder, stream_id=stream)
