"""Run the real Pulumi program for a stack under Pulumi's mock runtime and record every resource.

This is the offline way to see what `pulumi up` would create: no Pulumi CLI, no credentials, no
network. `airflow_on_k8s.tools.preview` prints what it records, and the tests assert on it.

Each recorded resource carries the engine's type token, its name, its parent's type and name, its
options that matter for review (protect, ignoreChanges, provider) and its inputs as the engine would
receive them. Outputs that only the cloud knows (ARNs, endpoints, IDs) are faked plausibly by
`fake_outputs`, so the program's `apply` chains run as they would in a real preview.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import runpy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# A Pulumi project is a folder with Pulumi.yaml, __main__.py and stacks/: the one the command runs in, as with
# the Pulumi CLI (this repository, or a program of your own that imports the package).
STACKS_DIR = Path("stacks")
PROJECT = "airflow-on-k8s"


@dataclass(frozen=True)
class Project:
    """What Pulumi.yaml says about a program: its name (the prefix of bare config keys) and its stack files' folder."""

    name: str
    stacks_dir: Path

    @classmethod
    def read(cls, program_dir: Path | None = None) -> "Project":
        program_dir = program_dir or Path.cwd()
        path = program_dir / "Pulumi.yaml"
        doc = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
        # Pulumi's defaults: the stack files sit next to Pulumi.yaml unless stackConfigDir says otherwise.
        return cls(doc.get("name", PROJECT), program_dir / doc.get("stackConfigDir", "."))


class StackNotFound(LookupError):
    """The named stack has no stacks/Pulumi.<stack>.yaml."""


@dataclass
class RecordedResource:
    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]
    custom: bool
    options: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "parent": self.parent,
            "inputs": self.inputs,
            "custom": self.custom,
            "options": self.options,
        }


def available_stacks(stacks_dir: Path = STACKS_DIR) -> list[str]:
    return sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in stacks_dir.glob("Pulumi.*.yaml"))


def read_stack_config(stack: str, stacks_dir: Path = STACKS_DIR, project: str = PROJECT) -> dict[str, str]:
    """The stack file's config as Pulumi hands it to a program: full keys, JSON text for structured values."""
    path = stacks_dir / f"Pulumi.{stack}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", stack) or not path.is_file():
        raise StackNotFound(
            f"no stack {stack!r}: {path} does not exist; "
            f"known stacks: {', '.join(available_stacks(stacks_dir)) or 'none'}"
        )
    doc = yaml.safe_load(path.read_text()) or {}
    config = doc.get("config") or {}
    out: dict[str, str] = {}
    for key, value in config.items():
        full = key if ":" in key else f"{project}:{key}"
        if isinstance(value, dict) and "secure" in value:
            value = "mock-secret-value"
        if isinstance(value, (dict, list)):
            out[full] = json.dumps(value)
        elif isinstance(value, bool):
            out[full] = "true" if value else "false"
        else:
            out[full] = str(value)
    return out


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:12]


_FAKE_CA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1PQ0sKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="


