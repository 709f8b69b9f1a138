"""Small synthetic recordings shared by the format tests (fixed seed, 32 channels, two shanks)."""

from __future__ import annotations

import datetime as dt

import numpy as np

FS = 30000.0
N_CHANNELS = 32
DATE = dt.date(2025, 11, 14)


def traces(n_samples: int = 90000, seed: int = 7) -> np.ndarray:
    """int16 noise ``[n_samples, 32]`` with a few full-scale values (exact round-trips are checked)."""
    rng = np.random.default_rng(seed)
    data = np.clip(np.rint(rng.normal(0.0, 400.0, (n_samples, N_CHANNELS))), -32767, 32767).astype(np.int16)
    data[5, 3], data[6, 4] = 32767, -32767
    return data


def positions() -> np.ndarray:
    """Two shanks 250 µm apart, two columns 32 µm apart, 20 µm rows (µm)."""
    rows = np.arange(N_CHANNELS // 4) * 20.0
    shank = [
        np.column_stack([np.tile([s * 250.0 + 11.0, s * 250.0 + 43.0], len(rows)), np.repeat(rows, 2)]) for s in (0, 1)
    ]
    return np.vstack(shank)


def shank_ids() -> list[int]:
    return [0] * (N_CHANNELS // 2) + [1] * (N_CHANNELS // 2)


#: Windows checked against the written traces: starts, ends, block boundaries (4096) and odd sizes.
WINDOWS = [(0, 1), (0, 4096), (4095, 4097), (4000, 12289), (8191, 8193), (12345, 54321), (30000, 30000)]


def windows(n_samples: int) -> list[tuple[int, int]]:
    inside = [(a, b) for a, b in WINDOWS if b <= n_samples]
    return inside + [(n_samples - 4097, n_samples), (n_samples - 1, n_samples), (0, n_samples)]
