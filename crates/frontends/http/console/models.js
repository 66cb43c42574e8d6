// The models: a table of every model as the management API describes it, refreshed every few
// seconds, with Triton's repository load and unload for callers the server lets change models.

import { call, getJson, seg } from './api.js';
import { duration, errorBox, h, isAbort, localTime, mib, replace, showError } from './dom.js';

const REFRESH_MS = 3000;

/** `GET /console/api/models`: {read_only, models: [ModelDescription]}. */
export function fetchModels(signal) {
  return getJson('/console/api/models', { signal });
}

/** The task of a model: its default version's, else any version's. */
export function taskOf(model) {
  const preferred = model.versions.find((v) => v.version === model.default_version);
  return preferred?.task ?? model.versions.find((v) => v.task)?.task ?? null;
}

function batching(v) {
  if (!v.max_batch_size) return 'off';
  if (!v.dynamic_batching) return `up to ${v.max_batch_size}`;
  return `up to ${v.max_batch_size}, dynamic (waits ≤ ${duration(v.dynamic_batching.max_queue_delay_us / 1000)})`;
}

function devices(v) {
  const counts = new Map();
  for (const d of v.devices) counts.set(d, (counts.get(d) ?? 0) + 1);
  return [...counts].map(([d, n]) => (n > 1 ? `${d} ×${n}` : d)).join(', ') || '–';
}

function replicas(v) {
  return v.autoscaling ? `${v.replicas} (autoscaled ${v.autoscaling.min_replicas}–${v.autoscaling.max_replicas})` : String(v.replicas);
}

function stateBadge(state, reason) {
  return h('span', { class: `state state-${state.toLowerCase().replace(/_/g, '-')}`, title: reason ?? '', text: state });
}

/**
 * One cell per model that lists each version's value on its own line (most models have one
 * version, where this is just the value).
 */
function perVersion(model, f) {
  if (model.versions.length <= 1) return model.versions.length ? f(model.versions[0]) : '–';
  return model.versions.map((v) => h('div', {}, h('span', { class: 'muted', text: `v${v.version}: ` }), f(v)));
}

/**
 * Load and Unload for one model. `pending` keeps the names whose request is under way across
 * the table's refreshes, so a button does not come back enabled while its request runs.
 */
function actions(model, pending, status, refresh) {
  const act = async (verb) => {
    pending.add(model.name);
    refresh();
    showError(status.error, null);
    status.note.textContent = `${verb === 'load' ? 'Loading' : 'Unloading'} ${model.name}…`;
    try {
      await call(`/v2/repository/models/${seg(model.name)}/${verb}`, { method: 'POST' });
      status.note.textContent = `${model.name}: ${verb === 'load' ? 'loaded' : 'unloaded'}.`;
    } catch (error) {
      status.note.textContent = '';
      showError(status.error, error);
    } finally {
      pending.delete(model.name);
      refresh();
    }
  };
  const busy = pending.has(model.name);
  return h('span', { class: 'actions' },
    h('button', { type: 'button', class: 'small', dataset: { action: 'load' }, disabled: busy, text: model.state === 'READY' ? 'Reload' : 'Load', onclick: () => act('load') }),
    h('button', { type: 'button', class: 'small', dataset: { action: 'unload' }, disabled: busy || model.state !== 'READY', text: 'Unload', onclick: () => act('unload') }));
}

/**
 * Fetches the models now and every few seconds, calling draw(answer) whenever the answer
 * or the set of models with a change in progress differs from what was drawn last (so that a
 * button is not replaced under the pointer). Failures go to `error`. Returns refresh() and stop().
 */
function pollModels(error, pending, draw) {
  const controller = new AbortController();
  let last = null;
  let drawn = null;
  const render = () => {
    if (!last) return;
    const key = JSON.stringify([last, [...pending]]);
    if (key === drawn) return;
    drawn = key;
    draw(last);
  };
  const refresh = async () => {
    try {
      last = await fetchModels(controller.signal);
      showError(error, null);
    } catch (e) {
      if (isAbort(e)) return;
      showError(error, e);
    }
    render();
  };
  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return {
    refresh,
    stop() {
      clearInterval(timer);
      controller.abort();
    },
  };
}

/** The models page: the table, refreshed every few seconds. */
export function modelsPage(view) {
  const error = errorBox();
  const status = { error: errorBox(), note: h('p', { class: 'note', role: 'status' }) };
  const mode = h('p', { class: 'muted', dataset: { testid: 'mode' } });
  const body = h('div', { class: 'table-wrap' }, h('p', { class: 'muted', text: 'Loading…' }));
  const pending = new Set();
  replace(view, h('div', { class: 'page-head' }, h('h1', { text: 'Models' })), mode, error, status.error, status.note, body);

  const poll = pollModels(error, pending, (last) => {
    mode.textContent = last.read_only
      ? 'Read-only: loading and unloading models needs the management token (enter it above).'
      : '';
    replace(body, modelTable(last, pending, status, () => poll.refresh()));
  });
  return () => poll.stop();
}

