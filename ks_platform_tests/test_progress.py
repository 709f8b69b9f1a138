"""Progress lines of long stages: bounded rate, time so far and an estimate of what is left (core/progress.py).

A fake clock drives the throttle; the Kilosort hook is fed the stage headers and ``emit`` calls Kilosort 4.1.7 makes.
The lines a real sort leaves in its run's log are checked on the shared sorted run (test_end_to_end.py).
"""

from __future__ import annotations

from ks_platform.core.progress import KilosortProgress, StageProgress, ThrottledProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_long_stage_logs_every_10_percent_or_30_s_whichever_is_rarer_with_an_eta():
    clock, lines = Clock(), []
    progress = ThrottledProgress(lines.append, "conversion", clock=clock)
    for step in range(1, 1001):  # 1000 reports over 1000 s: 0.1 % per second
        clock.now = float(step)
        progress(step / 1000, f"converted {step}/1000 s")
    assert len(lines) == 10  # every 10 % (100 s apart, above 30 s), the last one "done"
    assert lines[0] == "conversion 10%: converted 100/1000 s; 2 min so far, about 15 min left"
    assert lines[-1] == "conversion 100%: converted 1000/1000 s; done in 17 min"


def test_a_fast_stage_logs_at_most_one_line_per_30_s_and_its_end():
    clock, lines = Clock(), []
    progress = ThrottledProgress(lines.append, "phy", clock=clock)
    for step in range(1, 101):  # 100 % in 50 s
        clock.now = step * 0.5
        progress(step / 100)
    assert [line.split(";")[0] for line in lines] == ["phy 60%", "phy 100%"]


def test_a_slow_stage_is_never_silent_for_more_than_5_minutes():
    clock, lines = Clock(), []
    progress = ThrottledProgress(lines.append, "kilosort drift correction", clock=clock)
    for minute in range(1, 31):  # 1 % per minute: 10 % would take 10 minutes
        clock.now = minute * 60.0
        progress(minute / 100)
    assert [line.split("%")[0][-2:] for line in lines] == [" 5", "10", "15", "20", "25", "30"]
    assert lines[0] == "kilosort drift correction 5%; 5 min so far, about 95 min left"


def test_kilosort_loops_are_named_after_the_stage_kilosort_logged_with_batches():
    clock, lines = Clock(), []
    progress = KilosortProgress(lines.append, clock=clock)
    progress.see_log("N batches: 200")
    progress.see_log("Computing drift correction.")
    for percent in range(0, 101):
        clock.now += 1.0
        progress.emit(percent)
    progress.see_log("Extracting spikes using templates")
    for percent in range(0, 101):
        clock.now += 0.1
        progress.emit(percent)
    progress.see_log("First clustering")
    for percent in (50, 100):
        progress.emit(percent)
    stages = [line.split("%")[0] for line in lines]
    assert stages[:3] == [
        "kilosort drift correction 30",
        "kilosort drift correction 60",
        "kilosort drift correction 90",
    ]
    assert lines[2].startswith("kilosort drift correction 90%: batch 180 of 200;")
    assert stages[3:] == [
        "kilosort drift correction 100",
        "kilosort spike detection 100",
        "kilosort first clustering 100",
    ]


def test_stages_of_unknown_length_report_their_share():
    clock, lines = Clock(), []
    stages = StageProgress(ThrottledProgress(lines.append, "unit_metrics", clock=clock), ["a", "b", "c", "d"])
    for name in "abcd":
        stages.start(name)
        clock.now += 40
    stages.finish("12 units")
    assert lines == [
        "unit_metrics 25%: b (stage 2 of 4); 40 s so far, about 2 min left",
        "unit_metrics 50%: c (stage 3 of 4); 1 min so far, about 1 min left",
        "unit_metrics 75%: d (stage 4 of 4); 2 min so far, about 40 s left",
        "unit_metrics 100%: 12 units; done in 3 min",
    ]
