"""Lineage is true: a landing recording changed in place (size and mtime kept, as ``rsync -a --inplace`` leaves it)
after it was observed fails the next step that would publish from it, naming the file; nothing is published.

Real: Kilosort, the Phy export, SpikeInterface's metrics and the NWB writer run on real files; the change is a
real write into the landing file while (or after) they ran. Nothing is injected."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from ks_platform.core import nwb_export, pipeline
from ks_platform.core.errors import SessionInputError
from ks_platform.core.names import SESSION_SETTINGS_FILE
from ks_platform.core.sessions import fingerprint
from ks_platform.core.store import SessionStore
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform_tests.conftest import leftovers

SHORT = DemoSessionSpec(duration_s=4.0, min_well_detected_units=1)
KEY = "2026-03-02__rig1__demo__imec0"


def overwrite_in_place(path: Path, offset_fraction: float = 0.5, n_bytes: int = 1_000_000) -> None:
    """Write ``n_bytes`` of other data into the middle of ``path``, keeping its size and modification time."""
    stat = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(int(stat.st_size * offset_fraction))
        handle.write(os.urandom(n_bytes))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


@pytest.mark.parametrize("zero_copy", [True, False])
def test_an_in_place_change_with_size_and_mtime_kept_changes_the_fingerprint(tmp_path, generated_session, zero_copy):
    folder = shutil.copytree(generated_session, tmp_path / "landing" / "demo")
    store = SessionStore(tmp_path / "store", KEY)
    observed = pipeline.observe_raw_recording(folder, store)
    binary = pipeline.build_recording_binary(folder, store, allow_zero_copy=zero_copy)
    assert binary.metadata["zero_copy"] is zero_copy
    [data] = folder.glob("*.ap.bin")
    overwrite_in_place(data, 0.37, 1_000_000)  # more than the sampled blocks' spacing (1/65 of the file)
    source = pipeline.as_scan(folder).open()
    assert fingerprint(source, include_settings=False) != observed.data_version
    check = pipeline.publish_check(folder, store, None)
    with pytest.raises(SessionInputError, match="changed since it was observed") as caught:
        check()
    assert caught.value.path == folder and "Fix:" in str(caught.value)


def test_zero_copy_input_changed_anywhere_is_caught_by_the_full_checksum(tmp_path, generated_session):
    """A change too small for the sampled fingerprint (one 4 KiB page between two sampled blocks) is still caught
    before a step publishes from a zero-copy binary: its full checksum is taken again."""
    folder = shutil.copytree(generated_session, tmp_path / "landing" / "demo")
    store = SessionStore(tmp_path / "store", KEY)
    observed = pipeline.observe_raw_recording(folder, store)
    binary = pipeline.build_recording_binary(folder, store)
    [data] = folder.glob("*.ap.bin")
    overwrite_in_place(data, 0.5 + 0.5 / 65, 4096)  # between the 32nd and 33rd sampled block
    assert fingerprint(pipeline.as_scan(folder).open(), include_settings=False) == observed.data_version
    from ks_platform.core.conversion import load_recording_binary

    check = pipeline.publish_check(folder, store, None, load_recording_binary(store.binary_dir))
    with pytest.raises(SessionInputError, match="changed while it was being read in place") as caught:
        check()
    assert caught.value.path == data.resolve()
    assert binary.data_version in str(caught.value) or binary.data_version[:12] in str(caught.value)


def test_phy_metrics_and_nwb_are_not_published_from_a_recording_changed_after_the_sort(tmp_path, sorted_workspace):
    """The shared sorted session, copied: its landing file changed in place after the sort; the Phy export, the
    metrics and the NWB each fail naming the folder and leave what was there before untouched."""
    ws, key, result = sorted_workspace
    assert result.success
    source_store = ws.store(key)
    landing = shutil.copytree(next(ws.landing.iterdir()), tmp_path / "landing" / "demo")
    store = SessionStore(tmp_path / "store", KEY)
    shutil.copytree(source_store.dir, store.dir, symlinks=False)  # the binary copied, not linked to the shared one
    pipeline.observe_raw_recording(landing, store)  # observed here, as the asset did for the original
    before = {p.name: p.read_bytes() for p in store.phy_dir.iterdir() if p.is_file()}
    [data] = landing.glob("*.ap.bin")
    overwrite_in_place(data)
    with pytest.raises(SessionInputError, match="changed since it was observed"):
        pipeline.export_phy(store, landing, None)
    assert {p.name: p.read_bytes() for p in store.phy_dir.iterdir() if p.is_file()} == before
    metrics_before = sorted(p.name for p in store.metrics_dir.iterdir())
    with pytest.raises(SessionInputError, match="changed since it was observed"):
        pipeline.measure_units(store, landing, None)
    assert sorted(p.name for p in store.metrics_dir.iterdir()) == metrics_before
    nwb_dir = store.dir / "nwb"
    had_nwb = nwb_dir.exists()
    with pytest.raises(SessionInputError, match="changed since it was observed"):
        nwb_export.export_units_nwb(store, landing, pipeline.publish_check(landing, store, None))
    assert nwb_dir.exists() == had_nwb and leftovers(store.dir) == []


@pytest.mark.slow
def test_a_recording_overwritten_while_kilosort_runs_publishes_no_sorting(tmp_path):
    """The landing .ap.bin (zero-copy: Kilosort reads it in place) is overwritten in its middle, mtime kept, once
    Kilosort has started writing into its staging folder: the step fails naming the file, no sorting/ appears."""
    folder = make_spikeglx_session(tmp_path / "landing" / "demo", SHORT)
    (folder / SESSION_SETTINGS_FILE).write_text('{"nblocks": 0}\n')
    store = SessionStore(tmp_path / "store", KEY)
    pipeline.observe_raw_recording(folder, store)
    pipeline.build_probe_map(folder, store)
    assert pipeline.build_recording_binary(folder, store).metadata["zero_copy"]
    [data] = folder.glob("*.ap.bin")

    def overwrite_once_kilosort_writes() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if any(p.name.startswith(".sorting.tmp") and any(p.iterdir()) for p in store.dir.iterdir()):
                overwrite_in_place(data, 0.5, 4096)  # one page: only the full checksum can see it
                return
            time.sleep(0.05)

    writer = threading.Thread(target=overwrite_once_kilosort_writes, daemon=True)
    writer.start()
    with pytest.raises(SessionInputError, match="changed while it was being read in place") as caught:
        pipeline.sort_session(folder, store, backend="cpu")
    writer.join(5)
    assert caught.value.path == data.resolve() and "nothing was published" in str(caught.value)
    assert not store.sorting_dir.exists() and leftovers(store.dir) == []
