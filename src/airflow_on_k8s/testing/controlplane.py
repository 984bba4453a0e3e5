"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

Upstream binaries, built from their Go modules by ``hack/controlplane/build.sh`` (``make k8s-binaries``),
run as local processes on 127.0.0.1 with free ports; nothing connects to a node or pod IP. Nodes are
Node objects: kwok (:func:`start_kwok`) makes the ones carrying a label Ready and runs their pods' status
through its stages, so the real scheduler binds pods to them and the real ReplicaSet controller manages them::

    from airflow_on_k8s.testing.controlplane import ControlPlane, start_kwok

    with ControlPlane() as cp:                       # start() ... stop()
        api = cp.api_client()                        # kubernetes.client.ApiClient, as system:masters
        cp.kubeconfig                                # a kubeconfig file for the same admin user
        with start_kwok(cp, node_selector="type=kwok"):
            ...

Versions come from the wrapper go.mod files under hack/controlplane/ (the single source of truth); binaries
from the same version-keyed cache the build script fills. Every knob is an environment variable:

``AIRFLOW_ON_K8S_HACK_DIR``
    The ``hack/controlplane`` directory whose go.mod files pin the versions (default: the clone's).
``AIRFLOW_ON_K8S_BIN_DIR``
    Root of the binary cache (default ``~/.cache/airflow-on-k8s/bin``); binaries are looked up in
    ``<root>/<component>-<version>/`` (``kubernetes-v1.34.4/kube-apiserver``, ``etcd-v3.6.16/etcd``, ...).
``AIRFLOW_ON_K8S_KUBERNETES_BIN_DIR``, ``AIRFLOW_ON_K8S_ETCD_BIN_DIR``, ``AIRFLOW_ON_K8S_KWOK_BIN_DIR``
    A directory holding that component's binaries, instead of the versioned cache entry.
``AIRFLOW_ON_K8S_KWOK_STAGES_DIR``
    kwok's ``kustomize/stage`` directory (default: the one in the Go module cache of the pinned kwok
    version, ``$(go env GOMODCACHE)/sigs.k8s.io/kwok@<version>/kustomize/stage``).
``AIRFLOW_ON_K8S_CONTROLPLANE_START_TIMEOUT``
    Seconds each process may take to become healthy (default 60).
``AIRFLOW_ON_K8S_CONTROLPLANE_ATTACH_OUTPUT``
    ``1``: processes write to this process's stderr instead of their log files.
``AIRFLOW_ON_K8S_CONTROLPLANE_KEEP``
    ``1``: keep the work dir (certificates, etcd data, logs) after stop().

When a process does not become healthy, :class:`ControlPlaneError` carries the tail of its log (and the work
dir with every log is kept);
:meth:`ControlPlane.log_tails` gives every process's tail (the pytest fixture prints it when a test fails).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import ipaddress
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from airflow_on_k8s.testing.local_services import ServiceError, _tail, free_port

# The wrapper go.mod files live in the clone: src/airflow_on_k8s/testing/ -> the repository root.
HACK_DIR = Path(
    os.environ.get("AIRFLOW_ON_K8S_HACK_DIR", Path(__file__).resolve().parents[3] / "hack" / "controlplane")
)
# module path of the upstream project, per wrapper module (as in hack/controlplane/build.sh)
UPSTREAM = {
    "kubernetes": "k8s.io/kubernetes",
    "etcd": "go.etcd.io/etcd/server/v3",
    "kwok": "sigs.k8s.io/kwok",
    "keda": "github.com/kedacore/keda/v2",  # testing.keda
    "metrics-server": "sigs.k8s.io/metrics-server",  # testing.metrics_server
    "cluster-autoscaler": "k8s.io/autoscaler/cluster-autoscaler",
}
# The controllers the tests rely on (kube-controller-manager --controllers): Deployments and ReplicaSets,
# ServiceAccounts and their tokens, namespace deletion, owner-reference garbage collection, HPA, PDBs,
# quotas (quota admission refuses pods until the controller has computed usage), pod GC, the root CA
# ConfigMap and the aggregated admin/edit/view roles; node lifecycle lifts the not-ready taint the
# apiserver puts on every new Node (TaintNodesByCondition) once it is Ready, and taints it again if its
# heartbeat stops, as in a real cluster.
CONTROLLERS = [
    "node-lifecycle-controller",
    "replicaset-controller",
    "deployment-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "horizontal-pod-autoscaler-controller",
    "disruption-controller",
    "resourcequota-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
]


