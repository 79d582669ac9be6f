"""Analyst views for the DuckDB catalog: :data:`EXTRA_VIEWS` (name -> SQL body, in creation order),
which ferclean.catalog imports and creates after the table views (this module imports no catalog).

Each view is plain SQL over the table views; keep them cheap (no full scans of crops).
"""

from __future__ import annotations

from ferclean.contracts import contract_tables, load_contract

#: Analyst views, name -> SQL body, created after the table views in this order.
EXTRA_VIEWS: dict[str, str] = {}


def _contract_has(table: str, *columns: str) -> bool:
    """True when `table` has a contract declaring every one of `columns` (views over tables
    written by later stages are only registered once their contracts exist)."""
    if table not in contract_tables():
        return False
    names = set(load_contract(table).names)
    return all(c in names for c in columns)

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

# -- verdict views (issue 7, human decisions final since issue 18) ---------------------------
#: The reason that marks a human row withdrawing the reviewer's earlier decision (the app's undo
#: when the sample had no earlier human decision): such a row never wins.
RETRACTED_REASON = "retracted"

#: One row per sample: its verdict. **A human decision is final**: the sample's latest human row
#: wins over every model row whatever their timestamps, until a newer human row replaces it; a
#: latest human row that is a retraction (reasons holds 'retracted') hands the sample back to the
#: model. Without a human decision the latest model row wins. Extra columns keep the model's
#: latest opinion visible beside a human decision: model_run_id, model_action, model_label_final,
#: model_label_suggested, model_decided_at (on a model row: its own values), and
#: model_disagrees_with_human: a model verdict newer than the human decision whose label
#: (label_final for keep/relabel, label_suggested for review, none for drop) differs from the
#: human label_final. Exactly one row per sample: the winner is picked as a run_id per sample by
#: one narrow aggregate (human rows ranked above model rows by a constant offset on the key), and
#: (run_id, sample_id) is the table's key; only the ~few samples with a human decision pay for the
#: second look-up of their model row. (Two runs of the same source with the very same microsecond
#: decided_at would tie; one of them is taken.) ~1.5x the CPU of the plain latest-row pick and
#: ~2x less than a row_number() window on 1 M rows (benchmarks/bench_views.py).
_HUMAN_FIRST = "CASE WHEN source = 'human' THEN 4611686018427387904 ELSE 0 END"  # 2**62 us ~ 146,000 years
EXTRA_VIEWS["latest_verdicts"] = f"""
    WITH pick AS (
        SELECT sample_id,
               arg_max(run_id, epoch_us(decided_at) + {_HUMAN_FIRST}) AS top_run,
               arg_max(run_id, epoch_us(decided_at) - {_HUMAN_FIRST}) AS model_run
        FROM relabels GROUP BY sample_id
    ), retractions AS (
        SELECT sample_id, run_id FROM relabels
        WHERE source = 'human' AND list_contains(reasons, '{RETRACTED_REASON}')
    ), winner AS (
        SELECT p.sample_id, p.model_run,
               CASE WHEN x.run_id IS NULL THEN p.top_run ELSE p.model_run END AS run_id
        FROM pick p LEFT JOIN retractions x ON x.sample_id = p.sample_id AND x.run_id = p.top_run
    ), model_rows AS (
        SELECT m.sample_id, m.run_id, m.source, m.action, m.label_final, m.label_suggested, m.decided_at
        FROM relabels m SEMI JOIN winner w
            ON m.sample_id = w.sample_id AND m.run_id = w.model_run AND w.run_id <> w.model_run
    )
    SELECT r.*,
           CASE WHEN m.sample_id IS NULL THEN (CASE WHEN r.source = 'human' THEN NULL ELSE r.run_id END)
                WHEN m.source = 'human' THEN NULL ELSE m.run_id END AS model_run_id,
           CASE WHEN m.sample_id IS NULL THEN (CASE WHEN r.source = 'human' THEN NULL ELSE r.action END)
                WHEN m.source = 'human' THEN NULL ELSE m.action END AS model_action,
           CASE WHEN m.sample_id IS NULL THEN (CASE WHEN r.source = 'human' THEN NULL ELSE r.label_final END)
                WHEN m.source = 'human' THEN NULL ELSE m.label_final END AS model_label_final,
           CASE WHEN m.sample_id IS NULL THEN (CASE WHEN r.source = 'human' THEN NULL ELSE r.label_suggested END)
                WHEN m.source = 'human' THEN NULL ELSE m.label_suggested END AS model_label_suggested,
           CASE WHEN m.sample_id IS NULL THEN (CASE WHEN r.source = 'human' THEN NULL ELSE r.decided_at END)
                WHEN m.source = 'human' THEN NULL ELSE m.decided_at END AS model_decided_at,
           coalesce(r.source = 'human' AND m.source <> 'human' AND m.decided_at > r.decided_at
                    AND (CASE m.action WHEN 'drop' THEN NULL WHEN 'review' THEN m.label_suggested
                         ELSE m.label_final END) IS DISTINCT FROM r.label_final, false)
               AS model_disagrees_with_human
    FROM relabels r JOIN winner w ON r.sample_id = w.sample_id AND r.run_id = w.run_id
    LEFT JOIN model_rows m ON m.sample_id = r.sample_id"""

