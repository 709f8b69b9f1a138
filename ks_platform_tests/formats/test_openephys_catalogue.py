"""Neuropixels geometry from probeinterface's catalogue when the plugin's ELECTRODE_XPOS/YPOS disagree with it.

The real NP-Ultra header (``OE_Neuropix-PXI-NP-Ultra``, Neuropix-PXI plugin 0.6.x) places the NP1100 probes' rows
48 µm apart: a 2,256 µm probe where the part is 282 µm long with 6 µm rows. probeinterface refuses these probes
(issue 407). Ours reads the electrodes on the plugin's own grid and places them where probeinterface's catalogue
does; compared contact by contact with probeinterface's ``read_openephys`` of the same settings.xml with the rows
written 6 µm apart, and with SpikeInterface's channel locations of that recording.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core.formats import openephys
from ks_platform_tests.formats.openephys_real_support import (
    DATA,
    _our_positions,
    _read_si,
    _si_stream,
    build_from_settings,
)

NP1100 = ("ProbeA", "ProbeB", "ProbeF")


def _corrected(settings: Path, target: Path) -> Path:
    """The settings.xml with each NP1100's ELECTRODE_YPOS divided by 8 (rows 6 µm apart, as the catalogue)."""
    text = settings.read_text()

    def fix(match: re.Match) -> str:
        block = match.group(0)
        if 'probe_part_number="NP1100"' not in block:
            return block
        ypos = re.search(r"<ELECTRODE_YPOS [^>]*/>", block).group(0)
        fixed = re.sub(r'="([0-9.]+)"', lambda m: f'="{float(m.group(1)) / 8:g}"', ypos)
        return block.replace(ypos, fixed)

    target.write_text(re.sub(r"<NP_PROBE .*?</NP_PROBE>", fix, text, flags=re.S))
    return target


@pytest.fixture(scope="module")
def ultra(tmp_path_factory) -> tuple[Path, Path]:
    """The real NP-Ultra session as the plugin wrote it, and the same session with NP1100 rows 6 µm apart."""
    base = tmp_path_factory.mktemp("ultra")
    real = build_from_settings(DATA / "OE_Neuropix-PXI-NP-Ultra" / "settings.xml", base / "real")
    fixed = base / "fixed"
    shutil.copytree(real, fixed)
    for settings in fixed.rglob("settings.xml"):
        _corrected(settings, settings)
    return real, fixed


def _probeinterface(settings: Path, stream: str):
    import probeinterface as pi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pi.read_openephys(settings, stream_name=stream)


@pytest.mark.parametrize("name", NP1100)
def test_np1100_takes_catalogue_positions_and_says_so(ultra, name):
    real, fixed = ultra
    source = openephys.open_recording(real, name)
    settings = next(p for p in source.data_files if p.name == "settings.xml")
    with pytest.raises(ValueError, match="Could not match electrode positions"):  # what probeinterface does today
        _probeinterface(settings, source.details["openephys_stream"])
    disagreement = source.details["probe_geometry_disagreement"]
    assert "NP1100" in disagreement and "2256 µm with rows 48 µm apart" in disagreement
    assert "42 x 282 µm with rows 6 µm apart" in disagreement
    assert "disagree" in source.scaling_note
    ours, _ = _our_positions(source)
    assert np.ptp(ours, axis=0).tolist() == [42.0, 282.0]

    # contact by contact: probeinterface's reading of the same settings with the rows where the catalogue has them
    expected = _probeinterface(next(fixed.rglob("settings.xml")), source.details["openephys_stream"])
    np.testing.assert_allclose(ours, expected.contact_positions, atol=1e-9)
    order = {int(d): j for j, d in enumerate(source.probe.device_channel_indices)}
    contact_ids = [source.probe.contact_ids[order[c]] for c in source.sorting_channels]
    assert contact_ids == list(expected.contact_ids) == [f"e{i}" for i in range(384)]
    # and SpikeInterface's channel locations of that recording, channel by channel
    recording = _read_si(fixed, _si_stream(source))
    np.testing.assert_allclose(ours, recording.get_channel_locations(), atol=1e-9)
    fixed_source = openephys.open_recording(fixed, name)  # rows on the catalogue's pitch: nothing disagrees
    assert "probe_geometry_disagreement" not in fixed_source.details
    np.testing.assert_allclose(_our_positions(fixed_source)[0], ours, atol=1e-9)


def test_np_ultra_parts_probeinterface_reads_are_unchanged(ultra):
    """NP1121 (ProbeD): probeinterface matches it; ours equals it, with no disagreement."""
    real, _ = ultra
    source = openephys.open_recording(real, "ProbeD")
    settings = next(p for p in source.data_files if p.name == "settings.xml")
    expected = _probeinterface(settings, source.details["openephys_stream"])
    np.testing.assert_allclose(_our_positions(source)[0], expected.contact_positions, atol=1e-9)
    assert "probe_geometry_disagreement" not in source.details
