// The Analyse panel: score a text or a chat, generate from it, or open a stored record; colour its tokens,
// plot them, summarise the sequence (uncertainty, detection, membership), apply a trained head, export the
// per-token table or the full rows, and colour a clicked token's context by its attribution.
import { $, api, busy, download, esc, setStatus } from "./api.js";
import { offerRows, hideRows } from "./rows.js";
import { FIRST_TARGET, attribute, attributionColour, attributionLegend, attributionLine, attributionSummary } from "./attribution.js";
import { bars, clear, lines } from "./plots.js";
import {
  GLTR, alternatives, attachTooltip, gltrBucket, gltrLegend, gradientLegend, heat, renderTokens, summaryTable,
} from "./tokens.js";

const UNCERTAINTY = ["perplexity", "geometric_mean_prob", "arithmetic_mean_prob", "mean_entropy", "max_entropy", "mean_kurtosis", "entropy_trend"];
const MEMBERSHIP = ["min_k", "min_k_plus_plus", "dc_pdd", "min_k_zscore"];
const Z_TOP = 3;  // Min-K%++'s per-token z-score is coloured from +3 (green) to -3 (red)
const state = {
  record: null, tokens: [], headWeights: null, headName: null, headNote: null, heads: [], attribution: null, asked: 0, zscores: null,
};
const ROLES = ["system", "user", "assistant", "developer", "tool"];

export function topK() {
  const k = Math.round(Number($("topk").value));
  const max = Number($("topk").max) || 20;
  return Math.max(1, Math.min(Number.isFinite(k) ? k : 10, max));
}

// ---- chat input ----
function addMessage(role, content) {
  const row = document.createElement("div");
  row.className = "msg";
  row.innerHTML = `<select class="role">${ROLES.map((r) => `<option${r === role ? " selected" : ""}>${r}</option>`).join("")}</select>` +
    `<textarea class="content"></textarea><button type="button" title="remove this message">×</button>`;
  row.querySelector("textarea").value = content;
  row.querySelector("button").addEventListener("click", () => row.remove());
  $("chat").appendChild(row);
}

export function messages() {
  return [...$("chat").querySelectorAll(".msg")].map((row) => ({
    role: row.querySelector(".role").value, content: row.querySelector(".content").value,
  }));
}

function setMode() {
  const mode = $("input-mode").value;
  for (const el of document.querySelectorAll("#panel-analyse [data-mode]")) el.hidden = el.dataset.mode !== mode;
  for (const b of document.querySelectorAll("#panel-analyse [data-modes]")) b.hidden = !b.dataset.modes.split(" ").includes(mode);
}

// ---- colours ----
function colour(i) {
  if (state.attribution) return attributionColour(state.attribution, i);
  const token = state.tokens[i];
  if (token.logprob === null) return null;
  const metric = $("metric").value;
  if (metric === "head") {  // from the least weight to the most; a gate that weighs all alike colours nothing
    const weights = state.headWeights;
    if (!weights || weights[i] === undefined || uniform(weights)) return null;
    const values = Object.values(weights);
    const lo = Math.min(...values), hi = Math.max(...values);
    return heat((weights[i] - lo) / (hi - lo));
  }
  if (metric === "membership") {  // Min-K%++'s z-score: low (red) is what Min-K%++ averages, the least member-like
    const z = state.zscores ? state.zscores[i] : null;
    return z === null || z === undefined ? null : heat((Z_TOP - z) / (2 * Z_TOP));
  }
  if (metric === "prob") return heat(-token.logprob / Math.log(1000));  // log scale: p = 1 .. p <= 0.001
  if (metric === "entropy") return heat(token.entropy / Math.max(state.maxEntropy, 1e-9));
  if (metric === "rank") return heat(Math.log10(token.rank) / 3);
  return GLTR[gltrBucket(token.rank)][1];
}

function uniform(weights) {
  const values = Object.values(weights);
  const lo = Math.min(...values), hi = Math.max(...values);
  return hi - lo <= 1e-6 * Math.max(Math.abs(hi), 1e-12);
}

