"""A recording date comes from what the acquisition software wrote or from ks_session.json, never from a file's
modification time (issue #18: a session copied without its times must not be dated today and miss its month)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from ks_platform.core.discovery import discover
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import open_recording
from ks_platform.core.synthetic import np1_probe, spikeglx_meta
from ks_platform_tests.writers import write_openephys_session

HEADER_DATE = dt.date(2025, 6, 3)
CONFIG_DATE = dt.date(2024, 11, 20)
LONG_AGO = dt.datetime(2001, 1, 1).timestamp()
N_CHANNELS, N_SAMPLES = 8, 3000


def _spikeglx(folder: Path, date: dt.date | None = HEADER_DATE) -> Path:
    """A small SpikeGLX AP pair as SpikeGLX writes it; ``date=None``: its meta lacks ``fileCreateTime``."""
    folder.mkdir(parents=True)
    name = f"{folder.name}_g0_t0.imec0.ap.bin"
    rng = np.random.default_rng(0)
    rng.integers(-50, 50, (N_SAMPLES, N_CHANNELS + 1), dtype=np.int16).tofile(folder / name)
    meta = spikeglx_meta(N_CHANNELS, N_SAMPLES, 30000.0, date or HEADER_DATE, file_name=name)
    if date is None:
        meta = "".join(line for line in meta.splitlines(keepends=True) if not line.startswith("fileCreateTime="))
    (folder / name).with_suffix(".meta").write_text(meta)
    return folder


def _openephys(folder: Path, dated: bool = True) -> Path:
    """An Open Ephys GUI recording; ``dated=False``: no ``<INFO><DATE>`` and no dated recording folder."""
    traces = np.random.default_rng(1).integers(-50, 50, (N_SAMPLES, N_CHANNELS)).astype(np.int16)
    write_openephys_session(folder, traces, 30000.0, np1_probe(N_CHANNELS).contact_positions, HEADER_DATE)
    if not dated:
        [stamped] = folder.iterdir()
        stamped.rename(folder / "recording")
        [settings] = folder.rglob("settings.xml")
        settings.write_text(re.sub(r"<DATE>.*?</DATE>", "", settings.read_text()))
    return folder


def _raw(folder: Path, date: dt.date | None = HEADER_DATE) -> Path:
    """A raw binary + sidecar; ``date=None``: the sidecar has no ``recording_date``."""
    folder.mkdir(parents=True)
    np.zeros((N_SAMPLES, N_CHANNELS), np.int16).tofile(folder / "rec.bin")
    sidecar = {"sampling_frequency": 30000.0, "n_channels": N_CHANNELS, "dtype": "int16"}
    if date is not None:
        sidecar["recording_date"] = date.isoformat()
    (folder / "rec.json").write_text(json.dumps(sidecar))
    return folder


def _undated(kind: str, folder: Path) -> tuple[Path, str]:
    """An undated session of ``kind`` and the file its error must name."""
    if kind == "spikeglx":
        _spikeglx(folder, None)
        return next(folder.glob("*.ap.meta")), "fileCreateTime"
    if kind == "openephys":
        _openephys(folder, dated=False)
        return next(folder.rglob("structure.oebin")), "settings.xml"
    _raw(folder, None)
    return folder / "rec.json", "recording_date"


def _touch_all(folder: Path, when: float) -> None:
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (when, when))


KINDS = ("spikeglx", "openephys", "raw")


@pytest.mark.parametrize("kind", KINDS)
def test_a_session_without_a_date_source_is_reported_and_not_registered(tmp_path, kind):
    root = tmp_path / "landing"
    _spikeglx(root / "dated")
    named, hint = _undated(kind, root / "undated")
    found, rejected = discover({"rig1": root})
    assert {s.folder.name for s in found} == {"dated"}, "the undated session is not registered"
    [report] = rejected
    assert report.folder == root / "undated"
    assert str(named) in report.reason, report.reason
    assert "modification time is never used" in report.reason and hint in report.reason
    assert '"recording_date": "YYYY-MM-DD" in ks_session.json' in report.reason


@pytest.mark.parametrize("kind", KINDS)
def test_recording_date_in_ks_session_json_dates_an_undated_session(tmp_path, kind):
    folder = tmp_path / "landing" / "s1"
    _undated(kind, folder)
    (folder / "ks_session.json").write_text(json.dumps({"recording_date": CONFIG_DATE.isoformat()}))
    found, rejected = discover({"rig1": folder.parent})
    assert not rejected, rejected
    assert found and {s.ref.date for s in found} == {CONFIG_DATE}
    assert open_recording(folder).recording_date == CONFIG_DATE


def test_recording_date_in_a_probe_section_dates_that_probe(tmp_path):
    folder = _spikeglx(tmp_path / "s1", None)
    (folder / "ks_session.json").write_text(json.dumps({"probes": {"imec0": {"recording_date": "2024-01-31"}}}))
    assert open_recording(folder).recording_date == dt.date(2024, 1, 31)


@pytest.mark.parametrize("kind", KINDS)
def test_a_modification_time_change_never_changes_the_date(tmp_path, kind):
    dated = {"spikeglx": _spikeglx, "openephys": _openephys, "raw": _raw}[kind](tmp_path / "dated")
    undated = tmp_path / "undated"
    _undated(kind, undated)
    (undated / "ks_session.json").write_text(json.dumps({"recording_date": CONFIG_DATE.isoformat()}))
    for folder, date in ((dated, HEADER_DATE), (undated, CONFIG_DATE)):
        assert open_recording(folder).recording_date == date
        _touch_all(folder, LONG_AGO)  # e.g. a copy that set every file's time to when it was made
        assert open_recording(folder).recording_date == date
        _touch_all(folder, dt.datetime.now().timestamp())
        assert open_recording(folder).recording_date == date


@pytest.mark.parametrize("value", ["2024/11/20", "20241120", "2024-02-30", 20241120, "", "2024-W47-3"])
def test_a_bad_recording_date_in_ks_session_json_names_the_file(tmp_path, value):
    folder = _spikeglx(tmp_path / "s1", None)
    config = folder / "ks_session.json"
    config.write_text(json.dumps({"recording_date": value}))
    with pytest.raises(SessionInputError, match="recording_date") as raised:
        open_recording(folder)
    assert str(config) in str(raised.value) and "2026-03-02" in str(raised.value)


def test_the_header_date_wins_over_file_times_and_the_config_over_the_header(tmp_path):
    folder = _spikeglx(tmp_path / "s1")
    _touch_all(folder, LONG_AGO)
    assert open_recording(folder).recording_date == HEADER_DATE
    (folder / "ks_session.json").write_text(json.dumps({"recording_date": CONFIG_DATE.isoformat()}))
    assert open_recording(folder).recording_date == CONFIG_DATE
