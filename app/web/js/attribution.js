// Attribution as a second colouring of the Analyse panel: a click on token t asks POST /v1/analysis/attribution
// which of the tokens 0 .. t-1 made the model predict it. Occlusion gives Δp in [-1, 1] (a diverging scale:
// red raises p(target), blue lowers it, both scaled by the largest |Δp|); ReAGent gives shares that sum to 1
// (a sequential scale up to the largest share).
import { $, api, esc, shown } from "./api.js";

export const FIRST_TARGET = 2;  // tokens 0 and 1 have too little context to attribute
const RAISES = 5;  // hue of a token that raises p(target)
const LOWERS = 215;  // and of one that lowers it
const SHARE = 270;  // ReAGent's sequential hue

export async function attribute(recordId, position) {
  const body = {
    record_id: recordId, positions: [position], method: $("attr-method").value, seed: 0,
    max_passes: Math.round(Number($("attr-passes").value)),
  };
  const answer = await api("/v1/analysis/attribution", body);
  const target = answer.targets[0];
  const top = Math.max(1e-12, ...target.importance.map(Math.abs));
  return { ...target, method: answer.method, cached: answer.cached, top };
}

function shade(hue, t) {  // t = 0: white .. 1: saturated
  return `hsl(${hue}, 75%, ${(97 - 42 * Math.max(0, Math.min(1, t))).toFixed(1)}%)`;
}

export function attributionColour(a, i) {
  const v = a.importance[i];
  if (v === undefined) return null;
  if (a.method === "occlusion") return shade(v < 0 ? LOWERS : RAISES, Math.abs(v) / a.top);
  return shade(SHARE, v / a.top);
}

export function attributionLegend(id, a) {
  const top = a.top.toPrecision(2);
  const [lo, bar, hi] = a.method === "occlusion"
    ? [`−${top}: lowers p(target)`, `${shade(LOWERS, 1)}, ${shade(LOWERS, 0)}, ${shade(RAISES, 1)}`, `+${top}: raises p(target)`]
    : ["0", `${shade(SHARE, 0)}, ${shade(SHARE, 1)}`, `${top} of the importance`];
  $(id).innerHTML = `<span>${esc(a.method)}:</span><span>${esc(lo)}</span><span class="bar"></span>` +
    `<span>${esc(hi)}</span><span class="tok target">target</span>`;
  $(id).querySelector(".bar").style.background = `linear-gradient(90deg, ${bar})`;  // no inline styles (CSP)
}

export function attributionSummary(a) {
  const converged = a.converged === null || a.converged === undefined ? "" : ` · converged: ${a.converged ? "yes" : "no"}`;
  return `${a.method} attribution of token ${a.position} ${JSON.stringify(a.text)} (p ${(100 * Math.exp(a.logprob)).toFixed(2)}%) · ` +
    `${a.passes} forward passes${converged}${a.cached ? " (cached)" : ""} · click it again or press Escape to clear`;
}

export function attributionLine(a, i) {
  if (i === a.position) return `<div class="attr-line">attribution target (${esc(a.method)})</div>`;
  const v = a.importance[i];
  if (v === undefined) return "";
  const effect = a.method === "occlusion" ? (v < 0 ? " (lowers p)" : " (raises p)") : "";
  return `<div class="attr-line">importance for ${shown(a.text)}: ${v.toPrecision(3)}${effect}</div>`;
}