function legend() {
  if (state.attribution) { attributionLegend("legend", state.attribution); return; }
  const metric = $("metric").value;
  if (metric === "gltr") { gltrLegend("legend"); return; }
  if (metric === "head" && (state.headNote || (state.headWeights && uniform(state.headWeights)))) {  // say why nothing is coloured
    $("legend").textContent = state.headNote || `${state.headName} weighs every token the same here: no token stands out, so none is coloured`;
    return;
  }
  const [lo, hi] = { prob: ["p = 1", "p ≤ 0.001"], entropy: ["certain", "most uncertain here"], rank: ["rank 1", "rank ≥ 1000"],
    membership: [`Min-K%++ z ≥ +${Z_TOP}: member-like`, `z ≤ −${Z_TOP}: surprising (what Min-K%++ averages)`],
    head: [`${state.headName || "head (pick one)"}: little weight`, "most weight"] }[metric];
  gradientLegend("legend", lo, hi);
}

function render() {
  legend();
  state.maxEntropy = Math.max(0, ...state.tokens.filter((t) => t.entropy !== null).map((t) => t.entropy));
  const boundary = state.record && state.record.n_prompt !== null ? state.record.n_prompt : null;
  const a = state.attribution;
  renderTokens($("tokens"), state.tokens, {
    colour, boundary, kind: a ? (i) => (i === a.position ? "target" : i > a.position ? "after" : "") : (i) => (state.tokens[i].logprob === null ? "first" : ""),
    value: a ? (i) => a.importance[i] : $("metric").value === "membership" && state.zscores ? (i) => state.zscores[i] : null,
  });
}

function tooltip(i) {
  const token = state.tokens[i];
  const attribution = state.attribution ? attributionLine(state.attribution, i) : "";
  if (token.logprob === null) return attribution + "first token: nothing predicted it";
  const weight = state.headWeights && state.headWeights[i] !== undefined ? ` · ${esc(state.headName)} ${state.headWeights[i].toPrecision(3)}` : "";
  const z = state.zscores && state.zscores[i] !== undefined && state.zscores[i] !== null ? ` · Min-K%++ z ${state.zscores[i].toFixed(3)}` : "";
  return attribution + `<div>${esc(JSON.stringify(token.text))}${token.special ? " (special token)" : ""} · p ${(100 * Math.exp(token.logprob)).toFixed(2)}% · rank ${token.rank} · H ${token.entropy.toFixed(2)}${weight}${z}</div>` +
    `<div class="muted">top alternatives</div>${alternatives(token)}`;
}

// ---- results ----
export function clearResults() {
  state.record = null; state.tokens = []; state.headWeights = null; state.headName = null; state.headNote = null; state.zscores = null;
  dropAttribution();
  hideRows();
  $("tokens").textContent = "";
  $("summary").textContent = "";
  $("export").hidden = true;
  for (const id of ["plot-line", "plot-ranks", "plot-detect"]) clear(id);
  legend();
}

function focusToken(index) {
  for (const el of document.querySelectorAll("#tokens .tok.focus")) el.classList.remove("focus");
  if (index === null || index === undefined) return;
  const el = document.querySelector(`#tokens .tok[data-index="${index + 1}"]`);  // point i is position i + 1
  if (el) el.classList.add("focus");
}

function plotAlongText(blocks, blockSize) {
  const predicted = state.tokens.slice(1);
  const positions = predicted.map((_, i) => i + 1);
  const series = [
    { label: "log p(token)", values: predicted.map((t) => t.logprob), scale: "lp", colour: "#2c5d8f" },
    { label: "entropy", values: predicted.map((t) => t.entropy), scale: "H", colour: "#c0392b" },
  ];
  if (blocks && blocks.length) {
    series.push({ label: `entropy, mean per ${blockSize}-token block`, values: positions.map((_, i) => blocks[Math.floor(i / blockSize)]),
      scale: "H", colour: "#e67e22", dash: [5, 4], stepped: true });
  }
  lines("plot-line", positions, series, { lp: "log p (nats)", H: "entropy (nats)" }, focusToken);
  const counts = GLTR.map(() => 0);
  for (const t of predicted) counts[gltrBucket(t.rank)] += 1;
  bars("plot-ranks", GLTR.map(([, , name]) => name),
    GLTR.map(([, c, name], b) => ({ label: name, colour: c.slice(0, 7), values: counts.map((n, j) => (j === b ? n : null)) })), "tokens");
}

