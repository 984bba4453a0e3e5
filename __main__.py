"""Composition root: read the stack's config, build the cluster and what runs on it, export what users need."""

import pulumi

from airflow_on_k8s.config import load_stack_config
from airflow_on_k8s.platform import build_platform, platform_outputs

platform = build_platform(load_stack_config())
for name, value in platform_outputs(platform).items():
    pulumi.export(name, value)
