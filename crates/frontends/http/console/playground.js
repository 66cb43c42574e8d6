// A playground per model, chosen by its task: each speaks the route a user of that task would
// (TorchServe's /predictions, OpenAI's /v1/embeddings, the generative tasks' event streams),
// so what works here works the same from curl. Models without a task get the V2 tensor form.

import { ApiError, call, events, postJson, seg } from './api.js';
import { bars, heatmap } from './charts.js';
import { duration, errorBox, h, isAbort, replace, showError } from './dom.js';
import { tensorForm } from './tensors.js';

const PLAYGROUNDS = {
  'image-classification': imageClassification,
  'text-embedding': textEmbedding,
  'text-classification': textClassification,
  summarization,
  'text-to-image': textToImage,
};

/** The playground of model `name` with task `task` (null: a plain tensor model): {element, stop}. */
export function playground(name, task) {
  const controller = new AbortController();
  const make = PLAYGROUNDS[task] ?? tensorForm;
  const element = make(name, controller.signal);
  return { element, stop: () => controller.abort() };
}

/**
 * Runs `work` for a control (a button, the file input): disables it meanwhile, shows the time
 * taken in `timing` and any error in `error`. A cancelled request (the user left the page) is
 * not an error.
 */
async function running(control, error, timing, work) {
  control.disabled = true;
  showError(error, null);
  timing.textContent = '';
  const start = performance.now();
  try {
    await work();
    timing.textContent = `${duration(performance.now() - start)}`;
  } catch (e) {
    if (!isAbort(e)) showError(error, e);
  } finally {
    control.disabled = false;
  }
}

function lines(text) {
  return text.split('\n').map((l) => l.trim()).filter(Boolean);
}

/** A labelled number field whose value is left out of the request when empty. */
function numberField(label, key, attributes = {}) {
  const input = h('input', { type: 'number', name: key, placeholder: 'default', ...attributes });
  return { key, input, element: h('label', { class: 'field' }, label, input), value: () => (input.value === '' ? undefined : Number(input.value)) };
}

function textField(label, key, attributes = {}) {
  const input = h('input', { type: 'text', name: key, ...attributes });
  return { key, input, element: h('label', { class: 'field wide' }, label, input), value: () => input.value || undefined };
}

function checkField(label, key) {
  const input = h('input', { type: 'checkbox', name: key });
  return { key, input, element: h('label', { class: 'field check' }, input, label), value: () => (input.checked ? true : undefined) };
}

function selectField(label, key, options) {
  const input = h('select', { name: key }, h('option', { value: '', text: 'default' }), options.map((o) => h('option', { value: o, text: o })));
  return { key, input, element: h('label', { class: 'field' }, label, input), value: () => input.value || undefined };
}

/** The generation parameters a user set; the ones left empty come from the model's settings. */
function parameters(fields) {
  const out = {};
  for (const f of fields) {
    const v = f.value();
    if (v !== undefined && !Number.isNaN(v)) out[f.key] = v;
  }
  return out;
}

/**
 * POSTs a generative request with `"stream": true` and hands each event to `on[event]`. A
 * server that answers without a stream gets its answer handed to `on.done`.
 */
async function stream(path, body, signal, on) {
  const response = await call(path, {
    method: 'POST',
    body: JSON.stringify({ ...body, stream: true }),
    headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream, application/json' },
    signal,
  });
  if (!(response.headers.get('Content-Type') ?? '').startsWith('text/event-stream')) {
    on.done(await response.json());
    return;
  }
  for await (const { event, data } of events(response)) {
    if (event === 'error') throw new ApiError(`POST ${path}: ${data?.error ?? data}`, 0);
    if (event === 'done') {
      on.done(data);
      return;
    }
    on[event]?.(data);
  }
  throw new ApiError(`POST ${path}: the stream ended before the answer`, 0);
}

