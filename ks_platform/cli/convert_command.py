"""``ks-platform convert``: one session folder → the int16 binary Kilosort reads, with a progress bar.

    ks-platform convert SESSION_DIR --out OUT [--no-zero-copy] [--quiet]

Writes ``OUT/raw_recording.json`` and ``OUT/binary/{recording.bin, binary.json}`` (the same files as the
``raw_recording`` and ``recording_binary`` assets, each atomically), then prints the zero-copy decision and
the xxh3-128 checksum. A source that already is interleaved int16 (SpikeGLX, Open Ephys binary, raw int16)
is verified by hashing it in place and referenced by a symlink unless ``--no-zero-copy`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def zero_copy_decision(source, binary) -> str:
    """One line saying whether the binary is a reference or a copy, and why."""
    if binary.zero_copy:
        return (
            f"zero-copy: {source.zero_copy_path.name} already is interleaved int16; referenced by a symlink, 0 "
            "bytes written"
        )
    if source.zero_copy_path is not None:
        return f"copied: zero-copy was turned off (--no-zero-copy); {binary.bytes_written} bytes written"
    return (
        f"converted: {source.format} {source.source_dtype} source → int16 ({source.scaling_note}); "
        f"{binary.bytes_written} bytes written"
    )


def _cmd_convert(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ks_platform.core.conversion import write_recording_binary
    from ks_platform.core.discovery import unexpected_error
    from ks_platform.core.errors import SessionInputError
    from ks_platform.core.formats import scan_session
    from ks_platform.core.sessions import fingerprint
    from ks_platform.core.store import SessionStore, write_json_atomic
    from ks_platform.core.timeline import relative_files, segment_table

    store = SessionStore.in_folder(Path(args.out))
    try:
        source = scan_session(Path(args.session_dir).resolve()).open(args.probe_name)
        manifest = {**source.summary(), "fingerprint": fingerprint(source, include_settings=False)}
        print(
            f"{source.format} recording {source.probe_name}: {source.duration_s:.1f} s, {source.n_channels} channels "
            f"({len(source.sorting_channels)} sorted), {source.size_bytes / 1e6:.0f} MB"
        )
        print(
            "\n".join(segment_table(relative_files(source.segments(), source.session_dir), source.sampling_frequency))
        )
        with tqdm(
            total=100,
            unit="%",
            desc="recording binary",
            disable=args.quiet,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% [{elapsed}<{remaining}]{postfix}",
        ) as bar:

            def progress(fraction: float, message: str) -> None:
                bar.set_postfix_str(message, refresh=False)
                bar.update(max(0.0, fraction * 100 - bar.n))

            binary = write_recording_binary(
                source, store.binary_dir, allow_zero_copy=not args.no_zero_copy, progress=progress
            )
        write_json_atomic(store.raw_manifest, manifest)  # last: a failed conversion leaves nothing in --out
    except SessionInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a reader bug or an input no check foresaw: one line, never a traceback
        print(f"error: {unexpected_error(Path(args.session_dir), exc)}", file=sys.stderr)
        return 2
    print(zero_copy_decision(source, binary))
    print(f"checksum: {binary.checksum_algorithm} {binary.checksum}")
    print(
        f"binary: {binary.path} ({binary.n_chan_bin} channels x {binary.n_samples} samples int16, "
        f"{binary.uv_per_bit:g} µV/bit) in {binary.seconds:.2f} s"
    )
    return 0


def register(sub) -> None:
    """Add convert."""
    convert = sub.add_parser(
        "convert", help="convert one session folder into the int16 binary Kilosort reads (progress bar, checksum)"
    )
    convert.add_argument("session_dir", help="a session folder in any supported format")
    convert.add_argument(
        "--probe-name", help="which probe of a multi-probe session folder (imec0, ProbeA, a series name)"
    )
    convert.add_argument("--out", required=True, help="output folder (raw_recording.json, binary/)")
    convert.add_argument(
        "--no-zero-copy", action="store_true", help="always write a copy, even for int16 interleaved sources"
    )
    convert.add_argument("--quiet", action="store_true", help="no progress bar")
    convert.set_defaults(func=_cmd_convert)
