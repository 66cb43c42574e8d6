// Live metrics: the console reads the server's own GET /metrics (Prometheus text) every two
// seconds from the moment it opens, keeps five minutes of samples, and derives per model what
// a person watching a server asks: requests per second, latency percentiles, queue depth and
// batch sizes. Rates and percentiles come from the difference between two samples, as
// Prometheus' rate() and histogram_quantile() would compute them.

import { call } from './api.js';
import { COLORS, LineChart } from './charts.js';
import { duration, errorBox, h, replace, short, showError } from './dom.js';

const INTERVAL_MS = 2000;
const KEEP_MS = 5 * 60 * 1000;
const ALL = '';

/**
 * Parses Prometheus' text format (and OpenMetrics'): one entry per sample, {name, labels,
 * value}. Comment and metadata lines are skipped.
 */
export function parsePrometheus(text) {
  const samples = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const brace = line.indexOf('{');
    const space = line.indexOf(' ');
    let name;
    let labels = {};
    let rest;
    if (brace >= 0 && (space < 0 || brace < space)) {
      name = line.slice(0, brace);
      const [parsed, end] = parseLabels(line, brace + 1);
      labels = parsed;
      rest = line.slice(end + 1);
    } else {
      name = line.slice(0, space);
      rest = line.slice(space);
    }
    // What follows the value (an OpenMetrics timestamp or exemplar) is not needed.
    const value = parseValue(rest.trim().split(/\s+/)[0]);
    samples.push({ name, labels, value });
  }
  return samples;
}

function parseLabels(line, start) {
  const labels = {};
  let i = start;
  for (;;) {
    while (line[i] === ' ' || line[i] === ',') i++;
    if (i >= line.length) throw new Error(`unterminated labels in: ${line}`);
    if (line[i] === '}') return [labels, i];
    const eq = line.indexOf('=', i);
    const key = line.slice(i, eq).trim();
    if (line[eq + 1] !== '"') throw new Error(`label ${key} has no quoted value in: ${line}`);
    let value = '';
    i = eq + 2;
    for (; i < line.length && line[i] !== '"'; i++) {
      if (line[i] === '\\') {
        i++;
        value += line[i] === 'n' ? '\n' : line[i];
      } else {
        value += line[i];
      }
    }
    labels[key] = value;
    i++;
  }
}

function parseValue(text) {
  if (text === '+Inf' || text === 'Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  return Number(text);
}

/** A sample of the metrics the console charts, summed over each model's versions. */
function digest(samples) {
  const models = new Map();
  const model = (name) => {
    if (!models.has(name)) {
      models.set(name, {
        success: 0, failure: 0, queue: 0, inflight: 0, replicas: 0,
        latency: new Map(), latencyCount: 0, batchSum: 0, batchCount: 0,
      });
    }
    return models.get(name);
  };
  const process = { cpu: null, memory: null };
  for (const { name, labels, value } of samples) {
    switch (name) {
      case 'ferroserve_requests_total':
        model(labels.model)[labels.result === 'success' ? 'success' : 'failure'] += value;
        break;
      case 'ferroserve_request_duration_seconds_bucket': {
        const buckets = model(labels.model).latency;
        const le = parseValue(labels.le);
        buckets.set(le, (buckets.get(le) ?? 0) + value);
        break;
      }
      case 'ferroserve_batch_size_sum':
        model(labels.model).batchSum += value;
        break;
      case 'ferroserve_batch_size_count':
        model(labels.model).batchCount += value;
        break;
      case 'ferroserve_queue_depth':
        model(labels.model).queue += value;
        break;
      case 'ferroserve_inflight_requests':
        model(labels.model).inflight += value;
        break;
      case 'ferroserve_replicas':
        model(labels.model).replicas += value;
        break;
      case 'ferroserve_process_cpu_seconds_total':
        process.cpu = value;
        break;
      case 'ferroserve_process_resident_memory_bytes':
        process.memory = value;
        break;
      default:
    }
  }
  return { models, process };
}

/**
 * The q-quantile of the observations between two cumulative histograms (Map le -> count),
 * interpolated linearly inside its bucket as Prometheus' histogram_quantile() does; null when
 * nothing was observed.
 */
export function quantile(q, before, after) {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const counts = bounds.map((le) => after.get(le) - (before?.get(le) ?? 0));
  const total = counts[counts.length - 1];
  if (!(total > 0)) return null;
  const rank = q * total;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= rank) {
      // In the +Inf bucket all that is known is "above the last bound".
      if (bounds[i] === Infinity) return bounds[i - 1] ?? null;
      const lower = i ? bounds[i - 1] : 0;
      const below = i ? counts[i - 1] : 0;
      const inside = counts[i] - below;
      return lower + (bounds[i] - lower) * (inside > 0 ? (rank - below) / inside : 1);
    }
  }
  return null;
}

