// The Lens panel: POST /v1/analysis/lens read as a layer × position heatmap (the logit lens, nostalgebraist 2020:
// every layer's state through the model's own final norm and unembedding; or a trained tuned lens), coloured by the entropy, the rank of
// the token that came, its log-probability or KL(final ‖ layer); hovering a cell shows that layer's top tokens
// at that position. Each cell holds the API's value in data-value and shows the layer's top token.
import { $, api, busy, esc, setStatus, shown } from "./api.js";
import { attachTooltip, formatValue, gradientLegend, heat } from "./tokens.js";
import { topK } from "./analyse.js";

const SCALES = {  // value -> 0 (green) .. 1 (red), and the legend's ends; `top` is the largest value in the grid
  entropy: { map: (v, top) => v / top, ends: (top) => ["0 nats (certain)", `${top.toFixed(2)} nats`] },
  rank: { map: (v) => Math.log10(v) / 3, ends: () => ["rank 1 (the token that came is on top)", "rank ≥ 1000"] },
  logprob: { map: (v) => -v / Math.log(1000), ends: () => ["p = 1", "p ≤ 0.001"] },
  kl_to_final: { map: (v, top) => v / top, ends: (top) => ["0 (the final layer's distribution)", `${top.toFixed(2)} nats`] },
};
const state = { answer: null, request: null, lenses: [] };

function cellValue(token, metric) {
  return token ? token[metric] : null;
}

function render() {
  const answer = state.answer;
  if (!answer) return;
  const metric = $("lens-metric").value;
  const values = answer.layers.flatMap((l) => l.tokens.map((t) => cellValue(t, metric))).filter((v) => v !== null);
  const top = Math.max(1e-9, ...values);
  const { map, ends } = SCALES[metric];
  gradientLegend("lens-legend", ...ends(top));
  const positions = answer.positions.slice(1);
  const head = `<tr><th>layer</th>${positions.map((p) => `<th class="token" title="position ${p.position}">${esc(p.text.replace(/\n/g, "⏎"))}</th>`).join("")}</tr>`;
  const rows = [...answer.layers].sort((a, b) => b.layer - a.layer).map((layer) => {
    const name = layer.layer === answer.n_layers ? `${layer.layer} (final)` : layer.layer === 0 ? "0 (embeddings)" : String(layer.layer);
    const cells = positions.map((p) => {
      const token = layer.tokens[p.position];
      const best = token && token.top_logprobs.length ? token.top_logprobs[0].token : "";
      return `<td class="cell" data-layer="${layer.layer}" data-index="${p.position}" data-value="${esc(String(cellValue(token, metric)))}">${esc(best)}</td>`;
    }).join("");
    return `<tr data-layer="${layer.layer}"><th>${name}</th>${cells}</tr>`;
  }).join("");
  const settled = `<tr class="settled"><th title="the first layer from which on the top token stays the final one's">settled at</th>${positions.map((p) => `<td>${p.settled_layer ?? "—"}</td>`).join("")}</tr>`;
  $("lens-grid").innerHTML = `<thead>${head}</thead><tbody>${rows}${settled}</tbody>`;
  for (const td of $("lens-grid").querySelectorAll("td.cell")) {  // colours through the DOM: the CSP refuses inline styles
    const v = Number(td.dataset.value);
    if (td.dataset.value !== "null") td.style.background = heat(map(v, top));
  }
}

function tooltip(position, cell) {
  const layer = state.answer.layers.find((l) => l.layer === Number(cell.dataset.layer));
  const token = layer.tokens[position];
  const came = state.answer.positions[position];
  const rows = token.top_logprobs.map((a) =>
    `<tr class="${a.id === came.id ? "chosen" : ""}"><td>${shown(a.token)}</td><td>${(100 * Math.exp(a.logprob)).toFixed(2)}%</td></tr>`).join("");
  return `<div>layer ${layer.layer} · position ${position}: ${shown(came.text)} came</div>` +
    `<div>p ${(100 * Math.exp(token.logprob)).toFixed(2)}% · rank ${token.rank} · H ${token.entropy.toFixed(3)} · KL(final ‖ layer) ${formatValue(token.kl_to_final)}</div>` +
    `<div class="muted">top tokens at this layer</div><table>${rows}</table>`;
}

// Clear the heatmap and drop a request still running (its worker job is cancelled when the request goes).
export function clearLens() {
  if (state.request) { state.request.abort(); setStatus("lens-status", "stopped: the model changed"); }
  state.request = null;
  state.answer = null;
  $("lens-grid").textContent = "";
  $("lens-legend").textContent = "";
}

async function run() {
  clearLens();
  setStatus("lens-status", "reading every layer…");
  const request = state.request = new AbortController();
  const body = { model: $("model").value, text: $("lens-text").value, layers: "all", top_logprobs: topK(), lens: $("lens-kind").value };
  const answer = await api("/v1/analysis/lens", body, request.signal);
  state.request = null;
  state.answer = answer;
  render();
  const kind = answer.lens === "logit" ? "logit lens" : `tuned lens ${lensName(answer.lens)}`;
  setStatus("lens-status", `${answer.model} · ${kind} · ${answer.layers.length} layers × ${answer.positions.length - 1} positions · record ${answer.record_id}`);
}

function lensName(id) {
  const head = state.lenses.find((h) => h.id === id);
  return head ? `${head.name} (${id})` : id;
}

// The switch: the logit lens, or one of the tenant's trained tuned lenses (`lens` heads) of the header's model.
async function loadLenses() {
  const model = $("model").value;
  const heads = await api("/v1/heads").then((r) => r.data).catch(() => []);
  state.lenses = heads.filter((h) => h.kind === "lens" && h.status === "succeeded" && h.model === model);
  const chosen = $("lens-kind").value;
  $("lens-kind").innerHTML = `<option value="logit">logit lens</option>` + state.lenses.map((h) => {
    const kl = h.metrics ? ` · held-out mean KL ${h.metrics.mean_kl_tuned.toFixed(2)} vs ${h.metrics.mean_kl_logit.toFixed(2)}` : "";
    return `<option value="${esc(h.id)}">tuned lens ${esc(h.name)} (${esc(h.id)}${kl})</option>`;
  }).join("");
  if (state.lenses.some((h) => h.id === chosen)) $("lens-kind").value = chosen;
}

export function initLens() {
  // the tenant's lenses of the header's model: when the tab opens (one trained since) and when the model changes
  document.querySelector("#tabs [data-tab=lens]").addEventListener("click", loadLenses);
  $("model").addEventListener("change", loadLenses);
  $("lens-run").addEventListener("click", () => busy("panel-lens", "lens-status", run));
  $("lens-metric").addEventListener("change", render);
  attachTooltip($("lens-grid"), tooltip, "td.cell");
}
