"""Small PNG figures, and their embedding as markdown images for the Dagster UI."""

from __future__ import annotations

import base64
from pathlib import Path


def png_markdown(path: Path, alt: str = "figure") -> str:
    """A markdown image with the PNG inlined (the Dagster UI renders it in the metadata panel)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})"


def new_figure(width: float, height: float):
    """``(pyplot, figure)`` on the headless Agg backend (no display on sort hosts or in containers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def save_figure(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
