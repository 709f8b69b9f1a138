"""``ks-platform sort``: one recording → a sorting (Kilosort 4 unless the session config or ``--sorter`` names another)
+ Phy folder, without Dagster (also the images' entry point).

    ks-platform sort SESSION_DIR --out OUT [--probe-name imec0] [--probe FILE] [--settings FILE] [--backend cpu|cuda|rocm|auto]
    ks-platform sort SESSION_DIR --out OUT --sorter kilosort4,spykingcircus2     (both sorted, then compared)
    ks-platform sort recording.bin --n-channels 385 --fs 30000 --probe probe.json --out OUT
    ks-platform sort recording.bin --out OUT          (recording.json sidecar: n_channels, sampling_frequency, probe_file)

Writes ``OUT/{raw_recording.json, probe/, binary/, sorting/, phy/}`` (and, for several sorters,
``OUT/sorters/<name>/{sorting,phy}`` and ``OUT/agreement/``) by running the assets' own steps
(``core/pipeline.py``, each under the session's write lock, each atomically) over one scan of the folder. Progress: a bar for the conversion, Kilosort's own stage logs after it.

A zero-copy ``binary/recording.bin`` is a symlink to the raw file (``--link``): inside an image (``KS_PLATFORM_IMAGE``
set) it is relative by default, so the Phy folder also opens on the host, where the mounts have other paths.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ks_platform.core.names import BACKEND_ENV, IMAGE_ENV, LINK_ENV


def _scan(args: argparse.Namespace):
    """The session folder's scan, or a scan of the one binary file given (sidecar and flags)."""
    from ks_platform.core.errors import SessionInputError
    from ks_platform.core.formats import raw_binary, scan_session, single_source_scan
    from ks_platform.core.formats.raw_binary import describe_binary

    path = Path(args.recording).resolve()
    if path.is_dir():
        return scan_session(path)
    if not path.is_file():
        raise SessionInputError(
            path, "no such session folder or binary file", "give a session folder or an int16 .bin file"
        )
    # A same-stem JSON sidecar (raw_binary format) supplies what the flags do not; flags win.
    sidecar = path.with_suffix(".json")
    meta = raw_binary._sidecar(sidecar) if sidecar.is_file() else {}
    flags = {
        "n_channels": args.n_channels,
        "sampling_frequency": args.fs,
        "dtype": args.dtype,
        "uv_per_bit": args.uv_per_bit,
        "recording_date": args.date,
    }
    meta.update({key: value for key, value in flags.items() if value is not None})
    meta.setdefault("dtype", "int16")
    meta.setdefault("uv_per_bit", 1.0)
    needs = (("--n-channels", "n_channels"), ("--fs", "sampling_frequency"), ("--probe", "probe_file"))
    missing = [flag for flag, key in needs if meta.get(key) is None and not (key == "probe_file" and args.probe)]
    if missing:
        raise SessionInputError(
            path,
            f"a bare binary needs {', '.join(missing)} (or a {sidecar.name} sidecar with them)",
            "pass the channel count, the sampling rate and a probe file, or give the session folder",
        )
    return single_source_scan(describe_binary(path, meta, sidecar if sidecar.is_file() else path, path.parent))


def _relative_link(choice: str) -> bool:
    """``--link``: auto is relative inside an image (its mount paths mean nothing on the host), absolute elsewhere."""
    if choice == "auto":
        return bool(os.environ.get(IMAGE_ENV))
    return choice == "relative"


