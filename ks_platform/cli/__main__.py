"""``python -m ks_platform.cli``: the ks-platform command."""

from ks_platform.cli import main

raise SystemExit(main())
