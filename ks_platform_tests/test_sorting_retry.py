"""Out-of-memory retry: inject torch's OOM error where Kilosort raises it and check the halved-batch retry."""

from __future__ import annotations

import importlib

import pytest
import torch

from ks_platform.core.conversion import load_recording_binary
from ks_platform.core.probes import kilosort_probe_from_json
from ks_platform.core.settings import effective_settings
from ks_platform.core.sorting import sort_recording
from ks_platform.core.store import read_json

ks_run = importlib.import_module("kilosort.run_kilosort")
#: The canonical session does not drift (as its kilosort4-settings.json says): no drift pass before the injected
#: error or in the retry.
NO_DRIFT = {"nblocks": 0}


def test_oom_retry_halves_batch_and_records_attempts(sorted_workspace, tmp_path, monkeypatch):
    ws, key, _ = sorted_workspace
    store = ws.store(key)
    binary = load_recording_binary(store.binary_dir)
    probe = kilosort_probe_from_json(read_json(store.probe_dir / "kilosort_probe.json"))
    real_detect = ks_run.detect_spikes
    seen_batches = []

    def detect_spikes_that_runs_out_of_memory(ops, *args, **kwargs):
        seen_batches.append(ops["batch_size"])
        if ops["batch_size"] > 30_000:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return real_detect(ops, *args, **kwargs)

    monkeypatch.setattr(ks_run, "detect_spikes", detect_spikes_that_runs_out_of_memory)
    settings = effective_settings(binary.n_chan_bin, binary.sampling_frequency, "neuropixels", NO_DRIFT)
    result = sort_recording(binary, probe, settings, tmp_path / "sorting", backend="cpu")

    assert seen_batches == [60_000, 30_000]
    assert [a["batch_size"] for a in result.attempts] == [60_000, 30_000]
    assert result.attempts[0]["outcome"].startswith("out of memory") and result.attempts[1]["outcome"] == "ok"
    assert result.attempts[1]["clear_cache"] is True
    assert result.n_spikes > 0
    as_run = read_json(tmp_path / "sorting" / "effective_settings.json")
    assert as_run["as_run"]["batch_size"] == 30_000 and as_run["clear_cache"] is True
    assert read_json(tmp_path / "sorting" / "lineage.json")["attempts"][0]["batch_size"] == 60_000
    assert not list(tmp_path.glob(".sorting.tmp-*"))


def test_non_memory_errors_are_not_retried(sorted_workspace, tmp_path, monkeypatch):
    ws, key, _ = sorted_workspace
    store = ws.store(key)
    binary = load_recording_binary(store.binary_dir)
    probe = kilosort_probe_from_json(read_json(store.probe_dir / "kilosort_probe.json"))
    calls = []

    def broken(ops, *args, **kwargs):
        calls.append(1)
        raise ValueError("something else")

    monkeypatch.setattr(ks_run, "detect_spikes", broken)
    settings = effective_settings(binary.n_chan_bin, binary.sampling_frequency, "neuropixels", NO_DRIFT)
    with pytest.raises(ValueError, match="something else"):
        sort_recording(binary, probe, settings, tmp_path / "sorting", backend="cpu")
    assert calls == [1]
    assert not (tmp_path / "sorting").exists() and not list(tmp_path.iterdir())
