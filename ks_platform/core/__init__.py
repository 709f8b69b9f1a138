"""Domain core: formats, probes, conversion, sorting, Phy, lineage. Imports no Dagster."""