function imageClassification(name, signal) {
  const error = errorBox();
  const timing = h('span', { class: 'muted' });
  const file = h('input', { type: 'file', accept: 'image/*', id: 'image-file', dataset: { testid: 'image-input' } });
  const topk = h('input', { type: 'number', min: 1, max: 100, value: 5, id: 'topk' });
  const preview = h('img', { class: 'preview', alt: '', hidden: true });
  const result = h('div', { class: 'result', dataset: { testid: 'result' } });
  const drop = h('label', { class: 'dropzone', for: 'image-file' },
    h('strong', { text: 'Drop an image here' }), ' or ', h('span', { class: 'link', text: 'choose a file' }),
    h('span', { class: 'muted', text: ' (JPEG, PNG, WebP, GIF, BMP)' }), file);
  let current = null;

  const classify = async () => {
    if (!current) return;
    if (preview.src) URL.revokeObjectURL(preview.src);
    preview.src = URL.createObjectURL(current);
    preview.hidden = false;
    replace(result, h('p', { class: 'muted', text: `Classifying ${current.name}…` }));
    await running(file, error, timing, async () => {
      try {
        const response = await call(`/predictions/${seg(name)}?topk=${encodeURIComponent(topk.value || 5)}`, {
          method: 'POST', body: current, headers: { 'Content-Type': current.type || 'application/octet-stream' }, signal,
        });
        let answer = await response.json();
        if (Array.isArray(answer)) [answer] = answer;
        // Sorted here: a JSON object's key order is not kept for labels that look like numbers.
        const top = Object.entries(answer).map(([label, value]) => ({ label, value })).sort((a, b) => b.value - a.value);
        if (!top.length) throw new Error('The model answered no labels.');
        replace(result,
          h('p', { class: 'top1' }, 'Top-1: ', h('strong', { dataset: { testid: 'top1' }, text: top[0].label }),
            ` (${(top[0].value * 100).toFixed(1)}%)`),
          bars(top));
      } catch (e) {
        replace(result);
        throw e;
      }
    });
  };
  const choose = (f) => {
    current = f ?? null;
    classify();
  };
  file.addEventListener('change', () => choose(file.files[0]));
  topk.addEventListener('change', classify);
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    choose(e.dataTransfer.files[0]);
  });
  return h('section', { class: 'card playground', dataset: { testid: 'playground', task: 'image-classification' } },
    h('h2', { text: 'Classify an image' }),
    h('p', { class: 'muted' }, 'POST ', h('code', { text: `/predictions/${name}?topk=N` }), ' with the image as the body.'),
    drop,
    h('div', { class: 'row' }, h('label', { class: 'field' }, 'Top-k ', topk), timing),
    error,
    h('div', { class: 'split' }, preview, result));
}

function textEmbedding(name, signal) {
  const MAX = 50;
  const error = errorBox();
  const timing = h('span', { class: 'muted' });
  const input = h('textarea', { rows: 5, id: 'sentences', dataset: { testid: 'sentences' } });
  input.value = 'A man is eating food.\nA man is eating a piece of bread.\nA man is riding a horse.';
  const result = h('div', { class: 'result', dataset: { testid: 'result' } });
  const button = h('button', { type: 'submit', text: 'Compare' });
  const form = h('form', { class: 'stack' },
    h('label', { class: 'field wide', for: 'sentences' }, 'Sentences, one per line'), input,
    h('div', { class: 'row' }, button, timing), error, result);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    running(button, error, timing, async () => {
      const sentences = lines(input.value);
      if (!sentences.length) throw new Error('Type at least one sentence.');
      if (sentences.length > MAX) throw new Error(`The heat map shows at most ${MAX} sentences; this is ${sentences.length}.`);
      const answer = await postJson('/v1/embeddings', { model: name, input: sentences }, { signal });
      const vectors = [...answer.data].sort((a, b) => a.index - b.index).map((d) => d.embedding);
      replace(result,
        h('p', { class: 'muted', text: `${vectors.length} vectors of ${vectors[0]?.length ?? 0} dimensions, ${answer.usage?.prompt_tokens ?? '?'} tokens. Cosine similarity:` }),
        h('div', { class: 'table-wrap' }, heatmap(sentences, cosineMatrix(vectors))));
    });
  });
  return h('section', { class: 'card playground', dataset: { testid: 'playground', task: 'text-embedding' } },
    h('h2', { text: 'Compare sentences' }),
    h('p', { class: 'muted' }, 'POST ', h('code', { text: '/v1/embeddings' }), ', then the cosine similarity of every pair of vectors.'),
    form);
}

