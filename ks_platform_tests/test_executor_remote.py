"""Remote Docker engines for the placing executor: ``tcp://`` with TLS client certificates, and ``ssh://``.

A second ``dockerd`` is started by the test on its own TCP port with ``--tlsverify`` and certificates made here with
the openssl CLI (its own data root, exec root, pid file and unix socket, so it does not touch the main engine). It
holds only ``ks-platform-base:bookworm`` (loaded with ``docker save | docker load``): enough to see the executor
speak TLS to it, report an image that is missing there, and launch a step container on it.

For ``ssh://`` the test starts its own OpenSSH server (``sshd -D`` on a free loopback port, with a host key, config
and authorized keys generated here by ssh-keygen) in front of the main engine: ``ssh://root@127.0.0.1:<port>`` goes
through docker-py's paramiko transport, which runs ``docker system dial-stdio`` in the ssh session. HOME points at a
temporary folder, so nothing of this machine's ~/.ssh is read or written.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from ks_platform.core.errors import PlatformConfigError
from ks_platform.execution.docker_engines import EngineConnectionError, docker_client
from ks_platform.execution.inventory import HostSpec, InventoryError
from ks_platform.execution.jobs import placement_smoke_job
from ks_platform_tests.conftest import failure_messages, missing_dependency, require_module, stop_process_group
from ks_platform_tests.executor_support import cpu_inventory, engine_and_cpu_image, pg_instance  # noqa: F401 - fixtures
from ks_platform_tests.postgres_support import _free_port, postgres_url  # noqa: F401 - session fixture

BASE_IMAGE = "ks-platform-base:bookworm"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, signed by that CA."""
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=ks-platform test CA",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        cwd=folder,
    )
    for name, usage, extra in (
        ("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
        ("client", "clientAuth", ""),
    ):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}-key.pem",
            "-out",
            f"{name}.csr",
            cwd=folder,
        )
        (folder / f"{name}.ext").write_text(f"extendedKeyUsage={usage}\n{extra}")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}-cert.pem",
            cwd=folder,
        )
    return {name: folder / f"{name}.pem" for name in ("ca", "server-cert", "server-key", "client-cert", "client-key")}


