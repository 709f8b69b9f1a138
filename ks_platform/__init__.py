"""ks_platform: Kilosort 4 spike sorting of electrophysiology sessions, orchestrated by Dagster."""

__version__ = "0.1.0"
