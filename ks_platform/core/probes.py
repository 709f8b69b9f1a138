"""Probe descriptions: load any format the lab has, validate, convert to Kilosort's probe dict, draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import probeinterface as pi
from probeinterface import Probe

from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats.base import RecordingSource
from ks_platform.core.names import KILOSORT_PROBE_JSON, PROBE_MANIFEST
from ks_platform.core.store import SessionStore, read_json


def load_probe_file(path: Path) -> Probe:
    """Read probeinterface JSON, ``.prb``, Kilosort ``.mat`` (chanMap) or Kilosort ``.json``."""
    path = Path(path)
    if not path.is_file():
        raise SessionInputError(path, "the probe file does not exist", "put the probe file in the session folder")
    try:
        if path.suffix == ".meta":
            return pi.read_spikeglx(path)
        if path.suffix == ".prb":
            group = pi.read_prb(path)
            return _single_probe(group, path)
        if path.suffix == ".mat":
            return _probe_from_kilosort_dict(_load_kilosort_probe(path), path)
        if path.suffix == ".json":
            text = path.read_text()
            if '"chanMap"' in text:
                return _probe_from_kilosort_dict(_load_kilosort_probe(path), path)
            return _single_probe(pi.read_probeinterface(path), path)
    except SessionInputError:
        raise
    except PermissionError:
        raise SessionInputError(
            path,
            "permission denied: the platform's user may not read the probe file",
            f"make it readable (e.g. chmod a+r '{path.name}')",
        ) from None
    except ValueError as exc:
        if "must be unique" in str(
            exc
        ):  # probeinterface refuses repeated positions; in a .prb a channel listed twice gets its geometry twice
            raise SessionInputError(
                path,
                f"two contacts share a channel or a position ({exc})",
                "give every contact its own channel index and its own (x, y) position",
            ) from None
        raise SessionInputError(
            path,
            f"cannot read the probe description (ValueError: {exc})",
            "provide a probeinterface JSON, .prb, or Kilosort .mat/.json probe",
        ) from exc
    except Exception as exc:  # parsers raise many kinds; the user needs the file and the cause
        raise SessionInputError(
            path,
            f"cannot read the probe description ({type(exc).__name__}: {exc})",
            "provide a probeinterface JSON, .prb, or Kilosort .mat/.json probe",
        ) from exc
    raise SessionInputError(
        path, f"unknown probe file type {path.suffix!r}", "use probeinterface .json, .prb, or Kilosort .mat/.json"
    )


def _load_kilosort_probe(path: Path) -> dict:
    from kilosort.io import load_probe

    return load_probe(path)


def _single_probe(group: pi.ProbeGroup, path: Path) -> Probe:
    if len(group.probes) != 1:
        raise SessionInputError(
            path, f"the file describes {len(group.probes)} probes", "give one probe per session (split the probe group)"
        )
    return group.probes[0]


def _probe_from_kilosort_dict(ks_probe: dict, path: Path) -> Probe:
    positions = np.column_stack([np.asarray(ks_probe["xc"], float), np.asarray(ks_probe["yc"], float)])
    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=positions, shapes="square", shape_params={"width": 12})
    probe.set_device_channel_indices(np.asarray(ks_probe["chanMap"], dtype=int).ravel())
    kcoords = np.asarray(ks_probe.get("kcoords", np.zeros(len(positions))), dtype=float).ravel()
    probe.set_shank_ids(kcoords.astype(int).astype(str))
    probe.annotate(source=str(path))
    return probe


def probe_for_recording(source: RecordingSource) -> tuple[Probe, Path]:
    """The probe of a recording and the file it came from: explicit probe file, else the format's own geometry."""
    if source.probe_file is not None:
        probe = load_probe_file(source.probe_file)
        origin = source.probe_file
    elif source.probe is not None:
        probe, origin = source.probe, source.data_files[0]
    else:
        raise SessionInputError(
            source.data_files[0] if source.data_files else source.session_dir,
            f"no probe description: the recording of probe {source.probe_name!r} carries no geometry",
            "put a probe file (probeinterface .json, .prb, Kilosort .mat) in the session folder and name it in "
            'ks_session.json: {"probes": {"' + (source.probe_name or "probe") + '": {"probe_file": "probe.json"}}}',
        )
    validate_probe(probe, source.n_channels, origin)
    return probe, origin