@pytest.fixture(scope="module")
def tls_engine(engine_and_cpu_image) -> Iterator[dict]:  # noqa: F811
    """A second dockerd on ``tcp://127.0.0.1:<port>`` with ``--tlsverify``, holding the base image."""
    client, _ = engine_and_cpu_image
    had_bridge = Path("/sys/class/net/docker0").exists()  # the main engine's bridge, which the steps of later tests use
    base = Path(
        tempfile.mkdtemp(prefix="ks-platform-tls-engine-", dir="/var/lib")
    )  # same file system as /var/lib/docker
    certs = make_certificates(base)
    port = _free_port()
    sock = base / "docker.sock"
    (base / "daemon.json").write_text("{}")
    log = open(base / "dockerd.log", "w")
    process = subprocess.Popen(
        [
            "dockerd",
            "--config-file",
            str(base / "daemon.json"),
            "--data-root",
            str(base / "data"),
            "--exec-root",
            str(base / "exec"),
            "--pidfile",
            str(base / "dockerd.pid"),
            "-H",
            f"unix://{sock}",
            "-H",
            f"tcp://127.0.0.1:{port}",
            "--tlsverify",
            "--tlscacert",
            str(certs["ca"]),
            "--tlscert",
            str(certs["server-cert"]),
            "--tlskey",
            str(certs["server-key"]),
            "--bridge",
            "none",
            "--iptables=false",
            "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(["docker", "-H", f"unix://{sock}", "info"], capture_output=True).returncode != 0:
            assert process.poll() is None and time.monotonic() < deadline, (
                f"the TLS dockerd did not start:\n{(base / 'dockerd.log').read_text()[-3000:]}"
            )
            time.sleep(1)
        started = time.monotonic()
        saved = subprocess.Popen(["docker", "save", BASE_IMAGE], stdout=subprocess.PIPE)
        loaded = subprocess.run(
            ["docker", "-H", f"unix://{sock}", "load"], stdin=saved.stdout, capture_output=True, text=True, timeout=600
        )
        assert saved.wait() == 0 and loaded.returncode == 0, loaded.stderr
        print(f"TLS dockerd on 127.0.0.1:{port}; {BASE_IMAGE} loaded in {time.monotonic() - started:.1f} s")
        yield {"url": f"tcp://127.0.0.1:{port}", "sock": f"unix://{sock}", "certs": certs}
    finally:
        stop_process_group(process, timeout=60)
        log.close()
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(f"{base}/")
        ]
        for mount in sorted(mounts, reverse=True):  # the engine's network namespace, overlay leftovers
            subprocess.run(["umount", mount], capture_output=True)
        shutil.rmtree(base)
    if had_bridge and not Path("/sys/class/net/docker0").exists():
        # the second dockerd's shutdown removes the shared default bridge even with --bridge none (seen here); put the
        # main engine's bridge back so later tests' containers can start
        for command in (
            ["ip", "link", "add", "name", "docker0", "type", "bridge"],
            ["ip", "addr", "add", "172.17.0.1/16", "dev", "docker0"],
            ["ip", "link", "set", "docker0", "up"],
        ):
            subprocess.run(command, check=True, capture_output=True)
    assert Path("/sys/class/net/docker0").exists() or not had_bridge, "the main engine's docker0 is gone"


def tls_host(engine: dict, image: str, with_client_cert: bool = True, **extra) -> dict:
    certs = engine["certs"]
    tls = {"ca_cert": str(certs["ca"])}
    if with_client_cert:
        tls |= {"client_cert": str(certs["client-cert"]), "client_key": str(certs["client-key"])}
    return {
        "name": "tls-engine",
        "docker_url": engine["url"],
        "backend": "cpu",
        "cpu_slots": 1,
        "images": {"cpu": image},
        "network_mode": "host",
        "tls": tls,
        **extra,
    }


def test_tls_client_settings_reach_the_engine_and_a_missing_client_cert_is_refused(tls_engine):
    client = docker_client(HostSpec.model_validate(tls_host(tls_engine, BASE_IMAGE)))
    assert client.ping() and BASE_IMAGE in {tag for image in client.images.list() for tag in image.tags}
    assert client.version()["Version"]
    with pytest.raises(Exception, match="(?i)bad certificate"):  # the engine wants a client certificate it trusts
        docker_client(HostSpec.model_validate(tls_host(tls_engine, BASE_IMAGE, with_client_cert=False))).ping()
    plain = HostSpec.model_validate({"name": "plain", "docker_url": tls_engine["url"]})
    with pytest.raises(Exception):  # noqa: B017 - docker-py's error type varies with the failure
        docker_client(plain).ping()  # plain HTTP to a --tlsverify engine


def test_missing_image_on_the_tls_host_is_named_before_placement(pg_instance, tmp_path, tls_engine):  # noqa: F811
    config = cpu_inventory(tmp_path, "ks-platform:cpu")
    config["hosts"] = [tls_host(tls_engine, "ks-platform:cpu")]
    with dg.execute_job(
        dg.reconstructable(placement_smoke_job),
        instance=pg_instance,
        run_config={"execution": {"config": {"inventory": config, "retries": {"disabled": {}}}}},
    ) as result:
        assert not result.success
        message = failure_messages(result)[-1]
    assert (
        f"image ks-platform:cpu is missing on host tls-engine ({tls_engine['url']}). Fix: build/load it there "
        "(docker/README.md" in message
    ), message


def test_step_container_launches_on_the_tls_host(pg_instance, tmp_path, tls_engine):  # noqa: F811
    """The base image has Python but no Dagster: the container starts on the TLS engine (the launch event names the
    host), exits 1, and the step failure carries its own words; the container is removed from that engine."""
    config = cpu_inventory(tmp_path, BASE_IMAGE)
    config["hosts"] = [tls_host(tls_engine, BASE_IMAGE)]
    config["step_entrypoint"] = ["python3", "-m", "dagster"]
    with dg.execute_job(
        dg.reconstructable(placement_smoke_job),
        instance=pg_instance,
        run_config={"execution": {"config": {"inventory": config, "retries": {"disabled": {}}}}},
    ) as result:
        assert not result.success
        message = failure_messages(result)[-1]
        run_id = result.run_id
    [start] = [
        r.event_log_entry
        for r in pg_instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTING).records
    ]
    assert start.dagster_event.event_specific_data.metadata["host"].value == "tls-engine"
    assert "on tls-engine CPU exited with code 1" in message and "No module named dagster" in message, message
    client = docker_client(HostSpec.model_validate(tls_host(tls_engine, BASE_IMAGE)))
    assert client.containers.list(all=True, filters={"label": f"ks_platform.run_id={run_id}"}) == []


# -- ssh:// through paramiko ----------------------------------------------------------------------------------------
SSHD = "/usr/sbin/sshd"
#: PATH of root's ssh sessions (sshd's built-in superuser path): the docker CLI must be on it for dial-stdio.
SSH_SESSION_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def ssh_keygen(path: Path, comment: str) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


