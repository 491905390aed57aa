// The page: tabs, the API key, the model list, and each panel's start.
import { $, api, setStatus } from "./api.js";
import { clearResults, initAnalyse, loadChoices } from "./analyse.js";
import { initRows } from "./rows.js";
import { initCompare, loadReferences } from "./compare.js";
import { initDecode, setModels } from "./decode.js";
import { clearBytes, initBytes, setByteModels } from "./bytes.js";
import { clearLens, initLens } from "./lens.js";
import { forgetMethods } from "./tokens.js";

let models = [];

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== `panel-${name}`;
}

async function loadModels() {
  try {
    models = (await api("/v1/models")).data;
    const current = $("model").value;
    const topK = Math.min(20, ...models.map((m) => m.max_top_logprobs ?? 20));
    $("topk").max = String(topK);
    if (Number($("topk").value) > topK) $("topk").value = String(topK);
    $("model").innerHTML = models.map((m) => `<option value="${m.id}" data-chat="${m.chat_template === true}">${m.id}${m.ready ? "" : " (loading)"}</option>`).join("");
    if (models.some((m) => m.id === current)) $("model").value = current;
    modelChanged();
  } catch (err) {
    setStatus("status", String(err.message || err), true);
  }
}

function modelChanged() {
  loadReferences(models);
  setModels(models);
  setByteModels(models);
  loadChoices();
}

// The API key lives in this tab's sessionStorage only: gone when the tab closes, never shared with other tabs or
// written to disk as localStorage would keep it (a key kept there by an older page is removed).
const KEY = "logprobe.key";

function init() {
  localStorage.removeItem(KEY);
  $("apikey").value = sessionStorage.getItem(KEY) || "";
  $("apikey").addEventListener("change", () => {
    sessionStorage.setItem(KEY, $("apikey").value.trim());
    forgetMethods();
    loadModels();
  });
  $("model").addEventListener("change", () => { clearResults(); clearLens(); clearBytes(); modelChanged(); });
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  initAnalyse();
  initRows();
  initCompare();
  initDecode();
  initLens();
  initBytes();
  loadModels();
}

init();