def validate_probe(probe: Probe, n_channels: int, path: Path) -> None:
    """Refuse probes Kilosort would mis-sort: duplicates, out-of-range channels, wrong units, bad shanks."""
    channels = probe.device_channel_indices
    if channels is None:
        raise SessionInputError(
            path,
            "the probe has no channel wiring (device_channel_indices)",
            "wire each contact to a channel of the recording",
        )
    channels = np.asarray(channels)
    wired = channels[channels >= 0]
    values, counts = np.unique(wired, return_counts=True)
    if (counts > 1).any():
        dupes = values[counts > 1][:5].tolist()
        raise SessionInputError(
            path, f"channels {dupes} are wired to more than one contact", "give every contact its own channel index"
        )
    if wired.size and wired.max() >= n_channels:
        raise SessionInputError(
            path,
            f"the probe uses channel {int(wired.max())} but the recording has only {n_channels} channels "
            f"(0..{n_channels - 1})",
            "use the probe file that matches this recording",
        )
    if wired.size == 0:
        raise SessionInputError(path, "no contact is wired to a channel", "set the probe's channel indices")
    positions = np.asarray(probe.contact_positions[:, :2], dtype=float)
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad.size:
        contacts = ", ".join(str(int(i)) for i in bad[:5]) + (f" (+{bad.size - 5} more)" if bad.size > 5 else "")
        raise SessionInputError(
            path,
            f"{bad.size} contact position(s) are not finite numbers (NaN or infinity): contact(s) {contacts}",
            "give every contact a finite (x, y) position in micrometres (the probe file the rig or the maker wrote)",
        )
    _, pos_counts = np.unique(np.round(positions, 3), axis=0, return_counts=True)
    if (pos_counts > 1).any():
        raise SessionInputError(
            path,
            f"{int((pos_counts > 1).sum())} contact positions are used twice",
            "give every contact its own (x, y) position",
        )
    if probe.si_units != "um":
        raise SessionInputError(
            path, f"probe positions are in {probe.si_units!r}", "give contact positions in micrometres (um)"
        )
    span = float(np.ptp(positions[:, 1])) if len(positions) > 1 else 1.0
    if len(positions) >= 8 and span < 1.0:
        raise SessionInputError(
            path,
            f"contacts span only {span:g} units vertically; positions look like mm or m",
            "give contact positions in micrometres (um)",
        )
    shanks = probe.shank_ids
    if shanks is not None and len(shanks) and any(s == "" for s in shanks) and any(s != "" for s in shanks):
        raise SessionInputError(
            path, "some contacts have a shank id and others do not", "give every contact a shank id, or none"
        )


def kilosort_probe(
    probe: Probe, binary_channels: tuple[int, ...], sorting_channels: tuple[int, ...] | None = None
) -> dict[str, np.ndarray | int]:
    """Kilosort's probe dict; ``chanMap`` indexes the rows of the binary, which hold ``binary_channels``.

    Only contacts wired to ``sorting_channels`` (default: all binary channels) are sorted.
    """
    sortable = set(binary_channels if sorting_channels is None else sorting_channels)
    row_of_channel = {channel: row for row, channel in enumerate(binary_channels) if channel in sortable}
    rows, xc, yc, kcoords = [], [], [], []
    shank_ids = (
        probe.shank_ids if probe.shank_ids is not None and len(probe.shank_ids) else [""] * probe.get_contact_count()
    )
    shank_numbers = {s: i for i, s in enumerate(sorted(set(shank_ids), key=lambda s: (len(s), s)))}
    for contact, channel in enumerate(probe.device_channel_indices):
        if channel < 0 or channel not in row_of_channel:
            continue
        rows.append(row_of_channel[channel])
        xc.append(probe.contact_positions[contact, 0])
        yc.append(probe.contact_positions[contact, 1])
        kcoords.append(shank_numbers[shank_ids[contact]])
    order = np.argsort(rows, kind="stable")
    return {
        "chanMap": np.asarray(rows, dtype=np.int32)[order],
        "xc": np.asarray(xc, dtype=np.float32)[order],
        "yc": np.asarray(yc, dtype=np.float32)[order],
        "kcoords": np.asarray(kcoords, dtype=np.float32)[order],
        "n_chan": len(rows),
    }


