// The Compare panel: the same text under two models (same tokenizer) or under one model with and without a
// context, side by side; each token coloured by KL, shift rank or confidence gain from POST
// /v1/analysis/compare, with both distributions' top alternatives in the hover.
import { $, api, busy, esc, setStatus } from "./api.js";
import { clear, lines } from "./plots.js";
import { alternatives, attachTooltip, formatValue, gradientLegend, heat, renderTokens, summaryTable } from "./tokens.js";
import { topK } from "./analyse.js";

const TOKEN_METHODS = ["kl", "reverse_kl", "js", "shift_rank", "confidence_gain"];
const SEQUENCE_METHODS = ["mean_kl", "mean_js", "urial_shift", "mean_confidence_gain"];
const state = { answer: null, p: null, q: null, offset: 0, values: new Map() };

function setMode() {
  const mode = $("cmp-mode").value;
  for (const el of document.querySelectorAll("#panel-compare [data-cmp]")) el.hidden = el.dataset.cmp !== mode;
}

function scale(metric) {  // the value that maps to the reddest colour, and the legend's ends
  const values = [...state.values.values()].map((v) => v[metric]).filter((v) => v !== null && v !== undefined);
  if (metric === "shift_rank") return { map: (v) => Math.log10(v) / 3, lo: "rank 1 (unshifted)", hi: "rank ≥ 1000 under q" };
  if (metric === "confidence_gain") {
    const top = Math.max(1e-9, ...values.map(Math.abs));
    return { map: (v) => 0.5 - v / (2 * top), lo: `context removed ${top.toFixed(2)} nats`, hi: `context added ${top.toFixed(2)} nats` };
  }
  const top = Math.max(1e-9, ...values);
  return { map: (v) => v / top, lo: "0 (p = q)", hi: `${top.toFixed(3)} nats` };
}

function render() {
  if (!state.answer) return;
  const metric = $("cmp-metric").value;
  const { map, lo, hi } = scale(metric);
  gradientLegend("cmp-legend", lo, hi);
  const side = (box, tokens, toPosition) => renderTokens($(box), tokens, {
    colour: (i) => {
      const v = state.values.get(toPosition(i));
      return v && v[metric] !== null && v[metric] !== undefined ? heat(map(v[metric])) : null;
    },
    kind: (i) => (state.values.has(toPosition(i)) ? "" : toPosition(i) < 1 && state.offset > 0 ? "ctx" : "first"),
    value: (i) => { const v = state.values.get(toPosition(i)); return v ? v[metric] : undefined; },
  });
  side("cmp-p", state.p.tokens, (i) => i - state.offset);
  side("cmp-q", state.q.tokens, (i) => i);
}

function tooltip(position) {
  const values = state.values.get(position);
  if (!values) return position < 1 && state.offset > 0 ? "the context: only p sees it" : "first token: nothing predicted it";
  const p = state.p.tokens[position + state.offset];
  const q = state.q.tokens[position];
  const numbers = TOKEN_METHODS.filter((m) => m in values).map((m) => `${m} ${formatValue(values[m])}`).join(" · ");
  const side = (name, token) => `<div><div class="muted">${esc(name)}: p(token) ${(100 * Math.exp(token.logprob)).toFixed(2)}%, rank ${token.rank}</div>${alternatives(token)}</div>`;
  return `<div>${esc(JSON.stringify(q.text))} at position ${position}</div><div>${numbers}</div>` +
    `<div class="pair">${side("p " + state.pName, p)}${side("q " + state.qName, q)}</div>`;
}

function clearResults() {
  state.answer = null;
  state.values = new Map();
  for (const id of ["cmp-p", "cmp-q", "cmp-summary", "cmp-legend"]) $(id).textContent = "";
  clear("cmp-plot");
}

async function run() {
  clearResults();
  const model = $("model").value;
  const mode = $("cmp-mode").value;
  const body = { model, text: $("cmp-text").value, methods: [...TOKEN_METHODS, ...SEQUENCE_METHODS] };
  if (mode === "models") body.reference_model = $("cmp-reference").value;
  else body.context = $("cmp-context").value;
  setStatus("cmp-status", "comparing…");
  const answer = await api("/v1/analysis/compare", body);
  const k = topK();
  const [p, q] = await Promise.all([answer.record_id, answer.reference_record_id].map((id) => api(`/v1/records/${id}?top_logprobs=${k}`)));
  state.answer = answer; state.p = p; state.q = q;
  state.offset = p.n_tokens - q.n_tokens;  // p's position of q's token t is t + offset (the context's tokens)
  state.values = new Map(answer.tokens.map((t) => [t.position, t.values]));
  state.pName = mode === "models" ? answer.model : `${answer.model} with the context`;
  state.qName = mode === "models" ? answer.reference_model : `${answer.model} without it`;
  $("cmp-p-title").textContent = "p: " + state.pName;
  $("cmp-q-title").textContent = "q: " + state.qName;
  render();
  const positions = answer.tokens.map((t) => t.position);
  const series = ["kl", "reverse_kl", "js"].map((m, i) => ({ label: m, values: answer.tokens.map((t) => t.values[m]), scale: "nats", colour: ["#c0392b", "#8e44ad", "#2c5d8f"][i] }));
  if (mode === "context") series.push({ label: "confidence_gain", values: answer.tokens.map((t) => t.values.confidence_gain), scale: "nats", colour: "#27ae60", dash: [5, 4] });
  $("cmp-plot-caption").textContent = "divergence between p and q at each position";
  lines("cmp-plot", positions, series, { nats: "nats" });
  const sequence = Object.fromEntries(Object.entries(answer.sequence).filter(([name]) => mode === "context" || !name.includes("confidence")));
  $("cmp-summary").innerHTML = "<h2>Sequence summary</h2>" + await summaryTable("cmp-summary-table", sequence);
  setStatus("cmp-status", `${answer.n_positions} positions · p record ${answer.record_id} · q record ${answer.reference_record_id}`);
}

export function loadReferences(models) {
  const current = $("cmp-reference").value;
  const others = models.filter((m) => m.id !== $("model").value);
  $("cmp-reference").innerHTML = [...others, ...models.filter((m) => m.id === $("model").value)]
    .map((m) => `<option value="${esc(m.id)}">${esc(m.id)}</option>`).join("");
  if ([...$("cmp-reference").options].some((o) => o.value === current)) $("cmp-reference").value = current;
}

export function initCompare() {
  $("cmp-mode").addEventListener("change", setMode);
  setMode();
  $("cmp-run").addEventListener("click", () => busy("panel-compare", "cmp-status", run));
  $("cmp-metric").addEventListener("change", render);
  attachTooltip($("cmp-p"), (i) => tooltip(i - state.offset));
  attachTooltip($("cmp-q"), tooltip);
}