def fake_outputs(type_: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs the cloud would compute, for the types whose outputs the program reads."""
    h = _short_hash(type_, name)
    out: dict[str, Any] = {}
    if type_.startswith("aws:"):
        service = type_.split(":")[1].split("/")[0]
        out["arn"] = f"arn:aws:{service}:eu-west-1:123456789012:{name}-{h}"
    if type_ == "aws:eks/cluster:Cluster":
        out.update(
            endpoint=f"https://{h.upper()}.gr7.eu-west-1.eks.amazonaws.com",
            certificateAuthority={"data": _FAKE_CA},
            identities=[{"oidcs": [{"issuer": f"https://oidc.eks.eu-west-1.amazonaws.com/id/{h.upper()}"}]}],
            vpcConfig={**(inputs.get("vpcConfig") or {}), "clusterSecurityGroupId": f"sg-{h}"},
            version=inputs.get("version", "1.34"),
            name=inputs.get("name", name),
        )
    elif type_ == "aws:eks/nodeGroup:NodeGroup":
        out["resources"] = [{"autoscalingGroups": [{"name": f"eks-{name}-{h}"}], "remoteAccessSecurityGroupId": ""}]
        # Auto-named by the engine when the program sets no name.
        out["nodeGroupName"] = inputs.get("nodeGroupName") or f"{name}-{h[:7]}"
    elif type_ == "aws:ec2/launchTemplate:LaunchTemplate":
        out.update(latestVersion=1, defaultVersion=1)
    elif type_ == "aws:iam/role:Role":
        out["name"] = inputs.get("name") or f"{name}-{h[:7]}"
    elif type_ == "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
        out["url"] = (inputs.get("url") or "").removeprefix("https://")
    elif type_ == "aws:ec2/vpc:Vpc":
        out["defaultSecurityGroupId"] = f"sg-{h}"
    elif type_ == "aws:rds/instance:Instance":
        out.update(address=f"{name}.{h}.eu-west-1.rds.amazonaws.com", endpoint=f"{name}.{h}.rds:5432", port=5432)
    elif type_ == "aws:s3/bucketV2:BucketV2" or type_ == "aws:s3/bucket:Bucket":
        out["bucket"] = inputs.get("bucket") or f"{name}-{h}"
    elif type_ == "gcp:container/cluster:Cluster":
        out.update(
            endpoint="203.0.113.10",
            masterAuth={"clusterCaCertificate": _FAKE_CA},
            name=inputs.get("name", name),
            selfLink=f"https://container.googleapis.com/v1/projects/p/locations/r/clusters/{name}",
        )
        if inputs.get("privateClusterConfig"):
            # A private cluster's internal API address, from its control-plane range.
            out["privateClusterConfig"] = {**inputs["privateClusterConfig"], "privateEndpoint": "172.16.0.2"}
    elif type_ == "gcp:serviceaccount/account:Account":
        project = inputs.get("project", "mock-project")
        email = f"{inputs.get('accountId', name)}@{project}.iam.gserviceaccount.com"
        # `name` is the account's resource path, which IAM resources take as service_account_id.
        out.update(email=email, name=f"projects/{project}/serviceAccounts/{email}")
    elif type_ == "gcp:compute/network:Network" or type_ == "gcp:compute/subnetwork:Subnetwork":
        out.update(selfLink=f"https://www.googleapis.com/compute/v1/projects/p/global/{name}", name=inputs.get("name", name))
    elif type_ == "gcp:sql/databaseInstance:DatabaseInstance":
        out.update(privateIpAddress="10.90.0.3", connectionName=f"p:r:{name}", name=inputs.get("name", name))
    elif type_ == "gcp:storage/bucket:Bucket":
        out.update(url=f"gs://{inputs.get('name', name)}", name=inputs.get("name", name))
    elif type_ == "random:index/randomPassword:RandomPassword":
        out["result"] = f"mock-password-{h}"
    elif type_ == "random:index/randomBytes:RandomBytes":
        raw = hashlib.sha256(name.encode()).digest()[: int(inputs.get("length", 32))]
        out.update(base64=base64.b64encode(raw).decode(), hex=raw.hex())
    return out


def fake_invoke(token: str, args: dict[str, Any]) -> dict[str, Any]:
    """Results of the data-source calls (invokes) the program makes."""
    if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
        return {"names": ["eu-west-1a", "eu-west-1b", "eu-west-1c"], "zoneIds": ["euw1-az1", "euw1-az2", "euw1-az3"]}
    if token == "aws:index/getCallerIdentity:getCallerIdentity":
        return {"accountId": "123456789012", "arn": "arn:aws:iam::123456789012:user/mock", "userId": "MOCK"}
    if token == "aws:index/getPartition:getPartition":
        return {"partition": "aws", "dnsSuffix": "amazonaws.com"}
    if token == "aws:index/getRegion:getRegion":
        return {"name": "eu-west-1", "region": "eu-west-1"}
    if token == "gcp:organizations/getProject:getProject":
        return {"projectId": args.get("projectId", "mock-project"), "number": "123456789012"}
    if token == "gcp:organizations/getClientConfig:getClientConfig":
        return {"accessToken": "mock-token", "project": "mock-project"}
    return {}


class _RecordingMocks:
    """pulumi.runtime.Mocks: gives each resource an ID and outputs, and records invokes."""

    def __init__(self) -> None:
        self.invokes: list[tuple[str, dict]] = []

    def new_resource(self, args):  # noqa: ANN001 - pulumi's MockResourceArgs
        state = {**args.inputs, **fake_outputs(args.typ, args.name, args.inputs)}
        return f"{args.name}-id", state

    def call(self, args):  # noqa: ANN001 - pulumi's MockCallArgs
        self.invokes.append((args.token, args.args))
        return fake_invoke(args.token, args.args)


def _make_monitor(mocks: _RecordingMocks, recorded: list[RecordedResource]):
    from pulumi.runtime import rpc
    from pulumi.runtime.mocks import MockMonitor

    class RecordingMonitor(MockMonitor):
        """MockMonitor that also keeps each request's parent and options, which MockResourceArgs drops."""

        def __init__(self) -> None:
            super().__init__(mocks)
            self.urn_names: dict[str, str] = {}

        def RegisterResource(self, request):  # noqa: N802 - gRPC method name
            response = super().RegisterResource(request)
            if request.type == "pulumi:pulumi:Stack":
                return response
            from pulumi.runtime.mocks import _ensure_event_loop

            _ensure_event_loop()
            inputs = rpc.deserialize_properties(request.object)
            parent = request.parent
            parent_name = None
            if parent:
                # URN: urn:pulumi:STACK::PROJECT::Parent$Chain$Type::name
                parent_type = parent.split("::")[-2].split("$")[-1]
                if parent_type != "pulumi:pulumi:Stack":
                    parent_name = f"{parent_type}::{parent.split('::')[-1]}"
            options: dict[str, Any] = {}
            if request.protect:
                options["protect"] = True
            if list(request.ignoreChanges):
                options["ignoreChanges"] = list(request.ignoreChanges)
            if request.provider:
                options["provider"] = request.provider.split("::")[-2]
            if list(request.dependencies):
                options["dependsOn"] = sorted({d.split("::")[-1] for d in request.dependencies})
            if request.retainOnDelete:
                options["retainOnDelete"] = True
            if request.deleteBeforeReplace:
                options["deleteBeforeReplace"] = True
            if list(request.additionalSecretOutputs):
                options["additionalSecretOutputs"] = list(request.additionalSecretOutputs)
            recorded.append(
                RecordedResource(
                    type=request.type,
                    name=request.name,
                    parent=parent_name,
                    inputs=_plain(inputs),
                    custom=bool(request.custom),
                    options=options,
                )
            )
            return response

    return RecordingMonitor()


def _plain(value: Any) -> Any:
    """Inputs as JSON-able data: secrets unwrapped and marked, unknowns and resource refs named."""
    from pulumi.runtime import rpc

    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return {"secret": _plain(value.get("value"))}
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is rpc.UNKNOWN or type(value).__name__ == "Unknown":
        return "<computed>"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


@dataclass
class ProgramRun:
    stack: str
    resources: list[RecordedResource]
    outputs: dict[str, Any]
    invokes: list[tuple[str, dict]]

    def by_type(self, type_: str) -> list[RecordedResource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name_contains: str = "") -> RecordedResource:
        found = [r for r in self.by_type(type_) if name_contains in r.name]
        if len(found) != 1:
            names = [r.name for r in self.by_type(type_)]
            raise AssertionError(f"expected one {type_} named *{name_contains}*, found {len(found)} among {names}")
        return found[0]


def run_program(stack: str, program: Path | None = None, stacks_dir: Path | None = None) -> ProgramRun:
    """Run `__main__.py` (or `program`) for `stack` under mocks; return every resource it registered.

    Raises StackNotFound for an unknown stack and airflow_on_k8s.config.ConfigError for bad config.
    """
    import pulumi
    from pulumi.runtime import config as runtime_config
    from pulumi.runtime import settings
    from pulumi.runtime.stack import run_pulumi_func

    project = Project.read()
    config = read_stack_config(stack, stacks_dir or project.stacks_dir, project.name)
    recorded: list[RecordedResource] = []
    mocks = _RecordingMocks()
    # One fresh event loop per run: the root Stack that set_mocks creates binds its futures to it.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    settings.reset_options()
    runtime_config.set_all_config(config, [])
    pulumi.runtime.set_mocks(mocks, project=project.name, stack=stack, preview=True, monitor=_make_monitor(mocks, recorded))
    outputs: dict[str, Any] = {}

    root = settings.get_root_resource()
    original_export = pulumi.export

    def capture_export(name: str, value: Any) -> None:
        outputs[name] = value
        original_export(name, value)

    program_dir = Path.cwd()
    program_path = program or program_dir / "__main__.py"
    sys.path.insert(0, str(program_dir))
    pulumi.export = capture_export
    try:
        loop.run_until_complete(run_pulumi_func(lambda: runpy.run_path(str(program_path), run_name="__main__")))
        resolved = loop.run_until_complete(_resolve_outputs(outputs))
    finally:
        pulumi.export = original_export
        sys.path.remove(str(program_dir))
        loop.close()
    del root
    return ProgramRun(stack=stack, resources=recorded, outputs=resolved, invokes=mocks.invokes)


async def _resolve_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    import pulumi

    resolved: dict[str, Any] = {}
    for name, value in outputs.items():
        if isinstance(value, pulumi.Output):
            is_secret = await value.is_secret()
            plain = await value.future()
            resolved[name] = {"secret": _plain(plain)} if is_secret else _plain(plain)
        else:
            resolved[name] = _plain(value)
    return resolved