function plotDetection(detect) {
  const decisions = Object.entries(detect.decisions || {}).filter(([name]) => detect.sequence[name] !== null && detect.sequence[name] !== undefined);
  if (!decisions.length) { clear("plot-detect"); return; }
  const margins = decisions.map(([name, d]) => d.sign * detect.sequence[name] - d.threshold);
  $("plot-detect-caption").textContent = `detection scores against the thresholds of the calibration you chose, ` +
    `${$("calibration").selectedOptions[0].textContent}: sign·score − threshold (above the dashed line: judged machine-written)`;
  bars("plot-detect", decisions.map(([name]) => name), [
    { label: "machine", colour: "#c0392b", values: margins.map((m) => (m > 0 ? m : null)) },
    { label: "human", colour: "#27ae60", values: margins.map((m) => (m > 0 ? null : m)) },
  ], "margin", { zero: true });
}

async function headSection(recordId) {
  state.headWeights = null; state.headName = null; state.headNote = null;
  const head = state.heads.find((h) => h.id === $("head").value);
  if (!head) return "";
  const answer = await api(`/v1/analysis/${head.family}`, { record_id: recordId, methods: [], heads: [head.id] });
  const score = answer.sequence[head.name];
  const decision = (answer.decisions || {})[head.name];
  if (answer.tokens.length && head.name in answer.tokens[0].values) {
    state.headName = head.name;
    state.headWeights = Object.fromEntries(answer.tokens.map((t) => [t.position, t.values[head.name]]));
  } else {
    state.headNote = `${head.name} (${head.kind}) scores the whole text and gives no per-token weights, so no token is coloured`;
  }
  const auroc = head.metrics && head.metrics.auroc !== undefined ? `, CV AUROC ${head.metrics.auroc.toFixed(3)}` : "";
  return `<h2>Trained head</h2><table id="heads-table" class="summary"><tr><td>${esc(head.name)} (${esc(head.kind)}, ${esc(head.family)}${auroc})</td>` +
    `<td class="value">${Number(score).toPrecision(4)}${decision ? (decision.positive ? " · label 1" : " · label 0") : ""}</td></tr></table>`;
}

// Min-K%, Min-K%++, DC-PDD and the z-scores; ReCaLL after the non-member prefix, Con-ReCall with the member one too.
function membershipRequest(recordId) {
  const prefix = $("prefix").value, memberPrefix = $("member-prefix").value;
  const body = { record_id: recordId, methods: [...MEMBERSHIP] };
  if (prefix) { body.prefix = prefix; body.methods.push("recall"); }
  if (prefix && memberPrefix) { body.member_prefix = memberPrefix; body.methods.push("con_recall"); }
  return body;
}

async function analyse(recordId) {
  const n = state.tokens.length - 1;
  const blockSize = Math.max(2, Math.round(n / 8));
  const calibration = $("calibration").value;
  const [u, d, m, heads] = await Promise.all([
    api("/v1/analysis/uncertainty", { record_id: recordId, methods: UNCERTAINTY, params: { entropy_trend: { block_size: blockSize } } }),
    api("/v1/analysis/detect", calibration ? { record_id: recordId, calibration_id: calibration } : { record_id: recordId }),
    api("/v1/analysis/membership", membershipRequest(recordId)),
    headSection(recordId),
  ]);
  if (!state.record || state.record.record_id !== recordId) return;  // a newer request replaced this one
  const notes = Object.fromEntries(Object.entries(d.decisions || {}).map(([name, dec]) => [name, dec.machine ? "machine" : "human"]));
  state.zscores = Object.fromEntries(m.tokens.map((t) => [t.position, t.values.min_k_zscore]));
  $("summary").innerHTML = "<h2>Sequence summary</h2>" + await summaryTable("summary-table", { ...u.sequence, ...d.sequence }, notes) +
    "<h2>Membership (was the text in the training data?)</h2>" + await summaryTable("membership-table", m.sequence) + heads;
  plotAlongText(u.details["entropy_trend.blocks"], blockSize);
  plotDetection(d);
  if (["head", "membership"].includes($("metric").value)) render();
}

