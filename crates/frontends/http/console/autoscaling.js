// The autoscalers' latest decisions (GET /console/api/autoscaling, oldest first), newest at the
// top of the table: the one a person looks for is the last.

import { getJson } from './api.js';
import { errorBox, h, isAbort, localTime, replace, showError } from './dom.js';

const REFRESH_MS = 3000;

export function autoscalingPage(view) {
  const error = errorBox();
  const body = h('div', { class: 'table-wrap' }, h('p', { class: 'muted', text: 'Loading…' }));
  replace(view,
    h('div', { class: 'page-head' }, h('h1', { text: 'Autoscaling' })),
    h('p', { class: 'muted', text: 'Decisions of the autoscalers of models and deployments with autoscaling: settings (the last 200), newest first.' }),
    error, body);
  const controller = new AbortController();
  const refresh = async () => {
    try {
      const { events } = await getJson('/console/api/autoscaling', { signal: controller.signal });
      showError(error, null);
      replace(body, table(events));
    } catch (e) {
      if (!isAbort(e)) showError(error, e);
    }
  };
  refresh();
  const timer = setInterval(refresh, REFRESH_MS);
  return () => {
    clearInterval(timer);
    controller.abort();
  };
}

function table(events) {
  if (!events.length) {
    return h('p', { class: 'muted', dataset: { testid: 'no-events' }, text: 'No autoscaling decision yet.' });
  }
  return h('table', { class: 'grid', dataset: { testid: 'autoscaling' } },
    h('thead', {}, h('tr', {}, ['Time', 'Model or deployment', 'Replicas', 'Requests running and waiting', 'Result'].map((t) => h('th', { text: t })))),
    h('tbody', {}, [...events].reverse().map((e) => h('tr', { class: e.error ? 'failed' : '' },
      h('td', {}, h('time', { datetime: e.time, title: e.time, text: localTime(e.time) })),
      h('td', {}, h('a', { href: `#/model/${encodeURIComponent(e.name)}`, text: e.name })),
      h('td', { class: 'num', text: `${e.from} → ${e.to}` }),
      h('td', { class: 'num', text: String(e.ongoing) }),
      h('td', { class: e.error ? 'error' : '', text: e.error ? `failed: ${e.error}` : (e.to > e.from ? 'scaled up' : 'scaled down') })))));
}
