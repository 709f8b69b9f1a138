"""A sequential file writer whose disk writes run in a background thread, as large direct (O_DIRECT) writes.

Reading the source and writing the binary then overlap on one disk (why: docs/decisions.md, "Conversion output
is written behind"). Where the filesystem refuses ``O_DIRECT``, at open or at the first write (or the platform has
none), the same thread writes through the page cache instead. Memory: ``n_blocks`` blocks of ``block_bytes`` (24 MiB by default), whatever the file's size.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import threading
from pathlib import Path
from types import TracebackType

BLOCK_BYTES = 8 * 1024 * 1024
N_BLOCKS = 3
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class WriteBehindFile:
    """Write a new file sequentially; ``close()`` waits for every block, fsyncs and re-raises any write error.

    Use it as a context manager: leaving the block with an exception stops the writer thread and closes the
    file without fsync (the caller owns cleanup of the partial file, e.g. via ``store.atomic_directory``).
    Not thread-safe: one producer thread calls ``write``.
    """

    def __init__(
        self, path: Path, block_bytes: int = BLOCK_BYTES, n_blocks: int = N_BLOCKS, direct: bool = True
    ) -> None:
        if block_bytes % mmap.PAGESIZE or n_blocks < 2:
            raise ValueError(f"block_bytes must be a multiple of {mmap.PAGESIZE} and n_blocks at least 2")
        self.path = Path(path)
        self.block_bytes = block_bytes
        self.bytes_written = 0  # handed to the writer so far
        self._fd, self.direct = _open_new(self.path, direct)
        self._blocks = [mmap.mmap(-1, block_bytes) for _ in range(n_blocks)]  # page-aligned, as O_DIRECT needs
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[mmap.mmap, int, int] | None] = queue.SimpleQueue()
        for block in self._blocks[1:]:
            self._free.put(block)
        self._block, self._view, self._fill = self._blocks[0], memoryview(self._blocks[0]), 0
        self._offset = 0  # file offset of the block being filled
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._drain, name=f"write-behind {self.path.name}", daemon=True)
        self._thread.start()
        self._closed = False

    # ------------------------------------------------------------------------------------ producer side

    def write(self, data) -> None:
        """Append ``data`` (any C-contiguous bytes-like object); blocks only while every block is in flight."""
        source = memoryview(data).cast("B")
        pos, size = 0, source.nbytes
        while pos < size:
            take = min(self.block_bytes - self._fill, size - pos)
            self._view[self._fill : self._fill + take] = source[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.block_bytes:
                self._hand_off()
        self.bytes_written += size

    def _hand_off(self) -> None:
        self._full.put((self._block, self._fill, self._offset))
        self._offset += self._fill
        self._view.release()
        self._block = self._free.get()  # the writer returns blocks even after an error, so this cannot hang
        self._view, self._fill = memoryview(self._block), 0
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Write the last partial block, wait for the writer, fsync, close; raises the first write error."""
        if self._closed:
            return
        try:
            if self._fill:
                self._full.put((self._block, self._fill, self._offset))
                self._offset += self._fill
            self._stop_writer()
            self._raise_if_failed()
            os.fsync(self._fd)
        finally:
            self._release()

    def abort(self) -> None:
        """Stop without fsync (the partial file stays for the caller to remove)."""
        if not self._closed:
            self._stop_writer()
            self._release()

    def __enter__(self) -> WriteBehindFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def _stop_writer(self) -> None:
        self._full.put(None)
        self._thread.join()

    def _release(self) -> None:
        self._closed = True
        self._view.release()
        os.close(self._fd)
        for block in self._blocks:
            block.close()

    # -------------------------------------------------------------------------------------- writer side

    def _drain(self) -> None:
        while (item := self._full.get()) is not None:
            block, length, offset = item
            if self._error is None:
                try:
                    self._write_block(block, length, offset)
                except OSError as exc:
                    self._error = exc
            self._free.put(block)

    def _write_block(self, block: mmap.mmap, length: int, offset: int) -> None:
        if self.direct and length % mmap.PAGESIZE:
            self._stop_direct()  # the last, partial block: O_DIRECT needs aligned lengths
        view, done = memoryview(block), 0
        try:
            while done < length:
                try:
                    wrote = os.pwrite(self._fd, view[done:length], offset + done)
                except OSError as exc:
                    if not (self.direct and exc.errno == errno.EINVAL):
                        raise
                    self._stop_direct()  # opened with O_DIRECT but refused at write time (some network/FUSE mounts)
                    continue
                done += wrote
                if self.direct and done < length and wrote % mmap.PAGESIZE:
                    self._stop_direct()  # a short, unaligned write: finish the block through the page cache
        finally:
            view.release()

    def _stop_direct(self) -> None:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~_O_DIRECT)
        self.direct = False


def _open_new(path: Path, direct: bool) -> tuple[int, bool]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    if direct and _O_DIRECT:
        try:
            return os.open(path, flags | _O_DIRECT, 0o644), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this filesystem has no O_DIRECT
                raise
    return os.open(path, flags, 0o644), False