async function show(record, message) {
  dropAttribution();
  state.record = record;
  state.tokens = record.tokens;
  render();
  $("export").hidden = false;
  setStatus("status", message);
  await Promise.all([analyse(record.record_id), offerRows(record.record_id)]);
}

async function run(kind) {
  clearResults();
  const model = $("model").value;
  const k = topK();
  const input = $("input-mode").value === "chat" ? { messages: messages() } : null;
  if (kind === "open") {
    const id = $("record-id").value.trim();
    setStatus("status", "opening…");
    const record = await api(`/v1/records/${encodeURIComponent(id)}?top_logprobs=${k}`);
    await show(record, `record ${record.record_id} · ${record.model} · ${record.kind} · ${record.n_tokens} tokens`);
  } else if (kind === "score") {
    setStatus("status", "scoring…");
    const body = await api("/v1/score", { model, ...(input || { text: $("text").value }), top_logprobs: k });
    const record = { record_id: body.record_id, model: body.model, n_prompt: null, tokens: body.tokens };
    await show(record, `${body.n_tokens} tokens${body.cached ? " (cached)" : ""} · record ${body.record_id}`);
  } else {
    setStatus("status", "generating…");
    const maxTokens = Math.max(1, Math.round(Number($("max-tokens").value)) || 48);
    const body = await api("/v1/generate", { model, ...(input || { prompt: $("text").value }), max_tokens: maxTokens, temperature: 0.7, top_logprobs: k });
    const record = await api(`/v1/records/${body.record_id}?top_logprobs=${k}`);
    // text mode gives a chat model raw text to continue, not a turn to answer: it often just ends the turn
    const chatModel = $("model").selectedOptions[0]?.dataset.chat === "true";
    const ended = record.tokens.slice(record.n_prompt).every((t) => t.special);
    const hint = !input && chatModel ? ` · ${ended ? "it only ended the turn: " : ""}${model} is a chat model and text mode continues ` +
      "raw text; choose Input: chat for an answer" : "";
    await show(record, `generated ${body.usage.completion_tokens} tokens (${body.finish_reason})${hint} · record ${body.record_id}`);
  }
}

// ---- attribution: a second colouring for a clicked target token ----
function dropAttribution() {
  state.asked += 1;  // an answer still on its way is no longer wanted
  state.attribution = null;
  $("attr").hidden = true;
  setStatus("attr-status", "");
}

function clearAttribution() {
  const shown = state.attribution !== null;
  dropAttribution();
  if (shown && state.record) render();
}

async function attributeToken(position) {
  if (state.attribution && state.attribution.position === position) { clearAttribution(); return; }
  const record = state.record;
  const asked = ++state.asked;
  $("attr").hidden = false;
  if (position < FIRST_TARGET) {
    clearAttribution();
    $("attr").hidden = false;
    setStatus("attr-status", `token ${position} has too little context: click a token at position ${FIRST_TARGET} or later`, true);
    return;
  }
  setStatus("attr-status", `attributing token ${position} (${$("attr-method").value})…`);
  try {
    const a = await attribute(record.record_id, position);
    if (asked !== state.asked || state.record !== record) return;  // cleared, or a newer click or record
    state.attribution = a;
    setStatus("attr-status", attributionSummary(a));
  } catch (err) {
    if (asked !== state.asked || state.record !== record) return;
    state.attribution = null;
    setStatus("attr-status", `attribution failed: ${err.message || err}`, true);
  }
  render();
}

function clickToken(event) {
  const target = event.target.closest(".tok");
  if (!target || !state.record) return;
  attributeToken(Number(target.dataset.index));
}

// ---- export ----
const COLUMNS = ["position", "id", "text", "special", "logprob", "prob", "rank", "entropy", "top_alternatives"];

function rows() {
  return state.tokens.map((t, i) => ({
    position: i, id: t.id, text: t.text, special: Boolean(t.special), logprob: t.logprob,
    prob: t.logprob === null ? null : Math.exp(t.logprob), rank: t.rank, entropy: t.entropy, top_logprobs: t.top_logprobs,
  }));
}