class ControlPlaneError(ServiceError):
    """A control-plane process did not start; the message carries the tail of its log."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def pinned_version(component: str) -> str:
    """The version of ``component`` required by its wrapper module (hack/controlplane/<component>/go.mod)."""
    go_mod = HACK_DIR / component / "go.mod"
    module = re.escape(UPSTREAM[component])
    match = re.search(rf"^\s*(?:require\s+)?{module}\s+(v\S+)", go_mod.read_text(), re.MULTILINE)
    if not match:
        raise ControlPlaneError(f"{UPSTREAM[component]} is not required by {go_mod}")
    return match.group(1)


def bin_dir(component: str) -> Path:
    """Where the binaries of ``component`` are: the env override, else the version-keyed cache entry."""
    override = os.environ.get(f"AIRFLOW_ON_K8S_{component.upper().replace('-', '_')}_BIN_DIR")
    if override:
        return Path(override)
    root = Path(os.environ.get("AIRFLOW_ON_K8S_BIN_DIR", Path.home() / ".cache" / "airflow-on-k8s" / "bin"))
    return root / f"{component}-{pinned_version(component)}"


def binary(component: str, name: str) -> Path:
    path = bin_dir(component) / name
    if not os.access(path, os.X_OK):
        raise ControlPlaneError(f"{path} not found: build it with `make k8s-binaries` (hack/controlplane/build.sh)")
    return path


def go_mod_cache() -> Path:
    """The Go module cache, where the tests read upstream files of the pinned modules (kwok's stages, KEDA's CRDs)."""
    mod_cache = os.environ.get("GOMODCACHE")
    if not mod_cache:
        try:
            mod_cache = subprocess.run(
                ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            mod_cache = str(Path(os.environ.get("GOPATH", Path.home() / "go")) / "pkg" / "mod")
    return Path(mod_cache)


def kwok_stages_dir() -> Path:
    """kwok's stage YAMLs, read from the Go module cache of the pinned version (not copied into the repo)."""
    override = os.environ.get("AIRFLOW_ON_K8S_KWOK_STAGES_DIR")
    if override:
        return Path(override)
    path = go_mod_cache() / f"{UPSTREAM['kwok']}@{pinned_version('kwok')}" / "kustomize" / "stage"
    if not path.is_dir():
        raise ControlPlaneError(f"{path} not found: `make k8s-binaries` downloads the kwok module")
    return path


# --------------------------------------------------------------------------------------------- certificates


@dataclass
class _KeyPair:
    cert: Path
    key: Path