/** Cosine similarity of every pair of vectors (the model may or may not normalise them). */
export function cosineMatrix(vectors) {
  const norms = vectors.map((v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0)));
  return vectors.map((a, i) => vectors.map((b, j) => {
    let dot = 0;
    for (let k = 0; k < a.length; k++) dot += a[k] * b[k];
    return norms[i] && norms[j] ? dot / (norms[i] * norms[j]) : 0;
  }));
}

function textClassification(name, signal) {
  const error = errorBox();
  const timing = h('span', { class: 'muted' });
  const input = h('textarea', { rows: 4, id: 'texts', dataset: { testid: 'texts' } });
  input.value = 'This is wonderful.\nThis is terrible.';
  const topk = h('input', { type: 'number', min: 1, max: 100, value: 5 });
  const result = h('div', { class: 'result', dataset: { testid: 'result' } });
  const button = h('button', { type: 'submit', text: 'Classify' });
  const form = h('form', { class: 'stack' },
    h('label', { class: 'field wide', for: 'texts' }, 'Texts, one per line'), input,
    h('div', { class: 'row' }, h('label', { class: 'field' }, 'Top-k ', topk), button, timing), error, result);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    running(button, error, timing, async () => {
      const texts = lines(input.value);
      if (!texts.length) throw new Error('Type at least one text.');
      const answer = await postJson(`/predictions/${seg(name)}?topk=${encodeURIComponent(topk.value || 5)}`, { text: texts }, { signal });
      replace(result, texts.map((text, i) => h('div', { class: 'classified' },
        h('p', { class: 'quote', text }),
        bars(answer[i].map(({ label, score }) => ({ label, value: score }))))));
    });
  });
  return h('section', { class: 'card playground', dataset: { testid: 'playground', task: 'text-classification' } },
    h('h2', { text: 'Classify texts' }),
    h('p', { class: 'muted' }, 'POST ', h('code', { text: `/predictions/${name}?topk=N` }), ' with ', h('code', { text: '{"text": [...]}' }), '.'),
    form);
}

function summarization(name, signal) {
  const error = errorBox();
  const timing = h('span', { class: 'muted' });
  const article = h('textarea', { rows: 7, id: 'article', dataset: { testid: 'article' } });
  article.value = 'Men have landed and walked on the moon. Two American astronauts spent more than two hours '
    + 'outside their lunar module, collecting rocks and setting up experiments, while a third orbited above.';
  const fields = [
    numberField('Max new tokens', 'max_new_tokens', { min: 1, max: 512 }),
    numberField('Beams', 'num_beams', { min: 1, max: 16 }),
    checkField('Sample', 'do_sample'),
    numberField('Seed', 'seed', { min: 0 }),
  ];
  const output = h('output', { class: 'generated-text', dataset: { testid: 'summary' } });
  const pieces = h('span', { class: 'muted' });
  const button = h('button', { type: 'submit', text: 'Summarize' });
  const form = h('form', { class: 'stack' },
    h('label', { class: 'field wide', for: 'article' }, 'Article'), article,
    h('div', { class: 'row' }, fields.map((f) => f.element)),
    h('div', { class: 'row' }, button, timing, pieces), error, output);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    running(button, error, timing, async () => {
      const text = article.value.trim();
      if (!text) throw new Error('Type an article to summarize.');
      output.textContent = '';
      output.dataset.pieces = '0';
      pieces.textContent = '';
      output.classList.add('streaming');
      try {
        await stream(`/predictions/${seg(name)}`, { text, parameters: parameters(fields) }, signal, {
          token: (d) => {
            output.textContent += d.text;
            output.dataset.pieces = String(Number(output.dataset.pieces) + 1);
            pieces.textContent = `${output.dataset.pieces} pieces streamed`;
          },
          // The pieces put together are the summary; the final text replaces them all the same.
          done: (d) => { output.textContent = Array.isArray(d) ? d[0].summary_text : d.summary_text; },
        });
      } finally {
        output.classList.remove('streaming');
      }
    });
  });
  return h('section', { class: 'card playground', dataset: { testid: 'playground', task: 'summarization' } },
    h('h2', { text: 'Summarize' }),
    h('p', { class: 'muted' }, 'POST ', h('code', { text: `/predictions/${name}` }), ' with ', h('code', { text: '"stream": true' }),
      ': the summary arrives token by token. Empty settings take the model\'s.'),
    form);
}

