"""Run a throw-away etcd cluster on 127.0.0.1 (tests, benchmarks, local trials).

Every member is a real ``etcd`` process with its data on ``/dev/shm`` (when it exists), free
ports and short Raft timers, so a killed leader is replaced within about a second. Members
can be killed (SIGKILL, as a crash) and restarted on their data. Usage::

    with LocalEtcdCluster(members=3) as cluster:
        store = EtcdStore({"endpoints": cluster.client_urls})

or ``python -m novacron_dwcp.consensus.local_cluster`` to run one until Ctrl-C. With
``tls=LocalEtcdTls(...)`` the client ports speak TLS (``https://`` URLs) with the given server
certificate, and require client certificates signed by the CA when ``client_ca_file`` is set
(``--client-cert-auth``); peers stay plain http on 127.0.0.1. ``make_certificates(directory)``
makes a CA, a server certificate for 127.0.0.1 and a client certificate for a trial (it needs
``cryptography``).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from novacron_sdk.errors import StateStoreError

HEARTBEAT_MS = 50
ELECTION_MS = 500


def etcd_binary() -> str | None:
    """Path of the ``etcd`` server binary (``$NOVACRON_ETCD_BINARY`` or on PATH), or None."""
    return os.environ.get("NOVACRON_ETCD_BINARY") or shutil.which("etcd")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class LocalEtcdTls:
    """TLS on the members' client ports: the server certificate and key every member uses
    (it must name 127.0.0.1), the CA that signed it (for the cluster's own health checks),
    and optionally the CA of client certificates (then required) with a client certificate
    and key for the health checks."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    def flags(self) -> list[str]:
        """etcd's command-line flags for this."""
        flags = [f"--cert-file={self.cert_file}", f"--key-file={self.key_file}"]
        if self.client_ca_file is not None:
            flags += ["--client-cert-auth", f"--trusted-ca-file={self.client_ca_file}"]
        return flags

    def context(self) -> ssl.SSLContext:
        """A client context for the cluster's own requests (health, status, leases): the CA
        is checked, the name is not (its own processes on 127.0.0.1; a test may give them a
        certificate for another name)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.check_hostname = False
        if self.client_cert_file is not None:
            context.load_cert_chain(str(self.client_cert_file), str(self.client_key_file))
        return context


@dataclass
class Member:
    """One etcd member: its name, ports, data directory and process (None when down)."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    scheme: str = "http"

    @property
    def client_url(self) -> str:
        """``http://127.0.0.1:<client port>`` (``https`` with TLS)."""
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        """``http://127.0.0.1:<peer port>``."""
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None


class LocalEtcdCluster:
    """A local etcd cluster of ``members`` processes; a context manager that removes its data."""

    def __init__(
        self,
        members: int = 3,
        *,
        base_dir: str | Path | None = None,
        tls: LocalEtcdTls | None = None,
        auth_token_ttl_s: int | None = None,
    ) -> None:
        binary = etcd_binary()
        if binary is None:
            msg = "etcd is not installed: apt-get install etcd-server, or set NOVACRON_ETCD_BINARY"
            raise StateStoreError(msg)
        self.binary = binary
        shm = Path("/dev/shm")  # noqa: S108 - tmpfs: fsync is cheap, a private mkdtemp inside
        parent = Path(base_dir) if base_dir else (shm if shm.is_dir() else None)
        self.root = Path(tempfile.mkdtemp(prefix="novacron-etcd-", dir=parent))
        ports = _free_ports(2 * members)
        self.members = [
            Member(
                name=f"m{i}",
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                data_dir=self.root / f"m{i}",
                log_path=self.root / f"m{i}.log",
                scheme="https" if tls is not None else "http",
            )
            for i in range(members)
        ]
        self.tls = tls
        self._context = tls.context() if tls is not None else None
        self.auth_token_ttl_s = auth_token_ttl_s
        self._root: tuple[str, str] | None = None  # after enable_auth: root's name, password
        self.token = self.root.name

    @property
    def client_urls(self) -> list[str]:
        """Client URLs of every member (down or not), in member order."""
        return [m.client_url for m in self.members]

    def _command(self, member: Member) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            self.binary,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self.token}",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--logger=zap",
            "--log-level=warn",
            *(self.tls.flags() if self.tls is not None else []),
            *([f"--auth-token-ttl={self.auth_token_ttl_s}"] if self.auth_token_ttl_s else []),
        ]

    def start_member(self, index: int) -> None:
        """Start (or restart, on its data) member ``index``."""
        member = self.members[index]
        if member.running:
            return
        log = member.log_path.open("ab")
        try:
            member.process = subprocess.Popen(  # noqa: S603 - our own etcd command line
                self._command(member), stdout=log, stderr=log, start_new_session=True
            )
        finally:
            log.close()

    def kill(self, index: int) -> None:
        """SIGKILL member ``index``, as a crash would, and reap it."""
        process = self.members[index].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        self.members[index].process = None

    def restart(self, index: int, *, timeout_s: float = 20.0) -> None:
        """Start a killed member again and wait until it serves requests."""
        self.start_member(index)
        self.wait_healthy([index], timeout_s=timeout_s)

    def leader(self) -> int | None:
        """Index of the current Raft leader among running members, or None."""
        ids: dict[str, int] = {}
        leader_id = None
        for index, member in enumerate(self.members):
            if not member.running:
                continue
            status = self._post(f"{member.client_url}/v3/maintenance/status", {})
            if status is None:
                continue
            ids[str(status.get("header", {}).get("member_id"))] = index
            leader_id = str(status.get("leader")) if status.get("leader") else leader_id
        return ids.get(leader_id) if leader_id is not None else None

    def revoke_all_leases(self) -> int:
        """Revoke every lease in the cluster (tests: no expiry from one test bumps the next's
        revisions); returns how many were revoked."""
        url = next(m.client_url for m in self.members if m.running)
        listing = self._post(f"{url}/v3/lease/leases", {}) or {}
        leases = [str(item["ID"]) for item in listing.get("leases", ())]
        for lease in leases:
            self._post(f"{url}/v3/lease/revoke", {"ID": lease})
        return len(leases)

    def enable_auth(self, root_password: str, users: dict[str, tuple[str, str]]) -> None:
        """Turn etcd's authentication on: user ``root`` (role ``root``) with ``root_password``,
        and per item of ``users`` (name: (password, key prefix)) a user whose role of the same
        name may read and write the keys under that prefix. The cluster's own requests
        (status, leases) authenticate as root from then on."""
        url = next(m.client_url for m in self.members if m.running)

        def call(path: str, body: dict[str, Any]) -> None:
            if _post_json(f"{url}{path}", body, self._context) is None:
                msg = f"etcd at {url} refused {path} while enabling authentication"
                raise StateStoreError(msg)

        call("/v3/auth/user/add", {"name": "root", "password": root_password})
        call("/v3/auth/role/add", {"name": "root"})
        call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        for name, (password, prefix) in users.items():
            raw = prefix.encode()
            end = raw[:-1] + bytes([raw[-1] + 1]) if raw else b"\0"
            call("/v3/auth/user/add", {"name": name, "password": password})
            call("/v3/auth/role/add", {"name": name})
            permission = {
                "permType": "READWRITE",
                "key": _b64(raw or b"\0"),
                "range_end": _b64(end),
            }
            call("/v3/auth/role/grant", {"name": name, "perm": permission})
            call("/v3/auth/user/grant", {"user": name, "role": name})
        call("/v3/auth/enable", {})
        self._root = ("root", root_password)

    def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """``_post_json`` as root once authentication is on."""
        token = None
        if self._root is not None:
            name, password = self._root
            base = url.split("/v3/", 1)[0]
            answer = _post_json(
                f"{base}/v3/auth/authenticate", {"name": name, "password": password}, self._context
            )
            token = str(answer["token"]) if answer and "token" in answer else None
        return _post_json(url, body, self._context, token=token)

    def wait_healthy(self, indexes: list[int] | None = None, *, timeout_s: float = 20.0) -> None:
        """Wait until the given members (default: all running ones) report a healthy cluster."""
        chosen = (
            indexes if indexes is not None else [i for i, m in enumerate(self.members) if m.running]
        )
        deadline = time.monotonic() + timeout_s
        for index in chosen:
            member = self.members[index]
            while not _healthy(member.client_url, self._context):
                if not member.running:
                    msg = f"etcd member {member.name} exited: {self._tail(member)}"
                    raise StateStoreError(msg)
                if time.monotonic() > deadline:
                    msg = f"etcd member {member.name} not healthy after {timeout_s} s: " + (
                        self._tail(member)
                    )
                    raise StateStoreError(msg)
                time.sleep(0.05)

    @staticmethod
    def _tail(member: Member) -> str:
        with contextlib.suppress(OSError):
            return member.log_path.read_text(errors="replace")[-2000:]
        return "(no log)"

    def start(self) -> LocalEtcdCluster:
        """Start every member and wait for a leader."""
        for index in range(len(self.members)):
            self.start_member(index)
        self.wait_healthy()
        return self

    def stop(self) -> None:
        """Kill every member and delete the data."""
        for index in range(len(self.members)):
            self.kill(index)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalEtcdCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def make_certificates(directory: Path, *, server_dns: str | None = None) -> LocalEtcdTls:
    """A CA, a server certificate for 127.0.0.1 and localhost (for the DNS name ``server_dns``
    alone when given), and a client certificate (``CN=novacron``) signed by it, as PEM files
    in ``directory`` (needs ``cryptography``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / f"{stem}-key.pem").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def issue(
        common: str,
        issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None,
        usage: list[x509.ObjectIdentifier],
        names: list[x509.GeneralName],
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        signer, issuer_name = issuer if issuer is not None else (key, name(common))
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
        )
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), False)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
        if issuer is None:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                True,
            )  # fmt: skip
        return key, builder.sign(signer, hashes.SHA256())

    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = issue("novacron test CA", None, [], [])
    write("ca", ca_key, ca)
    server_names: list[x509.GeneralName] = (
        [x509.DNSName(server_dns)]
        if server_dns is not None
        else [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    server_key, server = issue(
        "etcd",
        (ca_key, ca.subject),
        # Client too: etcd 3.4's JSON gateway connects to its own gRPC server with it.
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        server_names,
    )
    write("server", server_key, server)
    client_key, client = issue(
        "novacron", (ca_key, ca.subject), [ExtendedKeyUsageOID.CLIENT_AUTH], []
    )
    write("client", client_key, client)
    return LocalEtcdTls(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server-key.pem",
        client_ca_file=directory / "ca.pem",
        client_cert_file=directory / "client.pem",
        client_key_file=directory / "client-key.pem",
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _post_json(
    url: str,
    body: dict[str, Any],
    context: ssl.SSLContext | None,
    timeout_s: float = 1.0,
    *,
    token: str | None = None,
) -> dict[str, Any] | None:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = token
    request = urllib.request.Request(  # noqa: S310 - http URL built from our own member
        url, data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:  # noqa: S310
            data = json.loads(response.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _healthy(client_url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(  # noqa: S310 - our own member's URL
            f"{client_url}/health", timeout=1.0, context=context
        ) as response:
            return bool(json.loads(response.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def main() -> None:
    """Run a local 3-member cluster until interrupted, printing its endpoints."""
    with LocalEtcdCluster(members=3) as cluster:
        sys.stdout.write(f"endpoints: {','.join(cluster.client_urls)}\n")
        sys.stdout.write(f"data: {cluster.root} (removed on exit); Ctrl-C to stop\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while all(m.running for m in cluster.members):
                time.sleep(0.5)


if __name__ == "__main__":
    main()
