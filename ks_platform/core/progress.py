"""Progress of long stages as log lines at a bounded rate, each with the time so far and an estimate of what is left.

A stage reports ``progress(fraction, what)`` as often as it likes; :class:`ThrottledProgress` passes a line on when
the stage moved ``MIN_FRACTION`` (10 %) *and* ``MIN_SECONDS`` (30 s) passed since the last line (whichever is rarer,
so a stage logs at most ~11 lines however long it is and at most one line per 30 s), or when ``HEARTBEAT_SECONDS``
(5 min) passed with any progress (so a slow stage is never silent for longer), and once at the end. Kilosort reports
its batch loops through :class:`KilosortProgress` (its ``progress_bar.emit(percent)`` hook); steps made of a few
stages of unknown length use :class:`StageProgress`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from ks_platform.core.readiness import format_duration

#: ``progress(done_fraction, what)``: ``what`` says where the stage is (e.g. ``"converted 12.0/60.0 s"``).
Progress = Callable[[float, str], None]
Log = Callable[[str], None]

MIN_FRACTION = 0.1
MIN_SECONDS = 30.0
HEARTBEAT_SECONDS = 300.0


class ThrottledProgress:
    """``progress(fraction, what)`` → ``log`` lines such as ``"recording_binary 40%: converted 24.0/60.0 s; 2 min so
    far, about 3 min left"``, at the bounded rate described in the module docstring. Time counts from construction:
    make one when the stage starts."""

    def __init__(
        self,
        log: Log,
        stage: str = "",
        *,
        min_fraction: float = MIN_FRACTION,
        min_seconds: float = MIN_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self.stage = stage
        self._min_fraction = min_fraction
        self._min_seconds = min_seconds
        self._heartbeat = heartbeat_seconds
        self._clock = clock
        self._started = self._last_time = clock()
        self._last_fraction = 0.0
        self._finished = False

    def __call__(self, fraction: float, what: str = "") -> None:
        now = self._clock()
        if self._finished:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        since = now - self._last_time
        moved = fraction - self._last_fraction
        due = (moved >= self._min_fraction - 1e-9 and since >= self._min_seconds) or (
            moved > 0 and since >= self._heartbeat
        )
        if fraction >= 1.0:
            self._finished = True
        elif not due:
            return
        self._last_time, self._last_fraction = now, fraction
        self._log(self.line(fraction, what, now - self._started))

    def line(self, fraction: float, what: str, elapsed: float) -> str:
        head = f"{self.stage} {fraction:.0%}" if self.stage else f"{fraction:.0%}"
        detail = f": {what}" if what else ""
        if fraction >= 1.0:
            return f"{head}{detail}; done in {format_duration(elapsed)}"
        left = elapsed / fraction * (1.0 - fraction) if fraction > 0 else None
        eta = f", about {format_duration(left)} left" if left is not None else ""
        return f"{head}{detail}; {format_duration(elapsed)} so far{eta}"


class StageProgress:
    """A step made of named stages of unknown length: ``stages.start(name)`` reports the step's fraction as the share
    of stages done (the estimate of what is left assumes stages of equal length)."""

    def __init__(self, progress: Progress | None, stages: list[str]) -> None:
        self._progress = progress
        self._stages = list(stages)
        self._done = 0

    def start(self, name: str) -> None:
        """``name`` begins; the stages listed before it are done."""
        if name in self._stages:
            self._done = self._stages.index(name)
        if self._progress is not None:
            self._progress(self._done / len(self._stages), f"{name} (stage {self._done + 1} of {len(self._stages)})")

    def finish(self, what: str = "") -> None:
        if self._progress is not None:
            self._progress(1.0, what)


#: Kilosort's stage headers (logged before each stage) and what the progress lines call them.
KILOSORT_STAGES = {
    "Computing preprocessing variables.": "preprocessing",
    "Computing drift correction.": "drift correction",
    "Extracting spikes using templates": "spike detection",
    "First clustering": "first clustering",
    "Extracting spikes using cluster waveforms": "spike extraction",
    "Final clustering": "final clustering",
    "Merging clusters": "merging",
    "Saving to phy and computing refractory periods": "saving",
}
_BATCHES = re.compile(r"^N batches: (\d+)")


class KilosortProgress:
    """Kilosort's ``progress_bar``: its batch and clustering loops call ``emit(percent)``; each loop becomes a
    :class:`ThrottledProgress` named after the stage header Kilosort logged last (``see_log`` is fed Kilosort's log
    messages by ``core/sorting.py``)."""

    def __init__(self, log: Log, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._clock = clock
        self._stage = "start"
        self._batches: int | None = None
        self._loop: ThrottledProgress | None = None
        self._last_percent = -1

    def see_log(self, message: str) -> None:
        """A Kilosort log message: a stage header starts a new stage; ``N batches: n`` is remembered."""
        text = message.strip()
        if text in KILOSORT_STAGES:
            self._stage = KILOSORT_STAGES[text]
            self._loop = None
        elif match := _BATCHES.match(text):
            self._batches = int(match.group(1))

    def emit(self, percent: int | float) -> None:
        """Kilosort's hook: ``percent`` (0-100) of the current loop; a lower value than the last starts a new loop."""
        if self._loop is None or percent < self._last_percent:
            self._loop = ThrottledProgress(self._log, f"kilosort {self._stage}", clock=self._clock)
        self._last_percent = percent
        batch_loop = self._stage in ("drift correction", "spike detection", "spike extraction")
        what = (
            f"batch {round(percent / 100 * self._batches)} of {self._batches}" if batch_loop and self._batches else ""
        )
        self._loop(percent / 100, what)
