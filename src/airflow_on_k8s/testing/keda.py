"""Real KEDA (operator + external-metrics API server) against a
:class:`~airflow_on_k8s.testing.controlplane.ControlPlane`.

The binaries are KEDA's own, built from ``github.com/kedacore/keda/v2`` by ``hack/controlplane/build.sh``
(version: the wrapper module ``hack/controlplane/keda/go.mod``, i.e. the app version of the KEDA chart the program
deploys). Everything else KEDA ships is read from the Go module cache of that version at run time, not copied
into the repository: the CRDs (``config/crd/bases``) and KEDA's own RBAC (``config/rbac``, ``config/metrics-server``)::

    from airflow_on_k8s.testing.controlplane import ControlPlane
    from airflow_on_k8s.testing.keda import FrontProxy, start_keda

    front_proxy = FrontProxy(work_dir)                      # before the control plane: its apiserver flags
    with ControlPlane(extra_apiserver_args=front_proxy.apiserver_args()) as cp:
        with start_keda(cp) as keda:                        # CRDs, RBAC, operator, adapter, APIService
            ...                                             # ScaledObjects now get an HPA that works

How the aggregated ``v1beta1.external.metrics.k8s.io`` reaches an adapter listening on 127.0.0.1 (the crux):

* The apiserver resolves an APIService's ``spec.service`` with the *cluster-IP* resolver unless
  ``--enable-aggregator-routing=true`` (kube-apiserver ``buildServiceResolver``; the control plane leaves it at its
  default, false). That resolver (``k8s.io/apiserver/pkg/util/proxy.ResolveCluster``) turns a Service of type
  **ExternalName** into ``https://<externalName>:<APIService port>``, with no Endpoints or EndpointSlices at all.
  So the Service is ``type: ExternalName, externalName: 127.0.0.1`` and the APIService's ``service.port`` is the
  adapter's port. (A ClusterIP Service would need endpoints, and Endpoints/EndpointSlices refuse loopback
  addresses, any 127.x included: ``ValidateNonSpecialIP``; with aggregator routing on, the endpoint resolver
  would need those same endpoints.)
* The availability controller (kube-aggregator ``remote_available_controller``) checks endpoints only for
  ClusterIP Services; for ExternalName it goes straight to the discovery probe through the same resolver, so
  the APIService turns Available as soon as the adapter answers.
* TLS: the aggregator verifies the adapter's serving certificate against ``spec.caBundle`` with server name
  ``<service>.<namespace>.svc`` (``handler_proxy.go``), so the adapter's certificate carries that DNS name.
* Authentication of the aggregator to the adapter: the apiserver gets ``--proxy-client-cert-file`` (a
  front-proxy client certificate) and ``--requestheader-*`` (see :class:`FrontProxy`); it publishes the
  requestheader CA in ``kube-system/extension-apiserver-authentication``, which the adapter reads (KEDA's
  ``keda-auth-reader`` RoleBinding) to trust the user the aggregator forwards (the HPA controller's
  ServiceAccount, granted ``external.metrics.k8s.io`` by KEDA's ``keda-hpa-controller-external-metrics``).

Identity: the operator and the adapter talk to the apiserver as the user ``system:serviceaccount:keda:keda-operator``
(a client certificate in the ServiceAccount's groups), so KEDA's own ClusterRoles and bindings apply, as in the
chart; no admin credentials. KEDA's admission webhooks are not run and not registered (nothing validates
ScaledObjects beyond the CRD schema). The operator's gRPC metrics service and the adapter use mutual TLS with
a throwaway CA (``ca.crt``/``tls.crt``/``tls.key`` in one cert dir, as KEDA's ``kedaorg-certs`` Secret would give).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from airflow_on_k8s.testing.controlplane import (
    ControlPlane,
    ControlPlaneError,
    Process,
    http_ok,
    insecure_context,
    binary,
    go_mod_cache,
    pinned_version,
)
from airflow_on_k8s.testing.local_services import free_port

KEDA_NAMESPACE = "keda"
KEDA_SERVICE_ACCOUNT = "keda-operator"
ADAPTER_SERVICE = "keda-metrics-apiserver"
EXTERNAL_METRICS_APISERVICE = "v1beta1.external.metrics.k8s.io"


def keda_module_dir() -> Path:
    """The pinned KEDA module in the Go module cache (``build.sh`` downloads it); override:
    ``AIRFLOW_ON_K8S_KEDA_MODULE_DIR``."""
    override = os.environ.get("AIRFLOW_ON_K8S_KEDA_MODULE_DIR")
    path = Path(override) if override else go_mod_cache() / f"github.com/kedacore/keda/v2@{pinned_version('keda')}"
    if not (path / "config" / "crd" / "bases").is_dir():
        raise ControlPlaneError(f"{path}/config/crd/bases not found: `make k8s-binaries` downloads it")
    return path


def keda_manifests() -> list[dict]:
    """KEDA's CRDs, ServiceAccount and RBAC, as KEDA ships them (config/ of the pinned module)."""
    config = keda_module_dir() / "config"
    files = sorted((config / "crd" / "bases").glob("*.yaml"))
    files += [config / "service_account" / "service_account.yaml", config / "rbac" / "role.yaml",
              config / "rbac" / "role_binding.yaml", config / "metrics-server" / "role.yaml",
              config / "metrics-server" / "role_binding.yaml"]
    docs: list[dict] = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            # config/default's kustomization sets no namespace; the Roles and bindings name theirs (keda,
            # kube-system), the namespaced ones without one are KEDA's (the chart installs them in its namespace).
            kind = doc["kind"]
            if kind in ("ServiceAccount", "Role", "RoleBinding") and "namespace" not in doc["metadata"]:
                doc["metadata"]["namespace"] = KEDA_NAMESPACE
            docs.append(doc)
    return docs