#: Samples whose latest verdict is `review`, highest priority first.
EXTRA_VIEWS["review_queue"] = """
    SELECT * FROM latest_verdicts WHERE action = 'review'
    ORDER BY priority DESC NULLS LAST, abs(margin) DESC NULLS LAST, sample_id"""

#: Per original class: how many samples the latest verdicts flag (any action but keep).
EXTRA_VIEWS["noise_by_class"] = """
    SELECT label_original,
           count(*) AS n,
           count(*) FILTER (WHERE action <> 'keep') AS n_flagged,
           count(*) FILTER (WHERE action = 'relabel') AS n_relabel,
           count(*) FILTER (WHERE action = 'review') AS n_review,
           count(*) FILTER (WHERE action = 'drop') AS n_drop,
           count(*) FILTER (WHERE action <> 'keep') / count(*) AS flag_rate
    FROM latest_verdicts GROUP BY label_original
    ORDER BY flag_rate DESC, label_original NULLS LAST"""

#: Original -> final label counts over the latest verdicts (label_final is NULL for drops and
#: for unlabelled samples under review; `action` tells which).
EXTRA_VIEWS["label_confusion"] = """
    SELECT label_original, label_final, action, count(*) AS n
    FROM latest_verdicts GROUP BY ALL
    ORDER BY label_original NULLS LAST, label_final NULLS LAST, action"""

#: Long format: for each label source ('original' label, 'final' label after verdicts), class
#: and AU, the share of primary faces where the AU is present (AUxx_c >= 0.5). Needs faces, aus.
AU_PREVALENCE_SQL = """
        WITH primary_aus AS (
            SELECT sample_id, COLUMNS('^AU[0-9]+_c$') FROM aus
            WHERE (sample_id, face_index) IN (SELECT sample_id, face_index FROM faces WHERE is_primary)
        ),
        long AS (
            UNPIVOT primary_aus ON COLUMNS('^AU[0-9]+_c$') INTO NAME au VALUE present
        ),
        labels AS (
            SELECT sample_id, 'original' AS label_source, label_original AS label
            FROM samples WHERE label_original IS NOT NULL
            UNION ALL
            SELECT s.sample_id, 'final' AS label_source,
                   CASE WHEN v.sample_id IS NULL THEN s.label_original ELSE v.label_final END AS label
            FROM samples s LEFT JOIN latest_verdicts v ON s.sample_id = v.sample_id
            WHERE CASE WHEN v.sample_id IS NULL THEN s.label_original ELSE v.label_final END IS NOT NULL
        )
        SELECT l.label_source, l.label, regexp_replace(g.au, '_c$', '') AS au,
               count(*) AS n_faces,
               count(*) FILTER (WHERE CAST(g.present AS DOUBLE) >= 0.5) AS n_present,
               count(*) FILTER (WHERE CAST(g.present AS DOUBLE) >= 0.5) / count(*) AS prevalence
        FROM long g JOIN labels l ON g.sample_id = l.sample_id
        GROUP BY ALL ORDER BY l.label_source, l.label, au"""

