"""What the README shows a new user works as shown: its stack-config examples preview, its Python example runs,
and its config reference gives the defaults the model really applies."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from airflow_on_k8s.config import PROJECT, parse_stack_config
from airflow_on_k8s.testing.mock_runtime import run_program
from airflow_on_k8s.tools.config_reference import rows

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


STACK_EXAMPLES = [b for b in _blocks("yaml") if f"{PROJECT}:" in b]


def test_the_readme_has_stack_config_examples():
    assert STACK_EXAMPLES, "the README should show how a stack file looks"


@pytest.mark.parametrize("example", STACK_EXAMPLES, ids=[f"yaml-{i}" for i in range(len(STACK_EXAMPLES))])
def test_every_readme_stack_example_previews(example, tmp_path, monkeypatch):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.example.yaml").write_text(example)
    assert yaml.safe_load(example)["config"], "an example with no config"
    monkeypatch.chdir(REPO)  # the repository's program and Pulumi.yaml
    run = run_program("example", stacks_dir=stacks)
    assert any(r.type.startswith("airflow-on-k8s:") for r in run.resources)


PYTHON_EXAMPLES = [b for b in _blocks("python") if "from airflow_on_k8s" in b]


@pytest.mark.parametrize("example", PYTHON_EXAMPLES, ids=[f"python-{i}" for i in range(len(PYTHON_EXAMPLES))])
def test_every_readme_python_example_runs_under_the_mock_runtime(example, tmp_path, monkeypatch):
    program = tmp_path / "__main__.py"
    program.write_text("import pulumi\n" + example)
    monkeypatch.chdir(REPO)
    run = run_program("aws-dev", program=program)
    assert any(r.type.startswith("airflow-on-k8s:") for r in run.resources)


def test_the_readme_shows_the_component_api_in_python():
    assert len(PYTHON_EXAMPLES) >= 2 and any("parse_stack_config" in b for b in PYTHON_EXAMPLES)


def test_a_task_pool_section_needs_no_min_size():
    # The README's own example: before, a taskPool section fell back to the generic pool default minSize 1 and
    # was rejected ("the task pool scales from zero").
    config = parse_stack_config({"cloud": "aws", "aws": {"region": "eu-west-1", "publicAccessCidrs": ["203.0.113.10/32"]},
                                 "taskPool": {"maxSize": 10, "spot": True}, "systemPool": {"spot": True}})
    assert config.task_pool.min_size == 0 and config.task_pool.max_size == 10
    assert config.system_pool.min_size == 2 and config.system_pool.max_size == 4


def _documented_default(cell: str):
    return json.loads(cell.strip("`"))


def test_the_config_reference_gives_the_defaults_the_model_applies():
    # Compare every documented default with the value a config that leaves the key out really gets.
    raw = {"cloud": "local", "local": {}}
    config = parse_stack_config(raw)
    checked = 0
    for key, _type, default, _ in rows():
        if default in ("", "required") or key in raw:
            continue
        node = config
        for part in key.split("."):
            field = next((n for n, f in type(node).model_fields.items() if (f.alias or n) == part), None)
            node = getattr(node, field) if node is not None and field else None
            if node is None:
                break
        if node is None and key.split(".")[0] in ("aws", "gcp"):
            continue  # a section this local config does not have
        actual = json.loads(json.dumps(node, default=lambda v: v.model_dump(by_alias=True)))
        assert _documented_default(default) == actual, key
        checked += 1
    assert checked > 20


TYPESCRIPT_EXAMPLES = _blocks("typescript")


def _object_keys(text: str, start: int) -> list[tuple[tuple[str, ...], str]]:
    """(path, key) for every key of the object literal opening at text[start] ("{"), nested keys with their path."""
    found: list[tuple[tuple[str, ...], str]] = []
    path: list[str] = []
    last_key = ""
    i = start
    depth = 0
    while i < len(text):
        c = text[i]
        if c == "{":
            if depth:
                path.append(last_key)
            depth += 1
        elif c == "}":
            depth -= 1
            if not depth:
                break
            path.pop()
        elif c == '"':
            i = text.index('"', i + 1)
        elif c == "[":  # lists hold values only (strings here)
            i = text.index("]", i)
        else:
            m = re.match(r"(\w+)\s*:", text[i:])
            if m and text[i - 1] in " {\n,":
                last_key = m.group(1)
                found.append((tuple(path), last_key))
                i += m.end() - 1
        i += 1
    return found


def test_the_readme_typescript_uses_components_inputs_and_outputs_the_schema_has():
    """The TypeScript a reader copies names components of the schema, and only inputs (at every nesting level, down
    to the settings' keys) and outputs they have; `pulumi package add` cannot run here, the schema can be read."""
    from airflow_on_k8s import provider

    served = provider.schema()
    resources, types = served["resources"], served["types"]
    assert TYPESCRIPT_EXAMPLES and any("AirflowOnCluster" in b for b in TYPESCRIPT_EXAMPLES)
    checked = 0
    for block in TYPESCRIPT_EXAMPLES:
        variables: dict[str, dict] = {}
        for m in re.finditer(r"const (\w+) = new airflowOnK8s\.(\w+)\(\"[\w-]+\", ", block):
            token = f"{provider.NAME}:index:{m.group(2)}"
            assert token in resources, f"{m.group(2)} is not a component of the schema"
            variables[m.group(1)] = resources[token]
            for path, key in _object_keys(block, m.end()):
                props = resources[token]["inputProperties"]
                for step in path:
                    ref = props[step]
                    props = types[ref["$ref"].split("/")[-1]]["properties"] if "$ref" in ref else None
                    if props is None:  # a free-form map (e.g. the stack config): not checked further
                        break
                if props is not None:
                    assert key in props, f"{m.group(2)}: {'.'.join(path + (key,))} is not an input"
                    checked += 1
        for variable, output in re.findall(r"\b(\w+)\.(\w+)\b", block):
            if variable in variables:
                assert output in variables[variable]["properties"], f"{variable}.{output} is not an output"
    assert checked >= 15
