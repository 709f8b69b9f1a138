"""Open a Phy folder in Phy's template GUI (as ``phy template-gui PARAMS`` does) and report what its views read.

    python phy_gui_probe.py PARAMS_PY OUT_NPZ [--screenshot PNG] [--config-dir DIR]
    python phy_gui_probe.py PARAMS_PY OUT_JSON --actions ACTIONS_JSON [--config-dir DIR]

With ``--actions`` it curates instead, as a person does in the GUI, through Phy's own supervisor: a list of
``{"merge": [a, b]}``, ``{"split": c}`` (the first half of ``c``'s spikes, in time order, become one new cluster and
the rest another), ``{"label": [c, "good"]}`` (``c`` an id or a name given to a new cluster: ``merged``,
``split_a``, ``split_b``, ``merged2``…) and ``{"save": true}`` (Phy's save: ``spike_clusters.npy``,
``cluster_group.tsv``, ``cluster_info.tsv``); it writes ``OUT_JSON`` with the clusters and labels Phy showed when it
opened the folder, the ids Phy gave new clusters, and the clusters and labels after the actions.

Runs in its own process (a crash in Qt/OpenGL cannot take pytest down) on the X display in ``$DISPLAY``. It builds
the ``TemplateController`` and its GUI with every default view, shows the window, selects the best cluster and
writes to ``OUT_NPZ``: the cluster ids the cluster view lists, the raw data path phylib resolved from ``dat_path``,
one window of the trace view's data (unfiltered) and the waveform view's waveforms with the spikes and channels
they were read at. The test compares those with the binary itself. Imports nothing from ks_platform.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: The window's size on the X display (Xvfb's screen must be at least this big).
SCREEN_SIZE = (1600, 1000)
#: The trace view's window checked against the binary: [start, stop) in seconds.
TRACE_WINDOW_S = (1.0, 1.05)


def _spy(model: Any, calls: list[dict[str, np.ndarray]]) -> None:
    """Record every ``model.get_waveforms`` call (the real one runs; its inputs and result are kept)."""
    real = model.get_waveforms

    def get_waveforms(spike_ids: np.ndarray, channel_ids: np.ndarray | None = None) -> np.ndarray | None:
        result = real(spike_ids, channel_ids)
        if result is not None:
            calls.append({"spike_ids": np.asarray(spike_ids), "channel_ids": np.asarray(channel_ids), "data": result})
        return result

    model.get_waveforms = get_waveforms


def _distinct_colors(image: Any) -> int:
    """How many different colours a ``QImage``/``QPixmap`` holds (1 when nothing was drawn)."""
    from PyQt5.QtGui import QImage, QPixmap

    image = (image.toImage() if isinstance(image, QPixmap) else image).convertToFormat(QImage.Format_RGB32)
    pointer = image.constBits()
    pointer.setsize(image.sizeInBytes())
    pixels = np.frombuffer(pointer, dtype=np.uint32).reshape(image.height(), image.bytesPerLine() // 4)
    return int(len(np.unique(pixels[:, : image.width()])))


def probe(params_path: Path, out: Path, screenshot: Path | None, config_dir: Path) -> dict[str, Any]:
    from phy.apps.template import TemplateController
    from phy.cluster.views import TraceView, WaveformView
    from phy.gui.qt import create_app
    from phy.gui.widgets import Barrier
    from phylib.io.model import load_model
    from phylib.utils import connect, reset
    from PyQt5.QtTest import QTest

    app = create_app()
    model = load_model(params_path)  # what `phy template-gui` does: dat_path relative to params.py's folder
    if model.traces is None:
        raise SystemExit(f"phylib could not open the raw data of {params_path} (dat_path {model.dat_path})")
    calls: list[dict[str, np.ndarray]] = []
    _spy(model, calls)
    controller = TemplateController(
        model=model,
        dir_path=params_path.parent,
        config_dir=config_dir,
        plugins=[],
        clear_cache=True,
        enable_threading=False,  # views update synchronously: what they show is known when a call returns
    )
    gui = controller.create_gui()
    supervisor = controller.supervisor
    ready = Barrier()
    connect(ready("cluster_view"), event="ready", sender=supervisor.cluster_view)
    connect(ready("similarity_view"), event="ready", sender=supervisor.similarity_view)
    gui.show()
    gui.setGeometry(0, 0, *SCREEN_SIZE)
    ready.wait()
    supervisor.select_actions.next_best()
    supervisor.block()
    selected = [int(c) for c in supervisor.selected]
    [trace_view] = gui.list_views(TraceView)
    [waveform_view] = gui.list_views(WaveformView)
    trace_view.set_interval(TRACE_WINDOW_S)
    QTest.qWait(500)  # let Qt paint every dock before the grab
    if screenshot is not None:  # the X server's pixels: the OpenGL views too (a widget grab leaves them blank)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        if not app.primaryScreen().grabWindow(int(gui.winId())).save(str(screenshot)):
            raise SystemExit(f"could not save {screenshot}")

    drawn = _distinct_colors(trace_view.canvas.grabFramebuffer())  # what OpenGL drew in the trace view

    controller.raw_data_filter.set("raw")  # now the views show the binary's own samples, not Phy's high-pass
    seen: list[np.ndarray] = []
    shown_traces = trace_view.traces

    def traces(interval: tuple[float, float]) -> Any:
        bunch = shown_traces(interval)
        seen.append(np.asarray(bunch.data))
        return bunch

    trace_view.traces = traces
    trace_view.plot()
    n_calls = len(calls)
    [shown] = waveform_view.get_clusters_data()  # what the waveform view draws for the selected cluster
    reads = [c for c in calls[n_calls:] if np.array_equal(c["channel_ids"], shown.channel_ids)]
    if not reads:
        raise SystemExit("the waveform view did not read its waveforms from the raw data")
    read = reads[-1]
    dat_path = model.dat_path[0] if isinstance(model.dat_path, (list, tuple)) else model.dat_path
    np.savez(
        out,
        cluster_ids=np.asarray(supervisor.clustering.cluster_ids),
        listed_clusters=np.asarray(supervisor.cluster_view.get_ids(), dtype=np.int64),  # the rows on screen
        selected=np.asarray(selected),
        trace_window=seen[-1],
        trace_start_sample=np.asarray(int(round(TRACE_WINDOW_S[0] * model.sample_rate))),
        waveform_samples=np.asarray(model.spike_samples[read["spike_ids"]]),
        waveform_channels=read["channel_ids"],
        waveform_raw=read["data"],
        waveform_shown=np.asarray(shown.data),
        waveform_shown_channels=np.asarray(shown.channel_ids),
        n_samples_waveforms=np.asarray(model.n_samples_waveforms),
    )
    views = sorted({type(view).__name__ for view in gui.views})
    report = {"dat_path": str(Path(dat_path).resolve()), "views": views, "trace_view_colors": drawn}
    gui.close()
    controller.close()
    reset()
    return report


def _state(supervisor: Any) -> dict[str, Any]:
    """The clusters Phy lists and the label (group) of each, as its supervisor holds them."""
    ids = [int(c) for c in supervisor.clustering.cluster_ids]
    groups = {str(c): supervisor.cluster_meta.get("group", c) for c in ids}
    return {
        "cluster_ids": ids,
        "listed": [int(c) for c in supervisor.cluster_view.get_ids()],
        "groups": {c: g for c, g in groups.items() if g is not None},
        "n_spikes": {str(c): int(supervisor.n_spikes(c)) for c in ids},
    }


def curate(params_path: Path, actions: list[dict[str, Any]], config_dir: Path) -> dict[str, Any]:
    """Open the folder in the template GUI and run ``actions`` through Phy's supervisor (module docstring)."""
    from phy.apps.template import TemplateController
    from phy.gui.qt import create_app
    from phy.gui.widgets import Barrier
    from phylib.io.model import load_model
    from phylib.utils import connect, reset

    create_app()
    model = load_model(params_path)
    controller = TemplateController(
        model=model, dir_path=params_path.parent, config_dir=config_dir, plugins=[], enable_threading=False
    )
    gui = controller.create_gui()
    supervisor = controller.supervisor
    ready = Barrier()
    connect(ready("cluster_view"), event="ready", sender=supervisor.cluster_view)
    connect(ready("similarity_view"), event="ready", sender=supervisor.similarity_view)
    gui.show()
    gui.setGeometry(0, 0, *SCREEN_SIZE)
    ready.wait()
    supervisor.block()
    opened = _state(supervisor)
    names: dict[str, int] = {}

    def cluster(ref: int | str) -> int:
        return names[ref] if isinstance(ref, str) else int(ref)

    done = []
    for action in actions:
        if "merge" in action:
            up = supervisor.merge([cluster(c) for c in action["merge"]])
            new = [int(c) for c in up.added]
            names["merged" if "merged" not in names else f"merged{len(names)}"] = new[0]
        elif "split" in action:
            source = cluster(action["split"])
            spikes = np.sort(np.asarray(supervisor.clustering.spikes_per_cluster[source]))
            up = supervisor.split(spikes[: spikes.size // 2])
            new = sorted(int(c) for c in up.added)
            first = int(supervisor.clustering.spike_clusters[spikes[0]])
            names["split_a"], names["split_b"] = first, next(c for c in new if c != first)
        elif "label" in action:
            target, label = action["label"]
            supervisor.move(label, [cluster(target)])
            new = []
        elif action.get("save"):
            supervisor.save()
            new = []
        else:
            raise SystemExit(f"unknown action {action}")
        supervisor.block()
        done.append({"action": action, "added": new})
    report = {
        "opened": opened,
        "names": names,
        "done": done,
        "after": _state(supervisor),
        "dirty": supervisor.is_dirty(),
    }
    gui.close()
    controller.close()
    reset()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params")
    parser.add_argument("out")
    parser.add_argument("--screenshot")
    parser.add_argument("--actions", help="curate: a JSON file with the actions (module docstring)")
    parser.add_argument("--config-dir", required=True, help="Phy's user config/state folder (not ~/.phy)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.actions:
        report = curate(Path(args.params), json.loads(Path(args.actions).read_text()), Path(args.config_dir))
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps({"out": str(out)}))
        return 0
    report = probe(Path(args.params), out, Path(args.screenshot) if args.screenshot else None, Path(args.config_dir))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
