// The console's entry point: the token field, and a router over the URL's hash (#/models,
// #/model/NAME, #/metrics, #/autoscaling) so that moving between pages never reloads, and
// every page can be bookmarked. Each page is a function that fills the view and returns what
// stops it (its timers and requests) when the user leaves.

import { setToken, token } from './api.js';
import { autoscalingPage } from './autoscaling.js';
import { errorBox, h, replace, showError } from './dom.js';
import { metricsPage, sampler } from './metrics.js';
import { fetchModels, modelsPage, modelSummary, taskOf } from './models.js';
import { playground } from './playground.js';

const view = document.getElementById('view');
let leave = () => {};

function route() {
  leave();
  leave = () => {};
  const [path, search = ''] = location.hash.replace(/^#/, '').split('?');
  const query = Object.fromEntries(new URLSearchParams(search));
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  for (const link of document.querySelectorAll('[data-nav]')) {
    link.classList.toggle('active', link.dataset.nav === (parts[0] === 'model' ? 'models' : parts[0]));
  }
  switch (parts[0]) {
    case 'model':
      if (parts[1]) {
        leave = modelPage(view, parts[1]);
        break;
      }
    // falls through: #/model alone is the list
    case undefined:
    case 'models':
      leave = modelsPage(view);
      break;
    case 'metrics':
      leave = metricsPage(view, query);
      break;
    case 'autoscaling':
      leave = autoscalingPage(view);
      break;
    default:
      replace(view, h('h1', { text: 'Not found' }),
        h('p', {}, `The console has no page '${location.hash}'. `, h('a', { href: '#/models', text: 'See the models.' })));
  }
  document.title = `${parts[1] ?? (parts[0] ? parts[0][0].toUpperCase() + parts[0].slice(1) : 'Models')} · ferroserve`;
  view.focus({ preventScroll: true });
}

/** A model's page: its description, then the playground of its task. */
function modelPage(root, name) {
  const switcher = h('select', { 'aria-label': 'Model', onchange: () => { location.hash = `#/model/${encodeURIComponent(switcher.value)}`; } },
    h('option', { value: name, text: name, selected: true }));
  const slot = h('div', {});
  let tool = null;
  const summary = modelSummary(name, (model) => {
    // The playground is made once, from the first description: refreshing it would throw away
    // what the user typed.
    if (tool || !model) return;
    tool = playground(name, taskOf(model));
    replace(slot, tool.element);
  });
  const listError = errorBox();
  fetchModels()
    .then(({ models }) => replace(switcher, models.map((m) => h('option', { value: m.name, text: m.name, selected: m.name === name }))))
    .catch((e) => showError(listError, e));
  replace(root,
    h('div', { class: 'page-head' },
      h('h1', {}, h('a', { href: '#/models', class: 'crumb', text: 'Models' }), ' / ', h('span', { dataset: { testid: 'model-name' }, text: name })),
      h('label', { class: 'inline' }, 'Model ', switcher),
      h('a', { href: `#/metrics?model=${encodeURIComponent(name)}`, text: 'Its metrics' })),
    listError, summary.element, slot);
  return () => {
    summary.stop();
    tool?.stop();
  };
}

function tokenForm() {
  const input = document.getElementById('token');
  const state = document.getElementById('token-state');
  const show = () => {
    state.textContent = token() ? 'token set' : '';
    input.value = '';
    input.placeholder = token() ? '••••••••' : 'management token';
  };
  document.getElementById('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    show();
    // Whether the buttons that change models show depends on the token: draw the page again.
    route();
  });
  document.getElementById('token-clear').addEventListener('click', () => {
    setToken('');
    show();
    route();
  });
  show();
}

const banner = errorBox();
document.getElementById('banner-slot').append(banner);
// A failure no page caught is still the user's to see, not only the developer console's.
window.addEventListener('unhandledrejection', (e) => {
  if (e.reason?.name === 'AbortError') return;
  showError(banner, e.reason);
});

tokenForm();
sampler.start();
window.addEventListener('hashchange', route);
if (!location.hash) history.replaceState(null, '', '#/models');
route();
