// The V2 tensor form, for models without a task: one field per input of the model's metadata
// (GET /v2/models/{m}), its -1 dimensions editable, its data as JSON; the answer's tensors as
// tables. Inputs are checked here first, so the common mistakes (a count that does not fill
// the shape, a string in a number tensor) are explained before anything is sent.

import { getJson, postJson, seg } from './api.js';
import { duration, errorBox, h, isAbort, replace, showError } from './dom.js';

const SHOWN = 2000;
const INTEGER = /^(U?INT(8|16|32|64))$/;

/** The form for model `name`. */
export function tensorForm(name, signal) {
  const error = errorBox();
  const body = h('div', {}, h('p', { class: 'muted', text: 'Reading the model\'s inputs…' }));
  getJson(`/v2/models/${seg(name)}`, { signal })
    .then((metadata) => replace(body, form(name, metadata, signal)))
    .catch((e) => {
      if (isAbort(e)) return;
      replace(body);
      showError(error, e);
    });
  return h('section', { class: 'card playground', dataset: { testid: 'playground', task: 'tensors' } },
    h('h2', { text: 'Tensors' }),
    h('p', { class: 'muted' }, 'POST ', h('code', { text: `/v2/models/${name}/infer` }),
      ' (Open Inference Protocol) with the inputs of the model\'s metadata. Data is JSON, flat or nested.'),
    error, body);
}

function form(name, metadata, signal) {
  const error = errorBox();
  const timing = h('span', { class: 'muted' });
  const result = h('div', { class: 'result', dataset: { testid: 'result' } });
  const inputs = metadata.inputs.map(inputField);
  const button = h('button', { type: 'submit', text: 'Infer' });
  const element = h('form', { class: 'stack' }, inputs.map((i) => i.element),
    h('div', { class: 'row' }, button, timing), error, result);
  element.addEventListener('submit', async (e) => {
    e.preventDefault();
    button.disabled = true;
    showError(error, null);
    timing.textContent = '';
    const start = performance.now();
    try {
      const request = { inputs: inputs.map((i) => i.tensor()) };
      const answer = await postJson(`/v2/models/${seg(name)}/infer`, request, { signal });
      timing.textContent = duration(performance.now() - start);
      replace(result, answer.outputs.map(outputView));
    } catch (err) {
      if (!isAbort(err)) showError(error, err);
    } finally {
      button.disabled = false;
    }
  });
  return element;
}

function inputField({ name, datatype, shape }) {
  const dims = shape.map((d) => (d >= 0 ? d : h('input', { type: 'number', min: 0, value: 1, class: 'dim', 'aria-label': `${name} dimension` })));
  const data = h('textarea', { rows: 3, class: 'mono', dataset: { input: name } });
  // The example follows the shape until the user types data of their own.
  let edited = false;
  const concrete = () => dims.map((d) => (typeof d === 'number' ? d : Number(d.value)));
  const example = () => {
    data.value = JSON.stringify(sample(datatype, concrete().reduce((a, b) => a * b, 1)));
    edited = false;
  };
  data.addEventListener('input', () => { edited = true; });
  for (const d of dims) if (typeof d !== 'number') d.addEventListener('input', () => { if (!edited) example(); });
  example();
  const shapeView = ['['];
  dims.forEach((d, i) => shapeView.push(i ? ', ' : '', typeof d === 'number' ? String(d) : d));
  shapeView.push(']');
  return {
    element: h('fieldset', { class: 'tensor' },
      h('legend', {}, h('code', { text: name }), ` ${datatype} `),
      h('div', { class: 'row' }, h('span', { class: 'muted', text: 'shape ' }), h('span', { class: 'shape' }, shapeView),
        h('button', { type: 'button', class: 'small', text: 'example data', onclick: example })),
      data),
    tensor() {
      const s = concrete();
      s.forEach((d, i) => {
        if (!Number.isInteger(d) || d < 0) throw new Error(`${name}: dimension ${i} must be a whole number from 0, got ${d}`);
      });
      let parsed;
      try {
        parsed = JSON.parse(data.value);
      } catch (e) {
        throw new Error(`${name}: the data is not JSON (${e.message})`);
      }
      const flat = [parsed].flat(Infinity);
      const count = s.reduce((a, b) => a * b, 1);
      if (flat.length !== count) throw new Error(`${name}: shape [${s.join(', ')}] needs ${count} values, the data has ${flat.length}`);
      flat.forEach((v, i) => check(name, datatype, v, i));
      return { name, datatype, shape: s, data: flat };
    },
  };
}

function check(name, datatype, value, index) {
  const bad = (what) => new Error(`${name}: value ${index} (${JSON.stringify(value)}) is not ${what}`);
  if (datatype === 'BYTES') {
    if (typeof value !== 'string') throw bad('a string');
  } else if (datatype === 'BOOL') {
    if (typeof value !== 'boolean') throw bad('true or false');
  } else if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw bad('a number');
  } else if (INTEGER.test(datatype) && !Number.isInteger(value)) {
    throw bad(`a whole number (${datatype})`);
  }
}

/** Example values for a tensor of `count` elements. */
function sample(datatype, count) {
  const n = Math.min(count, 100000);
  if (datatype === 'BYTES') return Array.from({ length: n }, () => 'hello');
  if (datatype === 'BOOL') return Array.from({ length: n }, (_, i) => i % 2 === 0);
  return Array.from({ length: n }, (_, i) => (datatype.startsWith('U') ? i % 256 : i % 100));
}

function outputView({ name, datatype, shape, data }) {
  const head = h('h3', {}, h('code', { text: name }), ` ${datatype} [${shape.join(', ')}]`);
  const flat = [data].flat(Infinity);
  const rows = shape.length === 2 ? shape[0] : 1;
  const cols = shape.length === 2 ? shape[1] : flat.length;
  if (shape.length <= 2 && flat.length <= SHOWN) {
    return h('div', { class: 'output', dataset: { output: name } }, head, h('div', { class: 'table-wrap' },
      h('table', { class: 'grid tensor-data' }, h('tbody', {}, Array.from({ length: rows }, (_, r) => h('tr', {},
        flat.slice(r * cols, (r + 1) * cols).map((v) => h('td', { class: 'num', text: typeof v === 'string' ? v : JSON.stringify(v) }))))))));
  }
  const shown = flat.slice(0, SHOWN);
  return h('div', { class: 'output', dataset: { output: name } }, head,
    h('pre', { class: 'mono', text: JSON.stringify(shown) + (flat.length > SHOWN ? `\n… and ${flat.length - SHOWN} more` : '') }));
}
