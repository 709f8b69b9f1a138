"""Our SpikeGLX reader against real SpikeGLX headers, compared with probeinterface and SpikeInterface.

``ks_platform_tests/data/spikeglx/`` holds the .meta files of probeinterface's test data (as SpikeGLX wrote them:
NP1.0, NP1.0 NHP, NP-Ultra, NP1110, NP2.0 1-/4-shank, NP2013 all/subset, NP2020, phase 3A, CatGT output…).
Each test copies one meta next to a tiny generated ``.ap.bin`` (fileSizeBytes/fileTimeSecs fixed in the copy to
match it, nothing else changed) and compares channel by channel: sorted channels and their order, positions,
shank ids, µV per bit, and the samples ``read_chunk`` returns.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import probeinterface as pi
import pytest

from ks_platform.core.formats import spikeglx
from ks_platform.core.probes import probe_for_recording

DATA = Path(__file__).resolve().parents[1] / "data" / "spikeglx"
METAS = sorted(DATA.glob("*.meta"))
N_SAMPLES = 300
#: Metas SpikeInterface (neo 0.14) cannot read: it looks for per-channel gains in NP1110's imro entries.
SI_CANNOT_READ = {"NP1110": "neo-IndexError-on-NP1110-imro"}


def _stem(meta: Path) -> str:
    return re.sub(r"(_g\d+)?(_t\d+)?(\.imec\d*)?(\.ap)?\.meta$", "", meta.name)


def _tiny_session(meta: Path, folder: Path) -> Path:
    """``folder/<stem>_g0_t0.imec0.ap.{bin,meta}`` (phase 3A: ``.imec.ap``) with N_SAMPLES random frames."""
    text = meta.read_text()
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    n_channels, fs = int(values["nSavedChans"]), float(values["imSampRate"])
    device = "imec" if meta.name.endswith(".imec.ap.meta") else "imec0"
    trigger = "tcat" if meta.name == "catgt.meta" else "t0"
    base = f"{_stem(meta)}_g0_{trigger}.{device}.ap"
    folder.mkdir(parents=True)
    data = np.random.default_rng(len(meta.name)).integers(-2000, 2000, (N_SAMPLES, n_channels), dtype=np.int16)
    data.tofile(folder / f"{base}.bin")
    text = re.sub(r"^fileSizeBytes=.*$", f"fileSizeBytes={data.nbytes}", text, flags=re.MULTILINE)
    text = re.sub(r"^fileTimeSecs=.*$", f"fileTimeSecs={N_SAMPLES / fs!r}", text, flags=re.MULTILINE)
    (folder / f"{base}.meta").write_text(text)
    return folder / f"{base}.meta"


def _si_param(meta: Path):
    reason = next((why for prefix, why in SI_CANNOT_READ.items() if meta.name.startswith(prefix)), None)
    return pytest.param(meta, id=meta.name if reason is None else f"{meta.name}-SpikeInterface-fails-{reason}")


def _spikeinterface_fails_on(meta: Path) -> bool:
    return any(meta.name.startswith(prefix) for prefix in SI_CANNOT_READ)


def _positions_by_channel(probe: pi.Probe) -> dict[int, tuple[tuple[float, float], str]]:
    shanks = (
        probe.shank_ids if probe.shank_ids is not None and len(probe.shank_ids) else [""] * probe.get_contact_count()
    )
    return {
        int(ch): (tuple(np.round(probe.contact_positions[i, :2], 3)), str(shanks[i]))
        for i, ch in enumerate(probe.device_channel_indices)
        if ch >= 0
    }


def test_the_real_headers_are_here():
    assert len(METAS) >= 15, METAS
    assert all(p.stat().st_size < 100_000 for p in METAS)


@pytest.mark.parametrize("meta", METAS, ids=[m.name for m in METAS])
def test_channels_geometry_and_gain_agree_with_probeinterface(meta, tmp_path):
    copy = _tiny_session(meta, tmp_path / "session")
    source = spikeglx.open_recording(tmp_path / "session")
    reference = pi.read_spikeglx(copy)
    ours, _ = probe_for_recording(source)
    # every AP channel saved, in stored order, and only those: the sync channel(s) are not sorted
    assert len(source.sorting_channels) == reference.get_contact_count()
    assert source.sorting_channels == tuple(range(len(source.sorting_channels)))
    assert source.n_channels - len(source.sorting_channels) == int(spikeglx.parse_meta(copy)["snsApLfSy"].split(",")[2])
    assert _positions_by_channel(ours) == _positions_by_channel(reference)
    assert sorted(_positions_by_channel(ours)) == list(source.sorting_channels)
    gain = reference.annotations.get("ap_gain") or reference.contact_annotations["ap_gains"][0]
    meta_values = spikeglx.parse_meta(copy)
    assert source.uv_per_bit == pytest.approx(
        float(meta_values["imAiRangeMax"]) / float(meta_values.get("imMaxInt", 512)) / float(gain) * 1e6
    )


@pytest.mark.parametrize("meta", [_si_param(m) for m in METAS])
def test_channels_gains_and_samples_agree_with_spikeinterface(meta, tmp_path):
    import spikeinterface.extractors as se

    _tiny_session(meta, tmp_path / "session")
    source = spikeglx.open_recording(tmp_path / "session")
    if _spikeinterface_fails_on(meta):  # the reference itself cannot read these (neo's imro parsing): ours still does
        with pytest.raises(Exception), warnings.catch_warnings():  # noqa: B017 - any error of the reference
            warnings.simplefilter("ignore")
            se.read_spikeglx(tmp_path / "session", stream_id=f"{source.probe_name}.ap").get_traces(end_frame=10)
        assert len(source.sorting_channels) > 0 and probe_for_recording(source)[0].get_contact_count() > 0
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        streams, _ = se.get_neo_streams("spikeglx", tmp_path / "session")
        [stream] = [s for s in streams if s.endswith(".ap")]
        recording = se.read_spikeglx(tmp_path / "session", stream_id=stream)
    # channel by channel: same channels in the same order (SpikeInterface names them by acquired id, AP<id>)
    saved = spikeglx.saved_channel_ids(spikeglx.parse_meta(source.probe_file), source.probe_file)
    assert [f"AP{saved[i]}" for i in source.sorting_channels] == [str(c).split("#")[-1] for c in recording.channel_ids]
    assert np.allclose(recording.get_channel_gains(), source.uv_per_bit)
    ours, _ = probe_for_recording(source)
    theirs = recording.get_probe()
    assert _positions_by_channel(ours) == _positions_by_channel(theirs)
    expected = recording.get_traces(start_frame=0, end_frame=N_SAMPLES, return_in_uV=False)
    if expected.shape[1] != recording.get_num_channels():  # SpikeInterface 0.105 returns NP2020's 4 sync columns too
        assert meta.name.startswith("NP2020") and expected.shape[1] == source.n_channels
        expected = expected[:, : recording.get_num_channels()]
    assert np.array_equal(source.read_chunk(0, N_SAMPLES), expected)
    assert np.array_equal(source.read_chunk(17, 123), expected[17:123])