class _PKI:
    """A throwaway CA and the certificates the processes need, written under ``directory``."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ser, self._ec, self._oid = x509, hashes, serialization, ec, NameOID
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airflow-on-k8s-test-ca")])
        now = dt.datetime.now(dt.timezone.utc)
        self._ca_name = name
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                              key_encipherment=False, data_encipherment=False, key_agreement=False,
                              encipher_only=False, decipher_only=False),
                critical=True,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = self._write("ca", self._ca_cert, self._ca_key)

        # The service-account token signing key pair (apiserver signs, apiserver and kcm verify/sign).
        sa_key = ec.generate_private_key(ec.SECP256R1())
        self.sa_key = self.dir / "sa.key"
        self.sa_pub = self.dir / "sa.pub"
        self.sa_key.write_bytes(self._key_pem(sa_key))
        self.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def _key_pem(self, key) -> bytes:
        ser = self._ser
        return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption())

    def _write(self, name: str, cert, key) -> _KeyPair:
        pair = _KeyPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(self._ser.Encoding.PEM))
        pair.key.write_bytes(self._key_pem(key))
        pair.key.chmod(0o600)
        return pair

    def issue(self, name: str, common_name: str, organizations: tuple[str, ...] = (), *, server: bool = False,
              hosts: tuple[str, ...] = ()) -> _KeyPair:
        """A certificate signed by the CA: a client certificate (CN = user, O = groups), or a serving one."""
        x509, NameOID = self._x509, self._oid
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self._ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if hosts:
            sans = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return self._write(name, builder.sign(self._ca_key, self._hashes.SHA256()), key)


# ---------------------------------------------------------------------------------------------- processes


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The child gets SIGKILL if the test process dies without stopping it: no orphans, whatever happens.

    Linux ties this to the thread that started the child: start the control plane from a thread that lives
    as long as it should (the main thread, as pytest fixtures do), not from a short-lived worker thread.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Process:
    """One control-plane process: its command line, its log file, a health check, start and stop."""

    name: str
    argv: list[str]
    log_path: Path
    healthy: Callable[[], bool]
    env: dict[str, str] | None = None
    popen: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> None:
        attach = _env_flag("AIRFLOW_ON_K8S_CONTROLPLANE_ATTACH_OUTPUT")
        log = sys.stderr if attach else open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})}, preexec_fn=_die_with_parent,
            )
        finally:
            if not attach:
                log.close()

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is None or self.popen.poll() is not None:
                code = None if self.popen is None else self.popen.returncode
                raise ControlPlaneError(f"{self.name} exited with code {code}:\n{self.tail()}")
            if self.healthy():
                return
            time.sleep(0.1)
        raise ControlPlaneError(f"{self.name} not healthy after {timeout:.0f} s:\n{self.tail()}")

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen = None

    def tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)


def http_ok(url: str, context: ssl.SSLContext | None = None, expect: bytes | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            body = response.read()
            return response.status == 200 and (expect is None or expect in body)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def insecure_context() -> ssl.SSLContext:
    """For the /healthz of kcm and the scheduler, which serve a self-signed certificate of their own."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _kubeconfig(path: Path, server: str, ca: Path, user: str, cert: Path, key: Path) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n"
        f"users:\n- name: {user}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n"
        f"contexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\n"
        "current-context: test\n"
    )
    return path


# ------------------------------------------------------------------------------------------ control plane


