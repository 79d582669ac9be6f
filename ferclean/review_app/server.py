"""HTTP side of the review app (FastAPI): the page, the JSON API and the images.

Every route needs the per-launch token (query `token=` or header `X-Review-Token`), else 401.
Writes are serialized by one lock in the process; each decision is validated by
`ferclean.review.decide_one` (the same rules as `review import`) and appended at once.

Routes: GET / (the page), GET /static/{name} (its JS/CSS, a fixed list), GET /api/config,
GET /api/queue, GET /api/sample, GET /api/status, POST /api/decide, POST /api/undo,
GET /img/crop, GET /img/original (by sample id: the file is looked up in `samples`).
"""

from __future__ import annotations

import ipaddress
import mimetypes
import secrets
import threading
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from ferclean.review import DecisionError, audit_draw, decide_one, undo_one
from ferclean.review_app import queries
from ferclean.review_app.db import MemoryCatalog
from ferclean.store import Store

TOKEN_HEADER = "X-Review-Token"
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"}


class DecisionIn(BaseModel):
    sample_id: str = Field(min_length=1, max_length=4096)
    decision: str = Field(max_length=32, description="keep | relabel | drop")
    label: str | None = Field(None, max_length=64, description="relabel: the new class (empty = the suggestion)")
    comment: str | None = Field(None, max_length=4000)
    reviewer: str = Field(min_length=1, max_length=200)


class UndoIn(BaseModel):
    sample_id: str = Field(min_length=1, max_length=4096)
    reviewer: str = Field(min_length=1, max_length=200)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _static(name: str) -> str:
    return resources.files("ferclean.review_app").joinpath("static", name).read_text(encoding="utf-8")


class ReviewState:
    """What one app instance holds: the store, its catalog, the fixed queues, the write lock."""

    def __init__(self, store: Store, audit: int | None = None, seed: int = 0, reviewer: str = ""):
        self.store = store
        self.catalog = MemoryCatalog(store)
        self.write_lock = threading.Lock()
        self.reviewer = reviewer
        cur = self.catalog.cursor()
        try:
            self.queues: dict[str, list[str]] = {"review": queries.review_queue_ids(cur)}
            self.audit_ids = [r[0] for r in audit_draw(cur, audit, seed)] if audit else []
            self.queues["audit"] = self.audit_ids
            self.classes = queries.run_classes(cur)
        finally:
            cur.close()
        self.audit_set = set(self.audit_ids)

    def cursor(self):  # noqa: ANN201
        return self.catalog.cursor()

    def read(self, fn, *args):  # noqa: ANN001, ANN201
        """`fn(cursor, *args)` on a cursor of its own (one per request thread)."""
        cur = self.catalog.cursor()
        try:
            return fn(cur, *args)
        finally:
            cur.close()


