// Tokens as coloured chips: colour scales, legends, the prompt/completion boundary, special tokens, the tooltip,
// and the summary table that explains each method from GET /v1/analysis/methods.
import { $, api, esc, shown } from "./api.js";

export const GLTR = [[10, "#a3e4a0", "top 10"], [100, "#f9e79f", "top 100"], [1000, "#f5b7b1", "top 1000"], [Infinity, "#d2b4de", "rest"]];

export function heat(t) {  // 0 = good (green) .. 1 = bad (red)
  const hue = 120 * (1 - Math.max(0, Math.min(1, t)));
  return `hsl(${hue}, 70%, 78%)`;
}

export function gltrBucket(rank) {
  return GLTR.findIndex(([edge]) => rank <= edge);
}

// Colours are set through the DOM, never in markup: the page's Content-Security-Policy refuses inline styles.
export function gradientLegend(id, lo, hi) {
  $(id).innerHTML = `<span>${esc(lo)}</span><span class="bar"></span><span>${esc(hi)}</span>`;
  $(id).querySelector(".bar").style.background = `linear-gradient(90deg, ${heat(0)}, ${heat(0.5)}, ${heat(1)})`;
}

export function gltrLegend(id) {
  $(id).innerHTML = GLTR.map(([, , name]) => `<span class="chip">${name}</span>`).join(" ");
  $(id).querySelectorAll(".chip").forEach((chip, i) => { chip.style.background = GLTR[i][1]; });
}

// Render tokens into `box`. `colour(i)` gives a CSS colour or null; `kind(i)` an extra class ("first", "ctx");
// `boundary` is the index of the first completion token (generated records), marked before it.
export function renderTokens(box, tokens, { colour, kind = () => "", boundary = null, value = null }) {
  box.textContent = "";
  tokens.forEach((token, i) => {
    if (boundary !== null && i === boundary) {
      const mark = document.createElement("span");
      mark.className = "boundary";
      mark.textContent = "completion ▸";
      mark.title = `the prompt ends here: ${boundary} prompt tokens`;
      box.appendChild(mark);
    }
    const span = document.createElement("span");
    const extra = kind(i);
    span.className = "tok" + (extra ? " " + extra : "") + (token.special ? " special" : "") +
      (boundary !== null && i >= boundary ? " completion" : "");
    span.dataset.index = i;
    span.dataset.text = token.text;
    span.textContent = token.special ? token.text : token.text.replace(/\n/g, "⏎");
    const c = colour(i);
    if (c && !token.special) span.style.background = c;
    if (value) {
      const v = value(i);
      if (v !== undefined && v !== null) span.dataset.value = String(v);
    }
    box.appendChild(span);
    for (let n = (token.special ? 0 : token.text.split("\n").length - 1); n > 0; n--) box.appendChild(document.createElement("br"));
  });
}

export function alternatives(token) {
  if (!token || !token.top_logprobs) return "<div class='muted'>no prediction: the first token</div>";
  const rows = token.top_logprobs.map((a) =>
    `<tr class="${a.id === token.id ? "chosen" : ""}"><td>${shown(a.text)}</td><td>${(100 * Math.exp(a.logprob)).toFixed(2)}%</td></tr>`).join("");
  return `<table>${rows}</table>`;
}

// Show `html(index, element)` beside the pointer while it is over a token of `box` (or another `selector`'s element).
export function attachTooltip(box, html, selector = ".tok") {
  const tip = $("tooltip");
  box.addEventListener("mousemove", (event) => {
    const target = event.target.closest(selector);
    if (!target) { tip.style.display = "none"; return; }
    tip.innerHTML = html(Number(target.dataset.index), target);
    tip.style.display = "block";
    tip.style.left = Math.max(4, Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8)) + "px";
    tip.style.top = Math.min(event.clientY + 16, window.innerHeight - tip.offsetHeight - 8) + "px";
  });
  box.addEventListener("mouseleave", () => { tip.style.display = "none"; });
}

let methodsInfo = null;
export async function methods() {
  if (!methodsInfo) methodsInfo = Object.fromEntries((await api("/v1/analysis/methods")).map((m) => [m.name, m]));
  return methodsInfo;
}
export function forgetMethods() { methodsInfo = null; }

function firstSentence(text, limit = 160) {
  const match = text.match(/^.*?[.!?](\s|$)/);
  const sentence = (match ? match[0] : text).trim();
  return sentence.length > limit ? sentence.slice(0, limit - 1).trimEnd() + "…" : sentence;
}

export function formatValue(value) {
  if (value === null || value === undefined) return "—";
  return Number.isInteger(value) ? String(value) : Number(value).toPrecision(4);
}

// One row per sequence value: name, value, which way it points ("higher means …") and what it is.
export async function summaryTable(id, sequence, notes = {}) {
  const info = await methods();
  const rows = Object.entries(sequence).map(([name, value]) => {
    const m = info[name.split(".")[0]];
    const direction = m ? `higher means ${m.higher_means}` : "";
    const explain = m ? firstSentence(m.description) : "";
    const note = notes[name] ? ` · ${esc(notes[name])}` : "";
    return `<tr data-name="${esc(name)}"><td>${esc(name)}</td><td class="value">${formatValue(value)}${note}</td>` +
      `<td class="direction">${esc(direction)}</td><td class="explain" title="${esc(m ? `${m.description}\n${m.paper}` : "")}">${esc(explain)}</td></tr>`;
  }).join("");
  return `<table id="${id}" class="summary"><thead><tr><th>measure</th><th>value</th><th>direction</th><th>what it is</th></tr></thead><tbody>${rows}</tbody></table>`;
}