/** What happened to `name` (or every model, for ALL) between two digests. */
function between(a, b, name) {
  const seconds = (b.time - a.time) / 1000;
  const pick = (d) => (name === ALL ? [...d.models.values()] : [d.models.get(name)].filter(Boolean));
  const sum = (list, f) => list.reduce((s, m) => s + f(m), 0);
  const now = pick(b);
  const then = pick(a);
  if (!now.length) return null;
  // A counter that went down means the model was reloaded: its new count is all there is.
  const grown = (f) => {
    const delta = sum(now, f) - sum(then, f);
    return delta >= 0 ? delta : sum(now, f);
  };
  const merge = (list) => {
    const all = new Map();
    for (const m of list) for (const [le, c] of m.latency) all.set(le, (all.get(le) ?? 0) + c);
    return all;
  };
  const latencyAfter = merge(now);
  const latencyBefore = merge(then);
  const reset = [...latencyAfter].some(([le, c]) => c < (latencyBefore.get(le) ?? 0));
  const before = reset ? null : latencyBefore;
  const batches = grown((m) => m.batchCount);
  return {
    rps: grown((m) => m.success + m.failure) / seconds,
    errors: grown((m) => m.failure) / seconds,
    p50: quantile(0.5, before, latencyAfter),
    p90: quantile(0.9, before, latencyAfter),
    p99: quantile(0.99, before, latencyAfter),
    queue: sum(now, (m) => m.queue),
    inflight: sum(now, (m) => m.inflight),
    replicas: sum(now, (m) => m.replicas),
    batch: batches > 0 ? grown((m) => m.batchSum) / batches : null,
    cpu: a.process.cpu !== null && b.process.cpu !== null ? (b.process.cpu - a.process.cpu) / seconds : null,
    memory: b.process.memory,
  };
}

/** Reads /metrics every two seconds for as long as the console is open. */
class Sampler {
  constructor() {
    this.digests = [];
    this.error = null;
    this.listeners = new Set();
    this.busy = false;
  }

  start() {
    this.poll();
    setInterval(() => this.poll(), INTERVAL_MS);
  }

  async poll() {
    // A slow server must not pile up scrapes.
    if (this.busy) return;
    this.busy = true;
    try {
      const text = await (await call('/metrics', { headers: { Accept: 'text/plain' } })).text();
      const d = digest(parsePrometheus(text));
      d.time = Date.now();
      this.digests.push(d);
      while (this.digests.length && this.digests[0].time < d.time - KEEP_MS - INTERVAL_MS) this.digests.shift();
      this.error = null;
    } catch (error) {
      this.error = error;
    } finally {
      this.busy = false;
    }
    for (const listener of this.listeners) listener();
  }

  models() {
    const last = this.digests[this.digests.length - 1];
    return last ? [...last.models.keys()].sort() : [];
  }

  /** [time, stats] between each sample and the one before, for `name`. */
  history(name) {
    const out = [];
    for (let i = 1; i < this.digests.length; i++) {
      out.push([this.digests[i].time, between(this.digests[i - 1], this.digests[i], name)]);
    }
    return out;
  }

  /** Stats over the last `ms` milliseconds (smoother than one interval) for `name`. */
  recent(name, ms = 30000) {
    const last = this.digests[this.digests.length - 1];
    if (!last) return null;
    const first = this.digests.find((d) => d.time >= last.time - ms) ?? last;
    return first === last ? null : between(first, last, name);
  }
}

export const sampler = new Sampler();

