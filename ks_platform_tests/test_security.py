"""Security (issue #8): every path resolves inside its configured root; nothing from a session reaches a shell."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ks_platform.core.discovery import discover
from ks_platform.core.errors import SessionInputError
from ks_platform.core.formats import open_recording
from ks_platform.core.synthetic import DemoSessionSpec, make_spikeglx_session
from ks_platform.defs.resources import PlatformResource
from ks_platform_tests.conftest import failure_messages

PACKAGE = Path(__file__).resolve().parent.parent / "ks_platform"
SMALL = DemoSessionSpec(duration_s=2.0)


def test_a_data_file_linking_out_of_the_session_is_refused_through_dagster(workspace, tmp_path):
    folder = make_spikeglx_session(workspace.landing / "linked", SMALL)
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    [data] = folder.glob("*.ap.bin")
    shutil.move(data, secret / data.name)
    os.symlink(secret / data.name, data)
    result = workspace.run(workspace.key(folder))
    assert not result.success
    [message] = failure_messages(result)
    assert str(data) in message and "outside the session folder" in message and "Fix:" in message
    assert not workspace.store(workspace.key(folder)).raw_manifest.exists()


def test_a_sidecar_probe_path_cannot_traverse_out(tmp_path):
    folder = tmp_path / "landing" / "raw"
    folder.mkdir(parents=True)
    (folder / "rec.bin").write_bytes(b"\0" * 64 * 2 * 100)
    probe = tmp_path / "probe.json"
    probe.write_text("{}")
    (folder / "rec.json").write_text(
        json.dumps({"sampling_frequency": 30000, "n_channels": 64, "dtype": "int16", "probe_file": "../../probe.json"})
    )
    with pytest.raises(SessionInputError, match="outside the session folder"):
        open_recording(folder)


def test_a_session_folder_linking_out_of_its_landing_root_is_rejected_not_fatal(tmp_path):
    landing = tmp_path / "landing"
    good = make_spikeglx_session(landing / "good", SMALL)
    outside = make_spikeglx_session(tmp_path / "outside" / "s", SMALL)
    os.symlink(outside, landing / "escape")
    found, rejected = discover({"rig1": landing})
    assert [f.folder.name for f in found] == [good.name]
    [bad] = rejected
    assert bad.folder.name == "escape" and "outside" in bad.reason


@pytest.mark.parametrize(
    "key",
    [
        "2026-03-02__rig1__..__imec0",
        "2026-03-02__rig1__a b__imec0",
        "2026-03-02__rig1__x;id__imec0",
        "2026-03-02__rig9__s__imec0",
    ],
)
def test_partition_keys_cannot_name_paths_outside_the_roots(tmp_path, key):
    platform = PlatformResource(
        store_root=str(tmp_path / "store"), landing_roots=f"rig1={tmp_path / 'landing'}", backend="cpu"
    )
    with pytest.raises((SessionInputError, ValueError)):
        platform.session_dir(key)


def _shell_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}:
                found.append(f"{path.name}:{node.lineno} {name}")
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (
                    isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                ):
                    found.append(f"{path.name}:{node.lineno} shell={ast.unparse(keyword.value)}")
    return found


def test_no_shell_anywhere_in_the_platform():
    """Commands (including container commands) are argument lists; nothing is interpreted by a shell."""
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    assert [use for f in files for use in _shell_uses(f)] == []


def test_the_shell_scan_would_catch_a_shell_call(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import subprocess, os\nsubprocess.run(cmd, shell=True)\nos.system('ls')\n")
    assert len(_shell_uses(sample)) == 2


def test_the_ui_binds_to_localhost_by_default():
    makefile = (PACKAGE.parent / "Makefile").read_text()
    dev = [
        line for line in makefile.splitlines() if line.startswith("\t") and ("dg dev" in line or "dagster dev" in line)
    ]
    assert dev and all("-h 127.0.0.1" in line for line in dev)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_dev_takes_the_port_from_the_command_line():
    """``make dev PORT=3001`` (issue #27: the port was hard-coded); 3000 without it. ``make -n`` only prints."""

    def dev_line(*extra: str) -> str:
        printed = subprocess.run(
            ["make", "-n", "-C", str(PACKAGE.parent), "dev", *extra], capture_output=True, text=True, check=True
        ).stdout
        [line] = [line for line in printed.splitlines() if " dev -w " in line]
        return line

    assert dev_line("PORT=3001").endswith("workspace.yaml -h 127.0.0.1 -p 3001")
    assert dev_line().endswith("workspace.yaml -h 127.0.0.1 -p 3000")


def test_a_hand_added_traversal_partition_writes_nothing_outside_the_store(workspace, tmp_path):
    """The first wave's hole: phy_bundle for ``…__x/../../../../elsewhere/pwned`` made ``elsewhere/pwned/.lock``."""
    from ks_platform_tests.conftest import failure_messages

    key = "2026-03-02__rig1__x/../../../../elsewhere/pwned"
    result = workspace.run_assets(key, ["phy_bundle"])
    assert not result.success
    [message] = failure_messages(result)
    assert "not a partition key" in message and "Fix:" in message
    assert not any(p.name == "pwned" or p.name == ".lock" for p in tmp_path.rglob("*")), list(tmp_path.rglob("*"))
