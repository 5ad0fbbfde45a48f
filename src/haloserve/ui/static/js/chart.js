// Small canvas charts drawn by hand: a time series line and a bar chart. No library.

const INK = "#1f6feb";
const GRID = "#d0d7de";
const TEXT = "#57606a";

function setup(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width;
  const h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, w, h };
}

export function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Number.isInteger(v)) return String(v);
  if (Math.abs(v) >= 1000) return v.toFixed(0);
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(v === 0 ? 0 : 2);
}

// A line over the last `span` seconds; points are {t (ms), v (number or null: a gap)}.
export class TimeChart {
  constructor(canvas, span = 300) {
    this.canvas = canvas;
    this.span = span;
    this.points = [];
  }

  push(t, v) {
    this.points.push({ t, v });
    const cut = t - this.span * 1000;
    while (this.points.length && this.points[0].t < cut) this.points.shift();
    this.draw();
  }

  draw() {
    const { ctx, w, h } = setup(this.canvas);
    const left = 40, bottom = h - 16, top = 8, right = w - 6;
    const vals = this.points.map((p) => p.v).filter((v) => v !== null && Number.isFinite(v));
    const max = niceMax(Math.max(0, ...vals));
    ctx.strokeStyle = GRID;
    ctx.fillStyle = TEXT;
    ctx.lineWidth = 1;
    for (let i = 0; i <= 2; i++) {
      const y = bottom - ((bottom - top) * i) / 2;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(right, y);
      ctx.stroke();
      ctx.fillText(fmt((max * i) / 2), 2, y + 4);
    }
    ctx.fillText(`last ${Math.round(this.span / 60)} min`, left, h - 2);
    const now = this.points.length ? this.points[this.points.length - 1].t : 0;
    const x = (t) => right - ((now - t) / (this.span * 1000)) * (right - left);
    const y = (v) => bottom - (v / max) * (bottom - top);
    ctx.strokeStyle = INK;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let pen = false;
    for (const p of this.points) {
      if (p.v === null || !Number.isFinite(p.v)) {
        pen = false;
        continue;
      }
      if (pen) ctx.lineTo(x(p.t), y(p.v));
      else ctx.moveTo(x(p.t), y(p.v));
      pen = true;
    }
    ctx.stroke();
    this.canvas.dataset.points = String(this.points.length);
    this.canvas.dataset.last = vals.length ? String(vals[vals.length - 1]) : "";
  }
}

// Stacked-free bars: items are {label, value}.
export function drawBars(canvas, items) {
  const { ctx, w, h } = setup(canvas);
  const left = 48, bottom = h - 18, top = 8;
  const max = niceMax(Math.max(0, ...items.map((i) => i.value)));
  ctx.fillStyle = TEXT;
  ctx.fillText(fmt(max), 2, top + 8);
  ctx.fillText("0", 2, bottom);
  const bw = items.length ? Math.min(60, (w - left) / items.length) : 0;
  items.forEach((item, i) => {
    const bh = (item.value / max) * (bottom - top);
    ctx.fillStyle = INK;
    ctx.fillRect(left + i * bw + 4, bottom - bh, bw - 8, bh);
    ctx.fillStyle = TEXT;
    ctx.fillText(item.label.slice(5), left + i * bw + 4, h - 4);
  });
  canvas.dataset.bars = String(items.length);
}
