"""The end-of-run summary a person reads: what came in, what was found, what was decided, where
the results are and what to run next. Built from the run folder's tables (not from the stage
summaries, which stay in `runs.counts` and the Prefect artifacts), so it is the same whether a
stage computed or was skipped as cached."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.compute as pc

from ferclean.model_dir import ModelDir
from ferclean.store import Store


@dataclass
class RunSummary:
    kind: str
    run_id: str
    out: str
    seconds: float | None
    stages: dict[str, str]  # stage -> "computed 12.3 s" | "cached"
    input_rows: int | None
    samples: int
    images_with_face: int
    faces_by_detector: dict[str, int]
    rejects_by_reason: dict[str, int]  # "stage:reason" -> count, this run's rejects
    verdicts: dict[str, int]  # action -> samples, over the latest verdicts
    human_decisions: int
    trust: dict[str, float]  # relabel.trust.* estimates of this run (how far to trust the relabels)
    domain_shift: bool | None  # relabel-collection: the collection looked unlike the model's training data
    model_dir: str | None
    catalog: str
    report: str | None
    next_commands: list[str] = field(default_factory=list)
    domain_shift_checks: list[str] = field(default_factory=list)  # which of the guard's checks failed

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=False)


def _counts(values: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def _latest_actions(store: Store) -> tuple[dict[str, int], int]:
    """Verdict counts over each sample's latest verdict, and how many of those are human."""
    from ferclean.catalog import query

    if store.count("relabels") == 0:
        return {}, 0
    _, rows = query(store, "select action, source, count(*) from latest_verdicts group by 1, 2")
    actions: dict[str, int] = {}
    human = 0
    for action, source, n in rows:
        actions[action] = actions.get(action, 0) + int(n)
        human += int(n) if source == "human" else 0
    return dict(sorted(actions.items(), key=lambda kv: -kv[1])), human


def _run_counts(store: Store, run_id: str) -> dict[str, Any]:
    runs = store.read("runs", columns=["run_id", "counts"])
    for rid, counts in zip(runs.column("run_id").to_pylist(), runs.column("counts").to_pylist(), strict=True):
        if rid == run_id and counts:
            return json.loads(counts)
    return {}


def _current_rejects(store: Store, run_id: str, stages: dict[str, Any]) -> dict[str, int]:
    """Rejects by "stage:reason" behind this run's tables: a stage computed in this run counts this run's
    rejects, a cached stage those of the run that computed it (its OUT/stages manifest), so a rerun that
    reuses the faces stage still says how many images had no face."""
    from ferclean.stage_cache import read_manifest

    want: dict[str, str] = {}
    for st, res in stages.items():
        m = read_manifest(store, st) if res.get("cached") else None
        want[st] = m.run_id if m is not None and m.run_id else run_id
    rej = store.read("rejects", columns=["run_id", "stage", "reason_code"])
    return _counts([f"{st}:{reason}" for st, rid, reason in zip(
        rej.column("stage").to_pylist(), rej.column("run_id").to_pylist(), rej.column("reason_code").to_pylist(),
        strict=True) if rid == want.get(st, run_id)])


