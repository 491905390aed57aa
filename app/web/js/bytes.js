// The Bytes panel: a text's exact byte-level log-probabilities (POST /v1/bytes; Phan et al. 2024, "Exact
// Byte-Level Probabilities from Tokenized Language Models"), one chip per byte coloured by its log p, and, with a
// second model, both models byte by byte (their tokenizers may differ) with the difference in the hover.
import { $, api, busy, esc, setStatus, shown } from "./api.js";
import { attachTooltip, formatValue, gradientLegend, heat } from "./tokens.js";

const state = { p: null, q: null, request: null };

// Chips for a byte answer: a character's first byte shows it, its continuation bytes a dot.
function renderBytes(box, answer, colour) {
  box.textContent = "";
  for (const row of answer.bytes) {
    const span = document.createElement("span");
    span.className = "tok byte" + (row.text === "" ? " cont" : "");
    span.dataset.index = row.offset;
    span.dataset.value = String(row.logprob);
    span.textContent = row.text === "" ? "·" : row.text.replace(/\n/g, "⏎");
    const c = colour(row.offset);
    if (c) span.style.background = c;
    box.appendChild(span);
    if (row.text === "\n") box.appendChild(document.createElement("br"));
  }
}

function colourOf(answer) {
  return (i) => (answer.bytes[i].logprob === null ? heat(1) : heat(-answer.bytes[i].logprob / Math.log(1000)));
}

function byteLine(name, row) {
  return `<div>${esc(name)}: log p ${formatValue(row.logprob)} (p ${row.logprob === null ? 0 : (100 * Math.exp(row.logprob)).toFixed(2)}%)</div>`;
}

function tooltip(i) {
  const row = state.p.bytes[i];
  const hex = row.byte.toString(16).padStart(2, "0");
  let html = `<div>byte ${i}: 0x${hex}${row.text ? ` begins ${shown(row.text)}` : " (continues a character)"}</div>` + byteLine(state.p.model, row);
  if (state.q) {
    const other = state.q.bytes[i];
    html += byteLine(state.q.model, other);
    if (row.logprob !== null && other.logprob !== null) html += `<div>difference ${formatValue(row.logprob - other.logprob)} nats</div>`;
  }
  return html;
}

function summary(answers) {
  const rows = answers.map((a) => `<tr><td>${esc(a.model)}</td><td class="value">${formatValue(a.logprob)}</td>` +
    `<td class="value">${a.logprob === null ? "—" : formatValue(-a.logprob / a.n_bytes / Math.log(2))}</td>` +
    `<td class="value">${a.states}</td><td>${esc(a.record_id)}</td></tr>`).join("");
  return `<h2>Byte-level likelihood (${answers[0].n_bytes} bytes, ${esc(answers[0].mode)} covers)</h2>` +
    `<table id="bytes-summary-table" class="summary"><thead><tr><th>model</th><th>log p (nats)</th><th>bits per byte</th>` +
    `<th>cover states</th><th>record</th></tr></thead><tbody>${rows}</tbody></table>`;
}

// Clear the panel and drop requests still running (their worker jobs are cancelled when the requests go).
export function clearBytes() {
  if (state.request) { state.request.abort(); setStatus("bytes-status", "stopped: the model changed"); }
  state.request = null;
  state.p = null; state.q = null;
  for (const id of ["bytes-p", "bytes-q", "bytes-summary", "bytes-legend"]) $(id).textContent = "";
  $("bytes-q-side").hidden = true;
}

async function run() {
  clearBytes();
  const text = $("bytes-text").value;
  const models = [$("model").value, $("bytes-reference").value].filter(Boolean);
  setStatus("bytes-status", "scoring byte by byte…");
  const request = state.request = new AbortController();
  const [p, q] = await Promise.all(models.map((model) => api("/v1/bytes", { model, text }, request.signal)));
  state.request = null;
  state.p = p; state.q = q || null;
  gradientLegend("bytes-legend", "p = 1", "p ≤ 0.001");
  $("bytes-p-title").textContent = p.model;
  renderBytes($("bytes-p"), p, colourOf(p));
  if (q) {
    $("bytes-q-side").hidden = false;
    $("bytes-q-title").textContent = q.model;
    renderBytes($("bytes-q"), q, colourOf(q));
  }
  $("bytes-summary").innerHTML = summary(q ? [p, q] : [p]);
  setStatus("bytes-status", `${p.n_bytes} bytes${p.cached ? " (cached)" : ""} · record ${p.record_id}`);
}

export function setByteModels(models) {
  const current = $("bytes-reference").value;
  $("bytes-reference").innerHTML = `<option value="">none</option>` + models.filter((m) => m.id !== $("model").value)
    .map((m) => `<option value="${esc(m.id)}">${esc(m.id)}</option>`).join("");
  if ([...$("bytes-reference").options].some((o) => o.value === current)) $("bytes-reference").value = current;
}

export function initBytes() {
  $("bytes-run").addEventListener("click", () => busy("panel-bytes", "bytes-status", run));
  attachTooltip($("bytes-p"), tooltip);
  attachTooltip($("bytes-q"), tooltip);
  clearBytes();
}
