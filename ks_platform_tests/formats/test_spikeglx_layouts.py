"""SpikeGLX layouts met in the field, on real headers: ``snsSaveChanSubset=all``, probe files renamed by hand, a
meta saved with a UTF-8 byte-order mark, a folder holding only the LF band. Each either reads what probeinterface
and SpikeInterface read, channel by channel and sample by sample, or is refused with one error naming the file and
the fix."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import probeinterface as pi
import pytest

from ks_platform.core import formats
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import spikeglx
from ks_platform.core.probes import probe_for_recording
from ks_platform_tests.formats import real_glx as rg

REPO = Path(__file__).resolve().parents[2]
N = 250


def _positions(probe: pi.Probe) -> dict[int, tuple[float, float]]:
    return {
        int(ch): tuple(np.round(probe.contact_positions[i, :2], 3))
        for i, ch in enumerate(probe.device_channel_indices)
        if ch >= 0
    }


def _one_file(folder: Path, template: str, seed: int = 0, **changes) -> Path:
    meta = rg.template(template)
    n_channels = int(rg.values(meta)["nSavedChans"])
    return rg.write_ap(
        folder / "run_g0" / "run_g0_imec0" / "run_g0_t0.imec0.ap.bin", meta, rg.noise(N, n_channels, seed), **changes
    )


# ------------------------------------------------------------------------------------------ snsSaveChanSubset=all
@pytest.mark.parametrize("template", [rg.NP1, "NP2_2013_all_channels.imec0.ap.meta"])
def test_save_chan_subset_all_reads_as_the_explicit_subset_and_as_the_references(tmp_path, template):
    explicit_text = rg.values(rg.template(template))["snsSaveChanSubset"]  # 0:383,768 (NP1.0), 0:384 (NP2013)
    explicit = _one_file(tmp_path / "explicit", template)
    everything = _one_file(tmp_path / "all", template, subset="all")
    assert rg.values(everything.with_suffix(".meta").read_text())["snsSaveChanSubset"] == "all"
    ours, theirs = formats.open_recording(tmp_path / "all"), formats.open_recording(tmp_path / "explicit")
    meta = spikeglx.parse_meta(everything.with_suffix(".meta"))
    assert spikeglx.saved_channel_ids(meta, everything) == spikeglx.saved_channel_ids(
        spikeglx.parse_meta(explicit.with_suffix(".meta")), explicit
    )
    assert (ours.n_channels, ours.sorting_channels, ours.uv_per_bit) == (
        theirs.n_channels,
        theirs.sorting_channels,
        theirs.uv_per_bit,
    )
    assert ours.sorting_channels == tuple(range(384)) and ours.summary()["saved_channels"] == "all"
    assert theirs.summary()["saved_channels"] == explicit_text
    assert np.array_equal(ours.read_chunk(0, N), theirs.read_chunk(0, N))
    # probeinterface reads "all" (arange(nSavedChans) less the sync channel): the same contacts at the same places
    reference = pi.read_spikeglx(everything.with_suffix(".meta"))
    assert (
        _positions(probe_for_recording(ours)[0]) == _positions(reference) == _positions(probe_for_recording(theirs)[0])
    )
    # SpikeInterface names the channels from snsChanMap: AP0..AP383, the samples as stored
    recording = rg.spikeinterface_segments(tmp_path / "all")
    assert [str(c).split("#")[-1] for c in recording.channel_ids] == [f"AP{i}" for i in range(384)]
    assert np.array_equal(ours.read_chunk(0, N), recording.get_traces(return_in_uV=False))
    assert np.allclose(recording.get_channel_gains(), ours.uv_per_bit)


# ------------------------------------------------------------------------------------------ probe files renamed
#: Three real NP1.0-family metas (three probes, three serials): NP1.0 3B, NP1.0 saving 151 AP channels, NHP NP1015.
RENAMED = (rg.NP1, "NP1_saved_only_subset_of_channels.meta", "non_human_primate_short_linear_probe_type_0.meta")


def _renamed(folder: Path, templates: tuple[str, ...], probes: tuple[int, ...]) -> list[Path]:
    """``probe_<k+1>/npx.imec.ap.bin``: files renamed by hand; their metas' fileName still says ``imec<probe>``."""
    files = []
    for k, (template, probe) in enumerate(zip(templates, probes)):
        meta = rg.template(template)
        data = rg.noise(N, int(rg.values(meta)["nSavedChans"]), k)
        files.append(
            rg.write_ap(
                folder / f"probe_{k + 1}" / "npx.imec.ap.bin", meta, data, written_as=f"Day_3_g0_t0.imec{probe}.ap.bin"
            )
        )
    return files


def test_probe_files_renamed_by_hand_are_the_probes_their_metas_name(tmp_path):
    files = _renamed(tmp_path / "rig", RENAMED, (0, 1, 2))
    scan = formats.scan_session(tmp_path / "rig")
    assert scan.listing.probes == {"imec0": (files[0],), "imec1": (files[1],), "imec2": (files[2],)}
    serials = [rg.values(rg.template(t))["imDatPrb_sn"] for t in RENAMED]
    assert len(set(serials)) == 3
    for k, (path, serial) in enumerate(zip(files, serials)):
        source = scan.open(f"imec{k}")
        n_channels = int(rg.values(path.with_suffix(".meta").read_text())["nSavedChans"])
        assert source.zero_copy_path == path and source.n_channels == n_channels
        assert source.details["probe_serial"] == serial and source.summary()["probe_serial"] == serial
        assert np.array_equal(source.read_chunk(0, N), rg.frames(path, n_channels)[:, : n_channels - 1])
        recording = rg.spikeinterface_segments(tmp_path / "rig", f"imec{k}.ap")  # SpikeInterface: by fileName too
        assert np.array_equal(source.read_chunk(0, N), recording.get_traces(return_in_uV=False))
        assert _positions(probe_for_recording(source)[0]) == _positions(pi.read_spikeglx(path.with_suffix(".meta")))


