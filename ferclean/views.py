"""Analyst views for the DuckDB catalog, registered into ferclean.catalog.EXTRA_VIEWS.

Each view is plain SQL over the table views; keep them cheap (no full scans of crops).
"""

from __future__ import annotations

from ferclean.catalog import EXTRA_VIEWS

EXTRA_VIEWS.update(
    {
        "run_history": """
            SELECT run_id, kind, status, started_at, finished_at,
                   date_diff('second', started_at, finished_at) AS seconds, error
            FROM runs ORDER BY started_at DESC""",
        "rejects_by_reason": """
            SELECT stage, reason_code, count(*) AS n FROM rejects GROUP BY ALL ORDER BY n DESC""",
    }
)
