"""WriteBehindFile: the bytes land exactly, errors from the writer thread reach the caller, nothing hangs."""

from __future__ import annotations

import errno
import mmap
import threading

import numpy as np
import pytest

from ks_platform.core.write_behind import WriteBehindFile
from ks_platform_tests.conftest import small_tmpfs

BLOCK = 4 * mmap.PAGESIZE


@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache"])
@pytest.mark.parametrize("total", [0, 1, BLOCK - 2, BLOCK, 3 * BLOCK, 7 * BLOCK + 1234], ids=lambda n: f"{n}B")
def test_bytes_land_exactly_whatever_the_sizes_of_the_writes(tmp_path, direct, total):
    rng = np.random.default_rng(total)
    payload = rng.integers(0, 256, size=total, dtype=np.uint8).tobytes()
    cuts = np.sort(rng.integers(0, total + 1, size=9)) if total else np.zeros(0, dtype=int)
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, total])]  # some empty, some spanning blocks
    target = tmp_path / "out.bin"
    with WriteBehindFile(target, block_bytes=BLOCK, n_blocks=2, direct=direct) as output:
        for piece in pieces:
            output.write(piece)
    assert target.read_bytes() == payload
    assert output.bytes_written == total


def test_int16_arrays_are_written_as_their_bytes(tmp_path):
    block = np.arange(-5000, 5000, dtype=np.int16).reshape(-1, 40)
    with WriteBehindFile(tmp_path / "a.bin", block_bytes=BLOCK) as output:
        for _ in range(5):
            output.write(block)
    assert (tmp_path / "a.bin").read_bytes() == block.tobytes() * 5


def test_o_direct_is_used_on_this_disk_and_the_threads_end(tmp_path):
    before = threading.active_count()
    with WriteBehindFile(tmp_path / "a.bin", block_bytes=BLOCK) as output:
        output.write(b"x" * (BLOCK * 2 + 10))
        assert output.direct, "ext4/tmpfs accept O_DIRECT on Linux; the fast path must be the one tested"
    assert threading.active_count() == before


def test_a_full_disk_reaches_the_caller_as_ENOSPC_and_nothing_hangs(tmp_path):
    with small_tmpfs(tmp_path / "tiny", "1m") as mount:
        with pytest.raises(OSError) as caught:
            with WriteBehindFile(mount / "big.bin", block_bytes=BLOCK, n_blocks=2) as output:
                for _ in range(200):  # 3.2 MB into 1 MB
                    output.write(b"\0" * BLOCK)
        assert caught.value.errno == errno.ENOSPC


def test_an_error_in_the_producer_stops_the_writer_without_fsync(tmp_path):
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="reader failed"):
        with WriteBehindFile(tmp_path / "a.bin", block_bytes=BLOCK) as output:
            output.write(b"y" * (BLOCK + 1))
            raise RuntimeError("reader failed")
    assert threading.active_count() == before
    assert (tmp_path / "a.bin").stat().st_size == BLOCK, (
        "only full blocks were written; the caller removes the partial file"
    )


def test_block_size_must_suit_o_direct(tmp_path):
    with pytest.raises(ValueError, match="multiple of"):
        WriteBehindFile(tmp_path / "a.bin", block_bytes=BLOCK + 1)


def test_a_mount_that_refuses_o_direct_writes_falls_back_to_the_page_cache(tmp_path, monkeypatch):
    """Some network/FUSE mounts accept an O_DIRECT open and then fail every direct write with EINVAL: the writer
    drops O_DIRECT for the rest of the file and every byte still lands (EINVAL injected while O_DIRECT is set)."""
    import fcntl
    import os

    from ks_platform.core import write_behind

    real_pwrite, refused = os.pwrite, []

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(write_behind.os, "pwrite", pwrite)
    payload = np.random.default_rng(3).integers(0, 256, size=3 * BLOCK + 77, dtype=np.uint8).tobytes()
    with WriteBehindFile(tmp_path / "a.bin", block_bytes=BLOCK, n_blocks=2) as output:
        output.write(payload)
    assert refused == [0] and not output.direct
    assert (tmp_path / "a.bin").read_bytes() == payload
