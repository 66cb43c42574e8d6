// Charts drawn by hand (canvas for time series, HTML for bars and the heat map): a few hundred
// lines instead of a vendored library, and nothing the console needs is missing from them.

import { h, short } from './dom.js';

export const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563'];

const HEIGHT = 170;
const MARGIN = { left: 52, right: 10, top: 10, bottom: 22 };

/**
 * A time-series line chart. update() takes the series ({name, points: [[time ms, value or
 * null]]}, a null leaving a gap) and the time window to show; the chart redraws itself when
 * the window is resized.
 */
export class LineChart {
  constructor({ title, format = short }) {
    this.format = format;
    this.canvas = h('canvas', { height: HEIGHT, role: 'img', 'aria-label': title });
    this.legend = h('div', { class: 'legend' });
    this.element = h('figure', { class: 'chart' }, h('figcaption', { text: title }), this.canvas, this.legend);
    this.series = [];
    this.window = null;
    this.onResize = () => this.draw();
    window.addEventListener('resize', this.onResize);
  }

  destroy() {
    window.removeEventListener('resize', this.onResize);
  }

  update(series, window) {
    this.series = series;
    this.window = window;
    this.draw();
    if (!series.length) {
      this.legend.replaceChildren(h('span', { class: 'muted', text: 'no data yet' }));
      return;
    }
    this.legend.replaceChildren(
      ...series.map((s, i) => {
        const last = [...s.points].reverse().find(([, v]) => v !== null);
        return h('span', { class: 'key' },
          h('i', { style: `background:${s.color ?? COLORS[i % COLORS.length]}` }),
          `${s.name} `, h('b', { text: last ? this.format(last[1]) : '–' }));
      }),
    );
  }

  draw() {
    const width = this.canvas.parentElement?.clientWidth;
    if (!width || !this.window) return;
    const ratio = window.devicePixelRatio || 1;
    this.canvas.style.width = `${width}px`;
    this.canvas.style.height = `${HEIGHT}px`;
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(HEIGHT * ratio);
    const ctx = this.canvas.getContext('2d');
    ctx.scale(ratio, ratio);
    ctx.font = '11px system-ui, sans-serif';

    const { from, to } = this.window;
    const plotW = width - MARGIN.left - MARGIN.right;
    const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    let max = 0;
    for (const s of this.series) for (const [t, v] of s.points) if (v !== null && t >= from) max = Math.max(max, v);
    const ticks = niceTicks(max);
    const top = ticks[ticks.length - 1];
    const x = (t) => MARGIN.left + ((t - from) / (to - from)) * plotW;
    const y = (v) => MARGIN.top + plotH - (v / top) * plotH;

    ctx.strokeStyle = '#e5e7eb';
    ctx.fillStyle = '#6b7280';
    ctx.lineWidth = 1;
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (const tick of ticks) {
      const py = Math.round(y(tick)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(MARGIN.left, py);
      ctx.lineTo(width - MARGIN.right, py);
      ctx.stroke();
      ctx.fillText(this.format(tick), MARGIN.left - 6, py);
    }
    // One label a minute, counted back from now: what a person reading "the last few
    // minutes" wants, whatever the clock says.
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (let back = 0; to - back * 60000 >= from; back++) {
      const px = x(to - back * 60000);
      ctx.fillText(back ? `−${back} min` : 'now', Math.min(px, width - MARGIN.right - 12), HEIGHT - MARGIN.bottom + 6);
    }

    ctx.lineWidth = 1.75;
    ctx.lineJoin = 'round';
    this.series.forEach((s, i) => {
      ctx.strokeStyle = s.color ?? COLORS[i % COLORS.length];
      ctx.beginPath();
      let drawing = false;
      let lonely = null;
      for (const [t, v] of s.points) {
        if (t < from || v === null) {
          drawing = false;
          continue;
        }
        if (drawing) {
          ctx.lineTo(x(t), y(v));
          lonely = null;
        } else {
          ctx.moveTo(x(t), y(v));
          lonely = [t, v];
        }
        drawing = true;
      }
      ctx.stroke();
      // A value with no neighbour would draw nothing: mark it with a dot.
      if (lonely) {
        ctx.fillStyle = ctx.strokeStyle;
        ctx.beginPath();
        ctx.arc(x(lonely[0]), y(lonely[1]), 2.5, 0, 2 * Math.PI);
        ctx.fill();
      }
    });
  }
}

/** Round tick values from 0 up to at least `max` (0 to 1 when there is nothing to show). */
function niceTicks(max) {
  if (!(max > 0)) return [0, 0.25, 0.5, 0.75, 1];
  const raw = max / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let v = 0; v < max + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < max) ticks.push(Number((ticks.length * step).toPrecision(12)));
  return ticks;
}

/**
 * Horizontal bars: one row per item ({label, value}), the bar's length value / max, the value
 * written beside it with `format`.
 */
export function bars(items, { max = 1, format = percent } = {}) {
  return h('div', { class: 'bars', dataset: { testid: 'bars' } },
    items.map(({ label, value }) => h('div', { class: 'bar-row' },
      h('span', { class: 'bar-label', title: label, text: label }),
      h('span', { class: 'bar-track' },
        h('span', { class: 'bar-fill', style: `width:${Math.max(0, Math.min(1, value / max)) * 100}%` })),
      h('span', { class: 'bar-value', text: format(value) }))));
}

export function percent(value) {
  return `${(value * 100).toFixed(value >= 0.0995 ? 1 : 2)}%`;
}

/**
 * A similarity matrix as a table whose cells are coloured by value (-1 to 1) and show it to
 * three decimals; `data-value` keeps the full number.
 */
export function heatmap(labels, matrix) {
  const name = (i) => `#${i + 1}`;
  return h('table', { class: 'heatmap', dataset: { testid: 'heatmap' } },
    h('thead', {}, h('tr', {}, h('th', { text: '' }), labels.map((label, j) => h('th', { title: label, text: name(j) })))),
    h('tbody', {}, matrix.map((row, i) => h('tr', {},
      h('th', { scope: 'row', title: labels[i] }, h('span', { class: 'index', text: name(i) }), ` ${labels[i]}`),
      row.map((value) => h('td', { style: cellStyle(value), dataset: { value: String(value) }, text: value.toFixed(3) }))))));
}

function cellStyle(value) {
  const v = Math.max(-1, Math.min(1, value));
  // Blue for similar, orange for opposed, white for unrelated.
  const hue = v >= 0 ? 217 : 25;
  const lightness = 97 - Math.abs(v) * 55;
  const ink = lightness < 62 ? '#fff' : '#111827';
  return `background:hsl(${hue} 85% ${lightness}%);color:${ink}`;
}
