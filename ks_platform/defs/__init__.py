"""Dagster layer: thin wrappers that call :mod:`ks_platform.core.pipeline` and report to Dagster."""
