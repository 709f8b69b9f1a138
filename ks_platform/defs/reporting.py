"""Turn core step outputs and errors into Dagster metadata, results and failures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from ks_platform.core.errors import SessionInputError
from ks_platform.core.figures import png_markdown
from ks_platform.core.pipeline import StepOutput


def metadata_table(rows: list[dict[str, Any]], columns: dict[str, str]) -> dg.MetadataValue:
    """A table for the UI: ``columns`` (name → kind: string, int, float, bool) of each row; NaN and missing are empty."""

    def cell(value: Any) -> Any:
        return None if isinstance(value, float) and value != value else value

    return dg.MetadataValue.table(
        records=[dg.TableRecord({name: cell(row.get(name)) for name in columns}) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns.items()]),
    )


def to_metadata_value(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return dg.MetadataValue.json(value if not isinstance(value, tuple) else list(value))
    if isinstance(value, Path):
        return dg.MetadataValue.path(str(value))
    if value is None:
        return dg.MetadataValue.text("—")
    return value


def step_result(
    output: StepOutput, *, path_key: str | None = "path", extra: dict[str, Any] | None = None
) -> dg.MaterializeResult:
    """A ``MaterializeResult`` with the step's data version, metadata and inline figures."""
    metadata: dict[str, Any] = {key: to_metadata_value(value) for key, value in output.metadata.items()}
    if path_key and path_key in output.metadata:
        metadata[path_key] = dg.MetadataValue.path(str(output.metadata[path_key]))
    for name, png in output.figures.items():
        metadata[f"figure_{name}"] = dg.MetadataValue.md(png_markdown(png, name))
    metadata.update(extra or {})
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(output.data_version))


@contextmanager
def user_errors_as_failures() -> Iterator[None]:
    """A bad input becomes one readable step failure (naming the file and the fix), never retried."""
    try:
        yield
    except SessionInputError as exc:
        raise dg.Failure(
            description=str(exc),
            metadata={"file": dg.MetadataValue.path(str(exc.path)), "problem": exc.problem, "fix": exc.fix},
            allow_retries=False,
        ) from exc
