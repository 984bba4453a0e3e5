"""Offline preview: what `pulumi up` would create for a stack, with no Pulumi CLI, credentials or network.

    python -m airflow_on_k8s.tools.preview aws-dev
    python -m airflow_on_k8s.tools.preview gcp-dev --json out.json

It runs the real program (`__main__.py`) under Pulumi's mock runtime, then prints the resource tree
(type, name, key inputs, nested under each parent). `--json FILE` writes every resource as
`{"type", "name", "parent", "inputs", "custom", "options"}`, with the engine's type token and the inputs as
the engine would receive them. Secrets show as `{"secret": ...}` in the JSON and `[secret]` in the tree.

Exit codes: 0 ok, 2 unknown stack or invalid config (the message names the key and the fix),
1 the program itself failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

# Inputs worth a reviewer's eye, per type token; other types show their short scalar inputs.
KEY_INPUTS: dict[str, tuple[str, ...]] = {
    "aws:eks/cluster:Cluster": ("name", "version", "accessConfig", "enabledClusterLogTypes", "encryptionConfig"),
    "aws:eks/nodeGroup:NodeGroup": ("nodeGroupName", "capacityType", "instanceTypes", "scalingConfig", "labels", "taints"),
    "aws:autoscaling/tag:Tag": ("autoscalingGroupName", "tag"),
    "aws:ec2/subnet:Subnet": ("cidrBlock", "availabilityZone", "mapPublicIpOnLaunch"),
    "gcp:container/cluster:Cluster": ("name", "location", "releaseChannel", "clusterAutoscaling", "deletionProtection"),
    "gcp:container/nodePool:NodePool": ("name", "autoscaling", "nodeConfig"),
    "kubernetes:helm.sh/v3:Release": ("chart", "version", "namespace"),
}
MAX_VALUE_CHARS = 110


def _short(value: Any) -> str:
    if isinstance(value, dict) and set(value) == {"secret"}:
        return "[secret]"
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def _key_inputs(res: dict[str, Any]) -> list[tuple[str, str]]:
    inputs = res["inputs"]
    keys = KEY_INPUTS.get(res["type"])
    if keys is None:
        keys = tuple(k for k, v in inputs.items() if isinstance(v, (str, int, float, bool)))[:4]
    return [(k, _short(inputs[k])) for k in keys if k in inputs]


def render_tree(resources: list[dict[str, Any]]) -> str:
    """The resources as an indented tree, children under their parent component."""
    children: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
    for res in resources:
        children[res["parent"]].append(res)
    lines: list[str] = []

    def walk(parent: str | None, depth: int) -> None:
        for res in children.get(parent, []):
            indent = "  " * depth
            flags = "".join(f" [{k}]" for k in ("protect",) if res["options"].get(k))
            if res["options"].get("ignoreChanges"):
                flags += f" [ignoreChanges: {', '.join(res['options']['ignoreChanges'])}]"
            lines.append(f"{indent}{res['type']}  {res['name']}{flags}")
            for key, value in _key_inputs(res):
                lines.append(f"{indent}    {key} = {value}")
            walk(f"{res['type']}::{res['name']}", depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_on_k8s.tools.preview",
        description="Run the Pulumi program for a stack under the mock runtime and show what it would create.",
    )
    parser.add_argument("stack", help="stack name, e.g. aws-dev (reads Pulumi.<stack>.yaml from Pulumi.yaml's stackConfigDir)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write every resource as JSON to FILE")
    parser.add_argument("--stacks-dir", type=Path, default=None, help="where the stack files are (default: Pulumi.yaml's stackConfigDir, else next to it)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary, not the tree")
    args = parser.parse_args(argv)

    # Imported here so `--help` stays instant.
    from airflow_on_k8s.config import ConfigError
    from airflow_on_k8s.testing.mock_runtime import StackNotFound, run_program

    started = time.monotonic()
    try:
        run = run_program(args.stack, stacks_dir=args.stacks_dir)
    except StackNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"error: stack {args.stack}: {e}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started

    resources = [r.as_json() for r in run.resources]
    if not args.quiet:
        print(render_tree(resources))
        print()
    counts = Counter(r["type"] for r in resources)
    print(f"stack {args.stack}: {len(resources)} resources ({sum(r['custom'] for r in resources)} custom, "
          f"{sum(not r['custom'] for r in resources)} components) in {elapsed:.1f}s")
    for type_, n in sorted(counts.items()):
        print(f"  {n:3d}  {type_}")
    if args.json:
        args.json.write_text(json.dumps(resources, indent=2, sort_keys=True, default=str) + "\n")
        print(f"wrote {len(resources)} resources to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