def build_summary(store: Store, kind: str, flow_result: dict[str, Any], model_dir: str | None = None) -> RunSummary:
    """Summarise a finished flow run (`flow_result` is what the curate / relabel-collection flow returned)."""
    run_id = flow_result["run_id"]
    stages = {}
    for name, res in flow_result.get("stages", {}).items():
        stages[name] = "cached" if res.get("cached") else f"computed {res.get('seconds', 0):.1f} s"
    ingest = flow_result.get("stages", {}).get("ingest", {}).get("summary", {})
    rejects = _current_rejects(store, run_id, flow_result.get("stages", {}))
    faces = store.read("faces", columns=["is_primary", "detector"])
    prim = faces.filter(pc.field("is_primary"))
    actions, human = _latest_actions(store)
    counts = _run_counts(store, run_id)
    trust = {k.removeprefix("relabel.trust."): v for k, v in counts.items() if k.startswith("relabel.trust.")}
    shift = counts.get("relabel.domain_shift")
    shift_checks = sorted(k.removeprefix("relabel.domain_shift.") for k, v in counts.items()
                          if k.startswith("relabel.domain_shift.") and v)
    model = ModelDir(model_dir) if model_dir else ModelDir.of_run(store.root)
    report = store.root / "report.html"
    out = shlex.quote(str(store.root))
    nxt = []
    if actions:
        nxt += [f"ferclean report {out}", f"ferclean query {out} \"select * from noise_by_class\"",
                f"ferclean review export {out} --audit 100"]
        if kind == "curate":
            nxt.append(f"ferclean export {out} --to cleaned/ --layout folder")
    else:
        nxt.append(f"ferclean query {out} \"select split, count(*) from samples group by 1\"")
    if rejects:
        nxt.append(f"ferclean query {out} \"select stage, reason_code, message from rejects where run_id = '{run_id}'\"")
    return RunSummary(
        kind=kind, run_id=run_id, out=str(store.root), seconds=flow_result.get("seconds"), stages=stages,
        input_rows=ingest.get("input_rows"), samples=store.count("samples"), images_with_face=prim.num_rows,
        faces_by_detector=_counts(prim.column("detector").to_pylist()), rejects_by_reason=rejects,
        verdicts=actions, human_decisions=human, trust=trust,
        domain_shift=None if shift is None else bool(shift), domain_shift_checks=shift_checks,
        model_dir=str(model.path) if model.exists() else None,
        catalog=str(store.root / "catalog.duckdb"), report=str(report) if report.is_file() else None,
        next_commands=nxt,
    )


def _kv(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items()) or "none"


def render(s: RunSummary) -> str:
    """The summary as a few plain lines."""
    lines = [f"{s.kind} run {s.run_id} finished -> {s.out}"]
    if s.stages:
        lines.append("  stages:    " + ", ".join(f"{k} {v}" for k, v in s.stages.items()))
    got = f"{s.samples:,} samples" + (f" from {s.input_rows:,} input rows" if s.input_rows is not None else "")
    lines.append(f"  input:     {got}")
    if s.images_with_face or s.faces_by_detector:
        lines.append(f"  faces:     {s.images_with_face:,} images with a face ({_kv(s.faces_by_detector)})")
    lines.append(f"  rejects:   {_kv(s.rejects_by_reason)}")
    if s.verdicts:
        human = f"; {s.human_decisions:,} decided by a reviewer" if s.human_decisions else ""
        lines.append(f"  verdicts:  {_kv(s.verdicts)}{human}")
    if s.trust:
        t, parts = s.trust, []
        for key, name in (("label_accuracy", "labels"), ("model_accuracy", "network"), ("au_view_accuracy", "AU view")):
            if isinstance(t.get(key), int | float):
                parts.append(f"{name} ~{t[key]:.0%} right")
        if "relabel_precision_est" in t:
            whose = "the rule's relabels (sent to review, below)" if s.domain_shift else "relabels"
            parts.append(f"{whose} ~{t['relabel_precision_est']:.0%} right vs "
                         f"~{t.get('replaced_label_right_est', float('nan')):.0%} for the labels they replace")
        if "expected_gain_points" in t:
            parts.append(f"expected gain {t['expected_gain_points']:+.1f} points")
        if parts:
            lines.append("  trust:     " + "; ".join(parts) + " (estimated without reference labels)")
    if s.domain_shift:
        why = f" ({', '.join(s.domain_shift_checks)})" if s.domain_shift_checks else ""
        lines.append(f"  shift:     the collection looks unlike the model's training data{why}: relabels were sent "
                     "to review (reason domain_shift)")
    lines.append(f"  catalog:   {s.catalog}")
    if s.model_dir and s.kind == "curate":
        lines.append(f"  model:     {s.model_dir}")
    if s.report:
        lines.append(f"  report:    {s.report}")
    lines.append("  next:")
    lines += [f"    {c}" for c in s.next_commands]
    return "\n".join(lines)
