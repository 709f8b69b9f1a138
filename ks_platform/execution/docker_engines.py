"""Connections to the Docker engines of a deployment: local (unix socket), ``tcp://`` with TLS, ``ssh://`` through
paramiko with the host's own key and known_hosts. Every failure names the host and the fix."""

import os
import urllib.parse
from typing import Any

import docker
import docker.constants
import docker.errors
import docker.tls

from ks_platform.execution.inventory import HostSpec, InventoryError


class EngineConnectionError(ConnectionError):
    """A remote engine cannot be reached now (it may come back): the message names the host, the cause and the fix."""


#: Seconds for the TCP connect, the ssh banner and the authentication of an ``ssh://`` engine.
SSH_CONNECT_TIMEOUT = 15.0


def _ssh_adapter(host: HostSpec, source: str) -> Any:
    """docker-py's paramiko transport (``SSHHTTPAdapter``, connected) with the host's ``ssh`` settings: only
    ``ssh.known_hosts`` (else ~/.ssh/known_hosts) is trusted, unknown host keys are refused, ``ssh.identity_file``
    (else ~/.ssh/config's IdentityFile, the agent, ~/.ssh/id_*) authenticates; HostName/Port/User/ProxyCommand come
    from ~/.ssh/config as in docker-py. Every way the connection fails becomes an error naming the host and the fix."""
    try:
        import paramiko
        from docker.transport import SSHHTTPAdapter  # only defined when paramiko imports
    except ImportError:
        raise InventoryError(
            source,
            f"host {host.name} uses {host.docker_url}, which needs the paramiko package",
            "pip install paramiko (or use tcp:// with tls)",
        ) from None
    settings = host.ssh
    identity_file = settings.identity_file if settings else None
    known_hosts = settings.known_hosts if settings else None
    for label, path in (("identity_file", identity_file), ("known_hosts", known_hosts)):
        if path is not None and not os.path.isfile(path):
            raise InventoryError(
                source,
                f"ssh.{label} of host {host.name} ({path}) does not exist on this machine",
                f"copy the file there or correct ssh.{label} of host {host.name}",
            )

    class InventorySSHAdapter(SSHHTTPAdapter):
        def _create_paramiko_client(self, base_url: str) -> None:  # called by SSHHTTPAdapter.__init__, then _connect()
            url = urllib.parse.urlparse(base_url)
            params: dict[str, Any] = {"hostname": url.hostname, "port": url.port, "username": url.username}
            config_file = os.path.expanduser("~/.ssh/config")
            if os.path.exists(config_file):
                found = paramiko.SSHConfig.from_path(config_file).lookup(url.hostname or "")
                if "proxycommand" in found:
                    params["sock"] = paramiko.ProxyCommand(found["proxycommand"])
                params["hostname"] = found.get("hostname", params["hostname"])
                params["port"] = params["port"] or found.get("port")
                params["username"] = params["username"] or found.get("user")
                if "identityfile" in found:
                    params["key_filename"] = found["identityfile"]
            params["port"] = int(params["port"] or 22)
            if identity_file is not None:  # exactly this key
                params.update(key_filename=identity_file, look_for_keys=False, allow_agent=False)
            params.update(
                timeout=SSH_CONNECT_TIMEOUT, banner_timeout=SSH_CONNECT_TIMEOUT, auth_timeout=SSH_CONNECT_TIMEOUT
            )
            self.ssh_params = params
            self.ssh_client = paramiko.SSHClient()
            if known_hosts is not None:
                self.ssh_client.load_host_keys(known_hosts)
            else:
                self.ssh_client.load_system_host_keys()
            self.ssh_client.set_missing_host_key_policy(paramiko.RejectPolicy())

    parsed = urllib.parse.urlparse(host.docker_url)
    where = f"{parsed.hostname}:{parsed.port or 22}"
    trusted = known_hosts or os.path.expanduser("~/.ssh/known_hosts")
    user = parsed.username or "<user>"
    key = identity_file or "the key this machine offers (~/.ssh/config IdentityFile, ssh agent, ~/.ssh/id_*)"
    scan = f"ssh-keyscan{f' -p {parsed.port}' if parsed.port else ''} {parsed.hostname} >> {trusted}"
    known_name = f"[{parsed.hostname}]:{parsed.port}" if parsed.port and parsed.port != 22 else parsed.hostname
    try:
        return InventorySSHAdapter(
            host.docker_url, timeout=30, pool_connections=docker.constants.DEFAULT_NUM_POOLS_SSH, shell_out=False
        )
    except paramiko.BadHostKeyException as exc:
        raise InventoryError(
            source,
            f"host {host.name} ({where}) presented a host key ({exc.key.get_name()} {exc.key.fingerprint}) that "
            f"differs from the one in {trusted}",
            "if that machine was reinstalled, check its new key there (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub on "
            f"{parsed.hostname}), then replace its line in {trusted} (ssh-keygen -R '{known_name}' -f {trusted}; "
            f"{scan}); otherwise something else answers at that address: do not connect",
        ) from None
    except paramiko.AuthenticationException as exc:
        raise InventoryError(
            source,
            f"host {host.name} ({where}) refused ssh authentication of user {user} with {key} ({type(exc).__name__}: "
            f"{exc})",
            f"add that key's public half (ssh-keygen -y -f {identity_file or '<key>'}) to ~{user}/.ssh/authorized_keys "
            f"on {parsed.hostname}, or set ssh.identity_file of host {host.name} in {source} to an unencrypted key "
            "that host accepts",
        ) from None
    except paramiko.SSHException as exc:
        if "known_hosts" in str(exc):
            raise InventoryError(
                source,
                f"the host key of host {host.name} ({where}) is not in {trusted}, so the connection was refused ({exc})",
                f"check that `ssh-keyscan{f' -p {parsed.port}' if parsed.port else ''} {parsed.hostname} | ssh-keygen "
                "-lf -` shows the fingerprint that `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` shows on "
                f"{parsed.hostname}, then add it: {scan}"
                + (
                    ""
                    if known_hosts
                    else f"; or set ssh.known_hosts of host {host.name} in {source} to a file that has it"
                ),
            ) from None
        raise EngineConnectionError(
            f"the ssh server of host {host.name} at {where} failed the handshake ({type(exc).__name__}: {exc}). Fix: "
            f"check that sshd runs there on port {parsed.port or 22} and correct docker_url of host {host.name} in "
            f"{source}"
        ) from None
    except (
        OSError,
        EOFError,
    ) as exc:  # refused, timed out, no route, unknown name (NoValidConnectionsError is an OSError)
        raise EngineConnectionError(
            f"the ssh server of host {host.name} at {where} is unreachable ({type(exc).__name__}: {str(exc)[:300]}). "
            f"Fix: start sshd there (and dockerd), check that this machine reaches port {parsed.port or 22} of "
            f"{parsed.hostname} (firewall, DNS), or correct docker_url of host {host.name} in {source}"
        ) from None