function textToImage(name, signal) {
  const error = errorBox();
  const timing = h('span', { class: 'muted' });
  const prompt = textField('Prompt', 'prompt', { id: 'prompt', value: 'a photo of the moon', dataset: { testid: 'prompt' } });
  const fields = [
    textField('Negative prompt', 'negative_prompt'),
    numberField('Size (px)', 'img_size', { min: 8, max: 2048, step: 8 }),
    numberField('Steps', 'num_inference_steps', { min: 1, max: 200 }),
    numberField('Guidance', 'guidance_scale', { min: 0, max: 50, step: 0.5 }),
    selectField('Scheduler', 'scheduler', ['euler', 'ddim', 'pndm']),
    numberField('Seed', 'seed', { min: 0 }),
  ];
  const progress = h('progress', { max: 1, value: 0, dataset: { testid: 'progress' } });
  const step = h('span', { class: 'muted', dataset: { testid: 'step' } });
  const figure = h('figure', { class: 'generated', hidden: true });
  const button = h('button', { type: 'submit', text: 'Generate' });
  const form = h('form', { class: 'stack' },
    prompt.element,
    h('div', { class: 'row' }, fields.map((f) => f.element)),
    h('div', { class: 'row' }, button, progress, step, timing), error, figure);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    running(button, error, timing, async () => {
      const text = prompt.input.value.trim();
      if (!text) throw new Error('Type a prompt.');
      // Indeterminate until the first step is reported.
      progress.removeAttribute('value');
      progress.max = 1;
      step.textContent = 'waiting for the model…';
      try {
        await stream(`/predictions/${seg(name)}`, { prompt: text, parameters: parameters(fields) }, signal, {
          progress: (d) => {
            progress.max = d.of;
            progress.value = d.step;
            step.textContent = `step ${d.step} of ${d.of}`;
          },
          done: (d) => {
            const image = Array.isArray(d) ? d[0] : d;
            const src = `data:image/png;base64,${image.image}`;
            replace(figure,
              h('img', { src, alt: text, width: image.width, height: image.height, dataset: { testid: 'generated' } }),
              h('figcaption', {}, `${image.width}×${image.height} `, h('a', { href: src, download: `${name}.png`, text: 'download PNG' })));
            figure.hidden = false;
            progress.value = progress.max;
            step.textContent = 'done';
          },
        });
      } catch (e) {
        progress.value = 0;
        step.textContent = '';
        throw e;
      }
    });
  });
  return h('section', { class: 'card playground', dataset: { testid: 'playground', task: 'text-to-image' } },
    h('h2', { text: 'Generate an image' }),
    h('p', { class: 'muted' }, 'POST ', h('code', { text: `/predictions/${name}` }), ' with ', h('code', { text: '"stream": true' }),
      ': progress after each denoising step, then the PNG. Empty settings take the model\'s.'),
    form);
}