/** The metrics page. `query.model` picks the model the charts show (all of them by default). */
export function metricsPage(view, { model = ALL } = {}) {
  let selected = model;
  let listed = null;
  const error = errorBox();
  const select = h('select', { id: 'metrics-model', onchange: () => { selected = select.value; render(); } });
  const server = h('p', { class: 'muted', dataset: { testid: 'process' } });
  const charts = {
    rps: new LineChart({ title: 'Requests per second' }),
    latency: new LineChart({ title: 'Latency (arrival at the model to response)', format: (s) => duration(s * 1000) }),
    queue: new LineChart({ title: 'Queue depth and requests in flight' }),
    batch: new LineChart({ title: 'Mean batch size (rows)' }),
  };
  const table = h('div', { class: 'table-wrap' });
  replace(view,
    h('div', { class: 'page-head' },
      h('h1', { text: 'Metrics' }),
      h('label', { class: 'inline' }, 'Model ', select)),
    h('p', { class: 'muted', text: 'From the server\'s GET /metrics, read every 2 s while the console is open; the last 5 minutes.' }),
    error,
    server,
    h('div', { class: 'chart-grid', dataset: { testid: 'charts' } }, Object.values(charts).map((c) => c.element)),
    h('h2', { text: 'Per model, last 30 s' }),
    table);

  function render() {
    showError(error, sampler.error);
    const names = sampler.models();
    if (selected !== ALL && !names.includes(selected)) names.push(selected);
    // Rebuilt only when the models change: rebuilding would close the list under the user.
    if (names.join('\n') !== listed) {
      listed = names.join('\n');
      replace(select, h('option', { value: ALL, text: 'All models', selected: selected === ALL }),
        names.map((n) => h('option', { value: n, text: n, selected: n === selected })));
    }

    const now = Date.now();
    const window = { from: now - KEEP_MS, to: now };
    const history = sampler.history(selected);
    const line = (name, f, color) => ({ name, color, points: history.map(([t, s]) => [t, s ? f(s) : null]) });
    charts.rps.update([line('all', (s) => s.rps, COLORS[0]), line('failed', (s) => s.errors, COLORS[1])], window);
    charts.latency.update([line('p50', (s) => s.p50, COLORS[2]), line('p90', (s) => s.p90, COLORS[3]),
      line('p99', (s) => s.p99, COLORS[1])], window);
    charts.queue.update([line('queued', (s) => s.queue, COLORS[3]), line('in flight', (s) => s.inflight, COLORS[0])], window);
    charts.batch.update([line('rows per batch', (s) => s.batch, COLORS[4])], window);

    const overall = sampler.recent(ALL);
    server.textContent = overall
      ? `Server: ${overall.cpu === null ? '–' : short(overall.cpu * 100)}% of a core, ${overall.memory === null ? '–' : `${(overall.memory / 2 ** 20).toFixed(0)} MiB`} resident.`
      : 'Waiting for the second sample…';

    const rows = sampler.models().map((name) => [name, sampler.recent(name)]);
    const ms = (s) => (s === null ? '–' : duration(s * 1000));
    replace(table, h('table', { class: 'grid', dataset: { testid: 'metrics-table' } },
      h('thead', {}, h('tr', {}, ['model', 'requests/s', 'failed/s', 'p50', 'p90', 'p99', 'queued', 'in flight', 'rows/batch', 'replicas']
        .map((t) => h('th', { text: t })))),
      h('tbody', {}, rows.length ? rows.map(([name, s]) => h('tr', { dataset: { model: name } },
        h('td', {}, h('a', { href: `#/metrics?model=${encodeURIComponent(name)}`, text: name })),
        ...(s ? [short(s.rps), short(s.errors), ms(s.p50), ms(s.p90), ms(s.p99), s.queue, s.inflight,
          s.batch === null ? '–' : short(s.batch), s.replicas] : Array(9).fill('–')).map((v) => h('td', { class: 'num', text: String(v) }))))
        : h('tr', {}, h('td', { colspan: 10, class: 'muted', text: 'No model has metrics yet.' })))));
  }

  render();
  sampler.listeners.add(render);
  return () => {
    sampler.listeners.delete(render);
    Object.values(charts).forEach((c) => c.destroy());
  };
}
