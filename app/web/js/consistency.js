// The Consistency panel: POST /v1/analysis/consistency for a question asked as a chat or a raw prompt; shows the
// judged answer, the n samples, their similarity matrix as a heatmap (each cell holds the API's value in
// data-value) and each consistency method's value (higher: more uncertain).
import { $, api, busy, esc, setStatus } from "./api.js";
import { formatValue, gradientLegend, heat, methods, summaryTable } from "./tokens.js";

const state = { request: null };

function numberOf(id, fallback) {
  const v = Number($(id).value);
  return $(id).value.trim() === "" || !Number.isFinite(v) ? fallback : v;
}

export function consistencyRequest() {
  const question = $("cons-question").value;
  const body = {
    model: $("model").value,
    ...($("cons-mode").value === "chat" ? { messages: [{ role: "user", content: question }] } : { prompt: question }),
    n: Math.round(numberOf("cons-n", 5)),
    temperature: numberOf("cons-temp", 1),
    max_tokens: Math.round(numberOf("cons-max", 24)),
    similarity: $("cons-similarity").value,
  };
  if ($("cons-seed").value.trim() !== "") body.seed = Math.round(numberOf("cons-seed", 0));
  if ($("cons-answer").value.trim()) body.answer = $("cons-answer").value;
  const ticked = [...$("cons-methods").querySelectorAll("input:checked")].map((c) => c.value);
  if (ticked.length) body.methods = ticked;
  return body;
}

async function loadMethodChoices() {
  if ($("cons-methods").childElementCount) return;
  const names = Object.values(await methods()).filter((m) => m.families.includes("consistency")).map((m) => m.name);
  $("cons-methods").innerHTML = names.map((name) =>
    `<label class="check"><input type="checkbox" value="${esc(name)}"> ${esc(name)}</label>`).join("");
}

function answerBox(answer) {
  const a = answer.answer;
  const how = a.greedy ? "the greedy answer (generated)" : "the answer you gave";
  return `<h2>Judged answer</h2><p id="cons-judged" class="answer">${esc(a.text)}</p>` +
    `<p class="note">${how} · log-likelihood <span id="cons-ll">${formatValue(a.log_likelihood)}</span>` +
    ` · P(True) <span id="cons-ptrue">${formatValue(a.p_true)}</span> · record ${esc(a.record_id)}</p>`;
}

function samplesTable(answer) {
  const rows = answer.samples.map((s) => {
    const what = s.error ? `<td class="error" colspan="2">${esc(s.error.code)}: ${esc(s.error.message)}</td>` :
      `<td class="text">${esc(s.text)}</td><td class="value">${formatValue(s.log_likelihood)}</td>`;
    return `<tr data-index="${s.index}"><td>${s.index}</td><td>${s.seed ?? "—"}</td>${what}</tr>`;
  }).join("");
  return `<thead><tr><th>sample</th><th>seed</th><th>text</th><th>log-likelihood</th></tr></thead><tbody>${rows}</tbody>`;
}

// Rows: the judged answer, then each sample that succeeded; columns: those samples. 1 (alike) is green.
function matrix(answer) {
  const good = answer.samples.filter((s) => !s.error);
  const cell = (v, i, j) => `<td class="cell" data-i="${i}" data-j="${j}" data-value="${esc(String(v))}" title="${esc(String(v))}">${v.toFixed(2)}</td>`;
  const head = `<tr><th></th>${good.map((s) => `<th title="${esc(s.text)}">#${s.index}</th>`).join("")}</tr>`;
  const first = `<tr data-row="answer"><th title="${esc(answer.answer.text)}">answer</th>${answer.answer.similarity.map((v, j) => cell(v, "answer", j)).join("")}</tr>`;
  const rows = answer.similarity.map((row, i) =>
    `<tr data-row="${i}"><th title="${esc(good[i].text)}">#${good[i].index}</th>${row.map((v, j) => cell(v, i, j)).join("")}</tr>`).join("");
  $("cons-matrix").innerHTML = `<thead>${head}</thead><tbody>${first}${rows}</tbody>`;
  for (const td of $("cons-matrix").querySelectorAll("td.cell")) td.style.background = heat(1 - Number(td.dataset.value));
  gradientLegend("cons-legend", `alike (1, ${answer.similarity_kind})`, "unlike (0)");
}

// Clear the results and drop a request still running (its jobs are cancelled when the request goes).
export function clearConsistency() {
  if (state.request) { state.request.abort(); setStatus("cons-status", "stopped: the model changed"); }
  state.request = null;
  for (const id of ["cons-answer-box", "cons-samples", "cons-legend", "cons-matrix", "cons-summary"]) $(id).textContent = "";
}

async function run() {
  clearConsistency();
  await loadMethodChoices();
  const body = consistencyRequest();
  setStatus("cons-status", `sampling ${body.n} answers…`);
  const request = state.request = new AbortController();
  const answer = await api("/v1/analysis/consistency", body, request.signal);
  state.request = null;
  $("cons-answer-box").innerHTML = answerBox(answer);
  $("cons-samples").innerHTML = samplesTable(answer);
  matrix(answer);
  $("cons-summary").innerHTML = "<h2>Consistency methods (higher: more uncertain)</h2>" +
    await summaryTable("cons-table", answer.sequence, answer.undefined);
  const failed = answer.samples.filter((s) => s.error).length;
  setStatus("cons-status", `${answer.model} · ${answer.samples.length - failed} of ${answer.samples.length} samples` +
    `${failed ? ` (${failed} failed)` : ""} · similarity ${answer.similarity_kind}`);
}

export function initConsistency() {
  $("cons-run").addEventListener("click", () => busy("panel-consistency", "cons-status", run));
  for (const b of document.querySelectorAll('#tabs button[data-tab="consistency"]')) {
    b.addEventListener("click", () => loadMethodChoices().catch((err) => setStatus("cons-status", String(err.message || err), true)));
  }
}