function csvCell(value) {
  if (value === null || value === undefined) return "";
  const s = String(value);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function exportCsv() {
  const lines = [COLUMNS.join(",")];
  for (const r of rows()) {
    const alts = r.top_logprobs ? JSON.stringify(r.top_logprobs.map((a) => [a.text, a.logprob])) : "";
    lines.push([r.position, r.id, r.text, r.special, r.logprob, r.prob, r.rank, r.entropy, alts].map(csvCell).join(","));
  }
  download(`${state.record.record_id}.csv`, "text/csv", lines.join("\r\n") + "\r\n");
}

function exportJson() {
  const { record_id: recordId, model, n_prompt: nPrompt } = state.record;
  download(`${recordId}.json`, "application/json", JSON.stringify({ record_id: recordId, model, n_prompt: nPrompt, tokens: rows() }, null, 1));
}

// ---- heads and calibrations for the chosen model ----
// Nothing is applied that the user did not pick: both lists start at "none" (on a shared or anonymous service the
// newest calibration may be someone else's), and each entry says who made it, when, and on how many examples.
async function ownMaker() {
  const key = $("apikey").value.trim();
  if (!key || !(window.crypto && crypto.subtle)) return null;  // subtle crypto: https or localhost only
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key)));
  return "key " + [...digest.slice(0, 4)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function provenance(item, examples, mine) {
  const by = !item.created_by ? "maker unknown" : item.created_by === mine ? "made by you"
    : item.created_by === "anonymous" ? "made by an anonymous caller" : `made by ${item.created_by}`;
  const when = new Date(item.created_at * 1000).toISOString().slice(0, 16).replace("T", " ");
  return `${by}, ${when} UTC, ${examples === null ? "?" : examples} examples`;
}

export async function loadChoices() {
  const model = $("model").value;
  const [heads, calibrations, mine] = await Promise.all([
    api("/v1/heads").then((r) => r.data).catch(() => []),
    api("/v1/calibrations").then((r) => r.data).catch(() => []),
    ownMaker().catch(() => null),
  ]);
  state.heads = heads.filter((h) => h.status === "succeeded" && h.model === model && h.kind !== "lens");  // lenses: the Lens tab
  const head = $("head").value;
  $("head").innerHTML = `<option value="">none</option>` + state.heads.map((h) => {
    const n = Object.values(h.examples || {}).reduce((a, b) => a + b, 0);
    return `<option value="${esc(h.id)}">${esc(h.name)} (${esc(h.kind)}, ${esc(h.family)}; ${esc(provenance(h, n, mine))})</option>`;
  }).join("");
  if (state.heads.some((h) => h.id === head)) $("head").value = head;
  const usable = calibrations.filter((c) => c.model === model && c.reference_model === null);
  const calibration = $("calibration").value;
  $("calibration").innerHTML = `<option value="">none</option>` + usable.map((c) => {
    const n = c.n_texts ?? null;
    return `<option value="${esc(c.calibration_id)}">${esc(c.calibration_id)} (FPR ${c.target_fpr}; ${esc(provenance(c, n, mine))})</option>`;
  }).join("");
  if (usable.some((c) => c.calibration_id === calibration)) $("calibration").value = calibration;  // kept, never picked
}

export function initAnalyse() {
  addMessage("system", "You are a helpful assistant.");
  addMessage("user", "What is the capital of France?");
  addMessage("assistant", "The capital of France is Paris.");
  $("chat-add").addEventListener("click", () => addMessage("user", ""));
  $("input-mode").addEventListener("change", setMode);
  setMode();
  for (const kind of ["score", "generate", "open"]) $(kind).addEventListener("click", () => busy("panel-analyse", "status", () => run(kind)));
  $("metric").addEventListener("change", () => { if (state.record) render(); else legend(); });
  for (const id of ["head", "calibration"]) {
    $(id).addEventListener("change", () => { if (state.record) busy("panel-analyse", "status", () => analyse(state.record.record_id)); });
  }
  $("export-csv").addEventListener("click", exportCsv);
  $("export-json").addEventListener("click", exportJson);
  attachTooltip($("tokens"), tooltip);
  $("tokens").addEventListener("click", clickToken);
  $("attr-clear").addEventListener("click", clearAttribution);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape" && state.record) clearAttribution(); });
  legend();
}
