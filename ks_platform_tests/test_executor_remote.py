"""Remote Docker engines for the placing executor: ``tcp://`` with TLS client certificates (and ``ssh://``).

A second ``dockerd`` is started by the test on its own TCP port with ``--tlsverify`` and certificates made here with
the openssl CLI (its own data root, exec root, pid file and unix socket, so it does not touch the main engine). It
holds only ``ks-platform-base:bookworm`` (loaded with ``docker save | docker load``): enough to see the executor
speak TLS to it, report an image that is missing there, and launch a step container on it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from ks_platform.execution.docker_executor import docker_client
from ks_platform.execution.inventory import HostSpec
from ks_platform.execution.jobs import placement_smoke_job
from ks_platform_tests.conftest import failure_messages
from ks_platform_tests.postgres_support import _free_port, postgres_url  # noqa: F401 - session fixture
from ks_platform_tests.test_executor import cpu_inventory, engine_and_cpu_image, pg_instance  # noqa: F401 - fixtures

BASE_IMAGE = "ks-platform-base:bookworm"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, signed by that CA."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ks-platform test CA", "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=folder)
    for name, usage, extra in (("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"), ("client", "clientAuth", "")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", cwd=folder)
        (folder / f"{name}.ext").write_text(f"extendedKeyUsage={usage}\n{extra}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}-cert.pem", cwd=folder)
    return {name: folder / f"{name}.pem" for name in ("ca", "server-cert", "server-key", "client-cert", "client-key")}


@pytest.fixture(scope="module")
def tls_engine(engine_and_cpu_image) -> Iterator[dict]:  # noqa: F811
    """A second dockerd on ``tcp://127.0.0.1:<port>`` with ``--tlsverify``, holding the base image."""
    client, _ = engine_and_cpu_image
    base = Path(tempfile.mkdtemp(prefix="ks-platform-tls-engine-", dir="/var/lib"))  # same file system as /var/lib/docker
    certs = make_certificates(base)
    port = _free_port()
    sock = base / "docker.sock"
    (base / "daemon.json").write_text("{}")
    log = open(base / "dockerd.log", "w")
    process = subprocess.Popen(
        [
            "dockerd", "--config-file", str(base / "daemon.json"), "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
            "--pidfile", str(base / "dockerd.pid"), "-H", f"unix://{sock}", "-H", f"tcp://127.0.0.1:{port}",
            "--tlsverify", "--tlscacert", str(certs["ca"]), "--tlscert", str(certs["server-cert"]), "--tlskey", str(certs["server-key"]),
            "--bridge", "none", "--iptables=false", "--ip-masq=false",
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(["docker", "-H", f"unix://{sock}", "info"], capture_output=True).returncode != 0:
            assert process.poll() is None and time.monotonic() < deadline, f"the TLS dockerd did not start:\n{(base / 'dockerd.log').read_text()[-3000:]}"
            time.sleep(1)
        started = time.monotonic()
        saved = subprocess.Popen(["docker", "save", BASE_IMAGE], stdout=subprocess.PIPE)
        loaded = subprocess.run(["docker", "-H", f"unix://{sock}", "load"], stdin=saved.stdout, capture_output=True, text=True, timeout=600)
        assert saved.wait() == 0 and loaded.returncode == 0, loaded.stderr
        print(f"TLS dockerd on 127.0.0.1:{port}; {BASE_IMAGE} loaded in {time.monotonic() - started:.1f} s")
        yield {"url": f"tcp://127.0.0.1:{port}", "sock": f"unix://{sock}", "certs": certs}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if line.split()[1].startswith(f"{base}/")]
        for mount in sorted(mounts, reverse=True):  # the engine's network namespace, overlay leftovers
            subprocess.run(["umount", mount], capture_output=True)
        shutil.rmtree(base)


def tls_host(engine: dict, image: str, with_client_cert: bool = True, **extra) -> dict:
    certs = engine["certs"]
    tls = {"ca_cert": str(certs["ca"])}
    if with_client_cert:
        tls |= {"client_cert": str(certs["client-cert"]), "client_key": str(certs["client-key"])}
    return {"name": "tls-engine", "docker_url": engine["url"], "backend": "cpu", "cpu_slots": 1, "images": {"cpu": image}, "network_mode": "host", "tls": tls, **extra}


def test_tls_client_settings_reach_the_engine_and_a_missing_client_cert_is_refused(tls_engine):
    client = docker_client(HostSpec.model_validate(tls_host(tls_engine, BASE_IMAGE)))
    assert client.ping() and BASE_IMAGE in {tag for image in client.images.list() for tag in image.tags}
    assert client.version()["Version"]
    with pytest.raises(Exception, match="(?i)bad certificate"):  # the engine wants a client certificate it trusts
        docker_client(HostSpec.model_validate(tls_host(tls_engine, BASE_IMAGE, with_client_cert=False))).ping()
    plain = HostSpec.model_validate({"name": "plain", "docker_url": tls_engine["url"]})
    with pytest.raises(Exception):
        docker_client(plain).ping()  # plain HTTP to a --tlsverify engine


def test_missing_image_on_the_tls_host_is_named_before_placement(pg_instance, tmp_path, tls_engine):  # noqa: F811
    config = cpu_inventory(tmp_path, "ks-platform:cpu")
    config["hosts"] = [tls_host(tls_engine, "ks-platform:cpu")]
    with dg.execute_job(dg.reconstructable(placement_smoke_job), instance=pg_instance, run_config={"execution": {"config": {"inventory": config, "retries": {"disabled": {}}}}}) as result:
        assert not result.success
        message = failure_messages(result)[-1]
    assert f"image ks-platform:cpu is missing on host tls-engine ({tls_engine['url']}). Fix: build/load it there (docker/README.md" in message, message


def test_step_container_launches_on_the_tls_host(pg_instance, tmp_path, tls_engine):  # noqa: F811
    """The base image has Python but no Dagster: the container starts on the TLS engine (the launch event names the
    host), exits 1, and the step failure carries its own words; the container is removed from that engine."""
    config = cpu_inventory(tmp_path, BASE_IMAGE)
    config["hosts"] = [tls_host(tls_engine, BASE_IMAGE)]
    config["step_entrypoint"] = ["python3", "-m", "dagster"]
    with dg.execute_job(dg.reconstructable(placement_smoke_job), instance=pg_instance, run_config={"execution": {"config": {"inventory": config, "retries": {"disabled": {}}}}}) as result:
        assert not result.success
        message = failure_messages(result)[-1]
        run_id = result.run_id
    [start] = [r.event_log_entry for r in pg_instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTING).records]
    assert start.dagster_event.event_specific_data.metadata["host"].value == "tls-engine"
    assert "on tls-engine CPU exited with code 1" in message and "No module named dagster" in message, message
    client = docker_client(HostSpec.model_validate(tls_host(tls_engine, BASE_IMAGE)))
    assert client.containers.list(all=True, filters={"label": f"ks_platform.run_id={run_id}"}) == []