# ---------------------------------------------------------------------------------------------- certificates


class _CA:
    """A throwaway CA issuing certificates with the usages asked for (KEDA's gRPC needs server+client in one)."""

    def __init__(self, directory: Path, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ser, self._ec, self._oid = x509, hashes, serialization, ec, NameOID
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        self._cert = (
            x509.CertificateBuilder().subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM)
        self.cert_path = self.dir / "ca.crt"
        self.cert_path.write_bytes(self.cert_pem)

    def issue(self, cert_path: Path, key_path: Path, common_name: str, *, server: bool, client: bool,
              hosts: tuple[str, ...] = ()) -> None:
        x509, oid = self._x509, self._x509.oid.ExtendedKeyUsageOID
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        usages = ([oid.SERVER_AUTH] if server else []) + ([oid.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(self._oid.COMMON_NAME, common_name)]))
            .issuer_name(self._name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if hosts:
            sans = []
            for host in hosts:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    sans.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, self._hashes.SHA256())
        cert_path.write_bytes(cert.public_bytes(self._ser.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(self._ser.Encoding.PEM, self._ser.PrivateFormat.TraditionalOpenSSL,
                                               self._ser.NoEncryption()))
        key_path.chmod(0o600)


class FrontProxy:
    """The front-proxy (requestheader) CA and the aggregator's client certificate, made before the control plane
    starts because they are apiserver flags: ``ControlPlane(extra_apiserver_args=FrontProxy(d).apiserver_args())``.
    These are the flags kubeadm sets for API aggregation (its front-proxy-ca / front-proxy-client)."""

    CLIENT_NAME = "front-proxy-client"

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.ca = _CA(self.dir, "front-proxy-ca")
        self.client_cert, self.client_key = self.dir / "front-proxy-client.crt", self.dir / "front-proxy-client.key"
        self.ca.issue(self.client_cert, self.client_key, self.CLIENT_NAME, server=False, client=True)

    def apiserver_args(self) -> list[str]:
        return [
            f"--requestheader-client-ca-file={self.ca.cert_path}",
            f"--requestheader-allowed-names={self.CLIENT_NAME}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={self.client_cert}",
            f"--proxy-client-key-file={self.client_key}",
        ]


# -------------------------------------------------------------------------------------------------- objects


def _apply(api, manifest: dict) -> None:
    """Create ``manifest`` (or replace it when it exists) through the dynamic client."""
    from kubernetes import dynamic
    from kubernetes.dynamic.exceptions import ConflictError

    client = dynamic.DynamicClient(api)
    resource = client.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    namespace = manifest["metadata"].get("namespace") if resource.namespaced else None
    try:
        resource.create(body=manifest, namespace=namespace)
    except ConflictError:
        current = resource.get(name=manifest["metadata"]["name"], namespace=namespace)
        manifest = {**manifest, "metadata": {**manifest["metadata"],
                                             "resourceVersion": current.metadata.resourceVersion}}
        resource.replace(body=manifest, namespace=namespace)


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - reported if it never turns true
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise ControlPlaneError(f"{what} not reached after {timeout:.0f} s (last: {last!r})")


def _crds_established(api, names: list[str]) -> bool:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    for name in names:
        crd = ext.read_custom_resource_definition(name)
        if not any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])):
            return False
    return True


def apiservice_available(api, name: str = EXTERNAL_METRICS_APISERVICE) -> tuple[bool, str]:
    from kubernetes import client

    svc = client.ApiregistrationV1Api(api).read_api_service(name)
    for cond in svc.status.conditions or []:
        if cond.type == "Available":
            return cond.status == "True", f"{cond.reason}: {cond.message}"
    return False, "no Available condition yet"