def _ssh_docker_client(host: HostSpec, source: str) -> docker.DockerClient:
    """A client whose requests go through the paramiko adapter (each connection runs ``docker system dial-stdio``)."""
    adapter = _ssh_adapter(host, source)
    # Built without connecting (a fixed API version and the shell-out transport, never used: replaced by the adapter).
    client = docker.DockerClient(
        base_url=host.docker_url, timeout=30, use_ssh_client=True, version=docker.constants.DEFAULT_DOCKER_API_VERSION
    )
    client.api.mount("http+docker://ssh", adapter)
    client.api._custom_adapter = adapter  # docker-py's fallback adapter (private in docker 7.x, pinned)
    client.api.trust_env = False
    try:
        client.api._version = client.api._retrieve_server_version()
    except Exception as exc:  # noqa: BLE001 - ssh works, the engine behind it does not answer: say why from that host
        user = urllib.parse.urlparse(host.docker_url).username or "<user>"
        said = ""
        try:
            _, stdout, stderr = adapter.ssh_client.exec_command(
                "docker version --format '{{.Server.Version}}'", timeout=SSH_CONNECT_TIMEOUT
            )
            said = (stderr.read() + stdout.read()).decode(errors="replace").strip()[-500:]
        except Exception:  # noqa: BLE001 - the first error is reported either way
            pass
        client.close()
        raise EngineConnectionError(
            f"host {host.name} accepted ssh as {user}, but `docker system dial-stdio` there gave no Docker engine "
            f"({str(exc)[:300]})"
            + (f"; `docker version` there says: {said}" if said else "")
            + ". Fix: on that host put the docker CLI on the PATH of non-interactive ssh sessions, start dockerd, and "
            f"let {user} use /var/run/docker.sock (docker group)"
        ) from None
    return client


def docker_client(host: HostSpec, source: str = "the inventory") -> docker.DockerClient:
    """A client for the host's engine: unix socket, ``tcp://`` (TLS when ``tls`` is set) or ``ssh://`` (paramiko)."""
    tls: docker.tls.TLSConfig | bool = False
    if host.tls is not None:
        for label, path in (
            ("ca_cert", host.tls.ca_cert),
            ("client_cert", host.tls.client_cert),
            ("client_key", host.tls.client_key),
        ):
            if path is not None and not os.path.isfile(path):
                raise InventoryError(
                    source,
                    f"tls.{label} of host {host.name} ({path}) does not exist on this machine",
                    f"copy the file there or correct tls.{label} of host {host.name}",
                )
        cert = (host.tls.client_cert, host.tls.client_key) if host.tls.client_cert and host.tls.client_key else None
        tls = docker.tls.TLSConfig(client_cert=cert, ca_cert=host.tls.ca_cert, verify=host.tls.verify)
    if host.docker_url.startswith("ssh://"):
        return _ssh_docker_client(host, source)
    if host.tls is None:
        return docker.DockerClient(base_url=host.docker_url, timeout=30)
    # requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE replace the engine's CA (and routes via env proxies): turn that
    # off before the first request, which is docker-py's API version probe (private in docker 7.x, pinned).
    client = docker.DockerClient(
        base_url=host.docker_url, timeout=30, tls=tls, version=docker.constants.DEFAULT_DOCKER_API_VERSION
    )
    client.api.trust_env = False
    client.api._version = client.api._retrieve_server_version()
    return client


def image_digest(client: docker.DockerClient, image: str) -> str:
    """The image's repository digest when it was pulled from a registry, else its content ID (``sha256:…``)."""
    found = client.images.get(image)
    repo_digests = found.attrs.get("RepoDigests") or []
    return repo_digests[0] if repo_digests else found.id