class ControlPlane:
    """etcd, kube-apiserver (RBAC + Node authorization, service-account tokens), kube-controller-manager and
    kube-scheduler on 127.0.0.1. ``start()`` returns the admin kubeconfig path; ``stop()`` stops every
    process and removes the work dir. Environment overrides: see the module docstring.
    """

    SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

    def __init__(self, work_dir: Path | None = None, start_timeout: float | None = None,
                 extra_apiserver_args: list[str] | None = None,
                 extra_controller_manager_args: list[str] | None = None) -> None:
        """``extra_controller_manager_args``: e.g. ``["--horizontal-pod-autoscaler-sync-period=5s"]`` to run the
        HPA controller faster than its default (15 s, as on EKS/GKE); the tests here keep the defaults."""
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="controlplane-"))
        self.log_dir = self.work_dir / "logs"
        self.start_timeout = start_timeout or float(os.environ.get("AIRFLOW_ON_K8S_CONTROLPLANE_START_TIMEOUT", 60))
        self.extra_apiserver_args = extra_apiserver_args or []
        self.extra_controller_manager_args = extra_controller_manager_args or []
        self.processes: list[Process] = []
        self.version = pinned_version("kubernetes")
        self.etcd_port = self.apiserver_port = 0
        self.kubeconfig: Path | None = None
        self.pki: _PKI | None = None
        self.start_seconds: float | None = None

    # -- lifecycle

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def start(self) -> Path:
        """Start everything and wait until each process is healthy; returns the admin kubeconfig path."""
        began = time.monotonic()
        try:
            self._start()
        except ControlPlaneError as exc:
            self.stop(keep_files=True)  # the logs stay for a post-mortem
            raise ControlPlaneError(f"{exc}\n(all logs kept in {self.log_dir})") from None
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self.kubeconfig

    def _start(self) -> None:
        k8s = bin_dir("kubernetes")
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            binary("kubernetes", name)
        etcd_bin = binary("etcd", "etcd")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        pki = self.pki = _PKI(self.work_dir / "pki")
        serving = pki.issue("apiserver", "kube-apiserver", server=True,
                            hosts=("127.0.0.1", "localhost", "kubernetes", "kubernetes.default",
                                   "kubernetes.default.svc", "10.0.0.1"))
        admin = pki.issue("admin", "admin", ("system:masters",))
        kcm = pki.issue("kcm", "system:kube-controller-manager")
        sched = pki.issue("scheduler", "system:kube-scheduler")

        self.etcd_port, peer_port = free_port(), free_port()
        self.apiserver_port = free_port()
        kcm_port, sched_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"

        self.kubeconfig = _kubeconfig(self.work_dir / "admin.kubeconfig", self.server, pki.ca.cert, "admin",
                                      admin.cert, admin.key)
        kcm_kubeconfig = _kubeconfig(self.work_dir / "kcm.kubeconfig", self.server, pki.ca.cert,
                                     "system:kube-controller-manager", kcm.cert, kcm.key)
        sched_kubeconfig = _kubeconfig(self.work_dir / "scheduler.kubeconfig", self.server, pki.ca.cert,
                                       "system:kube-scheduler", sched.cert, sched.key)

        etcd = Process(
            "etcd",
            [str(etcd_bin), "--name", "default", "--data-dir", str(self.work_dir / "etcd"),
             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"default={peer_url}", "--unsafe-no-fsync", "--log-level", "warn"],
            self.log_dir / "etcd.log",
            lambda: http_ok(f"{etcd_url}/health", expect=b'"health":"true"'),
        )
        admin_context = ssl.create_default_context(cafile=str(pki.ca.cert))
        admin_context.load_cert_chain(str(admin.cert), str(admin.key))
        apiserver = Process(
            "kube-apiserver",
            [str(k8s / "kube-apiserver"),
             f"--etcd-servers={etcd_url}",
             "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.apiserver_port}",
             f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
             f"--client-ca-file={pki.ca.cert}",
             f"--cert-dir={self.work_dir / 'apiserver-certs'}",
             "--authorization-mode=Node,RBAC",
             "--enable-admission-plugins=NodeRestriction",
             f"--service-account-issuer={self.SERVICE_ACCOUNT_ISSUER}",
             f"--service-account-key-file={pki.sa_pub}",
             f"--service-account-signing-key-file={pki.sa_key}",
             "--service-cluster-ip-range=10.0.0.0/24",
             "--allow-privileged=true",
             # The "kubernetes" Service's endpoints would be 127.0.0.1, which Endpoints refuse (loopback).
             "--endpoint-reconciler-type=none",
             *self.extra_apiserver_args],
            self.log_dir / "kube-apiserver.log",
            lambda: http_ok(f"{self.server}/readyz", admin_context),
        )
        controller_manager = Process(
            "kube-controller-manager",
            [str(k8s / "kube-controller-manager"),
             f"--kubeconfig={kcm_kubeconfig}",
             "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
             f"--cert-dir={self.work_dir / 'kcm-certs'}",
             "--leader-elect=false",
             "--use-service-account-credentials=true",
             f"--service-account-private-key-file={pki.sa_key}",
             f"--root-ca-file={pki.ca.cert}",
             f"--controllers={','.join(CONTROLLERS)}",
             "--concurrent-replicaset-syncs=5", "--concurrent-deployment-syncs=5",
             *self.extra_controller_manager_args],
            self.log_dir / "kube-controller-manager.log",
            lambda: http_ok(f"https://127.0.0.1:{kcm_port}/healthz", insecure_context()),
        )
        scheduler = Process(
            "kube-scheduler",
            [str(k8s / "kube-scheduler"),
             f"--kubeconfig={sched_kubeconfig}",
             "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
             f"--cert-dir={self.work_dir / 'scheduler-certs'}",
             "--leader-elect=false"],
            self.log_dir / "kube-scheduler.log",
            lambda: http_ok(f"https://127.0.0.1:{sched_port}/healthz", insecure_context()),
        )
        # etcd and the apiserver start together (the apiserver retries etcd); kcm and the scheduler need a
        # ready apiserver, then start together.
        self.processes += [etcd, apiserver]
        etcd.start()
        apiserver.start()
        etcd.wait_healthy(self.start_timeout)
        apiserver.wait_healthy(self.start_timeout)
        self.processes += [controller_manager, scheduler]
        controller_manager.start()
        scheduler.start()
        controller_manager.wait_healthy(self.start_timeout)
        scheduler.wait_healthy(self.start_timeout)

    def stop(self, keep_files: bool = False) -> None:
        """Stop every process (dependants first) and delete the work dir unless asked to keep it."""
        for process in reversed(self.processes):
            process.stop()
        self.processes = []
        if self._own_dir and not keep_files and not _env_flag("AIRFLOW_ON_K8S_CONTROLPLANE_KEEP"):
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # -- clients and diagnostics

    def client_configuration(self):
        """A ``kubernetes.client.Configuration`` for the admin user (system:masters)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.pki.ca.cert)
        configuration.cert_file = str(self.work_dir / "pki" / "admin.crt")
        configuration.key_file = str(self.work_dir / "pki" / "admin.key")
        return configuration

    def api_client(self):
        """A ``kubernetes.client.ApiClient`` for the admin user."""
        from kubernetes import client

        return client.ApiClient(self.client_configuration())

    def token_client(self, token: str):
        """A ``kubernetes.client.ApiClient`` authenticating with a bearer token (e.g. a ServiceAccount's)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.pki.ca.cert)
        configuration.api_key = {"BearerToken": token}  # the kubernetes client >= 36 key (older: "authorization")
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(configuration)

    def issue_user(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for ``user`` in ``groups`` (a client certificate signed by the cluster CA)."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", user)
        pair = self.pki.issue(f"user-{safe}", user, groups)
        return _kubeconfig(self.work_dir / f"user-{safe}.kubeconfig", self.server, self.pki.ca.cert, user,
                           pair.cert, pair.key)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.running]

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(f"----- {p.name} ({p.log_path}) -----\n{p.tail(lines)}" for p in self.processes)


