"""Platform configuration as a Dagster resource: store root, landing roots, backend."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from ks_platform.core.names import BACKEND_ENV, LANDING_ENV, RUN_ID_ENV, STORE_ENV
from ks_platform.core.sessions import parse_partition_key, session_dir
from ks_platform.core.store import SessionStore

DEFAULT_STORE = "data/store"
DEFAULT_LANDING = "rig1=data/landing/rig1"


def parse_landing_roots(spec: str) -> dict[str, Path]:
    """``name=path[,name=path…]`` → ``{name: path}``."""
    roots: dict[str, Path] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, path = item.partition("=")
        if not path:
            raise ValueError(f"landing root {item!r} must be written name=path")
        roots[name.strip()] = Path(path.strip()).expanduser().resolve()
    return roots


class PlatformResource(dg.ConfigurableResource):
    """Where sessions land and where results are stored, and which compute backend sorts.

    Defaults come from ``KS_PLATFORM_STORE``, ``KS_PLATFORM_LANDING`` (``name=path,…``) and
    ``KS_PLATFORM_BACKEND`` (``auto``, ``cpu``, ``cuda[:N]``, ``rocm[:N]``).
    """

    store_root: str = DEFAULT_STORE
    landing_roots: str = DEFAULT_LANDING
    backend: str = "auto"
    allow_zero_copy: bool = True

    @classmethod
    def from_env(cls) -> PlatformResource:
        return cls(
            store_root=os.environ.get(STORE_ENV, DEFAULT_STORE),
            landing_roots=os.environ.get(LANDING_ENV, DEFAULT_LANDING),
            backend=os.environ.get(BACKEND_ENV, "auto"),
        )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Name this process's run for the session lock (``core/store.py``): steps of one run take turns silently."""
        if context.run_id:
            os.environ[RUN_ID_ENV] = context.run_id

    def roots(self) -> dict[str, Path]:
        return parse_landing_roots(self.landing_roots)

    def store(self, partition_key: str) -> SessionStore:
        """The partition's outputs, checked against the key grammar before any path is made from it."""
        parse_partition_key(partition_key)
        return SessionStore(Path(self.store_root).expanduser().resolve(), partition_key)

    def session_dir(self, partition_key: str) -> Path:
        """The landing folder of the partition's session."""
        return session_dir(parse_partition_key(partition_key), self.roots())

    def probe(self, partition_key: str) -> str:
        """The partition's probe, as its key names it (readers accept the real name or its key name)."""
        return parse_partition_key(partition_key).probe
