// ferclean review app: one face at a time, keyboard first. No external scripts (works offline).
"use strict";
const params = new URLSearchParams(location.search);
const TOKEN = params.get("token") || "";
const S = { mode: params.get("mode") || "review", classes: [], items: [], idx: 0, total: 0, decided: 0,
            detail: null, undo: [], filters: {}, chain: Promise.resolve(), modes: {} };
const $ = (id) => document.getElementById(id);

function api(path, body) {
  const opts = { headers: { "X-Review-Token": TOKEN } };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  return fetch(path, opts).then(async (r) => {
    const data = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(data.detail ? (typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)) : r.statusText);
    return data;
  });
}
const img = (kind, id) => `img/${kind}?id=${encodeURIComponent(id)}&token=${encodeURIComponent(TOKEN)}`;
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmt = (v) => (v === null || v === undefined ? "–" : typeof v === "number" ? v.toFixed(3) : v);
const say = (msg) => { $("message").textContent = msg || ""; };

function enqueue(fn) {  // keys are handled strictly in order, even when typed faster than the server answers
  S.chain = S.chain.then(fn).catch((e) => say(e.message));
  return S.chain;
}

async function loadQueue(keepId) {
  const q = new URLSearchParams({ mode: S.mode });
  for (const [k, v] of Object.entries(S.filters)) if (v) q.set(k, v);
  const data = await api("api/queue?" + q.toString());
  S.items = data.items; S.total = data.total; S.decided = data.decided;
  fillFacets(data.facets);
  let idx = keepId ? S.items.findIndex((i) => i.sample_id === keepId) : -1;
  if (idx < 0) idx = S.items.findIndex((i) => !i.decided);
  S.idx = Math.max(0, idx < 0 ? 0 : idx);
  progress();
  await show();
}

function fillFacets(f) {
  for (const key of ["label_original", "label_suggested", "reason", "quality_flag"]) {
    const sel = $("f-" + key);
    const cur = S.filters[key] || "";
    const first = sel.options[0].outerHTML;
    sel.innerHTML = first + (f[key] || []).map((v) => `<option${v === cur ? " selected" : ""}>${esc(v)}</option>`).join("");
  }
}

function progress() {
  const pct = S.total ? (100 * S.decided) / S.total : 0;
  $("progress").style.width = pct + "%";
  $("progress-text").textContent = `${S.decided} / ${S.total} decided (${pct.toFixed(0)} %) · ${S.mode} queue` +
    (S.items.length !== S.total ? ` · ${S.items.length} shown by the filters` : "");
}

async function show() {
  const it = S.items[S.idx];
  $("position").textContent = it ? `${S.idx + 1} of ${S.items.length}` : "nothing to review with these filters";
  if (!it) { S.detail = null; ["sid", "given", "suggested", "model", "decision", "alpha", "reasons", "quality", "probs", "dups", "history"].forEach((k) => ($(k).innerHTML = "")); $("crop").removeAttribute("src"); $("original").removeAttribute("src"); return; }
  const d = await api("api/sample?id=" + encodeURIComponent(it.sample_id));
  if (S.items[S.idx] !== it) return;  // moved on meanwhile
  S.detail = d;
  render(it, d);
  const next = S.items[S.idx + 1];
  if (next) new Image().src = img("crop", next.sample_id);  // preload
}

function render(it, d) {
  const v = d.verdict || {};
  const given = d.sample.label_original || v.label_original;
  const sugg = v.source === "human" ? v.model_label_suggested : v.label_suggested;
  $("sid").textContent = it.sample_id;
  $("crop").src = d.has_crop ? img("crop", it.sample_id) : img("original", it.sample_id);
  $("original").src = img("original", it.sample_id);
  $("orig-cap").textContent = `original ${d.sample.file_name || ""} ${d.sample.width ? d.sample.width + "×" + d.sample.height : ""}`;
  $("given").textContent = given || "(unlabelled)";
  $("suggested").textContent = sugg || "–";
  const ma = v.source === "human" ? v.model_action : v.action;
  $("model").textContent = ma ? `${ma}${v.source === "human" && v.model_label_final ? " → " + v.model_label_final : ""}` : "no verdict yet";
  if (v.source === "human") {
    $("decision").innerHTML = `<span class="human">${esc(v.action)}${v.label_final && v.action !== "keep" ? " → " + esc(v.label_final) : ""}</span> by ${esc(v.reviewer)}` +
      (v.model_disagrees_with_human ? ' <span class="warn">· a newer model run disagrees</span>' : "");
  } else {
    $("decision").textContent = "undecided";
  }
  $("alpha").textContent = `${fmt(v.alpha)} / ${fmt(v.margin)}`;
  $("reasons").innerHTML = (it.reasons || []).map((r) => `<span class="chip">${esc(r)}</span>`).join("") || "–";
  const flags = (d.face && d.face.quality_flags) || [];
  $("quality").innerHTML = flags.map((r) => `<span class="chip flag">${esc(r)}</span>`).join("") || (d.face ? "ok" : "no face found");
  const probs = Object.fromEntries((d.probs || []).map((p) => [p.class, p.p]));
  $("probs").innerHTML = S.classes.map((c, i) => {
    const p = probs[c];
    const cls = ["prob", c === given ? "given" : "", c === sugg ? "suggested" : ""].join(" ");
    return `<div class="${cls}" data-class="${esc(c)}"><span class="key">${i + 1}</span><span class="name">${esc(c)}</span>` +
      `<span class="bar" style="width:${p === undefined ? 0 : Math.round(p * 220)}px"></span><span>${p === undefined ? "" : p.toFixed(2)}</span></div>`;
  }).join("");
  $("dups").innerHTML = (d.duplicates || []).length ? "near duplicates: " + d.duplicates.map((x) =>
    `<img src="${img("crop", x.sample_id)}" title="${esc(x.sample_id)} (${esc(x.label_original)}, ${esc(x.split)}, ${esc(x.issue_type)})" alt="${esc(x.sample_id)}">`).join("") : "";
  $("history").innerHTML = (d.history || []).length ? "history: " + d.history.map((h) =>
    `${esc(h.decided_at.slice(0, 19))} ${esc(h.reviewer)} ${esc(h.action)} ${esc(h.label_final || "")}${(h.reasons || []).includes("undo") ? " (undo)" : ""}`).join(" · ") : "";
}

