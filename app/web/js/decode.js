// The Decode panel: contrastive decoding (a preset or views) streamed from POST /v1/decode/contrastive with
// `stream: true`; each step shows the chosen token and every view's logprob and rank of it.
import { $, busy, esc, events, setStatus, shown } from "./api.js";

const PRESETS = {  // each preset's fields: model choices and texts
  cad: { model: "model", context: "text" },
  prompt_contrast: { model: "model" },
  cd: { expert: "model", amateur: "model" },
  ed: { base: "model", aligned: "model" },
  proxy: { base: "model", tuned: "model", small_base: "model" },
  dola: { model: "model", layers: "layers" },
};
const EXAMPLE_VIEWS = (model) => JSON.stringify([
  { model, template: "chat", weight: 1.5 },
  { model, template: "raw", weight: -0.5 },
], null, 1);
// What each preset's views are, in the order the service builds them (app/serving/contrast.py).
const ROLES = {
  cad: ["with the context", "without the context"],
  prompt_contrast: ["chat prompt", "bare prompt"],
  cd: ["expert", "amateur"],
  ed: ["base model, raw prompt", "aligned model, chat template"],
  proxy: ["large base", "small tuned", "small base"],
  dola: ["final layer − premature layer"],
};
let models = [];
let steps = [];
let roles = [];  // the running decode's view names
let layered = false;  // DoLa: each step says which premature layer it contrasted

// A view given as JSON: named by what sets it apart (model, template, system, context, prompt).
function described(view) {
  return [view.model, view.template || "chat", view.system ? "system prompt" : "", view.context ? "+ context" : "",
    view.prompt ? "own prompt" : ""].filter(Boolean).join(", ");
}

function roleNames(body) {
  if (body.views) return body.views.map(described);
  return ROLES[body.preset.name] || [];
}
function fields() {
  const preset = $("dec-preset").value;
  const box = $("dec-fields");
  if (preset === "views") {
    box.innerHTML = `<label for="dec-views">Views: [{model, template, system, context, weight, temperature}]</label><textarea id="dec-views" class="short"></textarea>`;
    $("dec-views").value = EXAMPLE_VIEWS($("model").value);
    return;
  }
  box.innerHTML = Object.entries(PRESETS[preset]).map(([name, kind]) => field(name, kind)).join("");
  const names = Object.keys(PRESETS[preset]);
  if (names.length > 1 && PRESETS[preset][names[1]] === "model" && models.length > 1) {  // two different models by default where the preset contrasts two
    const second = $(`dec-${names[1]}`);
    if (second.tagName === "SELECT") second.value = models.find((m) => m.id !== $(`dec-${names[0]}`).value).id;
  }
}

function field(name, kind) {
  if (kind === "model") {
    return `<label for="dec-${name}">${name}</label><select id="dec-${name}" data-field="${name}">${models.map((m) => `<option>${esc(m.id)}</option>`).join("")}</select>`;
  }
  if (kind === "layers") {  // DoLa's candidate premature layers: a bucket, or indices (hidden_states, 0 = embeddings)
    return `<label for="dec-layers">candidate premature layers</label><select id="dec-layers"><option value="high">high: upper half</option><option value="low">low: lower half</option></select>` +
      `<label for="dec-layer-list">or their indices (comma-separated; overrides the bucket)</label><input id="dec-layer-list" placeholder="e.g. 4, 8, 12">`;
  }
  return `<label for="dec-${name}">${name}</label><textarea id="dec-${name}" data-field="${name}" class="short">The lighthouse on the island was automated in 1987; no keeper has lived there since.</textarea>`;
}

// DoLa's `layers`: the listed indices if any, else the bucket.
function dolaLayers() {
  const listed = $("dec-layer-list").value.split(",").map((s) => s.trim()).filter(Boolean);
  return listed.length ? listed.map(Number) : $("dec-layers").value;
}

export function setModels(list) {
  models = list;
  fields();
}