def kilosort_probe_to_json(ks_probe: dict) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ks_probe.items()}


def kilosort_probe_from_json(payload: dict) -> dict:
    out = {
        k: np.asarray(payload[k], dtype=np.int32 if k == "chanMap" else np.float32)
        for k in ("chanMap", "xc", "yc", "kcoords")
    }
    out["n_chan"] = int(payload["n_chan"])
    return out


def load_probe_map(store: SessionStore) -> tuple[dict, dict]:
    """The Kilosort probe dict and the probe manifest of a session's ``probe/`` folder."""
    if not (store.probe_dir / PROBE_MANIFEST).is_file():
        raise SessionInputError(
            store.probe_dir / PROBE_MANIFEST,
            "the session has no probe map (probe_map was not materialized, or its output was removed)",
            "materialize probe_map for this partition first (or the whole sort_session job)",
        )
    return kilosort_probe_from_json(read_json(store.probe_dir / KILOSORT_PROBE_JSON)), read_json(
        store.probe_dir / PROBE_MANIFEST
    )


def plot_probe(probe: Probe, path: Path, title: str = "", highlight_channels: tuple[int, ...] | None = None) -> Path:
    """PNG of the probe: the whole probe with the recorded span boxed (left) and that span enlarged (right), the
    recorded (sorted) channels in orange, other contacts grey, each shank's id under it."""
    from matplotlib.patches import Rectangle
    from probeinterface.plotting import plot_probe as pi_plot_probe

    from ks_platform.core.figures import new_figure, save_figure

    recorded = (
        np.isin(probe.device_channel_indices, highlight_channels)
        if highlight_channels
        else np.ones(probe.get_contact_count(), bool)
    )
    colors = list(np.where(recorded, "tab:orange", "lightgrey"))
    positions = probe.contact_positions[recorded] if recorded.any() else probe.contact_positions
    contact_size = max(max(params.values(), default=10) for params in probe.contact_shape_params)  # µm: radius/width
    margin = 2 * float(contact_size) + 20
    (x0, y0), (x1, y1) = positions.min(axis=0) - margin, positions.max(axis=0) + margin

    plt, fig = new_figure(6, 6)
    whole, zoom = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    for ax in (whole, zoom):
        pi_plot_probe(
            probe,
            ax=ax,
            contacts_colors=colors,
            with_contact_id=False,
            title=False,
            contact_kwargs={
                "alpha": 1.0,
                "edgecolor": "dimgrey",
                "lw": 0.5 if len(colors) <= 128 else 0.0,
                "zorder": 2,
            },
            probe_shape_kwargs={"facecolor": "#e4e4e4", "edgecolor": "grey", "alpha": 1.0, "zorder": 1},
        )
        ax.set_xlabel("x (µm)", fontsize=9)
        ax.set_ylabel("")
        ax.tick_params(labelsize=8)
    whole.set_xticks([])
    whole.set_xlabel("")
    whole.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="tab:red", linewidth=1.2))
    whole.set_ylabel("depth along the probe (µm)", fontsize=9)
    whole.set_title("whole probe", fontsize=9)
    zoom.set_xlim(x0, x1)
    zoom.set_ylim(y0, y1)
    if (y1 - y0) > 3 * (x1 - x0):  # a long narrow span (a Neuropixels bank): stretch it across the panel
        zoom.set_aspect("auto")
    zoom.set_title(f"recorded span: {positions[:, 1].min():.0f}–{positions[:, 1].max():.0f} µm", fontsize=9)
    shank_ids = np.asarray(probe.shank_ids if probe.shank_ids is not None else [""] * probe.get_contact_count())
    if len(names := sorted(set(shank_ids) - {""})) > 1:
        for shank in names:
            x = probe.contact_positions[shank_ids == shank, 0].mean()
            if x0 <= x <= x1:
                zoom.annotate(
                    f"shank {shank}", (x, y0), xytext=(0, 4), textcoords="offset points", ha="center", fontsize=8
                )
    fig.suptitle(title or f"{probe.get_contact_count()} contacts, {int(recorded.sum())} recorded", fontsize=10)
    return save_figure(plt, fig, path)