function reviewer() {
  const r = $("reviewer").value.trim();
  if (!r) { $("reviewer").focus(); throw new Error("type your name in the reviewer box first"); }
  localStorage.setItem("ferclean-reviewer", r);
  return r;
}

async function decide(decision, label) {
  const it = S.items[S.idx];
  if (!it) return;
  const who = reviewer();
  const res = await api("api/decide", { sample_id: it.sample_id, decision, label: label || null, reviewer: who });
  if (!it.decided) S.decided += 1;
  it.decided = true; it.source = "human"; it.action = res.action; it.label_final = res.label_final;
  S.undo.push(it.sample_id);
  say("");
  progress();
  if (S.mode === "audit") statusCheck();  // the count only moves with audit decisions
  await move(1);
}

async function undo() {
  const sid = S.undo.pop();
  if (!sid) { say("nothing to undo in this session"); return; }
  const res = await api("api/undo", { sample_id: sid, reviewer: reviewer() });
  const idx = S.items.findIndex((i) => i.sample_id === sid);
  if (idx >= 0) {
    const it = S.items[idx];
    if (!res.restored && it.decided) { it.decided = false; S.decided -= 1; }
    S.idx = idx;
  }
  say(`undone: ${res.undone.action} ${res.undone.label_final || ""} on ${sid}`);
  progress();
  await show();
}

async function move(step) {
  if (!S.items.length) return;
  S.idx = Math.min(Math.max(S.idx + step, 0), S.items.length - 1);
  await show();
}

async function statusCheck() {
  const s = await api("api/status");
  const b = $("audit-banner");
  b.hidden = !(S.mode === "audit" || s.audit_reached);
  b.innerHTML = s.audit_reached
    ? `Audit reached ${s.n_audit} decisions (≥ ${s.audit_min}): re-run the verdicts with the audit's class prior: <code>${esc(s.command)}</code>`
    : `Audit: ${s.n_audit} of ${s.audit_min} decisions needed before the verdicts use the audit's class prior.`;
}

function keys() {
  const cls = S.classes.map((c, i) => `<button data-key="${i + 1}"><kbd>${i + 1}</kbd> ${esc(c)}</button>`).join("");
  $("keys").innerHTML = cls +
    ` <button data-key="k"><kbd>k</kbd> keep</button> <button data-key="d"><kbd>d</kbd> drop</button>` +
    ` <button data-key="Enter"><kbd>Enter</kbd> accept suggestion</button> <button data-key="s"><kbd>s</kbd> skip</button>` +
    ` <button data-key="u"><kbd>u</kbd> undo</button> <button data-key="ArrowLeft"><kbd>←</kbd> previous</button>` +
    ` <button data-key="ArrowRight"><kbd>→</kbd> next</button>`;
}

function handle(key) {
  const n = parseInt(key, 10);
  if (n >= 1 && n <= S.classes.length) return enqueue(() => decide("relabel", S.classes[n - 1]));
  switch (key) {
    case "k": return enqueue(() => decide("keep"));
    case "d": return enqueue(() => decide("drop"));
    case "Enter": return enqueue(() => decide("relabel"));
    case "u": case "z": return enqueue(undo);
    case "s": case "ArrowRight": case "n": case "j": return enqueue(() => move(1));
    case "ArrowLeft": case "p": case "h": return enqueue(() => move(-1));
  }
  return null;
}

document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
  if (handle(e.key) !== null) e.preventDefault();
});
document.addEventListener("click", (e) => {
  const b = e.target.closest("[data-key]");
  if (b) { handle(b.dataset.key); b.blur(); return; }
  const p = e.target.closest(".prob");
  if (p) enqueue(() => decide("relabel", p.dataset.class));
});
for (const sel of document.querySelectorAll("[data-filter]")) {
  sel.addEventListener("change", () => { S.filters[sel.dataset.filter] = sel.value; sel.blur(); enqueue(() => loadQueue()); });
}
$("reviewer").addEventListener("keydown", (e) => { if (e.key === "Enter") e.target.blur(); });

async function init() {
  const cfg = await api("api/config");
  S.classes = cfg.classes; S.modes = cfg.modes;
  if (!(S.mode in S.modes) || (S.mode === "audit" && !S.modes.audit)) S.mode = "review";
  $("reviewer").value = localStorage.getItem("ferclean-reviewer") || cfg.reviewer || "";
  $("modes").innerHTML = Object.entries(S.modes).filter(([m, n]) => m === "review" || n)
    .map(([m, n]) => `<button data-mode="${m}" class="${m === S.mode ? "active" : ""}">${m === "review" ? "review queue" : "audit"} (${n})</button>`).join("");
  for (const b of document.querySelectorAll("[data-mode]")) {
    b.addEventListener("click", () => {
      S.mode = b.dataset.mode; params.set("mode", S.mode); history.replaceState(null, "", "?" + params.toString());
      document.querySelectorAll("[data-mode]").forEach((x) => x.classList.toggle("active", x === b)); b.blur();
      enqueue(() => loadQueue()); statusCheck();
    });
  }
  keys();
  await loadQueue();
  await statusCheck();
  document.body.dataset.ready = "1";
}
enqueue(init);
