"""The kubelet's resource-metrics endpoint (``/metrics/resource``) for the test node agent, with the real CPU and
memory of each pod's processes, so the real metrics-server (and through it the real HPA controller) measures
what the pods really burn::

    from airflow_on_k8s.testing.kubelet_metrics import MetricsNodeAgent

    agent = MetricsNodeAgent(api, nodes, runner, log_dir)   # a NodeAgent (same arguments) that also serves
    with agent:                                             # one HTTPS endpoint per node on 127.0.0.1
        agent.kubelet_ports                                 # node name -> port (its daemonEndpoints.kubeletEndpoint)
        agent.sample()                                      # what a scrape would report: [PodUsage, ...]

Start metrics-server (:func:`airflow_on_k8s.testing.metrics_server.start_metrics_server`) and it scrapes every
node at ``https://<InternalIP>:<status.daemonEndpoints.kubeletEndpoint.Port>/metrics/resource``
(metrics-server v0.8.0 ``pkg/scraper/client/resource/client.go`` ``GetMetrics`` with
``--kubelet-use-node-status-port`` and ``--kubelet-preferred-address-types=InternalIP``). The node agent already
reports ``InternalIP=127.0.0.1``; metrics-server scrapes by address and port, so every node gets a port of its own.

What is served (the kubelet's own families and help texts, ``pkg/kubelet/metrics/collectors/resource_metrics.go``
of k8s.io/kubernetes v1.35.4), in the Prometheus text format with sample timestamps in milliseconds:

- ``container_cpu_usage_seconds_total{container,namespace,pod}``, ``container_memory_working_set_bytes{...}``,
  ``container_start_time_seconds{...}`` (no timestamp, as the kubelet), ``pod_cpu_usage_seconds_total{namespace,pod}``,
  ``pod_memory_working_set_bytes{...}``, ``node_cpu_usage_seconds_total``, ``node_memory_working_set_bytes``,
  ``scrape_error`` and ``resource_scrape_error`` (0).
- metrics-server reads only the node and container series (``pkg/scraper/client/resource/decode.go``
  ``decodeBatch``): it takes the labels ``container``, ``pod``, ``namespace`` by name, and it *drops* a node or a
  whole pod whose CPU counter or memory is 0 (``checkContainerMetrics``). It turns the counter into a rate over
  its last two scrapes (``pkg/storage/pod.go``), which need the same ``container_start_time_seconds`` (a new
  start time is a restart: the counter restarts with it).

Where the figures come from (a process tree stands in for the container's cgroup):

- The container is the pod's process that the node agent started (its ``runner``) and every process of its tree:
  its descendants by parent pid, and every process in its session (the agent starts it with ``setsid``), so
  children a task forks, and orphans re-parented to init, count.
- CPU: ``utime + stime`` (``/proc/<pid>/stat``) of each live process (or, when larger, the nanosecond runtime of
  its live threads, ``/proc/<pid>/task/*/schedstat``: ticks are 10 ms, and an idle process reading 0 would make
  metrics-server drop its pod), plus ``cutime + cstime`` (the children it reaped), plus the last-seen total of a
  process that vanished and was not reaped inside the tree (the trees are read at every scrape and every
  ``sample_interval_s``, 2 s: an orphan that lives and dies between two readings is missed). The counter is kept
  monotonic (a cgroup's is; metrics-server rejects a decrease), and resets when the agent restarts the container,
  with its new start time.
- Memory: the working set as the sum of each process's ``Pss`` (``/proc/<pid>/smaps_rollup``: resident memory,
  shared pages split between the processes sharing them, so forked Celery children are not counted twice),
  ``VmRSS`` where ``smaps_rollup`` cannot be read. Approximate: the split runs over every process on the host
  mapping a page (other pods' Pythons share libpython), where a cgroup charges a page to the one that faulted it
  in, and a cgroup's working set also counts active page cache. Only CPU drives the HPA here.
- Start time: the start time of the container's main process (``/proc/<pid>/stat`` field 22 and ``btime``).
- The metrics are the pod's first container's (``spec.containers[0]``: the one the node agent runs); other
  containers run nothing here and get no series (a 0 counter would make metrics-server drop the whole pod).
  The HPA divides usage by the requests of *all* containers, so give the other containers no CPU request.
- A node's figures are the sum over its pods (a node here runs nothing else); a node with no process yet has 0
  and metrics-server lists no NodeMetrics for it.

Authentication: a kubelet authenticates metrics-server (client certificate or token) and authorizes
``nodes/metrics`` with a SubjectAccessReview. This endpoint is a test harness on 127.0.0.1: it serves HTTPS with a
self-signed certificate (hence metrics-server's ``--kubelet-insecure-tls``) and accepts any client, with or
without credentials.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import logging
import os
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from airflow_on_k8s.testing.node_agent import NodeAgent

log = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return time.time() - time.monotonic()


BOOT_TIME = _boot_time()


# ------------------------------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    session: int
    start_ticks: int  # since boot: with pid, identifies the process (pids are reused)
    own_seconds: float  # its CPU: utime + stime (refined by ProcessTreeCPU, see threads_runtime)
    children_seconds: float  # cutime + cstime: the children it waited for


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` (proc(5)), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: the fields after it start after the last ')'.
    rest = data[data.rindex(b")") + 2:].split()
    # rest[0] is field 3 (state): field n is rest[n - 3].
    return ProcStat(pid=pid, ppid=int(rest[1]), session=int(rest[3]), start_ticks=int(rest[19]),
                    own_seconds=(int(rest[11]) + int(rest[12])) / CLK_TCK,
                    children_seconds=(int(rest[13]) + int(rest[14])) / CLK_TCK)


def threads_runtime(pid: int) -> float:
    """The scheduler's runtime of the process's live threads, in seconds (``/proc/<pid>/task/*/schedstat``, first
    field, nanoseconds; 0 without CONFIG_SCHEDSTATS' file). utime + stime are clock ticks (10 ms): an idle
    process that used 8 ms would read 0, and metrics-server drops a pod whose counter is 0; a cgroup counts
    nanoseconds. It misses the threads that ended (utime + stime keep them): the larger of the two is used."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def all_stats() -> dict[int, ProcStat]:
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                stats[stat.pid] = stat
    return stats


def working_set_bytes(pid: int) -> int:
    """The process's proportional resident memory (Pss), else its RSS; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except OSError:
        return 0


def process_tree(root: int, stats: dict[int, ProcStat]) -> list[ProcStat]:
    """``root`` and its descendants (by parent pid), and every process of its session (see module docstring)."""
    if root not in stats:
        return []
    children: dict[int, list[int]] = {}
    for s in stats.values():
        children.setdefault(s.ppid, []).append(s.pid)
    members = {root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in members:
                members.add(child)
                todo.append(child)
    session = stats[root].session
    if session == root:  # started with setsid: the session is the container's own
        members |= {s.pid for s in stats.values() if s.session == session}
    return [stats[pid] for pid in members]


class ProcessTreeCPU:
    """The cumulative CPU seconds of one container's process tree, monotonic (see module docstring)."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._seen: dict[tuple[int, int], ProcStat] = {}  # (pid, start) -> last stat
        self._gone = 0.0
        self._reported = 0.0
        self.start_time: float | None = None  # unix seconds

    def sample(self, stats: dict[int, ProcStat]) -> tuple[float, list[ProcStat]]:
        """CPU seconds so far, and the live processes of the tree."""
        # Only the tree's processes get the finer (and costlier) per-thread reading.
        tree = [dataclasses.replace(s, own_seconds=max(s.own_seconds, threads_runtime(s.pid)))
                for s in process_tree(self.root, stats)]
        live = {(s.pid, s.start_ticks): s for s in tree}
        live_pids = {s.pid for s in tree}
        for key, last in list(self._seen.items()):
            if key not in live:
                # Gone. Reaped by a live member of the tree: already in that member's cutime/cstime. Else (the
                # container's init reaped it, or its parent died first) its last-seen time would be lost.
                if last.ppid not in live_pids:
                    self._gone += last.own_seconds + last.children_seconds
                del self._seen[key]
        self._seen.update(live)
        root = stats.get(self.root)
        if root is not None and self.start_time is None:
            self.start_time = BOOT_TIME + root.start_ticks / CLK_TCK
        total = self._gone + sum(s.own_seconds + s.children_seconds for s in tree)
        self._reported = max(self._reported, total)
        return self._reported, tree

    @property
    def seconds(self) -> float:
        """The counter as last sampled."""
        return self._reported


# --------------------------------------------------------------------------------------------- exposition


@dataclass
class PodUsage:
    namespace: str
    pod: str
    container: str
    node: str
    pid: int
    cpu_seconds: float
    memory_bytes: int
    start_time: float
    processes: int
    timestamp: float  # unix seconds of the sample


_FAMILIES = [
    # name, type, help (the kubelet's, resource_metrics.go), stability prefix as component-base prints it
    ("container_cpu_usage_seconds_total", "counter",
     "[STABLE] Cumulative cpu time consumed by the container in core-seconds"),
    ("container_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the container in bytes"),
    ("container_start_time_seconds", "gauge", "[STABLE] Start time of the container since unix epoch in seconds"),
    ("node_cpu_usage_seconds_total", "counter", "[STABLE] Cumulative cpu time consumed by the node in core-seconds"),
    ("node_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the node in bytes"),
    ("pod_cpu_usage_seconds_total", "counter", "[STABLE] Cumulative cpu time consumed by the pod in core-seconds"),
    ("pod_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the pod in bytes"),
    ("resource_scrape_error", "gauge", "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise"),
    ("scrape_error", "gauge", "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise"),
]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(pods: list[PodUsage], node_cpu_seconds: float, node_memory_bytes: int, now: float) -> str:
    """The text of ``/metrics/resource`` for one node."""
    series: dict[str, list[str]] = {name: [] for name, _, _ in _FAMILIES}
    ms = lambda t: str(int(t * 1000))  # noqa: E731
    for p in sorted(pods, key=lambda p: (p.namespace, p.pod)):
        c = f'container="{_label(p.container)}",namespace="{_label(p.namespace)}",pod="{_label(p.pod)}"'
        q = f'namespace="{_label(p.namespace)}",pod="{_label(p.pod)}"'
        ts = ms(p.timestamp)
        series["container_cpu_usage_seconds_total"].append(f"{{{c}}} {p.cpu_seconds!r} {ts}")
        series["container_memory_working_set_bytes"].append(f"{{{c}}} {p.memory_bytes} {ts}")
        series["container_start_time_seconds"].append(f"{{{c}}} {p.start_time!r}")
        series["pod_cpu_usage_seconds_total"].append(f"{{{q}}} {p.cpu_seconds!r} {ts}")
        series["pod_memory_working_set_bytes"].append(f"{{{q}}} {p.memory_bytes} {ts}")
    series["node_cpu_usage_seconds_total"].append(f" {node_cpu_seconds!r} {ms(now)}")
    series["node_memory_working_set_bytes"].append(f" {node_memory_bytes} {ms(now)}")
    series["resource_scrape_error"].append(" 0")
    series["scrape_error"].append(" 0")
    lines = []
    for name, kind, text in _FAMILIES:
        if series[name]:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [name + s for s in series[name]]
    return "\n".join(lines) + "\n"


def self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A serving certificate for ``host`` signed by itself (metrics-server runs with --kubelet-insecure-tls)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node-agent-kubelet")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    crt, pem = directory / "kubelet.crt", directory / "kubelet.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _NodeServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?")[0] != "/metrics/resource":
            self.send_error(404)
            return
        try:
            body = self.server.agent.render_node(self.server.node).encode()
        except Exception:  # noqa: BLE001 - the kubelet reports an error as scrape_error 1; a 500 says as much
            log.exception("resource metrics of %s", self.server.node)
            self.send_error(500)
            return
        self.server.agent.scrapes[self.server.node] = self.server.agent.scrapes.get(self.server.node, 0) + 1
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _NodeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, agent: MetricsNodeAgent, node: str, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.agent, self.node = agent, node
        self.socket = context.wrap_socket(self.socket, server_side=True)


# --------------------------------------------------------------------------------------------------- agent


@dataclass
class _Tracked:
    node: str
    container: str
    cpu: ProcessTreeCPU


class MetricsNodeAgent(NodeAgent):
    """A :class:`~airflow_on_k8s.testing.node_agent.NodeAgent` that also serves each node's ``/metrics/resource``
    (module docstring). Same arguments, and ``sample_interval_s``: how often the process trees are read between
    scrapes too (so a child that is orphaned and dies between two scrapes still counts). ``kubelet_ports`` maps
    each node to its endpoint's port, ``scrapes`` counts the scrapes each node answered."""

    def __init__(self, *args, sample_interval_s: float = 2.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sample_interval_s = sample_interval_s
        self.kubelet_ports: dict[str, int] = {}
        self.scrapes: dict[str, int] = {}
        self._servers: list[_NodeServer] = []
        self._tracked: dict[tuple[str, str, int], _Tracked] = {}  # (ns, pod, pid) -> its CPU counter
        self._node_gone_cpu: dict[str, float] = {}  # CPU of containers that ended, per node (monotonic node counter)
        self._lock = threading.Lock()
        self._sampling_stop = threading.Event()
        self._tls_dir = Path(tempfile.mkdtemp(prefix="node-agent-tls-", dir=self.log_dir))

    # -- lifecycle: the endpoints exist before the nodes are registered with their port

    def start(self) -> MetricsNodeAgent:
        crt, key = self_signed(self._tls_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(crt), str(key))
        context.verify_mode = ssl.CERT_NONE  # any client: see the module docstring
        for node in self.nodes:
            server = _NodeServer(self, node, context)
            self.kubelet_ports[node] = server.server_address[1]
            threading.Thread(target=server.serve_forever, name=f"kubelet-metrics-{node}", daemon=True).start()
            self._servers.append(server)
        super().start()
        threading.Thread(target=self._sample_loop, name="kubelet-metrics-sampler", daemon=True).start()
        return self

    def _sample_loop(self) -> None:
        while not self._sampling_stop.wait(self.sample_interval_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a scrape reads again; the next sample too
                log.exception("sampling the pods' processes failed")

    def stop(self, grace_s: float = 10, delete_nodes: bool = True) -> None:
        self._sampling_stop.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []
        super().stop(grace_s, delete_nodes)

    def node_status(self, name: str) -> dict:
        # DaemonEndpoint's JSON field is "Port" (k8s.io/api core/v1 types.go).
        return {**super().node_status(name), "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_ports[name]}}}

    # -- measurement

    def sample(self, node: str | None = None) -> list[PodUsage]:
        """The usage of every running container (of ``node``), read from /proc now."""
        with self._lock:
            return self._sample(node)[0]

    def _sample(self, node: str | None) -> tuple[list[PodUsage], float]:
        now = time.time()
        stats = all_stats()
        live_keys = set()
        usages = []
        for c in self.running_containers():
            key = (c.namespace, c.pod, c.pid)
            live_keys.add(key)
            tracked = self._tracked.get(key)
            if tracked is None:
                tracked = self._tracked[key] = _Tracked(c.node, c.container, ProcessTreeCPU(c.pid))
            cpu, tree = tracked.cpu.sample(stats)
            if not tree or tracked.cpu.start_time is None:
                continue
            if node is not None and tracked.node != node:
                continue
            usages.append(PodUsage(c.namespace, c.pod, tracked.container, tracked.node, c.pid, cpu,
                                   sum(working_set_bytes(s.pid) for s in tree), tracked.cpu.start_time,
                                   len(tree), now))
        for key in set(self._tracked) - live_keys:
            gone = self._tracked.pop(key)
            self._node_gone_cpu[gone.node] = self._node_gone_cpu.get(gone.node, 0.0) + gone.cpu.seconds
        return usages, now

    def render_node(self, node: str) -> str:
        with self._lock:
            pods, now = self._sample(node)
            node_cpu = self._node_gone_cpu.get(node, 0.0) + sum(
                t.cpu.seconds for t in self._tracked.values() if t.node == node)
        return render(pods, node_cpu, sum(p.memory_bytes for p in pods), now)


# ------------------------------------------------------------------------------------------------ burners


def burn_cpu(millicores: float, seconds: float | None = None, period_s: float = 0.1) -> float:
    """Use ``millicores`` of CPU (this process's CPU time, not wall time) for ``seconds`` (forever: None), as a
    task that computes: busy until the CPU time used reaches ``millicores/1000 * elapsed``, sleeping otherwise.
    When the machine is busier than that it falls behind by at most one period (it does not catch up in a
    burst). Returns the CPU seconds used. Pure stdlib, importable by a task in a Celery worker."""
    rate = millicores / 1000.0
    began, cpu0 = time.monotonic(), time.process_time()
    forgiven = 0.0
    while seconds is None or time.monotonic() - began < seconds:
        elapsed = time.monotonic() - began
        behind = rate * elapsed - (time.process_time() - cpu0) - forgiven
        if behind > rate * period_s:  # more than a period behind: forgive the rest
            forgiven += behind - rate * period_s
            behind = rate * period_s
        if behind > 0:
            spin_until = time.process_time() + min(behind, 0.01)
            while time.process_time() < spin_until:
                pass
        elif rate > 0:
            time.sleep(min(-behind / rate, period_s))
        else:
            time.sleep(period_s)
    return time.process_time() - cpu0


def burner_argv(millicores: float, python: str | None = None) -> list[str]:
    """A process that burns ``millicores`` forever (:func:`burn_cpu`), for a node agent's runner."""
    import inspect
    import sys

    # The function's own source, so the process needs only a Python (not this package on its path).
    code = f"import sys, time\n{inspect.getsource(burn_cpu)}\nburn_cpu(float(sys.argv[1]))\n"
    return [python or sys.executable, "-c", code, str(millicores)]
