// A small time-series line chart drawn on a <canvas>: no library, no inline styles. It owns the
// drawing only; the numbers come from the caller (`set`). The canvas carries `data-points` and
// `data-last` (and an aria-label) so that tests and screen readers see what is drawn.

const PAD = { left: 44, right: 10, top: 10, bottom: 20 };

/** A round number at or above `v` for the y axis: 1, 2, 5 times a power of ten. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** `12`, `1.5`, `12.3k`, `4.2M`: short enough for the axis. */
export function formatNumber(v) {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return `${(v / 1e6).toFixed(a >= 1e7 ? 0 : 1)}M`;
  if (a >= 1e3) return `${(v / 1e3).toFixed(a >= 1e4 ? 0 : 1)}k`;
  if (Number.isInteger(v)) return String(v);
  return v.toFixed(a >= 10 ? 0 : a >= 1 ? 1 : 2);
}

export class Chart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{label: string, color?: string}} options
   */
  constructor(canvas, { label, color }) {
    this.canvas = canvas;
    this.label = label;
    this.color = color ?? "#4fa3ff";
    /** @type {{t: number, v: number}[]} */
    this.points = [];
    this.spanSeconds = 300;
    if (typeof ResizeObserver === "function") {
      new ResizeObserver(() => this.draw()).observe(canvas);
    }
  }

  /** Replaces the series (`t` in ms since the epoch, oldest first) and redraws. */
  set(points, spanSeconds = this.spanSeconds) {
    this.points = points.filter((p) => Number.isFinite(p.t) && Number.isFinite(p.v));
    this.spanSeconds = Math.max(spanSeconds, 10);
    const last = this.points.at(-1);
    this.canvas.dataset.points = String(this.points.length);
    this.canvas.dataset.last = last ? String(last.v) : "";
    this.canvas.setAttribute(
      "aria-label",
      last ? `${this.label}: ${formatNumber(last.v)} now, ${this.points.length} points` : `${this.label}: no data yet`,
    );
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const dpr = globalThis.devicePixelRatio || 1;
    const w = Math.max(c.clientWidth, 100);
    const h = Math.max(c.clientHeight, 60);
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext("2d");
    if (!g) return;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    g.font = "11px system-ui, sans-serif";
    g.textBaseline = "middle";

    const pw = w - PAD.left - PAD.right;
    const ph = h - PAD.top - PAD.bottom;
    const pts = this.points;
    const now = pts.length ? pts[pts.length - 1].t : Date.now();
    const t0 = now - this.spanSeconds * 1000;
    const max = niceMax(Math.max(0, ...pts.map((p) => p.v)));
    const x = (t) => PAD.left + ((t - t0) / (now - t0)) * pw;
    const y = (v) => PAD.top + ph - (v / max) * ph;

    // grid and axes
    g.strokeStyle = "#2a3441";
    g.fillStyle = "#8a96a3";
    g.lineWidth = 1;
    g.textAlign = "right";
    for (const f of [0, 0.5, 1]) {
      const yy = Math.round(y(max * f)) + 0.5;
      g.beginPath();
      g.moveTo(PAD.left, yy);
      g.lineTo(PAD.left + pw, yy);
      g.stroke();
      g.fillText(formatNumber(max * f), PAD.left - 6, yy);
    }
    g.textAlign = "left";
    g.textBaseline = "alphabetic";
    g.fillText(`-${Math.round(this.spanSeconds / 60) || 1} min`, PAD.left, h - 5);
    g.textAlign = "right";
    g.fillText("now", PAD.left + pw, h - 5);

    if (!pts.length) {
      g.textAlign = "center";
      g.textBaseline = "middle";
      g.fillText("no data yet", PAD.left + pw / 2, PAD.top + ph / 2);
      return;
    }

    const visible = pts.filter((p) => p.t >= t0);
    g.beginPath();
    visible.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p.v)) : g.moveTo(x(p.t), y(p.v))));
    g.strokeStyle = this.color;
    g.lineWidth = 1.5;
    g.stroke();
    if (visible.length > 1) {
      g.lineTo(x(visible[visible.length - 1].t), y(0));
      g.lineTo(x(visible[0].t), y(0));
      g.closePath();
      g.globalAlpha = 0.15;
      g.fillStyle = this.color;
      g.fill();
      g.globalAlpha = 1;
    }
    // the latest value, top right
    g.fillStyle = "#d8dee6";
    g.textAlign = "right";
    g.textBaseline = "top";
    g.fillText(formatNumber(pts[pts.length - 1].v), PAD.left + pw - 2, PAD.top + 2);
  }
}
