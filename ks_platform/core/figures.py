"""Small PNG figures, and their embedding as markdown images for the Dagster UI."""

from __future__ import annotations

import base64
from pathlib import Path


def png_markdown(path: Path, alt: str = "figure") -> str:
    """A markdown image with the PNG inlined (the Dagster UI renders it in the metadata panel)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})"
