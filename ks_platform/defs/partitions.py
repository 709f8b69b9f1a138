"""One partition per session; keys are ``<date>__<root>__<session>`` (see ``core.sessions``)."""

from __future__ import annotations

import dagster as dg

#: Named uniquely for this code location (dagster#29693).
SESSIONS_PARTITIONS_NAME = "ks_platform_sessions"
session_partitions = dg.DynamicPartitionsDefinition(name=SESSIONS_PARTITIONS_NAME)
