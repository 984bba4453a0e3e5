"""Files that run inside the Airflow image, and how they are rendered for it.

The Airflow image does not contain this repository, so facts it needs from here (the task pool's label and
taint) are written into the shipped text when the Pulumi program renders it.
"""

from __future__ import annotations

import json
from pathlib import Path

from airflow_on_k8s.task_pool import TASK_POOL, TaskPoolSelector

LOCAL_SETTINGS_TEMPLATE = Path(__file__).with_name("airflow_local_settings.py")
_PLACEHOLDER = "TASK_POOL: dict[str, str] = {}  # <task-pool: rendered by airflow_on_k8s.airflow.local_settings.render_local_settings>"


def render_local_settings(selector: TaskPoolSelector = TASK_POOL) -> str:
    """The text of `airflow_local_settings.py` with `selector` written into its TASK_POOL constant."""
    template = LOCAL_SETTINGS_TEMPLATE.read_text()
    if template.count(_PLACEHOLDER) != 1:
        raise ValueError(f"{LOCAL_SETTINGS_TEMPLATE}: expected the TASK_POOL placeholder line exactly once")
    rendered = template.replace(_PLACEHOLDER, f"TASK_POOL: dict[str, str] = {json.dumps(selector.as_dict())}")
    # The chart passes airflowLocalSettings through Helm's `tpl`; a `{{` would be read as a template action.
    if "{{" in rendered:
        raise ValueError("airflow_local_settings must not contain '{{' (the chart renders it as a Helm template)")
    return rendered
