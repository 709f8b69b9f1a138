"""Benchmark: recording → Kilosort binary, against ``cp`` and SpikeInterface, in one run.

For every size (GB of *source* bytes) the inputs are generated chunk by chunk under a temp dir in /tmp:

* ``sglx``  – a SpikeGLX-like NP1.0 AP file, int16, 385 channels (384 AP + sync). Our path is forced to
  copy (``allow_zero_copy=False``), which drops the sync channel → 384-channel int16.
* ``f32``   – a raw binary, float32, 384 channels, µV (JSON sidecar). Our path scales it to int16.
* ``i16``   – a raw binary, int16, 385 channels (a hard link of the SpikeGLX file, so no extra disk):
  the zero-copy path (hash in place + symlink).

Paths measured on each copy source, back to back and under the same page-cache treatment:

* ``cp``   – ``cp SRC DST && sync DST`` (coreutils; ``sync FILE`` fsyncs that file).
* ``io``   – the I/O alone, nothing computed: read the source in 2 MB blocks and write as many bytes as the
  binary has (zeros, through the same ``WriteBehindFile`` as ours), fsync. What this disk allows for the
  conversion's byte pattern; ``ours/io`` near 1 means the conversion is waiting on the disk, not the CPU.
* ``ours`` – ``write_recording_binary`` (its own fsync, manifest and atomic rename included).
* ``si``   – ``spikeinterface.core.read_binary`` (+ ``select_channels`` dropping the sync channel, or
  ``spikeinterface.preprocessing.scale`` for float32) → ``write_binary_recording(dtype="int16",
  n_jobs=1, chunk_duration="1s")``, then an ``os.fsync`` of its output so every path ends on disk.

Every repeat runs cp, io, ours and SI back to back (order rotated per repeat) under each page-cache state:
``cold`` (source fsynced then evicted with ``posix_fadvise(DONTNEED)``; ``resident_before`` in the JSON
rows is util-linux ``fincore``'s check) and ``warm`` (source read fully beforehand). Before every
measurement: ``sync``, then wait until the disk has been idle for 1 s (``quiesce``). MB/s = source bytes / seconds (1 MB = 1e6 bytes). ``ours`` and ``si`` run in a fresh child
process each (timed inside the child around the conversion call only, imports excluded); the child
reports its peak RSS (``VmHWM`` from /proc/self/status; see ``vm_hwm_mb`` for why not ``ru_maxrss``).

    .venv/bin/python bench/conversion.py --sizes-gb 1 4
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FS = 30000.0
N_SGLX = 385  # 384 AP + sync
N_F32 = 384
GEN_CHUNK_BYTES = 64 * 1024 * 1024
RESULTS = Path(__file__).parent / "results" / "conversion.json"


# ---------------------------------------------------------------------------------------------- inputs


def _write_chunked(path: Path, n_samples: int, n_channels: int, dtype: np.dtype, make) -> None:
    rng = np.random.default_rng(0)
    step = max(1, GEN_CHUNK_BYTES // (n_channels * np.dtype(dtype).itemsize))
    with open(path, "wb") as handle:
        for start in range(0, n_samples, step):
            n = min(step, n_samples - start)
            handle.write(make(rng, n, n_channels).tobytes())
        handle.flush()
        os.fsync(handle.fileno())


def make_inputs(root: Path, size_bytes: int) -> dict[str, dict]:
    from ks_platform.core.synthetic import NP1_UV_PER_BIT, spikeglx_meta

    inputs = {}
    # SpikeGLX-like: int16 noise (~±20 bits) on 384 AP channels + a 1 Hz square wave on sync.
    n = size_bytes // (N_SGLX * 2)
    sglx_dir = root / "sglx"
    sglx_dir.mkdir()
    sglx_bin = sglx_dir / "bench_g0_t0.imec0.ap.bin"

    def make_i16(rng, k, c):
        block = rng.integers(-20, 21, size=(k, c), dtype=np.int16)
        block[:, -1] = 64
        return block

    _write_chunked(sglx_bin, n, N_SGLX, np.int16, make_i16)
    sglx_bin.with_suffix(".meta").write_text(spikeglx_meta(N_SGLX - 1, n, FS, dt.date(2026, 3, 2)))
    inputs["sglx"] = {"session": sglx_dir, "data": sglx_bin, "n_channels": N_SGLX, "dtype": "int16", "n_samples": n}

    # float32 raw binary in µV.
    n = size_bytes // (N_F32 * 4)
    f32_dir = root / "f32"
    f32_dir.mkdir()
    f32_bin = f32_dir / "rec.bin"
    _write_chunked(
        f32_bin,
        n,
        N_F32,
        np.float32,
        lambda rng, k, c: rng.standard_normal((k, c), dtype=np.float32) * np.float32(30.0),
    )
    (f32_dir / "rec.json").write_text(
        json.dumps(
            {
                "sampling_frequency": FS,
                "n_channels": N_F32,
                "dtype": "float32",
                "units": "uV",
                "recording_date": "2026-03-02",
            }
        )
    )
    inputs["f32"] = {"session": f32_dir, "data": f32_bin, "n_channels": N_F32, "dtype": "float32", "n_samples": n}

    # int16 raw binary = the SpikeGLX samples again (hard link), all 385 channels: zero-copy capable.
    i16_dir = root / "i16"
    i16_dir.mkdir()
    i16_bin = i16_dir / "rec.bin"
    os.link(sglx_bin, i16_bin)
    (i16_dir / "rec.json").write_text(
        json.dumps(
            {
                "sampling_frequency": FS,
                "n_channels": N_SGLX,
                "dtype": "int16",
                "uv_per_bit": NP1_UV_PER_BIT,
                "recording_date": "2026-03-02",
            }
        )
    )
    inputs["i16"] = {
        "session": i16_dir,
        "data": i16_bin,
        "n_channels": N_SGLX,
        "dtype": "int16",
        "n_samples": inputs["sglx"]["n_samples"],
    }
    return inputs


# ---------------------------------------------------------------------------------------- page cache


def resident_fraction(path: Path) -> float:
    """Fraction of ``path`` in the page cache (util-linux ``fincore``; -1 if unavailable)."""
    try:
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return int(out.strip()) / max(path.stat().st_size, 1)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return -1.0


def make_cold(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_warm(path: Path) -> None:
    buffer = bytearray(16 * 1024 * 1024)
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass


def _device_stat(path: Path) -> Path | None:
    st = os.stat(path)
    stat = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat")
    return stat if stat.is_file() else None


def quiesce(path: Path, settle_s: float = 1.0, limit_s: float = 60.0) -> float:
    """Wait until the block device holding ``path`` has had no I/O in flight or completed for ``settle_s``.

    The previous step's output was just deleted; with ``-o discard`` (as here) ext4 then trims GBs, and a
    VM disk may still be absorbing the writes: without this wait that debt lands on whichever path runs next.
    """
    stat = _device_stat(path)
    started = time.perf_counter()
    if stat is None:
        time.sleep(settle_s)
        return settle_s
    last, quiet_since = stat.read_text().split(), time.perf_counter()
    while time.perf_counter() - started < limit_s:
        time.sleep(0.2)
        now = stat.read_text().split()
        if now != last or int(now[8]):  # field 9: I/Os in flight
            last, quiet_since = now, time.perf_counter()
        elif time.perf_counter() - quiet_since >= settle_s:
            break
    return time.perf_counter() - started


def prepare(path: Path, cache: str) -> float:
    os.sync()  # no dirty pages from earlier steps left to flush during the measurement
    quiesce(path)
    (make_cold if cache == "cold" else make_warm)(path)
    return resident_fraction(path)


# ------------------------------------------------------------------------------------------- children


def vm_hwm_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: on Linux that starts at the *parent's* RSS at fork
    and survives exec, so a child of a big parent reports the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(spec: dict) -> dict:
    """Runs in a fresh interpreter: one conversion, timed around the call only, plus its peak RSS."""
    if spec["path"] == "io":
        from ks_platform.core.write_behind import WriteBehindFile

        in_bytes = os.path.getsize(spec["data"])
        frame_in, frame_out = spec["n_channels"] * np.dtype(spec["dtype"]).itemsize, 384 * 2
        block = bytearray(2 * 1024 * 1024 // frame_in * frame_in)
        zeros = bytes(len(block) // frame_in * frame_out)
        out = Path(spec["out"])
        out.mkdir(parents=True)
        rss_before = vm_hwm_mb()
        t0 = time.perf_counter()
        with open(spec["data"], "rb", buffering=0) as handle, WriteBehindFile(out / "recording.bin") as output:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while n := handle.readinto(block):
                output.write(zeros[: n // frame_in * frame_out])
        seconds = time.perf_counter() - t0
        assert output.bytes_written == in_bytes // frame_in * frame_out
        extra = {}
    elif spec["path"] == "ours":
        from ks_platform.core.conversion import write_recording_binary
        from ks_platform.core.formats import open_recording

        source = open_recording(Path(spec["session"]))
        rss_before = vm_hwm_mb()
        t0 = time.perf_counter()
        binary = write_recording_binary(source, Path(spec["out"]), allow_zero_copy=spec["zero_copy"])
        seconds = time.perf_counter() - t0
        extra = {
            "checksum": binary.checksum,
            "zero_copy": binary.zero_copy,
            "bytes_written_reported": binary.bytes_written,
            "n_chan_bin": binary.n_chan_bin,
        }
    else:
        import xxhash
        from spikeinterface.core import read_binary, write_binary_recording

        rec = read_binary(spec["data"], sampling_frequency=FS, dtype=spec["dtype"], num_channels=spec["n_channels"])
        if spec["source"] == "sglx":
            rec = rec.select_channels(rec.channel_ids[: spec["n_channels"] - 1])  # drop the sync channel, as ours
        elif spec["dtype"] == "float32":
            from spikeinterface.preprocessing import scale

            from ks_platform.core.formats.raw_binary import FLOAT_UV_PER_BIT

            rec = scale(rec, gain=1.0 / FLOAT_UV_PER_BIT, offset=0.0, dtype="int16")  # same µV → int16 step as ours
        out = Path(spec["out"])
        out.mkdir(parents=True)
        target = out / "recording.bin"
        rss_before = vm_hwm_mb()
        t0 = time.perf_counter()
        write_binary_recording(rec, file_paths=target, dtype="int16", n_jobs=1, chunk_duration="1s", progress_bar=False)
        fd = os.open(target, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        seconds = time.perf_counter() - t0
        extra = {}
        if spec.get("hash_output"):
            hasher = xxhash.xxh3_128()
            with open(target, "rb") as handle:
                while block := handle.read(16 * 1024 * 1024):
                    hasher.update(block)
            extra["checksum"] = hasher.hexdigest()
    return {
        "seconds": seconds,
        "peak_rss_mb": vm_hwm_mb(),
        "rss_before_mb": rss_before,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **extra,
    }


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"child {spec['path']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cp(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cp", str(src), str(dst)], check=True)
    subprocess.run(["sync", str(dst)], check=True)
    return time.perf_counter() - t0


def store_bytes(store: Path) -> tuple[int, int]:
    """(bytes of non-symlink files other than the manifest, manifest bytes) under ``store``."""
    data = manifest = 0
    for path in store.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        if path.name == "binary.json":
            manifest += path.stat().st_size
        else:
            data += path.stat().st_size
    return data, manifest


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


# ----------------------------------------------------------------------------------------------- main


def bench_size(
    size_gb: float, tmp_root: Path, caches: list[str], repeats: int, sources: list[str] = ("sglx", "f32", "i16")
) -> list[dict]:
    rows: list[dict] = []
    size_bytes = int(size_gb * 1e9)
    with tempfile.TemporaryDirectory(prefix="ks_conv_bench_", dir=tmp_root) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        (tmp / "in").mkdir()
        inputs = make_inputs(tmp / "in", size_bytes)
        print(f"[{size_gb:g} GB] inputs generated in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        out = tmp / "out"
        out.mkdir()

        for source in [s for s in ("sglx", "f32") if s in sources]:
            info = inputs[source]
            src_bytes = info["data"].stat().st_size
            for cache in caches:
                for rep in range(repeats):
                    for path in rotate(("cp", "ours", "si", "io"), rep):
                        dst = out / f"{source}_{path}"
                        resident = prepare(info["data"], cache)
                        if path == "cp":
                            result = {"seconds": run_cp(info["data"], dst)}
                        else:
                            spec = {
                                "path": path,
                                "source": source,
                                "session": str(info["session"]),
                                "data": str(info["data"]),
                                "dtype": info["dtype"],
                                "n_channels": info["n_channels"],
                                "out": str(dst),
                                "zero_copy": False,
                                "hash_output": source == "sglx" and rep == 0,
                            }
                            result = run_child(spec)
                        out_bytes = (
                            sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
                            if dst.is_dir()
                            else dst.stat().st_size
                        )
                        row = {
                            "size_gb": size_gb,
                            "source": source,
                            "path": path,
                            "cache": cache,
                            "repeat": rep,
                            "source_bytes": src_bytes,
                            "output_bytes": out_bytes,
                            "resident_before": round(resident, 3),
                            **result,
                            "mb_per_s": src_bytes / 1e6 / result["seconds"],
                        }
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
                        remove(dst)

        info = inputs["i16"]
        for cache in caches if "i16" in sources else []:
            for rep in range(repeats):
                dst = out / "i16_zero_copy"
                resident = prepare(info["data"], cache)
                spec = {
                    "path": "ours",
                    "source": "i16",
                    "session": str(info["session"]),
                    "out": str(dst),
                    "zero_copy": True,
                }
                result = run_child(spec)
                data_bytes, manifest_bytes = store_bytes(out)
                row = {
                    "size_gb": size_gb,
                    "source": "i16",
                    "path": "ours_zero_copy",
                    "cache": cache,
                    "repeat": rep,
                    "source_bytes": info["data"].stat().st_size,
                    "resident_before": round(resident, 3),
                    **result,
                    "store_bytes_written": data_bytes,
                    "manifest_bytes": manifest_bytes,
                    "symlink": (dst / "recording.bin").is_symlink(),
                    "mb_per_s": info["data"].stat().st_size / 1e6 / result["seconds"],
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                remove(dst)
    return rows


def rotate(items: tuple[str, ...], k: int) -> tuple[str, ...]:
    """Repeat k runs the paths in a rotated order, so no path always runs first (or right after cp)."""
    k %= len(items)
    return items[k:] + items[:k]


def _median(rows: list[dict], **match) -> dict:
    """Medians over the repeats matching ``match`` (same rule for every path), plus the MB/s range."""
    hits = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    seconds = statistics.median(r["seconds"] for r in hits)
    speeds = [r["mb_per_s"] for r in hits]
    agg = dict(hits[0])
    agg.update(
        seconds=seconds,
        mb_per_s=hits[0]["source_bytes"] / 1e6 / seconds,
        mb_min=min(speeds),
        mb_max=max(speeds),
        n=len(hits),
    )
    if "peak_rss_mb" in hits[0]:
        agg["peak_rss_mb"] = statistics.median(r["peak_rss_mb"] for r in hits)
    return agg


def _paired_ratio(rows: list[dict], other: str, mine: str = "ours", **match) -> str:
    """Median over repeats of mine/other MB/s within the same repeat; then the ratio of medians."""
    path = mine
    mine = {r["repeat"]: r for r in rows if r["path"] == path and all(r.get(k) == v for k, v in match.items())}
    theirs = {r["repeat"]: r for r in rows if r["path"] == other and all(r.get(k) == v for k, v in match.items())}
    paired = statistics.median(mine[k]["mb_per_s"] / theirs[k]["mb_per_s"] for k in mine if k in theirs)
    of_medians = _median(rows, path=path, **match)["mb_per_s"] / _median(rows, path=other, **match)["mb_per_s"]
    return f"{paired:.2f} ({of_medians:.2f})"


def _mbs(agg: dict) -> str:
    return (
        f"{agg['mb_per_s']:.0f} ({agg['mb_min']:.0f}–{agg['mb_max']:.0f})" if agg["n"] > 1 else f"{agg['mb_per_s']:.0f}"
    )


def summarize(rows: list[dict], sizes: list[float], caches: list[str]) -> str:
    n = max(r["repeat"] for r in rows) + 1
    lines = [
        f"MB/s = source bytes / seconds (1 MB = 1e6 B); median of {n} run(s), (min–max) in brackets. Ratios: median of "
        f"the {n}"
        " per-repeat ratios (each repeat runs cp, I/O only, ours and SI back to back, so a ratio compares runs that "
        "saw the same disk),"
        " then the ratio of the median MB/s in brackets.",
        "",
        "| size | source | cache | cp MB/s | I/O only MB/s | ours MB/s | SI MB/s | ours/cp (goal ≥ 0.8) | ours/SI "
        "(goal ≥ 3) | ours/I/O only | I/O only/SI | ours peak RSS MB | SI peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"sglx": "SpikeGLX int16 385→384 ch (forced copy)", "f32": "raw float32 384 ch → int16"}
    present = {r["source"] for r in rows}
    for size in sizes:
        for source in [s for s in ("sglx", "f32") if s in present]:
            for cache in caches:
                cp, io, ours, si = (
                    _median(rows, size_gb=size, source=source, cache=cache, path=p) for p in ("cp", "io", "ours", "si")
                )
                vs_cp, vs_si, vs_io = (
                    _paired_ratio(rows, other, size_gb=size, source=source, cache=cache) for other in ("cp", "si", "io")
                )
                io_vs_si = _paired_ratio(rows, "si", mine="io", size_gb=size, source=source, cache=cache)
                lines.append(
                    f"| {size:g} GB | {names[source]} | {cache} | {_mbs(cp)} | {_mbs(io)} | {_mbs(ours)} | {_mbs(si)} "
                    "| "
                    f"{vs_cp} | {vs_si} | {vs_io} | {io_vs_si} | {ours['peak_rss_mb']:.0f} | {si['peak_rss_mb']:.0f} |"
                )
    lines += [
        "",
        "| size | zero-copy (int16 raw, 385 ch) | cache | seconds (hash in place) | MB/s hashed | recording bytes "
        "written to store (goal 0) | manifest bytes | peak RSS MB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for size in sizes if "i16" in present else []:
        for cache in caches:
            hits = [r for r in rows if r["size_gb"] == size and r["source"] == "i16" and r["cache"] == cache]
            z = _median(rows, size_gb=size, source="i16", cache=cache)
            written = max(r["store_bytes_written"] for r in hits)
            symlinked = all(r["symlink"] and r["zero_copy"] and r["bytes_written_reported"] == 0 for r in hits)
            lines.append(
                f"| {size:g} GB | symlink={symlinked} | {cache} | {z['seconds']:.2f} | {_mbs(z)} | {written} | "
                f"{z['manifest_bytes']} | {z['peak_rss_mb']:.0f} |"
            )
    if len(sizes) >= 2:
        small, big = min(sizes), max(sizes)
        lines += [
            "",
            f"| peak RSS (VmHWM) of our conversion, fresh process, median over all its runs | {small:g} GB | {big:g} "
            f"GB | ratio {big:g}/{small:g} (goal ≤ 1.10) |",
            "|---|---:|---:|---:|",
        ]
        for source, label in [
            (s, label)
            for s, label in (("sglx", names["sglx"]), ("f32", names["f32"]), ("i16", "int16 raw zero-copy (hash only)"))
            if s in present
        ]:
            path = "ours_zero_copy" if source == "i16" else "ours"
            a = statistics.median(
                r["peak_rss_mb"] for r in rows if r["size_gb"] == small and r["source"] == source and r["path"] == path
            )
            b = statistics.median(
                r["peak_rss_mb"] for r in rows if r["size_gb"] == big and r["source"] == source and r["path"] == path
            )
            lines.append(f"| {label} | {a:.1f} MB | {b:.1f} MB | {b / a:.3f} |")
    same = [
        r["checksum"] == s["checksum"]
        for r in rows
        for s in rows
        if r["source"] == s["source"] == "sglx"
        and r["path"] == "ours"
        and s["path"] == "si"
        and "checksum" in s
        and all(r[k] == s[k] for k in ("size_gb", "cache", "repeat"))
    ]
    if "sglx" in present:
        lines += [
            "",
            "SpikeGLX: our recording.bin byte-identical to SpikeInterface's output (xxh3-128): "
            f"{all(same) and bool(same)} ({len(same)} pairs compared).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--cache", choices=["cold", "warm", "both"], default="both")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per path; the fastest is reported (same rule for all paths)"
    )
    parser.add_argument("--tmp-root", type=Path, default=Path("/tmp"))
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=["sglx", "f32", "i16"],
        default=["sglx", "f32", "i16"],
        help="which inputs to measure (default: all)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    caches = ["cold", "warm"] if args.cache == "both" else [args.cache]
    rows: list[dict] = []
    for size in args.sizes_gb:
        rows += bench_size(size, args.tmp_root, caches, args.repeats, args.sources)
    table = summarize(rows, args.sizes_gb, caches)
    host = {
        "nproc": os.cpu_count(),
        "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    when = time.strftime("%Y-%m-%d %H:%M")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"command": " ".join([Path(sys.executable).name, *sys.argv]), "when": when, "host": host, "rows": rows},
            indent=1,
        )
        + "\n"
    )
    print(table)
    print(f"\nrows written to {RESULTS}")


if __name__ == "__main__":
    main()
