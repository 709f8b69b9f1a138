"""Operations on the platform's Dagster instance shared by the CLI: registering sessions and backfills."""