@pytest.fixture(scope="module")
def ssh_engine(engine_and_cpu_image) -> Iterator[dict]:  # noqa: F811
    """An OpenSSH server on ``127.0.0.1:<free port>`` whose root sessions reach the main engine, plus keys: ``key``
    (authorized), ``stranger`` (not authorized), ``no_docker`` (authorized, but its sessions have no docker on PATH)."""
    require_module("paramiko")
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh-keygen") is None:
        missing_dependency(f"the OpenSSH server ({SSHD}, ssh-keygen: apt-get install openssh-server)")
    assert shutil.which("docker", path=SSH_SESSION_PATH), f"no docker CLI on {SSH_SESSION_PATH}"
    base = Path(tempfile.mkdtemp(prefix="ks-platform-ssh-engine-"))
    host_key = ssh_keygen(base / "host_key", "ks-platform test sshd")
    keys = {name: ssh_keygen(base / name, f"ks-platform test {name}") for name in ("key", "stranger", "no_docker")}
    no_docker = base / "no_docker.sh"
    no_docker.write_text('#!/bin/sh\nPATH=/nonexistent exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n')
    no_docker.chmod(0o755)
    (base / "authorized_keys").write_text(
        (base / "key.pub").read_text() + f'command="{no_docker}",no-pty ' + (base / "no_docker.pub").read_text()
    )
    port = _free_port()
    config = base / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {base / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel VERBOSE\n"
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory (systemd makes it)
    log = open(base / "sshd.log", "w")
    process = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None and time.monotonic() < deadline, (
                f"sshd did not start:\n{(base / 'sshd.log').read_text()[-3000:]}"
            )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as probe:
                    if probe.recv(64).startswith(b"SSH-"):
                        break
            except OSError:
                time.sleep(0.2)
        known_hosts = base / "known_hosts"
        algorithm, key = (base / "host_key.pub").read_text().split()[:2]
        known_hosts.write_text(f"[127.0.0.1]:{port} {algorithm} {key}\n")
        yield {
            "url": f"ssh://root@127.0.0.1:{port}",
            "port": port,
            "known_hosts": known_hosts,
            "log": base / "sshd.log",
            **keys,
        }
    finally:
        stop_process_group(process, timeout=30)
        log.close()
        shutil.rmtree(base)


@pytest.fixture
def ssh_home(tmp_path, monkeypatch) -> Path:
    """An empty HOME and no ssh agent: only the inventory's ssh settings count (this machine's ~/.ssh stays untouched)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def ssh_host(
    engine: dict, image: str = "ks-platform:cpu", key: str = "key", known_hosts: str | None = None, **extra
) -> dict:
    ssh = {"identity_file": str(engine[key]), "known_hosts": str(known_hosts or engine["known_hosts"])}
    return {
        "name": "ssh-engine",
        "docker_url": engine["url"],
        "backend": "cpu",
        "cpu_slots": 1,
        "images": {"cpu": image},
        "network_mode": "host",
        "ssh": ssh,
        **extra,
    }


def test_ssh_engine_with_the_right_key_is_the_engine_behind_it(ssh_engine, ssh_home, engine_and_cpu_image):  # noqa: F811
    """The paramiko transport with the inventory's key and known_hosts reaches the main engine through sshd: same
    engine ID, the executor's image check finds ks-platform:cpu there; nothing was written to HOME."""
    local, image = engine_and_cpu_image
    client = docker_client(HostSpec.model_validate(ssh_host(ssh_engine, image)))
    try:
        assert client.info()["ID"] == local.info()["ID"]
        assert client.images.get(image).id == local.images.get(image).id
        assert client.api.api_version == local.version()["ApiVersion"]
    finally:
        client.close()
    assert "Accepted publickey for root" in ssh_engine["log"].read_text()
    assert list(ssh_home.rglob("*")) == []
    with pytest.raises(
        PlatformConfigError,
        match="host 'local' has ssh settings but docker_url unix:///var/run/docker.sock is not ssh://.*Fix: give ssh",
    ):
        from ks_platform.execution.inventory import Inventory

        Inventory.from_mapping({"store": "/tmp", "hosts": [{"name": "local", "ssh": {"known_hosts": "/x"}}]})


def test_ssh_refusals_name_the_host_and_the_fix(ssh_engine, ssh_home, tmp_path):
    """Unknown host key, changed host key, a key the server refuses, no docker in the session, no sshd: each is
    one error naming host ssh-engine, what happened and the fix."""
    port = ssh_engine["port"]

    def error_of(spec: dict) -> Exception:
        with pytest.raises((InventoryError, EngineConnectionError)) as caught:
            docker_client(HostSpec.model_validate(spec), "inventory.yaml").close()
        return caught.value

    empty = tmp_path / "known_hosts.empty"
    empty.write_text("")
    unknown = str(error_of(ssh_host(ssh_engine, known_hosts=str(empty))))
    assert isinstance(error_of(ssh_host(ssh_engine, known_hosts=str(empty))), InventoryError)
    assert f"inventory.yaml: the host key of host ssh-engine (127.0.0.1:{port}) is not in {empty}" in unknown, unknown
    assert (
        f"Fix: check that `ssh-keyscan -p {port} 127.0.0.1 | ssh-keygen -lf -` shows the fingerprint" in unknown
        and f"then add it: ssh-keyscan -p {port} 127.0.0.1 >> {empty}" in unknown
    ), unknown

    changed = tmp_path / "known_hosts.changed"
    algorithm, other = (Path(f"{ssh_engine['stranger']}.pub")).read_text().split()[:2]
    changed.write_text(f"[127.0.0.1]:{port} {algorithm} {other}\n")
    message = str(error_of(ssh_host(ssh_engine, known_hosts=str(changed))))
    assert (
        f"host ssh-engine (127.0.0.1:{port}) presented a host key (ssh-ed25519 SHA256:" in message
        and f"differs from the one in {changed}" in message
    ), message
    assert f"ssh-keygen -R '[127.0.0.1]:{port}' -f {changed}" in message and "do not connect" in message, message

    refused = error_of(ssh_host(ssh_engine, key="stranger"))
    assert isinstance(refused, InventoryError)
    assert (
        f"host ssh-engine (127.0.0.1:{port}) refused ssh authentication of user root with {ssh_engine['stranger']}"
        in str(refused)
    ), refused
    assert (
        f"Fix: add that key's public half (ssh-keygen -y -f {ssh_engine['stranger']}) to ~root/.ssh/authorized_keys on "
        "127.0.0.1" in str(refused)
    ), refused

    no_docker = str(error_of(ssh_host(ssh_engine, key="no_docker")))
    assert (
        "host ssh-engine accepted ssh as root, but `docker system dial-stdio` there gave no Docker engine" in no_docker
    ), no_docker
    assert (
        "docker: not found" in no_docker
        and "Fix: on that host put the docker CLI on the PATH of non-interactive ssh sessions" in no_docker
    ), no_docker

    closed = _free_port()
    unreachable = error_of({**ssh_host(ssh_engine), "docker_url": f"ssh://root@127.0.0.1:{closed}"})
    assert isinstance(unreachable, EngineConnectionError)
    assert f"the ssh server of host ssh-engine at 127.0.0.1:{closed} is unreachable" in str(
        unreachable
    ) and f"Fix: start sshd there (and dockerd), check that this machine reaches port {closed} of 127.0.0.1" in str(
        unreachable
    ), unreachable

    missing = str(error_of({**ssh_host(ssh_engine), "ssh": {"identity_file": str(tmp_path / "nokey")}}))
    assert (
        f"inventory.yaml: ssh.identity_file of host ssh-engine ({tmp_path / 'nokey'}) does not exist on this machine. "
        "Fix: copy the file there" in missing
    ), missing
    assert list(ssh_home.rglob("*")) == []


def test_step_container_launches_through_the_ssh_engine(
    pg_instance,  # noqa: F811
    tmp_path,
    ssh_engine,
    ssh_home,
    engine_and_cpu_image,  # noqa: F811
):
    """report_placement runs in a ks-platform:cpu container created through ssh (the launch event names the host);
    its success and log line reach the run; the container is removed. A refused key fails the step with the fix."""
    local, image = engine_and_cpu_image
    config = cpu_inventory(tmp_path, image)
    config["hosts"] = [ssh_host(ssh_engine, image)]
    run_config = {"execution": {"config": {"inventory": config, "retries": {"disabled": {}}}}}
    with dg.execute_job(dg.reconstructable(placement_smoke_job), instance=pg_instance, run_config=run_config) as result:
        assert result.success, failure_messages(result)
        run_id = result.run_id
    records = pg_instance.get_records_for_run(run_id).records
    [start] = [
        r.event_log_entry
        for r in records
        if r.event_log_entry.dagster_event
        and r.event_log_entry.dagster_event.event_type == dg.DagsterEventType.STEP_WORKER_STARTING
    ]
    assert start.dagster_event.event_specific_data.metadata["host"].value == "ssh-engine"
    assert start.dagster_event.event_specific_data.metadata["image_digest"].value == local.images.get(image).id
    placed = [
        r.event_log_entry.user_message for r in records if "placement {" in (r.event_log_entry.user_message or "")
    ]
    assert placed and '"KS_PLATFORM_BACKEND": "cpu"' in placed[0], placed
    assert local.containers.list(all=True, filters={"label": f"ks_platform.run_id={run_id}"}) == []

    config["hosts"] = [ssh_host(ssh_engine, image, key="stranger")]
    with dg.execute_job(dg.reconstructable(placement_smoke_job), instance=pg_instance, run_config=run_config) as result:
        assert not result.success
        message = failure_messages(result)[-1]
    assert "refused ssh authentication of user root" in message and "Fix: add that key's public half" in message, (
        message
    )