# ------------------------------------------------------------------------------------------------- kwok

# kwok's stages, relative to kustomize/stage/ of the kwok module: nodes become Ready and keep a heartbeat
# Lease; pods bound to them go Running + Ready, complete when their containers would, and are removed
# when deleted (kwok plays the kubelet's part of pod deletion).
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
)


@contextlib.contextmanager
def start_kwok(control_plane: ControlPlane, node_selector: str = "type=kwok",
               stages: tuple[str, ...] = KWOK_STAGES, timeout: float = 30) -> Iterator[Process]:
    """Run kwok against ``control_plane``, managing the Nodes whose labels match ``node_selector``.

    Create a Node with that label (and ``kwok.x-k8s.io/node: fake`` annotation by convention) and kwok makes
    it Ready; pods the scheduler binds to it become Running and Ready. kwok is stopped on exit.
    """
    stage_dir = kwok_stages_dir()
    admin = control_plane.issue_user("kwok", ("system:masters",))
    port = free_port()
    argv = [str(binary("kwok", "kwok")), f"--kubeconfig={admin}",
            f"--manage-nodes-with-label-selector={node_selector}",
            f"--server-address=127.0.0.1:{port}",
            "--node-lease-duration-seconds=40"]
    for stage in stages:
        argv.append(f"--config={stage_dir / stage}")
    process = Process(
        "kwok", argv, control_plane.log_dir / f"kwok-{port}.log",
        lambda: http_ok(f"http://127.0.0.1:{port}/healthz"),
        # kwok reads ~/.kwok/kwok.yaml when it exists; a home of its own keeps a developer's config out.
        env={"HOME": str(control_plane.work_dir / "kwok-home")},
    )
    control_plane.processes.append(process)
    process.start()
    try:
        process.wait_healthy(timeout)
        yield process
    finally:
        process.stop()  # stays in control_plane.processes, so log_tails() still shows its log


def kwok_node(name: str, labels: dict[str, str] | None = None, taints: list[dict] | None = None,
              capacity: dict[str, str] | None = None) -> dict:
    """A Node manifest for kwok to manage: ``labels`` must match the selector kwok was started with."""
    capacity = capacity or {"cpu": "8", "memory": "32Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                       "type": "kwok", **(labels or {})},
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints or []},
        # Nodes accept status on create (as the kubelet registers them); kwok keeps it and adds conditions.
        "status": {"capacity": capacity, "allocatable": capacity},
    }