def _cmd_sort(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ks_platform.core import pipeline
    from ks_platform.core.errors import SessionInputError
    from ks_platform.core.store import SessionStore

    store = SessionStore.in_folder(Path(args.out))
    try:
        scan = _scan(args)
        probe = scan.pick(args.probe_name)
        pipeline.observe_raw_recording(scan, store, probe)
        probe_map = pipeline.build_probe_map(
            scan, store, not args.no_zero_copy, probe, Path(args.probe) if args.probe else None
        )
        print(
            f"probe map: {probe_map.metadata['n_sorted_channels']} sorted channels, "
            f"{probe_map.metadata['n_shanks']} shank(s)"
        )
        with tqdm(
            total=100,
            unit="%",
            desc="recording binary",
            disable=args.quiet,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% [{elapsed}<{remaining}]",
        ) as bar:

            def progress(fraction: float, message: str) -> None:
                bar.update(max(0.0, fraction * 100 - bar.n))
                bar.set_postfix_str(message, refresh=False)

            binary = pipeline.build_recording_binary(
                scan, store, not args.no_zero_copy, progress, probe, relative_link=_relative_link(args.link)
            )
        kind = "zero-copy reference" if binary.metadata["zero_copy"] else "converted"
        print(f"binary: {kind}, xxh3 {binary.data_version}")
        sorter = _sorters(args.sorter)
        sorted_ = pipeline.sort_session(
            scan,
            store,
            backend=args.backend,
            log=None if args.quiet else print,
            settings_file=Path(args.settings) if args.settings else None,
            probe=probe,
            sorter=sorter,
        )
        phy = pipeline.export_phy(store, scan, probe)
        log = None if args.quiet else print
        compared = pipeline.sort_compared(scan, store, args.backend, log, probe=probe, sorter=sorter)
        agreement = (
            pipeline.compare_session_sorters(store, scan, probe, sorter) if compared.metadata["compared"] else None
        )
    except SessionInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = sorted_.metadata
    print(
        f"sorted with {meta['sorter']} {meta['sorter_version']}: {meta['n_units']} units ({meta['n_good_units']} good), "
        f"{meta['n_spikes']} spikes in {meta['sort_seconds']} s on {meta['lineage']['backend']['backend']}"
    )
    print(f"Phy folder: {phy.metadata['path']}\n  open it with: {phy.metadata['open_command']}")
    for name, item in compared.metadata.get("sortings", {}).items():
        print(f"{name}: {item['n_units']} units in {item['sort_seconds']} s; Phy folder: {item['phy_folder']}")
    for pair in agreement.metadata["pairs"] if agreement else []:
        first, second = pair["sorters"]
        print(
            f"agreement {first} vs {second}: {pair['matched']} units matched, {pair['only'][first]} only {first}, "
            f"{pair['only'][second]} only {second} ({agreement.metadata['path']})"
        )
    return 0


def _sorters(value: str | None) -> tuple[str, ...] | None:
    """``--sorter a,b`` checked like the config's ``sorter`` key (None: the session config decides)."""
    from ks_platform.core.sorters import parse_sorters

    return parse_sorters([name.strip() for name in value.split(",")], Path("--sorter")) if value else None


def register(sub) -> None:
    """Add sort."""
    sort = sub.add_parser("sort", help="sort one session folder or int16 binary into --out, without Dagster")
    sort.add_argument("recording", help="a session folder (any supported format) or an int16 interleaved .bin")
    sort.add_argument("--out", required=True, help="output folder (probe/, binary/, sorting/, phy/)")
    sort.add_argument(
        "--probe-name",
        help="which probe of a multi-probe session folder (imec0, ProbeA, a series name); needed when it holds several",
    )
    sort.add_argument(
        "--probe", help="probe file (probeinterface JSON, .prb, Kilosort .mat/.json); default: the session's own"
    )
    sort.add_argument("--settings", help="Kilosort 4 settings JSON, layered over the session's kilosort4-settings.json")
    sort.add_argument(
        "--sorter",
        help="sorter(s) instead of the session config's 'sorter': kilosort4, spykingcircus2, tridesclous2, "
        "mountainsort5, or a comma list (the first makes sorting/, the others are sorted into sorters/<name>/ and "
        "compared in agreement/); their parameters still come from the session config",
    )
    sort.add_argument(
        "--backend", default=os.environ.get(BACKEND_ENV, "auto"), help="auto, cpu, cuda[:N], rocm[:N], mps"
    )
    sort.add_argument(
        "--n-channels", type=int, help="bare binary: channels in the file (or the same-stem .json sidecar's n_channels)"
    )
    sort.add_argument("--fs", type=float, help="bare binary: sampling rate in Hz (or the sidecar's sampling_frequency)")
    sort.add_argument("--dtype", help="bare binary: sample type (default int16)")
    sort.add_argument(
        "--date",
        help="bare binary: recording date YYYY-MM-DD (or the sidecar's recording_date; else the file's "
        "modification date, said so in the lineage)",
    )
    sort.add_argument("--uv-per-bit", type=float, help="bare binary: µV per bit (metadata only; default 1.0)")
    sort.add_argument("--no-zero-copy", action="store_true", help="always write a copy of the binary into --out")
    sort.add_argument(
        "--link",
        choices=("auto", "relative", "absolute"),
        default=os.environ.get(LINK_ENV, "auto"),
        help="zero-copy symlink to the raw file: relative (resolves wherever the landing folder and --out keep their "
        "layout, on the host and in a container) or absolute; auto (default): relative inside an image",
    )
    sort.add_argument("--quiet", action="store_true", help="no progress bar, no sorter logs")
    sort.set_defaults(func=_cmd_sort)