// The request the panel sends (streamed): what the tests send again without `stream` to check the steps.
export function request() {
  const preset = $("dec-preset").value;
  const body = {
    prompt: $("dec-prompt").value,
    max_tokens: Math.max(1, Math.round(Number($("dec-max").value)) || 16),
    temperature: Math.max(0, Number($("dec-temp").value) || 0),
    seed: 0,
  };
  if (preset === "views") {
    body.views = JSON.parse($("dec-views").value);
  } else {
    body.preset = { name: preset };
    for (const el of $("dec-fields").querySelectorAll("[data-field]")) body.preset[el.dataset.field] = el.value;
    const alpha = $("dec-alpha").value.trim();
    if (preset === "dola") body.preset.layers = dolaLayers();  // DoLa has no α: its cut is the paper's
    else if (alpha !== "") body.preset[preset === "proxy" ? "lambda" : "alpha"] = Number(alpha);
  }
  return body;
}

function role(i) {
  return roles[i] || `view ${i}`;
}

function header(views) {
  const cells = views.map((v, i) => (v
    ? `<th title="${esc(JSON.stringify(v))}">${esc(role(i))} · ×${Number(v.weight).toPrecision(3)}<br><small>${esc(v.model)}, ${esc(v.template)}${v.context ? " + context" : ""}</small><br>log p · rank</th>`
    : `<th>${esc(role(i))}<br>log p · rank</th>`));
  const premature = layered ? "<th>premature layer</th>" : "";
  $("dec-steps").querySelector("thead").innerHTML = `<tr><th>step</th><th>token</th>${cells.join("")}${premature}<th>combined top alternatives</th></tr>`;
}

function addStep(step) {
  const i = steps.length;
  steps.push(step);
  if (i === 0) header(step.views.map(() => null));
  const chip = document.createElement("span");
  chip.className = "tok" + (step.special ? " special" : "");
  chip.textContent = step.special ? step.text : step.text.replace(/\n/g, "⏎");
  chip.dataset.index = i;
  chip.title = `step ${i}: ` + step.views.map((v, j) => `${role(j)}: log p ${v.logprob.toFixed(3)}, rank ${v.rank}`).join("; ") +
    (step.premature_layer != null ? `; premature layer ${step.premature_layer}` : "");
  $("dec-text").appendChild(chip);
  const row = document.createElement("tr");
  row.dataset.id = step.id;
  row.dataset.views = JSON.stringify(step.views);
  if (step.premature_layer != null) row.dataset.premature = step.premature_layer;
  const alts = step.top_logprobs.slice(0, 4).map((a) => `${JSON.stringify(a.text)} ${a.logprob.toFixed(2)}`).join("  ");
  row.innerHTML = `<td class="num">${i}</td><td class="token">${shown(step.text)}</td>` +
    step.views.map((v) => `<td class="num">${v.logprob.toFixed(3)} · ${v.rank}</td>`).join("") +
    (layered ? `<td class="num">${step.premature_layer ?? ""}</td>` : "") + `<td class="alts">${esc(alts)}</td>`;
  $("dec-steps").querySelector("tbody").appendChild(row);
}

function clearResults() {
  steps = [];
  $("dec-text").textContent = "";
  $("dec-steps").querySelector("thead").textContent = "";
  $("dec-steps").querySelector("tbody").textContent = "";
  delete $("dec-steps").dataset.record;
}

async function run() {
  clearResults();
  const body = { ...request(), stream: true };
  roles = roleNames(body);
  layered = body.preset?.name === "dola";
  setStatus("dec-status", "decoding…");
  for await (const { event, data } of events("/v1/decode/contrastive", body)) {
    if (event === "step") {
      addStep(data);
      setStatus("dec-status", `step ${steps.length}…`);
    } else if (event === "error") {
      clearResults();
      throw new Error(`${data.error.code}: ${data.error.message}`);
    } else if (event === "done") {
      header(data.views);
      $("dec-steps").dataset.record = data.record_id;
      setStatus("dec-status", `${data.usage.completion_tokens} steps (${data.finish_reason}) · record ${data.record_id}`);
    }
  }
}

export function initDecode() {
  $("dec-preset").addEventListener("change", fields);
  $("dec-run").addEventListener("click", () => busy("panel-decode", "dec-status", run));
}
