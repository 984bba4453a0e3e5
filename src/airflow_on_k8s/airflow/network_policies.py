"""NetworkPolicies and Pod Security Standards labels for the Airflow and task namespaces.

Why our own policies instead of the chart's `networkPolicies.enabled`: the chart's Redis policy admits only
pods labelled worker, scheduler or flower (chart/templates/redis/redis-networkpolicy.yaml), which would cut
off the worker autoscaler's Celery client; its PgBouncer policy admits `tier: airflow` pods without a
namespace restriction; the bundled Postgres is a subchart the switch does not cover; and the switch also
puts ingress policies on every other Airflow component. The policies here cover exactly the three stores:

- Airflow namespace: Redis, the bundled Postgres and PgBouncer accept connections only from pods of the
  Airflow release in that namespace (`tier: airflow, release: airflow`), the worker autoscaler and, in
  `scaling.mode: keda`, the KEDA operator (its SQL trigger queries the metadata database). Other traffic
  (UI, worker log serving, statsd) is not restricted.
- Task namespace: default deny in both directions; egress only to kube-dns and to addresses outside the
  private ranges (so the internet, not the cluster's pods and services, the VPC, the managed database or
  Redis), plus the CIDRs a stack lists in `airflow.taskEgressCidrs`. The link-local range stays open: EKS
  Pod Identity and the GKE metadata server live there.

Enforcement needs a network-policy engine: GKE Dataplane V2 enforces these; on EKS the VPC CNI's network
policy agent must be on; a local cluster's CNI may ignore them.

Pod Security Standards: `enforce: baseline` on both namespaces (no privileged pods, host namespaces, host
paths or added capabilities), `audit: restricted` so anything short of restricted shows in the audit log.
Not restricted: the chart's Redis, statsd and Airflow pods set no seccomp profile and do not drop
capabilities, and task images often run as root.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable

# RFC 1918 plus shared address space (RFC 6598; GKE and some CNIs use it for pods). Task pods reach none of
# these; the cluster's pods, services and nodes, the VPC and the managed databases all live inside them.
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")

# Pod labels, from the charts' own templates at their pinned versions.
KUBE_DNS = {"k8s-app": "kube-dns"}  # CoreDNS on EKS and kind, kube-dns on GKE, in kube-system
KEDA_OPERATOR = {"app.kubernetes.io/name": "keda-operator"}  # kedacore/charts v2.18.1 manager/deployment.yaml

PSS_LABELS = {
    "pod-security.kubernetes.io/enforce": "baseline",
    "pod-security.kubernetes.io/audit": "restricted",
}


def namespace_selector(name: str) -> dict[str, Any]:
    # The API server sets kubernetes.io/metadata.name on every namespace (Kubernetes 1.22+).
    return {"matchLabels": {"kubernetes.io/metadata.name": name}}


def _policy(name: str, namespace: str, spec: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    }


def store_policy(
    name: str,
    namespace: str,
    store_pods: dict[str, str],
    ports: Iterable[int],
    clients: Iterable[dict[str, Any]],
    labels: dict[str, str],
) -> dict[str, Any]:
    """Ingress to `store_pods` on `ports` from `clients` only (NetworkPolicyPeer dicts)."""
    return _policy(
        name,
        namespace,
        {
            "podSelector": {"matchLabels": store_pods},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": list(clients), "ports": [{"protocol": "TCP", "port": p} for p in ports]}
            ],
        },
        labels,
    )


def task_namespace_policies(
    namespace: str, extra_egress_cidrs: Iterable[str] = (), labels: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Default deny for every pod in the task namespace, then the egress tasks need."""
    labels = labels or {}
    egress: list[dict[str, Any]] = [
        {
            "to": [{"namespaceSelector": namespace_selector("kube-system"), "podSelector": {"matchLabels": KUBE_DNS}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}}]},
    ]
    extra = [str(ipaddress.ip_network(c, strict=False)) for c in extra_egress_cidrs]
    if extra:
        egress.append({"to": [{"ipBlock": {"cidr": c}} for c in extra]})
    return [
        _policy(
            "default-deny",
            namespace,
            {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
            labels,
        ),
        _policy(
            "task-egress",
            namespace,
            {"podSelector": {}, "policyTypes": ["Egress"], "egress": egress},
            labels,
        ),
    ]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector matches `labels` (matchLabels and matchExpressions, as the API defines it)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def admits(policy: dict[str, Any], pod_namespace: str, pod_labels: dict[str, str], port: int) -> bool:
    """Whether one ingress policy's rules admit a pod (namespace, labels) on a TCP port. Peers without a
    namespaceSelector mean the policy's own namespace; with one, any namespace it selects by name."""
    for rule in policy["spec"].get("ingress") or []:
        ports = rule.get("ports")
        if ports and not any(p.get("port") == port for p in ports):
            continue
        peers = rule.get("from")
        if not peers:  # no `from`: every source
            return True
        for peer in peers:
            if "ipBlock" in peer:
                continue
            ns_sel = peer.get("namespaceSelector")
            if ns_sel is None:
                ns_ok = pod_namespace == policy["metadata"]["namespace"]
            else:
                ns_ok = selects(ns_sel, {"kubernetes.io/metadata.name": pod_namespace})
            if ns_ok and selects(peer.get("podSelector") or {}, pod_labels):
                return True
    return False