def create_app(store: Store, token: str, audit: int | None = None, seed: int = 0, reviewer: str = "") -> FastAPI:
    """The app over `store`; `token` guards every route."""
    if not token or len(token) < 16:
        raise ValueError("the access token must be at least 16 characters")
    state = ReviewState(store, audit=audit, seed=seed, reviewer=reviewer)
    app = FastAPI(title="ferclean review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.review = state

    @app.middleware("http")
    async def require_token(request: Request, call_next):  # noqa: ANN001, ANN202
        given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"detail": "missing or wrong access token (use the URL printed by `review serve`)"},
                                status_code=401)
        response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        q = f"?token={quote(token)}"  # the page's own script and style need the token too
        return HTMLResponse(_static("index.html").replace('"static/app.css"', f'"static/app.css{q}"')
                            .replace('"static/app.js"', f'"static/app.js{q}"'))

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:  # a fixed list: no path from the request reaches the disk
            raise HTTPException(404, "no such file")
        return Response(_static(name), media_type=STATIC_FILES[name])

    @app.get("/api/config")
    def config() -> dict[str, Any]:
        return {"out": str(store.root), "classes": state.classes, "reviewer": state.reviewer,
                "modes": {m: len(ids) for m, ids in state.queues.items()}, "filters": list(queries.FILTERS)}

    @app.get("/api/queue")
    def queue(request: Request, mode: str = Query("review")) -> dict[str, Any]:
        if mode not in state.queues:
            raise HTTPException(400, f"unknown mode {mode!r}; use one of {', '.join(queries.MODES)}")
        items = state.read(queries.queue_items, state.queues[mode])
        shown = queries.filter_items(items, dict(request.query_params))
        return {"mode": mode, "total": len(items), "decided": sum(i["decided"] for i in items),
                "items": shown, "facets": queries.facets(items)}

    @app.get("/api/sample")
    def sample(id: str = Query(..., min_length=1)) -> dict[str, Any]:  # noqa: A002
        detail = state.read(queries.sample_detail, id)
        if detail is None:
            raise HTTPException(404, f"unknown sample_id {id!r}")
        detail["in_audit"] = id in state.audit_set
        return detail

    @app.get("/api/status")
    def status() -> dict[str, Any]:
        hint = state.read(queries.rerun_hint, store.root)
        n = state.read(queries.audit_decisions, state.classes)
        return {"n_audit": n, **hint, "audit_reached": n >= hint["audit_min"]}

    def _write(fn, *args) -> dict[str, Any]:  # noqa: ANN001
        with state.write_lock:
            cur = state.cursor()
            try:
                out = fn(store, cur, *args)
            except DecisionError as exc:
                problems = [e.problem for e in exc.errors]
                code = 404 if any(p.startswith("unknown sample_id") for p in problems) else (
                    409 if any(p.startswith("no human decision") for p in problems) else 400)
                raise HTTPException(code, "; ".join(problems)) from None
            finally:
                cur.close()
            state.catalog.refresh()
        return out

    @app.post("/api/decide")
    def decide(body: DecisionIn) -> dict[str, Any]:
        return _write(decide_one, body.sample_id, body.decision, body.label, body.comment, body.reviewer,
                      body.sample_id in state.audit_set)

    @app.post("/api/undo")
    def undo(body: UndoIn) -> dict[str, Any]:
        return _write(undo_one, body.sample_id, body.reviewer)

    @app.get("/img/crop")
    def img_crop(id: str = Query(..., min_length=1)) -> Response:  # noqa: A002
        png = state.read(queries.crop_png, id)
        if png is None:
            raise HTTPException(404, "no aligned crop for this sample")
        return Response(png, media_type="image/png")

    @app.get("/img/original")
    def img_original(id: str = Query(..., min_length=1)) -> Response:  # noqa: A002
        path = state.read(queries.source_path, id)
        if path is None:
            raise HTTPException(404, "no image file for this sample")
        kind = mimetypes.guess_type(path.name)[0]
        if kind in _IMAGE_TYPES:
            return FileResponse(path, media_type=kind)
        from ferclean.report.data import thumbnail_png

        png = thumbnail_png(path, 1024)  # other formats (tiff, ...): a PNG copy
        if png is None:
            raise HTTPException(404, "the image file cannot be read")
        return Response(png, media_type="image/png")

    return app


def new_token() -> str:
    return secrets.token_urlsafe(24)


def serve(out: str | Path, host: str = "127.0.0.1", port: int = 8765, audit: int | None = None, seed: int = 0,
          reviewer: str = "", allow_remote: bool = False, token: str | None = None,
          on_ready=None) -> None:  # noqa: ANN001
    """Run the app with uvicorn until interrupted. A non-loopback `host` needs `allow_remote`."""
    import uvicorn

    if not is_loopback(host) and not allow_remote:
        raise ValueError(f"--host {host} is not a loopback address: add --allow-remote to serve beyond this machine")
    store = Store(out)
    if not store.tables_dir.exists():
        raise FileNotFoundError(f"{store.root} is not a ferclean output folder (no tables/)")
    token = token or new_token()
    app = create_app(store, token, audit=audit, seed=seed, reviewer=reviewer)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/?token={token}" + ("&mode=audit" if audit else "")
    if on_ready:
        on_ready(url, app.state.review)
    uvicorn.run(app, host=host, port=port, log_level="warning")
