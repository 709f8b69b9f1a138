"""One partition per probe of a session; keys are ``<date>__<root>__<session>__<probe>`` (see ``core.sessions``)."""

from __future__ import annotations

import dagster as dg

from ks_platform.core.names import SESSIONS_PARTITIONS_NAME

session_partitions = dg.DynamicPartitionsDefinition(name=SESSIONS_PARTITIONS_NAME)
