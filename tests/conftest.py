"""Shared fixtures. Pulumi programs run under the mock runtime (airflow_on_k8s.testing.mock_runtime); one run per stack per session."""

from __future__ import annotations

import functools

import pytest

from airflow_on_k8s.testing.mock_runtime import ProgramRun, run_program

# The real control plane (one per session), for tests/k8s and the autoscaler's tests on it.
pytest_plugins = ["tests.k8s.plugin"]


@functools.lru_cache(maxsize=None)
def program_run(stack: str) -> ProgramRun:
    """The real program for `stack`, run once under mocks and cached for the session."""
    return run_program(stack)


@pytest.fixture(params=["aws-dev", "aws-prod"])
def aws_run(request) -> ProgramRun:
    return program_run(request.param)


@pytest.fixture(params=["gcp-dev", "gcp-prod"])
def gcp_run(request) -> ProgramRun:
    return program_run(request.param)

