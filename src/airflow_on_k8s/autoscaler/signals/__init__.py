"""Where the autoscaler's numbers come from, one module per source (like KEDA's scalers).

Readers raise `SignalError` when their source is unreachable, so the controller can fail safe.
"""

from __future__ import annotations

# kombu's Redis transport blocks in BRPOP this long per poll (kombu/transport/redis.py Transport.brpop_timeout):
# a Celery reply wait shorter than that comes back empty, and kombu then runs restore_visible.
KOMBU_REDIS_BRPOP_TIMEOUT_S = 1.0


class SignalError(RuntimeError):
    """A signal source could not be read; `source` names it for the errors metric."""

    def __init__(self, source: str, message: str):
        self.source = source
        super().__init__(f"{source}: {message}")
