"""Prefect flows over the ferclean library: `curate` and `relabel_collection` (see docs/scaling.md).

Prefect's embedded temporary API must start within 20 s by default, which a busy 2-core machine
misses; unless set otherwise, allow 120 s (set before Prefect reads its settings).
"""

import os

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# ferclean runs offline; Prefect's telemetry would only log a failed DNS lookup on every run.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