# ---------------------------------------------------------------------------------------------------- KEDA


@dataclass
class Keda:
    """The running KEDA: its processes, ports and the cert dir; ``external_metric()`` reads through the aggregator."""

    operator: Process
    adapter: Process
    adapter_port: int
    grpc_port: int
    cert_dir: Path
    version: str
    start_seconds: float

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(f"----- {p.name} ({p.log_path}) -----\n{p.tail(lines)}" for p in (self.operator, self.adapter))


@contextlib.contextmanager
def start_keda(control_plane: ControlPlane, watch_namespace: str = "", timeout: float = 90,
               external_name: str = "127.0.0.1") -> Iterator[Keda]:
    """Install KEDA's CRDs and RBAC, start the operator and the adapter as local processes, register the
    external-metrics APIService (ExternalName Service -> 127.0.0.1:<adapter port>) and wait until it is
    Available. The control plane must have been started with :class:`FrontProxy` flags. Stops both on exit
    (the installed objects stay: the control plane is throwaway)."""
    from kubernetes import client

    began = time.monotonic()
    version = pinned_version("keda")
    operator_bin, adapter_bin = binary("keda", "keda-operator"), binary("keda", "keda-adapter")
    api = control_plane.api_client()
    work = control_plane.work_dir / "keda"
    cert_dir = work / "certs"
    cert_dir.mkdir(parents=True, exist_ok=True)
    (work / "custom-ca").mkdir(exist_ok=True)

    # KEDA's own objects, from the module: namespace, CRDs, ServiceAccount, ClusterRoles, bindings.
    core = client.CoreV1Api(api)
    with contextlib.suppress(client.ApiException):
        core.create_namespace({"metadata": {"name": KEDA_NAMESPACE}})
    manifests = keda_manifests()
    for manifest in manifests:
        _apply(api, manifest)
    crds = [m["metadata"]["name"] for m in manifests if m["kind"] == "CustomResourceDefinition"]
    _wait(lambda: _crds_established(api, crds), 30, "KEDA CRDs Established")

    # mTLS between adapter and operator (gRPC) and the adapter's serving certificate, one pair as kedaorg-certs.
    ca = _CA(cert_dir, "keda-test-ca")
    ns = KEDA_NAMESPACE
    ca.issue(cert_dir / "tls.crt", cert_dir / "tls.key", "keda", server=True, client=True, hosts=(
        "127.0.0.1", "localhost",
        f"keda-operator.{ns}.svc", f"keda-operator.{ns}.svc.cluster.local",
        f"{ADAPTER_SERVICE}.{ns}.svc", f"{ADAPTER_SERVICE}.{ns}.svc.cluster.local",
    ))

    # Both run as KEDA's ServiceAccount user, so KEDA's RBAC (not admin) decides what they may do.
    kubeconfig = control_plane.issue_user(f"system:serviceaccount:{ns}:{KEDA_SERVICE_ACCOUNT}",
                                          ("system:serviceaccounts", f"system:serviceaccounts:{ns}"))
    env = {"KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": ns, "KEDA_CLUSTER_OBJECT_NAMESPACE": ns,
           "WATCH_NAMESPACE": watch_namespace,
           "KEDA_HTTP_DEFAULT_TIMEOUT": "", "HOME": str(work)}

    metrics_port, probe_port, grpc_port = free_port(), free_port(), free_port()
    operator = Process(
        "keda-operator",
        [str(operator_bin),
         "--leader-elect=false",
         f"--metrics-bind-address=127.0.0.1:{metrics_port}",
         f"--health-probe-bind-address=127.0.0.1:{probe_port}",
         f"--metrics-service-bind-address=127.0.0.1:{grpc_port}",
         "--enable-cert-rotation=false", f"--cert-dir={cert_dir}",
         "--enable-webhook-patching=false", "--enable-apiservice-patching=false",
         f"--ca-dir={work / 'custom-ca'}",
         "--zap-log-level=info", "--zap-encoder=console", "--zap-time-encoding=rfc3339"],
        control_plane.log_dir / "keda-operator.log",
        lambda: http_ok(f"http://127.0.0.1:{probe_port}/readyz"),
        env=env,
    )
    adapter_port, adapter_metrics_port = free_port(), free_port()
    adapter = Process(
        "keda-adapter",
        [str(adapter_bin),
         "--bind-address=127.0.0.1", f"--secure-port={adapter_port}",
         f"--tls-cert-file={cert_dir / 'tls.crt'}", f"--tls-private-key-file={cert_dir / 'tls.key'}",
         f"--cert-dir={cert_dir}",
         f"--lister-kubeconfig={kubeconfig}",
         f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
         f"--metrics-service-address=127.0.0.1:{grpc_port}",
         f"--port={adapter_metrics_port}",
         "--zap-log-level=info", "--zap-encoder=console"],
        control_plane.log_dir / "keda-adapter.log",
        lambda: http_ok(f"https://127.0.0.1:{adapter_port}/readyz", insecure_context()),
        env=env,
    )
    control_plane.processes += [operator, adapter]
    operator.start()
    adapter.start()
    keda = None
    try:
        operator.wait_healthy(timeout)
        adapter.wait_healthy(timeout)

        # The aggregator's route to 127.0.0.1: an ExternalName Service (see the module docstring).
        _apply(api, {"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": ADAPTER_SERVICE, "namespace": ns},
                     "spec": {"type": "ExternalName", "externalName": external_name,
                              "ports": [{"name": "https", "port": adapter_port, "protocol": "TCP"}]}})
        _apply(api, {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                     "metadata": {"name": EXTERNAL_METRICS_APISERVICE},
                     "spec": {"service": {"name": ADAPTER_SERVICE, "namespace": ns, "port": adapter_port},
                              "group": "external.metrics.k8s.io", "version": "v1beta1",
                              "caBundle": base64.b64encode(ca.cert_pem).decode(),
                              "groupPriorityMinimum": 100, "versionPriority": 100}})
        _wait(lambda: apiservice_available(api)[0], timeout, f"APIService {EXTERNAL_METRICS_APISERVICE} Available")
        keda = Keda(operator, adapter, adapter_port, grpc_port, cert_dir, version, time.monotonic() - began)
        yield keda
    except ControlPlaneError as exc:
        raise ControlPlaneError(f"{exc}\n{operator.tail()}\n{adapter.tail()}") from None
    finally:
        adapter.stop()
        operator.stop()
        api.close()


