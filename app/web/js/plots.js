// Plots drawn in the browser with uPlot (vendored, served by the gateway): lines along the text and bar charts.
/* global uPlot */
import { $ } from "./api.js";

const plots = new Map();  // element id -> uPlot instance
const resizer = new ResizeObserver((entries) => {  // plots follow their box's width (narrow windows, tabs)
  for (const entry of entries) {
    const plot = plots.get(entry.target.id);
    const width = Math.max(240, Math.floor(entry.contentRect.width));
    if (plot && entry.contentRect.width > 0 && Math.abs(plot.width - width) > 1) plot.setSize({ width, height: plot.height });
  }
});

function place(id, options, data) {
  clear(id);
  const el = $(id);
  el.closest("figure").hidden = false;
  el.dataset.points = String(data[0].length);
  const plot = new uPlot({ width: Math.max(240, el.clientWidth), height: 220, ...options }, data, el);
  plots.set(id, plot);
  window.lpPlots = plots;  // for tests and the console: the drawn data
  resizer.observe(el);
  return plot;
}

export function clear(id) {
  const plot = plots.get(id);
  if (plot) plot.destroy();
  plots.delete(id);
  const el = $(id);
  resizer.unobserve(el);
  el.textContent = "";
  delete el.dataset.points;
  el.closest("figure").hidden = true;
}

export function plotOf(id) { return plots.get(id); }

// Lines over positions. series: [{label, values, scale, colour, dash, stepped}]; scales: {name: axis label}
// (the first on the left, the second on the right). onCursor(index) follows the pointer.
export function lines(id, positions, series, scales, onCursor) {
  const names = Object.keys(scales);
  const options = {
    scales: { x: { time: false } },
    series: [{ label: "position" }, ...series.map((s) => ({
      label: s.label, scale: s.scale, stroke: s.colour, width: 1.5, dash: s.dash,
      points: { show: positions.length <= 120, size: 4 },
      paths: s.stepped ? uPlot.paths.stepped({ align: 1 }) : undefined,
      value: (u, v) => (v === null || v === undefined ? "—" : Number(v).toFixed(3)),
    }))],
    axes: [{ label: "position (token index)" }, ...names.map((scale, i) => ({
      scale, label: scales[scale], side: i === 0 ? 3 : 1, grid: { show: i === 0 },
    }))],
    cursor: { drag: { x: true, y: false } },
    hooks: { setCursor: [(u) => { if (onCursor) onCursor(u.cursor.idx); }] },
  };
  return place(id, options, [positions, ...series.map((s) => s.values)]);
}

// Bars at 1..n labelled `labels`; each series holds one value per bar (null: no bar of that series there).
export function bars(id, labels, series, yLabel, { zero = false } = {}) {
  const x = labels.map((_, i) => i + 1);
  const all = series.flatMap((s) => s.values).filter((v) => v !== null);
  const lo = Math.min(0, ...all);
  const hi = Math.max(0, ...all);
  const pad = (hi - lo) * 0.08 || 1;
  const options = {
    height: 200,
    scales: { x: { time: false, range: [0.4, labels.length + 0.6] }, y: { range: [zero ? lo - pad : 0, hi + pad] } },
    series: [{ label: "", value: (u, v) => (v ? labels[v - 1] : "") }, ...series.map((s) => ({
      label: s.label, stroke: s.colour, fill: s.colour + "cc", width: 1,
      paths: uPlot.paths.bars({ size: [0.6, 90], align: 0 }), points: { show: false },
      value: (u, v) => (v === null || v === undefined ? "—" : Number(v).toPrecision(4)),
    }))],
    axes: [{ splits: () => x, values: () => labels, size: 40 }, { label: yLabel }],
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
  };
  if (zero) {
    options.hooks = { draw: [(u) => {  // the threshold: a line at 0
      const y = Math.round(u.valToPos(0, "y", true));
      u.ctx.save();
      u.ctx.strokeStyle = "#1d1d1b";
      u.ctx.setLineDash([6, 4]);
      u.ctx.beginPath();
      u.ctx.moveTo(u.bbox.left, y);
      u.ctx.lineTo(u.bbox.left + u.bbox.width, y);
      u.ctx.stroke();
      u.ctx.restore();
    }] };
  }
  return place(id, options, [x, ...series.map((s) => s.values)]);
}