@pytest.mark.parametrize(
    ("templates", "why"),
    [((rg.NP1, rg.NP1), "copy"), ((rg.NP1, RENAMED[2]), "two probes")],
    ids=["same-serial", "different-serials"],
)
def test_two_files_whose_metas_name_the_same_gate_trigger_and_probe_are_refused(tmp_path, templates, why):
    files = _renamed(tmp_path / "rig", templates, (0, 0))
    with pytest.raises(SessionInputError, match="gate 0 trigger 0 of imec0") as caught:
        formats.scan_session(tmp_path / "rig").open()
    assert caught.value.path == files[1] and str(files[0]) in caught.value.problem
    if why == "copy":
        assert caught.value.fix == "keep one copy of each file in the session folder"
    else:
        serials = [rg.values(rg.template(t))["imDatPrb_sn"] for t in templates]
        assert f"different probes (imDatPrb_sn {serials[0]} and {serials[1]})" in caught.value.problem
        assert "own session folder" in caught.value.fix
    with pytest.raises(ValueError, match="same stream"), warnings.catch_warnings():  # the reference refuses too
        warnings.simplefilter("ignore")
        rg.spikeinterface_segments(tmp_path / "rig")


def test_gates_recorded_by_two_different_probes_are_refused_naming_the_serials(tmp_path):
    first = _one_file(tmp_path / "run", rg.NP1)
    meta = rg.template(RENAMED[2])  # another probe's meta for gate 1 of imec0 (fileName says so)
    second = rg.write_ap(
        tmp_path / "run" / "run_g1" / "run_g1_imec0" / "run_g1_t0.imec0.ap.bin",
        meta,
        rg.noise(N, 385, 1),
        first_sample=int(rg.values(first.with_suffix(".meta").read_text())["firstSample"]) + N,
    )
    with pytest.raises(SessionInputError, match="imDatPrb_sn .the probe's serial number. differs") as caught:
        formats.scan_session(tmp_path / "run").open()
    assert caught.value.path == second.with_suffix(".meta")


# ------------------------------------------------------------------------------------------ byte-order mark
def test_a_meta_with_a_utf8_byte_order_mark_reads_as_without(tmp_path):
    plain = _one_file(tmp_path / "plain", rg.NP1)
    marked = _one_file(tmp_path / "bom", rg.NP1)
    meta = marked.with_suffix(".meta")
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())  # as a Windows editor saves it
    assert meta.read_bytes()[:6] == b"\xef\xbb\xbfacq"  # the first key is acqApLfSy, which the reader needs
    ours, without = formats.open_recording(tmp_path / "bom"), formats.open_recording(tmp_path / "plain")
    assert spikeglx.parse_meta(meta) == spikeglx.parse_meta(plain.with_suffix(".meta"))
    assert (ours.n_channels, ours.sorting_channels, ours.uv_per_bit, ours.zero_copy_path) == (
        without.n_channels,
        without.sorting_channels,
        without.uv_per_bit,
        marked,
    )
    recording = rg.spikeinterface_segments(tmp_path / "bom")
    assert np.array_equal(ours.read_chunk(0, N), recording.get_traces(return_in_uV=False))
    assert _positions(probe_for_recording(ours)[0]) == _positions(pi.read_spikeglx(meta))


# ------------------------------------------------------------------------------------------ LF band only
def _lf_file(folder: Path) -> Path:
    """The LF file SpikeGLX writes beside an NP1.0 AP file: the same meta with the LF band's rate and channels."""
    text = rg.template(rg.NP1)
    for key, value in {"imSampRate": "2500", "snsApLfSy": "0,384,1", "snsSaveChanSubset": "384:768"}.items():
        text = rg.set_key(text, key, value)
    path = folder / "run_g0" / "run_g0_imec0" / "run_g0_t0.imec0.lf.bin"
    rg.write_ap(path, text, rg.noise(N, 385, 3))
    return path


def test_an_lf_only_folder_gets_one_message_naming_what_it_holds(tmp_path):
    lf = _lf_file(tmp_path / "run")
    with pytest.raises(SessionInputError, match="no probe recording to sort in this spikeglx folder") as caught:
        formats.scan_session(tmp_path / "run")
    assert caught.value.path == tmp_path / "run"
    assert f"it holds: {lf.relative_to(tmp_path / 'run')}: LF band" in caught.value.problem
    assert "AP band" in caught.value.fix and ".ap.meta" in caught.value.fix
    cli = [sys.executable, "-c", "import sys; from ks_platform.cli import main; sys.exit(main())"]  # ks-platform
    done = subprocess.run(
        [*cli, "convert", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"error: {caught.value}\n"  # one message, no traceback
    assert "Traceback" not in done.stderr and not (tmp_path / "out" / "binary").exists()