def airflow_worker_scaled_object(name: str, namespace: str, deployment: str, keda_values: dict,
                                 worker_concurrency: int, queues: tuple[str, ...] | None = None,
                                 connection_env: str = "AIRFLOW_CONN_AIRFLOW_DB") -> dict:
    """The ScaledObject the Airflow chart's ``templates/workers/worker-kedaautoscaler.yaml`` renders for the
    program's ``workers.keda`` values (``keda_values`` = ``scaling_values(args)["keda"]`` of the keda mode).

    Where each field comes from:

    * ``pollingInterval``, ``cooldownPeriod``, ``minReplicaCount``, ``maxReplicaCount``, ``advanced``: the program
      (airflow.component.scaling_values), copied by the template as they are;
    * ``scaleTargetRef``: the worker Deployment (the template picks StatefulSet only with worker persistence, which
      the program does not enable);
    * the trigger: the template's ``type: postgresql``, ``targetQueryValue: "1"`` (metric type AverageValue by
      KEDA's default), ``connectionFromEnv: AIRFLOW_CONN_AIRFLOW_DB`` (the template switches to ``KEDA_DB_CONN``
      only when PgBouncer is on and ``workers.keda.usePgbouncer`` is off; the program leaves usePgbouncer at its
      default, so KEDA goes through PgBouncer when there is one, like the workers);
    * the query: the chart's default for CeleryExecutor, ``SELECT ceil(COUNT(*)::decimal / <config.celery.
      worker_concurrency>) FROM task_instance WHERE (state='running' OR state='queued')`` (as the chart's own
      tests build it, ``TestWorkerKeda.build_query``). ``queues`` appends ``AND queue IN (...)``, the form some
      chart versions and docs give for per-queue worker sets; off by default.

    Not read from the chart 1.21.0 tarball itself (no Helm repository is reachable here); the chart's template and
    tests in apache/airflow were the source.
    """
    query = (f"SELECT ceil(COUNT(*)::decimal / {worker_concurrency}) FROM task_instance "
             "WHERE (state='running' OR state='queued')")
    if queues:
        query += " AND queue IN (" + ",".join(f"'{q}'" for q in queues) + ")"
    spec = {
        "scaleTargetRef": {"kind": "Deployment", "name": deployment},
        "pollingInterval": keda_values["pollingInterval"],
        "cooldownPeriod": keda_values["cooldownPeriod"],
        "minReplicaCount": keda_values["minReplicaCount"],
        "maxReplicaCount": keda_values["maxReplicaCount"],
        "triggers": [{"type": "postgresql", "metadata": {
            "targetQueryValue": "1", "connectionFromEnv": connection_env, "query": query}}],
    }
    if keda_values.get("advanced"):
        spec["advanced"] = keda_values["advanced"]
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