function modelTable({ read_only: readOnly, models }, pending, status, refresh) {
  if (!models.length) return h('p', { class: 'muted', text: 'The server has no models.' });
  const head = ['Model', 'State', 'Task', 'Versions', 'Replicas', 'Devices', 'Batching', 'Memory (MiB)', 'Queued / in flight', 'Last error'];
  if (!readOnly) head.push('');
  return h('table', { class: 'grid models', dataset: { testid: 'models' } },
    h('thead', {}, h('tr', {}, head.map((t) => h('th', { text: t })))),
    h('tbody', {}, models.map((m) => h('tr', { dataset: { model: m.name } },
      h('td', {}, h('a', { href: `#/model/${encodeURIComponent(m.name)}`, class: 'model-link', text: m.name }),
        m.load === 'lazy' ? h('span', { class: 'muted', text: ' (lazy)' }) : null),
      h('td', {}, stateBadge(m.state, m.last_error)),
      h('td', { text: taskOf(m) ?? '–' }),
      h('td', {}, m.versions.length ? m.versions.map((v, i) => [i ? ', ' : '', stateBadge(v.state, v.reason), ` ${v.version}`, v.version === m.default_version && m.versions.length > 1 ? ' (default)' : '']) : '–'),
      h('td', { class: 'num' }, perVersion(m, replicas)),
      h('td', {}, perVersion(m, devices)),
      h('td', {}, perVersion(m, batching)),
      h('td', { class: 'num', text: mib(m.memory_bytes) }),
      h('td', { class: 'num' }, perVersion(m, (v) => `${v.queued} / ${v.in_flight}`)),
      h('td', { class: 'last-error', title: m.last_error ?? '', text: m.last_error ?? '' }),
      readOnly ? null : h('td', {}, actions(m, pending, status, refresh))))));
}

/**
 * The description at the top of a model's page, refreshed every few seconds. `onModel` gets
 * each description (the page picks its playground from the first).
 */
export function modelSummary(name, onModel) {
  const error = errorBox();
  const status = { error: errorBox(), note: h('p', { class: 'note', role: 'status' }) };
  const body = h('div', {}, h('p', { class: 'muted', text: 'Loading…' }));
  const element = h('section', { class: 'card' }, error, status.error, status.note, body);
  const pending = new Set();
  const poll = pollModels(error, pending, (last) => {
    const model = last.models.find((m) => m.name === name);
    if (!model) {
      replace(body, h('p', { class: 'error', text: `The server has no model named '${name}'.` }));
      onModel(null);
      return;
    }
    onModel(model);
    replace(body,
      h('div', { class: 'summary-line' },
        stateBadge(model.state, model.last_error),
        h('span', { text: `task: ${taskOf(model) ?? 'none (tensors)'}` }),
        h('span', { text: `load: ${model.load}` }),
        h('span', { text: `default version: ${model.default_version ?? '–'}` }),
        h('span', { text: `memory: ${mib(model.memory_bytes)} MiB` }),
        model.source ? h('span', { class: 'muted', title: model.source, text: `source: ${model.source}` }) : null,
        last.read_only ? null : actions(model, pending, status, () => poll.refresh())),
      model.last_error ? h('p', { class: 'error', text: `Last error: ${model.last_error}` }) : null,
      h('div', { class: 'table-wrap' }, h('table', { class: 'grid' },
        h('thead', {}, h('tr', {}, ['Version', 'State', 'Replicas', 'Devices', 'Batching', 'Memory (MiB)', 'Queued', 'In flight', 'Backend', 'Loaded', 'Load time']
          .map((t) => h('th', { text: t })))),
        h('tbody', {}, model.versions.map((v) => h('tr', {},
          h('td', { text: v.version }),
          h('td', {}, stateBadge(v.state, v.reason), v.reason ? h('span', { class: 'muted', text: ` ${v.reason}` }) : null),
          h('td', { class: 'num', text: replicas(v) }),
          h('td', { text: devices(v) }),
          h('td', { text: batching(v) }),
          h('td', { class: 'num', text: mib(v.memory_bytes) }),
          h('td', { class: 'num', text: String(v.queued) }),
          h('td', { class: 'num', text: String(v.in_flight) }),
          h('td', { text: [v.backend, v.platform].filter(Boolean).join(' / ') || '–' }),
          h('td', { class: 'nowrap', title: v.loaded_at ?? '', text: v.loaded_at ? localTime(v.loaded_at) : '–' }),
          h('td', { class: 'num', text: duration(v.load_ms) })))))));
  });
  return { element, stop: () => poll.stop() };
}
