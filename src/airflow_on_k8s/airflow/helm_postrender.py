"""A Helm post-renderer that leaves a workload's `spec.replicas` to whoever scales it.

Why: in task-aware mode the worker autoscaler (airflow_on_k8s/airflow/worker_autoscaler.py) owns the Celery worker
Deployment's replica count. The Airflow chart renders `replicas` whenever its own KEDA and HPA are off, so
every Helm upgrade, and an atomic rollback, patched the count back to minWorkers and the ReplicaSet then
deleted workers in its own order, running tasks and all.

How: Helm 3 updates an object with a three-way strategic merge patch of (previous release manifest, new
manifest, live object) (helm v3.19.0 pkg/kube/client.go `createPatch`, which calls
`strategicpatch.CreateThreeWayMergePatch(oldData, newData, currentData, ...)`). A field that is in neither
the previous nor the new manifest is not in the patch, whatever its live value. So once no release
manifest carries the worker Deployment's `spec.replicas`, no upgrade or rollback touches it. A field that
the previous manifest had and the new one lacks is deleted (the API server then defaults it to 1): the
first upgrade that starts stripping sets the workers to 1 once, and the autoscaler scales back from there.

Helm pipes the rendered manifests (hooks excluded) through the post-renderer's stdin and applies what it
prints (helm v3.19.0 pkg/action/action.go `renderResources`; pkg/postrender/exec.go runs the binary with
no shell). Pulumi's helm.v3.Release passes `postrender` to Helm as a bare path, without arguments, for
install and upgrade alike (pulumi-kubernetes provider/pkg/provider/helm_release.go: `postrender.NewExec(cmd)`),
so `write_command` writes a small executable that calls this module with its arguments.

Only the targeted documents change, and only by losing the `replicas:` line of their top-level `spec`;
every other byte passes through, and the result is checked by parsing it back.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import stat
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

# A YAML document starts at a line that is only `---` (Helm writes "---\n# Source: <template>\n<doc>\n").
_DOC_START = re.compile(r"^---[ \t]*$", re.MULTILINE)
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_\"'-]+)[ \t]*:(?:[ \t]|$)")


class PostRenderError(RuntimeError):
    """The rendered manifests are not what the post-renderer was told to expect."""


class _Loader(yaml.SafeLoader):
    """YAML as Kubernetes' Go decoder reads it for comparison: timestamps stay strings."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_target(text: str) -> tuple[str, str]:
    """`Deployment/airflow-worker` -> ("Deployment", "airflow-worker")."""
    kind, sep, name = text.partition("/")
    if not sep or not kind or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r} is not KIND/NAME, e.g. Deployment/airflow-worker")
    return kind, name


def split_documents(stream: str) -> list[str]:
    """The stream cut before each `---` line; joining the parts gives the stream back unchanged."""
    starts = [m.start() for m in _DOC_START.finditer(stream)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    return [stream[a:b] for a, b in zip(starts, starts[1:] + [len(stream)]) if b > a]


def _load(document: str) -> Any:
    return yaml.load(document, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _without_top_level_spec_replicas(document: str) -> str | None:
    """The document minus the `replicas:` line directly under the top-level block `spec:`; None when the
    document is not laid out that way (flow style, JSON) and the line cannot be found safely."""
    lines = document.splitlines(keepends=True)
    in_spec = False
    child_indent: int | None = None
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _KEY.match(line)
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            in_spec = bool(m) and m.group("key") == "spec" and line.rstrip().endswith(":")
            child_indent = None
            continue
        if not in_spec:
            continue
        if child_indent is None:
            child_indent = indent
        if indent == child_indent and m and m.group("key") == "replicas":
            value = line.split(":", 1)[1].strip()
            # A scalar on the same line only: a value continued on the next lines is not this simple case.
            if value and not value.startswith(("|", ">", "&", "!", "{", "[")):
                return "".join(lines[:i] + lines[i + 1 :])
            return None
    return None


def drop_replicas(stream: str, targets: Iterable[tuple[str, str]]) -> str:
    """`stream` with `spec.replicas` removed from the objects named in `targets` (kind, metadata.name).

    Raises PostRenderError when a target is missing from the stream: a renamed object would otherwise
    silently get its replica count reset again.
    """
    wanted = set(targets)
    seen: set[tuple[str, str]] = set()
    out: list[str] = []
    for document in split_documents(stream):
        obj = _load(document)
        key = (obj.get("kind"), (obj.get("metadata") or {}).get("name")) if isinstance(obj, dict) else None
        if key not in wanted:
            out.append(document)
            continue
        seen.add(key)
        spec = obj.get("spec") or {}
        if "replicas" not in spec:
            out.append(document)
            continue
        expected = json.loads(json.dumps(obj))
        del expected["spec"]["replicas"]
        edited = _without_top_level_spec_replicas(document)
        if edited is None or _load(edited) != expected:
            # Not the block layout Helm charts write: emit the object as JSON (valid YAML) instead.
            head = document[: _DOC_START.match(document).end()] + "\n" if _DOC_START.match(document) else ""
            edited = head + json.dumps(expected, indent=2) + "\n"
            if _load(edited) != expected:  # pragma: no cover - json round trip
                raise PostRenderError(f"could not remove spec.replicas from {key[0]}/{key[1]}")
        out.append(edited)
    missing = wanted - seen
    if missing:
        names = ", ".join(f"{k}/{n}" for k, n in sorted(missing))
        raise PostRenderError(
            f"helm post-renderer: {names} not in the rendered manifests; the chart renamed it, so its "
            "replica count would be reset by every upgrade. Update the target in airflow_on_k8s/airflow/component.py."
        )
    return "".join(out)


def write_command(path: Path, targets: Sequence[tuple[str, str]], python: str = sys.executable) -> Path:
    """Write an executable at `path` that runs this post-renderer for `targets` with `python`.

    Helm executes the post-renderer directly, with the environment of the process running `pulumi up`
    (not this program's virtualenv), so the command names the interpreter running this program: it has
    PyYAML. The file is rewritten on every run, so a moved virtualenv or another machine just works.
    """
    root = Path(__file__).resolve().parents[2]  # the folder holding the airflow_on_k8s package
    args = " ".join(shlex.quote(f"--drop-replicas={kind}/{name}") for kind, name in targets)
    text = (
        "#!/bin/sh\n"
        "# Written by airflow-on-k8s (airflow_on_k8s/airflow/helm_postrender.py) on every Pulumi run; Helm runs it as a\n"
        "# post-renderer. Safe to delete: the next run writes it again.\n"
        f"PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}} "
        f"exec {shlex.quote(python)} -m airflow_on_k8s.airflow.helm_postrender {args}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        tmp.replace(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_on_k8s.airflow.helm_postrender",
        description="Helm post-renderer: drop spec.replicas from the named objects (stdin to stdout).",
    )
    parser.add_argument(
        "--drop-replicas",
        action="append",
        type=parse_target,
        required=True,
        metavar="KIND/NAME",
        help="object whose spec.replicas Helm must not own (repeatable)",
    )
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(drop_replicas(sys.stdin.read(), args.drop_replicas))
    except (PostRenderError, yaml.YAMLError) as exc:
        print(f"helm post-renderer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