_REJECT_ISSUES = """
        SELECT source_ref AS ref, CAST(NULL AS INTEGER) AS face_index, 'rejects' AS source,
               stage, reason_code AS issue, message, run_id
        FROM rejects"""

#: Every face quality flag (one row per flag) and every rejected input item, side by side.
QUALITY_ISSUES_SQL = """
        SELECT sample_id AS ref, CAST(face_index AS INTEGER) AS face_index, 'faces' AS source,
               'faces' AS stage, flag AS issue, CAST(NULL AS VARCHAR) AS message, run_id
        FROM (SELECT sample_id, face_index, run_id, unnest(quality_flags) AS flag FROM faces)
        UNION ALL""" + _REJECT_ISSUES

#: quality_issues before the faces contract exists: rejects only.
REJECT_ISSUES_SQL = _REJECT_ISSUES

if _contract_has("faces", "sample_id", "face_index", "is_primary") and _contract_has("aus", "sample_id", "face_index"):
    EXTRA_VIEWS["au_prevalence_by_label"] = AU_PREVALENCE_SQL

if _contract_has("faces", "sample_id", "face_index", "quality_flags"):
    EXTRA_VIEWS["quality_issues"] = QUALITY_ISSUES_SQL
else:
    EXTRA_VIEWS["quality_issues"] = REJECT_ISSUES_SQL

# -- dataset_issues (ferclean.dataset_issues) -------------------------------------------------
#: One row per duplicate cluster: size, kept member, exact or near, conflict and leak flags.
DUPLICATE_CLUSTERS_SQL = """
        SELECT cluster_id,
               max(len(sample_ids)) AS n_members,
               any_value(json_extract_string(details, '$.keep')) AS keep,
               CASE WHEN bool_or(issue_type = 'near_duplicate') THEN 'near' ELSE 'exact' END AS kind,
               bool_or(issue_type = 'conflicting_labels') AS conflicting,
               bool_or(issue_type = 'split_leak') AS leak,
               min(score) FILTER (WHERE issue_type IN ('exact_duplicate', 'near_duplicate')) AS similarity,
               arg_max(sample_ids, len(sample_ids)) AS sample_ids
        FROM dataset_issues WHERE cluster_id IS NOT NULL
        GROUP BY cluster_id ORDER BY n_members DESC, cluster_id"""

#: One row per member of a cluster spanning train / valid / test, with its split and label.
SPLIT_LEAKS_SQL = """
        SELECT d.cluster_id, s.sample_id, s.split, s.label_original,
               s.sample_id = json_extract_string(d.details, '$.keep') AS is_kept
        FROM (SELECT cluster_id, details, unnest(sample_ids) AS sample_id
              FROM dataset_issues WHERE issue_type = 'split_leak') d
        JOIN samples s ON s.sample_id = d.sample_id
        ORDER BY d.cluster_id, s.split, s.sample_id"""

#: One row per (sample, dataset issue).
SAMPLE_DATASET_ISSUES_SQL = """
        SELECT unnest(sample_ids) AS sample_id, issue_type, issue_id, cluster_id, score, run_id
        FROM dataset_issues"""

if _contract_has("dataset_issues", "issue_type", "sample_ids", "details", "cluster_id"):
    EXTRA_VIEWS["duplicate_clusters"] = DUPLICATE_CLUSTERS_SQL
    EXTRA_VIEWS["split_leaks"] = SPLIT_LEAKS_SQL
    EXTRA_VIEWS["sample_dataset_issues"] = SAMPLE_DATASET_ISSUES_SQL
