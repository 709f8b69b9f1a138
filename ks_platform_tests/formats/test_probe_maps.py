"""Probe maps: every accepted description gives the same geometry, wiring and shanks; bad ones are refused.

SpikeGLX NP2.0 single- and 4-shank geometry comes from the meta's imro table (probeinterface's catalogue,
offline); probe files are written here in each format (.prb by hand, Kilosort .mat as Kilosort's
``chanMap.mat`` lays it out, Kilosort .json through ``kilosort.io.save_probe``, probeinterface JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import probeinterface as pi
import pytest

from ks_platform.core import pipeline, probes
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import open_recording
from ks_platform.core.store import SessionStore
from ks_platform.core.synthetic import spikeglx_meta
from ks_platform_tests.formats import synthetic as syn

N_SAMPLES = 300


# ---------------------------------------------------------------------------------------- SpikeGLX NP2.0
def _np2_session(folder: Path, four_shank: bool) -> Path:
    """An NP2.0 AP file saving 32 channels spread over the probe (8 per shank on a 4-shank) + sync."""
    saved = [c for s in range(4) for c in range(s * 96, s * 96 + 8)] if four_shank else list(range(32))
    if four_shank:  # (channel shank bank refid electrode): channel c on shank c // 96, bank 0
        imro = "(24,384)" + "".join(f"({c} {c // 96} 0 0 {c % 96})" for c in range(384))
        part, kind = "NP2010", "24"
    else:  # (channel bank_mask refid electrode)
        imro = "(21,384)" + "".join(f"({c} 1 0 {c})" for c in range(384))
        part, kind = "NP2000", "21"
    meta = spikeglx_meta(len(saved), N_SAMPLES, 30000.0, syn.DATE)
    replace = {
        "imroTbl": imro,
        "imDatPrb_pn": part,
        "imDatPrb_type": kind,
        "imAiRangeMax": "0.5",
        "imAiRangeMin": "-0.5",
        "imMaxInt": "8192",
        "snsSaveChanSubset": ",".join(str(c) for c in saved) + ",384",
        "snsChanMap": "(384,0,1)" + "".join(f"(AP{c};{c}:{c})" for c in saved) + "(SY0;384:384)",
    }
    lines = []
    for line in meta.splitlines():
        key = line.lstrip("~").split("=", 1)[0]
        lines.append(
            f"{'~' if key in ('imroTbl', 'snsChanMap') else ''}{key}={replace[key]}" if key in replace else line
        )
    folder.mkdir(parents=True)
    (folder / "np2_g0_t0.imec0.ap.bin").write_bytes(np.zeros((N_SAMPLES, len(saved) + 1), np.int16).tobytes())
    (folder / "np2_g0_t0.imec0.ap.meta").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("four_shank", [False, True], ids=["NP2.0 single-shank", "NP2.0 4-shank"])
def test_spikeglx_np2_geometry_and_shanks_from_the_imro_table(tmp_path, four_shank):
    session = _np2_session(tmp_path / "landing" / "np2", four_shank)
    source = open_recording(session)
    assert source.n_channels == 33 and source.sorting_channels == tuple(range(32))  # sync excluded from sorting
    assert source.uv_per_bit == pytest.approx(0.5 / 8192 / 80 * 1e6)  # NP2.0: fixed gain 80, 14-bit
    store = SessionStore(tmp_path / "store", f"{syn.DATE}__rig1__np2__imec0")
    pipeline.observe_raw_recording(session, store)
    out = pipeline.build_probe_map(session, store)
    ks_probe, manifest = probes.load_probe_map(store)
    assert ks_probe["n_chan"] == 32 and ks_probe["chanMap"].tolist() == list(
        range(32)
    )  # binary rows 0..31, sync row 32 unused
    kcoords = ks_probe["kcoords"].astype(int)
    if four_shank:
        assert out.metadata["n_shanks"] == 4 and kcoords.tolist() == [s for s in range(4) for _ in range(8)]
        centres = [float(np.mean(ks_probe["xc"][kcoords == s])) for s in range(4)]
        assert np.allclose(np.diff(centres), 250.0)  # NP2.0 4-shank: 250 µm shank pitch
    else:
        assert out.metadata["n_shanks"] == 1 and set(kcoords) == {0}
        assert np.ptp(ks_probe["yc"]) == pytest.approx(15.0 * 15)  # 32 contacts, 2 columns, 15 µm rows
    assert len({(x, y) for x, y in zip(ks_probe["xc"], ks_probe["yc"])}) == 32
    assert (store.probe_dir / "probe.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------- probe files
def _probe() -> pi.Probe:
    probe = pi.Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=syn.positions(), shapes="square", shape_params={"width": 12})
    probe.set_device_channel_indices(np.arange(syn.N_CHANNELS)[::-1])  # wiring reversed: channel order != contact order
    probe.set_shank_ids([str(s) for s in syn.shank_ids()])
    return probe


def _write(folder: Path, kind: str) -> Path:
    probe = _probe()
    channels = probe.device_channel_indices
    if kind == "probeinterface.json":
        group = pi.ProbeGroup()
        group.add_probe(probe)
        pi.write_probeinterface(folder / "probe.json", group)
        return folder / "probe.json"
    if kind == ".prb":
        geometry = {int(c): tuple(p) for c, p in zip(channels, probe.contact_positions.tolist())}
        groups = {
            s: {
                "channels": [int(c) for c, sh in zip(channels, syn.shank_ids()) if sh == s],
                "geometry": {int(c): geometry[int(c)] for c, sh in zip(channels, syn.shank_ids()) if sh == s},
            }
            for s in (0, 1)
        }
        (folder / "probe.prb").write_text(f"channel_groups = {groups!r}\n")
        return folder / "probe.prb"
    if kind == "kilosort.mat":
        from scipy.io import savemat

        savemat(
            folder / "chanMap.mat",
            {
                "chanMap": channels + 1.0,
                "chanMap0ind": channels.astype(float),
                "xcoords": syn.positions()[:, 0],
                "ycoords": syn.positions()[:, 1],
                "kcoords": np.asarray(syn.shank_ids(), float) + 1,
                "connected": np.ones(32),
                "fs": syn.FS,
            },
        )
        return folder / "chanMap.mat"
    if kind == "kilosort.json":
        from kilosort.io import save_probe

        save_probe(
            {
                "chanMap": channels.astype(np.int32),
                "xc": syn.positions()[:, 0].astype(np.float32),
                "yc": syn.positions()[:, 1].astype(np.float32),
                "kcoords": np.asarray(syn.shank_ids(), np.float32),
                "n_chan": 32,
            },
            str(folder / "ks_probe.json"),
        )
        return folder / "ks_probe.json"
    raise AssertionError(kind)


def _as_rows(ks_probe: dict) -> list[tuple]:
    return sorted(
        zip(
            ks_probe["chanMap"].tolist(), ks_probe["xc"].tolist(), ks_probe["yc"].tolist(), ks_probe["kcoords"].tolist()
        )
    )


@pytest.mark.parametrize("kind", ["probeinterface.json", ".prb", "kilosort.mat", "kilosort.json"])
def test_every_probe_file_format_gives_the_same_kilosort_probe(tmp_path, kind):
    path = _write(tmp_path, kind)
    if kind == ".prb":  # a .prb with one group per shank: refused as two probes, one group is what Kilosort takes
        with pytest.raises(SessionInputError, match=r"probe\.prb.*describes 2 probes.*Fix:"):
            probes.load_probe_file(path)
        text = path.read_text()
        groups = eval(text.split("=", 1)[1])  # the file we just wrote
        merged = {
            "channels": groups[0]["channels"] + groups[1]["channels"],
            "geometry": {**groups[0]["geometry"], **groups[1]["geometry"]},
        }
        path.write_text(f"channel_groups = {{0: {merged!r}}}\n")
    probe = probes.load_probe_file(path)
    probes.validate_probe(probe, syn.N_CHANNELS, path)
    expected = probes.kilosort_probe(_probe(), tuple(range(32)))
    got = probes.kilosort_probe(probe, tuple(range(32)))
    rows = _as_rows(got)
    assert [r[:3] for r in rows] == [r[:3] for r in _as_rows(expected)]
    if kind != ".prb":  # a single .prb group carries no shank ids
        assert rows == _as_rows(expected) and sorted(set(got["kcoords"].tolist())) == [0.0, 1.0]


# ---------------------------------------------------------------------------------------- validation
def _validate(tmp_path: Path, probe: pi.Probe, n_channels: int = 32) -> None:
    probes.validate_probe(probe, n_channels, tmp_path / "probe.json")


def test_duplicate_positions_are_refused(tmp_path):
    probe = _probe()
    positions = probe.contact_positions.copy()
    positions[4] = positions[5]
    probe._contact_positions = (
        positions  # probeinterface's set_contacts refuses duplicates; a probe built elsewhere may not
    )
    with pytest.raises(
        SessionInputError, match=r"probe\.json: 1 contact positions are used twice\. Fix: give every contact its own"
    ):
        _validate(tmp_path, probe)


def test_duplicate_positions_in_a_probeinterface_file_are_refused_naming_it(tmp_path):
    path = _write(tmp_path, "probeinterface.json")
    payload = json.loads(path.read_text())
    payload["probes"][0]["contact_positions"][4] = payload["probes"][0]["contact_positions"][5]
    path.write_text(json.dumps(payload))
    with pytest.raises(SessionInputError, match=r"probe\.json: two contacts share a channel or a position.*Fix:"):
        probes.load_probe_file(path)


def test_wrong_units_are_refused(tmp_path):
    in_mm = pi.Probe(ndim=2, si_units="mm")
    in_mm.set_contacts(positions=syn.positions() / 1000, shapes="square", shape_params={"width": 0.012})
    in_mm.set_device_channel_indices(np.arange(32))
    with pytest.raises(SessionInputError, match=r"positions are in 'mm'.*Fix: give contact positions in micrometres"):
        _validate(tmp_path, in_mm)
    labelled_um = pi.Probe(ndim=2, si_units="um")  # labelled µm but the numbers are millimetres
    labelled_um.set_contacts(positions=syn.positions() / 1000, shapes="square", shape_params={"width": 0.012})
    labelled_um.set_device_channel_indices(np.arange(32))
    with pytest.raises(SessionInputError, match=r"look like mm or m.*Fix: give contact positions in micrometres"):
        _validate(tmp_path, labelled_um)


def test_inconsistent_shank_ids_are_refused(tmp_path):
    probe = _probe()
    probe.set_shank_ids(["0"] * 16 + [""] * 16)
    with pytest.raises(SessionInputError, match=r"some contacts have a shank id and others do not"):
        _validate(tmp_path, probe)


def test_channels_beyond_the_recording_and_duplicates_are_refused(tmp_path):
    with pytest.raises(SessionInputError, match=r"uses channel 31 but the recording has only 16 channels.*Fix:"):
        _validate(tmp_path, _probe(), n_channels=16)
    probe = _probe()
    channels = probe.device_channel_indices.copy()
    channels[0] = channels[1]
    probe.set_device_channel_indices(channels)
    with pytest.raises(
        SessionInputError, match=r"wired to more than one contact.*Fix: give every contact its own channel index"
    ):
        _validate(tmp_path, probe)


# ---------------------------------------------------------------------------------------- shanks → Kilosort → Phy
@pytest.mark.slow
def test_two_shank_ids_reach_kilosort_and_the_phy_bundle(tmp_path, capsys):
    """Open Ephys session with a 2-shank settings.xml → ``ks-platform sort`` (real Kilosort 4 on CPU, ~1-4 min)."""
    from spikeinterface.core import generate_ground_truth_recording

    from ks_platform.cli import main
    from ks_platform_tests.writers import write_openephys_session

    layout = pi.Probe(ndim=2, si_units="um")
    layout.set_contacts(positions=syn.positions(), shapes="circle", shape_params={"radius": 6})
    layout.set_device_channel_indices(np.arange(syn.N_CHANNELS))
    recording, _ = generate_ground_truth_recording(
        durations=[6.0],
        sampling_frequency=syn.FS,
        probe=layout,
        num_units=6,
        seed=3,
        generate_sorting_kwargs={"firing_rates": 15.0, "refractory_period_ms": 4.0},
        noise_kwargs={"noise_levels": 6.0, "strategy": "on_the_fly"},
    )
    traces = np.clip(np.rint(recording.get_traces() / 0.195), -32767, 32767).astype(np.int16)
    session = write_openephys_session(
        tmp_path / "landing" / "two_shanks", traces, syn.FS, syn.positions(), syn.DATE, syn.shank_ids()
    )
    out = tmp_path / "result"
    assert main(["sort", str(session), "--out", str(out), "--backend", "cpu", "--quiet"]) == 0
    assert "2 shank(s)" in capsys.readouterr().out

    ops = np.load(out / "sorting" / "ops.npy", allow_pickle=True).item()
    assert ops["kcoords"].astype(int).tolist() == syn.shank_ids()  # what Kilosort used, as it saved it
    channel_map = np.load(out / "phy" / "channel_map.npy").ravel()
    channel_shanks = np.load(out / "phy" / "channel_shanks.npy")
    assert channel_shanks.tolist() == [syn.shank_ids()[c] for c in channel_map]


def test_probe_picture_marks_recorded_contacts_orange_and_the_others_grey(tmp_path):
    """The probe_map picture: recorded channels in orange, unrecorded contacts grey, enlarged enough to see them."""
    import matplotlib.image

    probe = _probe()
    recorded = tuple(range(0, syn.N_CHANNELS, 2))  # every other channel recorded
    path = probes.plot_probe(probe, tmp_path / "probe.png", highlight_channels=recorded)
    rgb = matplotlib.image.imread(path)[..., :3]
    orange = np.all(np.abs(rgb - np.array([1.0, 0.498, 0.055])) < 0.02, axis=-1).sum()  # tab:orange
    grey = np.all(np.abs(rgb - 0.827) < 0.01, axis=-1).sum()  # lightgrey contacts (the probe body is lighter)
    assert orange > 16 * 40 and grey > 16 * 40, (orange, grey)  # 16 contacts each, tens of pixels apiece
    everything = probes.plot_probe(probe, tmp_path / "all.png", highlight_channels=None)
    assert np.all(np.abs(matplotlib.image.imread(everything)[..., :3] - 0.827) < 0.01, axis=-1).sum() < 16 * 40
