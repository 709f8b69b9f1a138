"""Quality: SpikeInterface metrics of the sorted units, with a table, figures and tunable checks."""

import dagster as dg

from ks_platform.core import pipeline
from ks_platform.core.names import SESSION_GROUP
from ks_platform.core.progress import ThrottledProgress
from ks_platform.core.quality import QualityThresholds, load_unit_metrics
from ks_platform.defs.labels import labelled_units
from ks_platform.defs.partitions import session_partitions
from ks_platform.defs.reporting import metadata_table, step_result, user_errors_as_failures
from ks_platform.defs.resources import PlatformResource
from ks_platform.defs.review import phy_bundle

_DEFAULTS = QualityThresholds()
#: Columns shown in the UI's table, with their types.
TABLE_COLUMNS = {
    "unit_id": "int",
    "kilosort_label": "string",
    "curated_label": "string",
    "bombcell_label": "string",
    "n_spikes": "int",
    "firing_rate": "float",
    "snr": "float",
    "isi_violations_ratio": "float",
    "isi_violations_count": "int",
    "presence_ratio": "float",
    "amplitude_cutoff": "float",
    "x_um": "float",
    "y_um": "float",
}


class QualityResource(dg.ConfigurableResource):
    """Thresholds of the ``unit_metrics`` checks; set them in the launchpad's resource config or in definitions."""

    isi_violations_ratio: float = _DEFAULTS.isi_violations_ratio
    max_violating_fraction: float = _DEFAULTS.max_violating_fraction
    min_units: int = _DEFAULTS.min_units

    def thresholds(self) -> QualityThresholds:
        return QualityThresholds(self.isi_violations_ratio, self.max_violating_fraction, self.min_units)


@dg.asset(
    partitions_def=session_partitions,
    group_name=SESSION_GROUP,
    code_version="2",
    deps=[phy_bundle, labelled_units],
    kinds={"spikeinterface"},
    owners=["team:ephys"],
    description="6 · Unit quality: SpikeInterface metrics per unit (firing rate, SNR, ISI violations, presence ratio, "
    "amplitude cutoff) beside Kilosort's, the lab's and bombcell's labels, with a drift map, units on the probe and "
    "waveforms.",
)
def unit_metrics(context: dg.AssetExecutionContext, platform: PlatformResource) -> dg.MaterializeResult:
    with user_errors_as_failures():
        key = context.partition_key
        output = pipeline.measure_units(
            platform.store(key),
            platform.session_dir(key),
            platform.probe(key),
            progress=ThrottledProgress(context.log.info, "unit_metrics"),
        )
    rows = output.metadata.pop("units")
    table = metadata_table(rows, TABLE_COLUMNS)
    context.log.info(
        f"{output.metadata['n_units']} units, median SNR {output.metadata['median_snr']:.1f}, median rate "
        f"{output.metadata['median_firing_rate_hz']:.1f} Hz"
    )
    return step_result(output, extra={"units": table})


@dg.asset_check(
    asset=unit_metrics,
    partitions_def=session_partitions,
    description="Enough units were sorted (default ≥ 1; QualityResource.min_units).",
)
def unit_metrics_has_units(
    context: dg.AssetCheckExecutionContext, quality: QualityResource, platform: PlatformResource
) -> dg.AssetCheckResult:
    metrics = load_unit_metrics(platform.store(context.partition_key))
    n = int(metrics.summary["n_units"])
    return dg.AssetCheckResult(passed=n >= quality.min_units, metadata={"n_units": n, "required": quality.min_units})


@dg.asset_check(
    asset=unit_metrics,
    partitions_def=session_partitions,
    description="Not too many units break the refractory period: at most max_violating_fraction (default 50 %) of "
    "units with an ISI-violation ratio above isi_violations_ratio (default 0.5).",
)
def unit_metrics_isi_violations(
    context: dg.AssetCheckExecutionContext, quality: QualityResource, platform: PlatformResource
) -> dg.AssetCheckResult:
    thresholds = quality.thresholds()
    metrics = load_unit_metrics(platform.store(context.partition_key))
    fraction = metrics.violating_fraction(thresholds)
    violating = (
        metrics.table.loc[metrics.table["isi_violations_ratio"] > thresholds.isi_violations_ratio, "unit_id"]
        .astype(int)
        .tolist()
    )
    return dg.AssetCheckResult(
        passed=fraction <= thresholds.max_violating_fraction,
        description=f"{len(violating)} of {len(metrics.table)} units above ISI-violation ratio "
        f"{thresholds.isi_violations_ratio} ({fraction:.0%}; allowed {thresholds.max_violating_fraction:.0%})",
        metadata={
            "violating_fraction": fraction,
            "violating_units": dg.MetadataValue.json(violating),
            "isi_violations_ratio_limit": thresholds.isi_violations_ratio,
            "max_violating_fraction": thresholds.max_violating_fraction,
        },
    )
