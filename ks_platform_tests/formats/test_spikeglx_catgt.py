"""CatGT output beside raw SpikeGLX files, on the real CatGT meta (``catgt.meta``: catGVals=0,0, catTVals=0,0).

The raw files' metas are the CatGT meta without what CatGT adds (its ``cat*`` keys, the moved fileCreateTime), i.e.
what SpikeGLX wrote for the run CatGT read; each file holds its own random samples, so which file a reading took
shows. A CatGT file supersedes exactly the gates/triggers its meta names; a raw file it does not cover is never
dropped: the probe is refused naming it, or, with ``split_segments``, becomes its own part.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core import formats
from ks_platform.core.errors import SessionInputError
from ks_platform_tests.formats import real_glx as rg

CAT = rg.template(rg.CATGT)
RAW = rg.raw_from_catgt(CAT)
RUN = "77.230125_2023-04-27"  # the run catgt.meta's fileName names
START = int(rg.values(CAT)["firstSample"])
FS = float(rg.values(CAT)["imSampRate"])


def _raw(folder: Path, gate: int, trigger: int, n: int, first: int, seed: int) -> Path:
    name = f"{RUN}_g{gate}_t{trigger}.imec0.ap.bin"
    return rg.write_ap(
        folder / f"{RUN}_g{gate}" / f"{RUN}_g{gate}_imec0" / name, RAW, rg.noise(n, 385, seed), first_sample=first
    )


def _catgt(folder: Path, gates: tuple[int, int], n: int, seed: int = 9, triggers: tuple[int, int] = (0, 0)) -> Path:
    """CatGT's output for ``-g=first,last -t=first,last``: named after the first gate, its meta naming the ranges."""
    meta = rg.set_key(rg.set_key(CAT, "catGVals", f"{gates[0]},{gates[1]}"), "catTVals", f"{triggers[0]},{triggers[1]}")
    name = f"{RUN}_g{gates[0]}_tcat.imec0.ap.bin"
    path = folder / f"catgt_{RUN}_g{gates[0]}" / f"{RUN}_g{gates[0]}_imec0" / name
    return rg.write_ap(path, meta, rg.noise(n, 385, seed), first_sample=START)


def _gates(folder: Path) -> tuple[Path, Path]:
    """Raw gate 0 (300 samples) and gate 1 (200 samples, 0.5 s later), one trigger each."""
    return _raw(folder, 0, 0, 300, START, 0), _raw(folder, 1, 0, 200, START + 300 + 15000, 1)


def test_catgt_of_gate_0_beside_raw_gates_0_and_1_refuses_the_probe_naming_the_raw_gate_1_file(tmp_path):
    g0, g1 = _gates(tmp_path / "run")
    cat = _catgt(tmp_path / "run", (0, 0), 300)
    assert rg.values(cat.with_suffix(".meta").read_text())["catGVals"] == "0,0"  # as in the real CatGT meta
    scan = formats.scan_session(tmp_path / "run")
    assert scan.listing.probes == {"imec0": (cat, g1)}  # g1 is listed with the probe, never dropped
    assert [s.split(":")[0] for s in scan.listing.skipped] == [str(g0.relative_to(tmp_path / "run"))]
    with pytest.raises(SessionInputError, match="not covered by the CatGT output") as caught:
        scan.open("imec0")
    assert caught.value.path == g1 and str(g1.relative_to(tmp_path / "run")) in caught.value.problem
    assert "run CatGT over every gate and trigger" in caught.value.fix and '"split_segments": true' in caught.value.fix


def test_split_segments_reads_gate_0_from_catgt_and_gate_1_raw_each_as_spikeinterface_does(tmp_path):
    g0, g1 = _gates(tmp_path / "run")
    cat = _catgt(tmp_path / "run", (0, 0), 300)
    (tmp_path / "run" / "ks_session.json").write_text(json.dumps({"probes": {"imec0": {"split_segments": True}}}))
    scan = formats.scan_session(tmp_path / "run")
    assert scan.listing.probes == {"imec0-g0": (cat,), "imec0-g1": (g1,)}
    part0, part1 = scan.open("imec0-g0"), scan.open("imec0-g1")
    assert (part0.zero_copy_path, part0.summary()["catgt"], part1.zero_copy_path, part1.summary()["catgt"]) == (
        cat,
        True,
        g1,
        False,
    )
    assert np.array_equal(part0.read_chunk(0, 300), rg.frames(cat, 385)[:, :384])
    assert np.array_equal(part1.read_chunk(0, 200), rg.frames(g1, 385)[:, :384])
    # SpikeInterface reads the folder as three segments: g0_tcat (CatGT sorts first), g0_t0, g1_t0
    reference = rg.spikeinterface_segments(tmp_path / "run")
    assert [reference.get_num_samples(k) for k in range(3)] == [300, 300, 200]
    for part, k in ((part0, 0), (part1, 2)):
        assert np.array_equal(part.read_chunk(0, part.n_samples), reference.get_traces(segment_index=k))
        assert reference.get_times(segment_index=k)[0] == pytest.approx(part.timeline[0].first_sample / FS, abs=1e-9)
    assert part1.timeline[0].first_sample == START + 300 + 15000  # g1 on the acquisition clock, not from 0


def test_catgt_covering_both_gates_supersedes_both(tmp_path):
    g0, g1 = _gates(tmp_path / "run")
    cat = _catgt(tmp_path / "run", (0, 1), 500)  # CatGT -g=0,1: catGVals=0,1
    scan = formats.scan_session(tmp_path / "run")
    assert scan.listing.probes == {"imec0": (cat,)}
    assert sorted(s.split(":")[0] for s in scan.listing.skipped) == sorted(
        str(p.relative_to(tmp_path / "run")) for p in (g0, g1)
    )
    source = scan.open()
    assert source.zero_copy_path == cat and source.summary()["gates_triggers"] == ["g0-1_tcat"]
    reference = rg.spikeinterface_segments(tmp_path / "run")
    assert np.array_equal(source.read_chunk(0, 500), reference.get_traces(segment_index=0))
    assert np.array_equal(source.read_chunk(0, 500), rg.frames(cat, 385)[:, :384])


def test_a_trigger_outside_catgts_trigger_range_is_not_dropped(tmp_path):
    _raw(tmp_path / "run", 0, 0, 300, START, 0)
    t1 = _raw(tmp_path / "run", 0, 1, 200, START + 400, 1)
    _catgt(tmp_path / "run", (0, 0), 300, triggers=(0, 0))  # CatGT -g=0 -t=0: t1 not in it
    with pytest.raises(SessionInputError, match="not covered by the CatGT output") as caught:
        formats.scan_session(tmp_path / "run").open()
    assert caught.value.path == t1
    (tmp_path / "run" / "ks_session.json").write_text(json.dumps({"probes": {"imec0": {"split_segments": True}}}))
    with pytest.raises(SessionInputError, match="only partly covered by the CatGT output") as caught:
        formats.scan_session(tmp_path / "run")  # splitting by gate cannot separate it either
    assert caught.value.path == t1
