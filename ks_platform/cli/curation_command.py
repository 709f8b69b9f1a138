"""``ks-platform curation list | restore | export``: the Phy curations a session keeps, put one back, share one as NWB."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ks_platform.core.store import SessionStore


def resolve(target: str) -> tuple[SessionStore, Path | None, str | None]:
    """``(store, landing folder or None, probe or None)`` of a partition key (in ``KS_PLATFORM_STORE``) or of a
    session output folder (``ks-platform sort --out``)."""
    from ks_platform.core.errors import SessionInputError
    from ks_platform.core.store import SessionStore, read_json
    from ks_platform.defs.resources import PlatformResource

    folder = Path(target)
    if folder.is_dir() and ((folder / "phy").is_dir() or (folder / "sorting").is_dir()):
        store = SessionStore.in_folder(folder)
        manifest = read_json(store.raw_manifest) if store.raw_manifest.is_file() else {}
        landing = Path(manifest["session_dir"]) if manifest.get("session_dir") else None
        return store, landing if landing is not None and landing.is_dir() else None, None
    platform = PlatformResource.from_env()
    try:
        store = platform.store(target)
    except ValueError as exc:
        raise SessionInputError(
            folder,
            f"neither a session output folder nor a partition key ({exc})",
            "pass a key `ks-platform sessions` "
            "lists (with KS_PLATFORM_STORE set) or a folder holding phy/ and sorting/",
        ) from None
    if not store.dir.is_dir():
        raise SessionInputError(
            store.dir, "the store holds nothing for this key", "check KS_PLATFORM_STORE and the key"
        )
    try:
        landing = platform.session_dir(target)
    except (SessionInputError, ValueError, OSError):
        landing = None  # the landing folder is gone: the store's record of it is used
    return store, landing if landing is not None and landing.is_dir() else None, platform.probe(target)


def _cmd_list(args: argparse.Namespace) -> int:
    from ks_platform.core import curation, nwb_export

    store, _, _ = resolve(args.target)
    rows = curation.list_curations(store)
    versions = nwb_export.list_versions(store)
    if args.json:
        print(json.dumps({"curations": rows, "nwb": versions}, indent=1))
        return 0
    for row in rows:
        counts = ", ".join(f"{k} {v}" for k, v in (row["counts"] or {}).items() if v)
        flags = [
            "applies" if row["applies_to_its_sorting"] else "",
            "current sorting" if row["sorting_is_current"] else "earlier sorting",
            "" if row["sorting_kept"] else "sorting not kept",
        ]
        print(
            f"{row['snapshot']}  saved {row['saved_at']}  {counts or 'no labels'}; {len(row['merges'] or {})} merges, "
            f"{len(row['splits'] or {})} splits  [{', '.join(f for f in flags if f)}]"
        )
    print(f"{len(rows)} curation(s) kept in {curation.curation_dir(store) / curation.HISTORY}")
    for version in versions["versions"]:
        mark = "*" if version["identifier"] == versions["current"] else " "
        fingerprint = version.get("curation_fingerprint") or "-"
        print(
            f"{mark} nwb/{version['file']}  {version.get('curation_status', '?')} {fingerprint}  sorting "
            f"{version.get('sorting_version') or '?'}  written {version['written_at']}"
        )
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from ks_platform.core import pipeline

    store, _, _ = resolve(args.target)
    restored = pipeline.restore_curation(store, args.snapshot, args.from_sorting)
    if restored.set_aside is not None:
        print(f"kept the unreadable files in {restored.set_aside}")
    print(f"restored {restored.source} into {store.phy_dir} ({', '.join(restored.files)}); Phy's cache cleared")
    print("open it: phy template-gui params.py; record it: materialize curated_units (job curate_session)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ks_platform.core import curation, nwb_export, pipeline

    store, landing, probe = resolve(args.target)
    verify = pipeline.publish_check(landing, store, probe) if landing is not None else None
    if args.snapshot is None:
        export = nwb_export.export_units_nwb(store, landing, verify)
        print(f"{export.path.resolve()}  ({export.curation_status}, identifier {export.identifier})")
        return 0
    snapshot = curation.curation_dir(store) / curation.HISTORY / Path(args.snapshot).name
    basis, _, fingerprint = snapshot.name.partition("__")
    path = nwb_export.export_kept_curation(store, basis, fingerprint, landing, verify)
    print(f"{path}  (curation {snapshot.name})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "curation",
        help="the Phy curations a session keeps: list, restore one into the Phy folder, export one as NWB",
        description="Every curation saved in Phy is kept under <session>/curation/ with the sorting it was made on. "
        "TARGET is a partition key (store from KS_PLATFORM_STORE) or a session output folder (ks-platform sort --out).",
    )
    commands = parser.add_subparsers(dest="curation_command", required=True)
    listing = commands.add_parser("list", help="the kept curations and NWB versions of a session")
    listing.add_argument("target")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_cmd_list)
    restore = commands.add_parser(
        "restore",
        help="put a kept curation (default: the latest of the Phy folder's sorting) back into the Phy folder",
        description="Puts a kept curation back into the Phy folder: the latest one saved for the folder's sorting, "
        "--snapshot NAME for an earlier one (a curation/history/ folder, see `list`), or --from-sorting for "
        "Kilosort's clusters (spike_clusters.npy from the sorting). What the folder held is kept first (history, or "
        "curation/unreadable/ when Phy's files cannot be read); Phy's cache (.phy/) is cleared. Then materialize "
        "curated_units: it records the restored curation as the one that applies.",
    )
    restore.add_argument("target")
    which = restore.add_mutually_exclusive_group()
    which.add_argument("--snapshot", help="a folder name under curation/history/ (default: the latest of the sorting)")
    which.add_argument("--from-sorting", action="store_true", help="Kilosort's clusters (start the curation again)")
    restore.set_defaults(func=_cmd_restore)
    export = commands.add_parser(
        "export",
        help="write a kept curation as its own NWB version (default: the current sorting and curation)",
        description="Writes nwb/versions/<identifier>.nwb for a kept curation (--snapshot, also of an earlier "
        "sorting), without changing which file nwb/units.nwb links to; without --snapshot, what units_nwb writes.",
    )
    export.add_argument("target")
    export.add_argument("--snapshot", help="a folder name under curation/history/")
    export.set_defaults(func=_cmd_export)
