"""``make dev`` as a lab starts it in the background (``make dev &``, nohup, a service): it starts without a warning,
serves the UI and stops on SIGTERM, with every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from pathlib import Path

from ks_platform_tests.conftest import wait_until
from ks_platform_tests.live_support import free_port

REPO = Path(__file__).resolve().parent.parent


def serving(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def test_make_dev_in_the_background_stops_on_sigterm_with_all_it_started(tmp_path):
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "KS_PLATFORM_STORE": str(tmp_path / "store")}
    env["KS_PLATFORM_LANDING"] = f"rig1={tmp_path / 'landing'}"
    (tmp_path / "landing").mkdir()
    log = tmp_path / "make_dev.log"
    with open(log, "wb") as out:
        # as a shell starts a background job: SIGINT ignored, inherited by everything make starts
        make = subprocess.Popen(
            ["make", "--no-print-directory", "dev", f"PORT={port}", f"DAGSTER_HOME={tmp_path / 'home'}"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
            start_new_session=True,
        )
    try:
        wait_until(lambda: serving(port) or make.poll() is not None, 240, "the UI of make dev")
        assert make.poll() is None and serving(port), log.read_text()[-3000:]
        started = log.read_text()
        assert "WARNING" not in started, started  # a clean start: nothing a lab should wonder about
        os.killpg(make.pid, signal.SIGTERM)  # what `kill %1`, systemd or a process manager sends
        make.wait(timeout=60)
        wait_until(lambda: not serving(port), 30, "the UI to stop")

        def left() -> list[str]:
            return subprocess.run(["pgrep", "-s", str(make.pid)], capture_output=True, text=True).stdout.split()

        wait_until(lambda: left() == [], 60, "every process of make dev to end after SIGTERM")
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
