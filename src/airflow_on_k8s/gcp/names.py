"""Names Google Cloud accepts, derived from a cluster name and project ID of any length the config allows."""

from __future__ import annotations

import hashlib

# Cloud Storage bucket names without dots: 3-63 characters.
BUCKET_NAME_MAX = 63


def bounded_name(text: str, limit: int) -> str:
    """`text` when it fits in `limit` characters; otherwise its start, "-" and a short hash of all of it.

    The hash keeps distinct texts distinct after the cut; a name that fits is left as it is.
    """
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return text[: limit - len(digest) - 1].rstrip("-") + "-" + digest


def log_bucket_name(project: str, cluster_name: str) -> str:
    """The task-log bucket: `<project>-<cluster>-airflow-logs` (bucket names are global), cut to fit."""
    return bounded_name(f"{project}-{cluster_name}-airflow-logs", BUCKET_NAME_MAX)
