"""The review app: a local web page over a run folder for the review queue and the audit sample.

`ferclean review serve OUT` starts it (:func:`ferclean.review_app.server.serve`): FastAPI +
uvicorn on the loopback interface, a per-launch access token in the printed URL, one face at a
time with keyboard shortcuts. Every decision is validated like a `review import` row and
appended at once as a human `relabels` row (`ferclean.review.decide_one`).

Modules: `db` (an in-memory DuckDB over the run's Parquet parts), `queries` (queues, filters,
one sample's details), `server` (the HTTP endpoints and the token check), `static/` (the page).
"""
