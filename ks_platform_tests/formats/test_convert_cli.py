"""``ks-platform convert``: a generated session → binary with a progress bar, checksum and zero-copy decision."""

from __future__ import annotations

import json

import numpy as np
import xxhash

from ks_platform.cli import main
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform_tests.formats import synthetic as syn
from ks_platform_tests.writers import write_nwb_session


def _xxh3(path) -> str:
    return xxhash.xxh3_128(path.read_bytes()).hexdigest()


def test_spikeglx_zero_copy_and_forced_copy(tmp_path, capsys):
    session = make_spikeglx_session(
        tmp_path / "landing" / "sglx_g0", DemoSessionSpec(duration_s=1.0, n_units=2, seed=3)
    )
    [ap_bin] = session.glob("*.ap.bin")

    assert main(["convert", str(session), "--out", str(tmp_path / "zero")]) == 0
    out = capsys.readouterr()
    binary = tmp_path / "zero" / "binary" / "recording.bin"
    manifest = json.loads((tmp_path / "zero" / "binary" / "binary.json").read_text())
    assert binary.is_symlink() and binary.resolve() == ap_bin.resolve()
    assert manifest["zero_copy"] and manifest["bytes_written"] == 0 and manifest["checksum"] == _xxh3(ap_bin)
    assert (
        f"checksum: xxh3_128 {manifest['checksum']}" in out.out
        and "zero-copy:" in out.out
        and "0 bytes written" in out.out
    )
    assert "recording binary" in out.err and "100/100%" in out.err  # the tqdm bar reached the end
    assert (tmp_path / "zero" / "raw_recording.json").is_file()

    assert main(["convert", str(session), "--out", str(tmp_path / "copy"), "--no-zero-copy"]) == 0
    out = capsys.readouterr()
    copied = tmp_path / "copy" / "binary" / "recording.bin"
    manifest = json.loads((tmp_path / "copy" / "binary" / "binary.json").read_text())
    source = np.fromfile(ap_bin, np.int16).reshape(-1, 33)
    assert not copied.is_symlink() and np.array_equal(
        np.fromfile(copied, np.int16).reshape(-1, 32), source[:, :32]
    )  # sync dropped
    assert manifest["checksum"] == _xxh3(copied) and f"checksum: xxh3_128 {manifest['checksum']}" in out.out
    assert "copied: zero-copy was turned off" in out.out and "100/100%" in out.err


def test_float_nwb_is_converted(tmp_path, capsys):
    traces = syn.traces(n_samples=20000)
    session = write_nwb_session(
        tmp_path / "landing" / "nwb_session", traces, syn.FS, syn.positions(), syn.DATE, syn.shank_ids(), as_float=True
    )
    assert main(["convert", str(session), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr()
    binary = tmp_path / "out" / "binary" / "recording.bin"
    assert np.array_equal(np.fromfile(binary, np.int16).reshape(-1, syn.N_CHANNELS), traces)
    assert f"checksum: xxh3_128 {_xxh3(binary)}" in out.out and "converted: nwb float32" in out.out
    assert out.err == ""  # --quiet: no bar


def test_bad_session_exits_2_naming_the_file(tmp_path, capsys):
    session = make_spikeglx_session(tmp_path / "landing" / "bad_g0", DemoSessionSpec(duration_s=0.5, n_units=2, seed=3))
    [ap_bin] = session.glob("*.ap.bin")
    ap_bin.with_suffix(".meta").unlink()
    assert main(["convert", str(session), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bad_g0" in err and ".ap.meta" in err and "Fix:" in err
    assert not (tmp_path / "out" / "binary").exists()
