// The console against the demo models, in one browser tab as a person would use it: the models
// table, each task's playground, the tensor form, the metrics and the autoscaling log. The
// expected answers come from tests/python/test_console.py, which asked the server's own routes
// and the Python reference; every page must stay free of console errors.
//
//   node tests/browser/console.mjs CONFIG.json   (test_console.py writes CONFIG.json)

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { assertNoProblems, config, go, launch, open, screenshot } from './harness.mjs';

let browser;
let page;

before(async () => {
  browser = await launch();
  page = await open(browser);
});

after(async () => {
  await browser?.close();
});

test('the models page lists every demo model, ready, with its details', async () => {
  const table = page.getByTestId('models');
  await table.waitFor();
  for (const name of config.models) {
    const row = table.locator(`tr[data-model="${name}"]`);
    await row.waitFor();
    assert.match(await row.locator('td').nth(1).innerText(), /READY/, `${name} is not READY`);
  }
  const image = table.locator(`tr[data-model="${config.image.model}"] td`);
  assert.equal(await image.nth(2).innerText(), 'image-classification');
  // Two single-threaded CPU replicas batching up to 8 (examples/models/efficientnet-lite0/model.yaml).
  assert.equal(await image.nth(4).innerText(), '2');
  assert.equal(await image.nth(5).innerText(), 'cpu ×2');
  assert.match(await image.nth(6).innerText(), /up to 8, dynamic/);
  assert.ok(Number(await image.nth(7).innerText()) > 1, 'EfficientNet-Lite0 weighs more than 1 MiB');
  // On loopback without a management token, models may be loaded and unloaded.
  assert.equal(await page.getByTestId('mode').innerText(), '');
  assert.equal(await table.locator('button[data-action="unload"]').count(), config.models.length);
  assert.equal(await page.getByTestId('docs-link').getAttribute('href'), '/docs');
  assert.equal((await page.request.get(new URL('/docs', config.url).href)).status(), 200);
  await screenshot(page, 'models');
  assertNoProblems(page);
});

test('an image dropped on the classifier shows the reference top-1 label and the top-k bars', async () => {
  await page.locator(`a.model-link:text-is("${config.image.model}")`).click();
  await page.getByTestId('playground').waitFor();
  assert.equal(await page.getByTestId('playground').getAttribute('data-task'), 'image-classification');
  await page.getByTestId('image-input').setInputFiles(config.image.file);
  const top1 = page.getByTestId('top1');
  await top1.waitFor();
  assert.equal(await top1.innerText(), config.image.top1);
  assert.equal(await page.locator('[data-testid="result"] .bar-row').count(), 5);
  await screenshot(page, 'image-classification');

  // Bytes that are no image: the server's reason is shown, and Chromium logs the 400 itself.
  page.expectConsoleError(/status of 400/);
  await page.getByTestId('image-input').setInputFiles({ name: 'notes.bin', mimeType: 'application/octet-stream', buffer: Buffer.from('hello, not an image') });
  const error = page.locator('[data-testid="playground"] [data-testid="error"]');
  await error.waitFor();
  assert.match(await error.innerText(), /is not an image.*\(HTTP 400\)/);
  assertNoProblems(page);
});

test('two sentences give a heat map of the cosine similarities of their embeddings', async () => {
  await go(page, `#/model/${encodeURIComponent(config.embedding.model)}`);
  await page.getByTestId('sentences').fill(config.embedding.sentences.join('\n'));
  await page.getByRole('button', { name: 'Compare' }).click();
  const heatmap = page.getByTestId('heatmap');
  await heatmap.waitFor();
  const shown = await heatmap.locator('tbody tr').evaluateAll((rows) => rows.map((r) => [...r.querySelectorAll('td')].map((td) => Number(td.textContent))));
  assert.equal(shown.length, config.embedding.sentences.length);
  shown.forEach((row, i) => row.forEach((value, j) => {
    const expected = config.embedding.cosine[i][j];
    assert.ok(Math.abs(value - expected) <= 1e-3, `cell (${i}, ${j}) shows ${value}, the embeddings' cosine is ${expected}`);
  }));
  await screenshot(page, 'text-embedding');
  assertNoProblems(page);
});

test('texts get the reference labels and scores as bars', async () => {
  await go(page, `#/model/${encodeURIComponent(config.classification.model)}`);
  await page.getByTestId('texts').fill(config.classification.texts.join('\n'));
  await page.getByRole('button', { name: 'Classify' }).click();
  const classified = page.locator('[data-testid="result"] .classified');
  await classified.first().waitFor();
  assert.equal(await classified.count(), config.classification.texts.length);
  for (const [i, expected] of config.classification.top1.entries()) {
    const item = classified.nth(i);
    assert.equal(await item.locator('.quote').innerText(), config.classification.texts[i]);
    // Top-k 5 of a two-label model: both labels, the likelier first.
    assert.equal(await item.locator('.bar-row').count(), 2);
    assert.equal(await item.locator('.bar-label').first().innerText(), expected.label);
    const shown = parseFloat(await item.locator('.bar-value').first().innerText());
    assert.ok(Math.abs(shown - expected.score * 100) <= 0.1, `${expected.label}: ${shown}% shown, the reference says ${expected.score}`);
  }
  await screenshot(page, 'text-classification');
  assertNoProblems(page);
});

test('a summary streams in and equals the plain answer', async () => {
  await go(page, `#/model/${encodeURIComponent(config.summary.model)}`);
  await page.getByTestId('article').fill(config.summary.text);
  for (const [key, value] of Object.entries(config.summary.parameters)) {
    await page.locator(`[data-testid="playground"] input[name="${key}"]`).fill(String(value));
  }
  await page.getByRole('button', { name: 'Summarize' }).click();
  const output = page.getByTestId('summary');
  await page.waitForFunction(() => {
    const o = document.querySelector('[data-testid="summary"]');
    return o && o.textContent && !o.classList.contains('streaming');
  });
  assert.equal(await output.innerText(), config.summary.summary);
  // Greedy search streams a piece per token.
  const pieces = Number(await output.getAttribute('data-pieces'));
  assert.ok(pieces > 1, `the summary came in ${pieces} piece(s)`);
  await screenshot(page, 'summarization');
  assertNoProblems(page);
});

test('a prompt shows its progress, then the PNG the plain route gives', async () => {
  await go(page, `#/model/${encodeURIComponent(config.generation.model)}`);
  await page.getByTestId('prompt').fill(config.generation.prompt);
  for (const [key, value] of Object.entries(config.generation.parameters)) {
    await page.locator(`[data-testid="playground"] input[name="${key}"]`).fill(String(value));
  }
  await page.getByRole('button', { name: 'Generate' }).click();
  const image = page.getByTestId('generated');
  await image.waitFor();
  const src = await image.getAttribute('src');
  assert.ok(src.startsWith('data:image/png;base64,'), `not a PNG data URL: ${src.slice(0, 40)}`);
  const png = Buffer.from(src.slice('data:image/png;base64,'.length), 'base64');
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  assert.equal(png.toString('base64'), config.generation.png_base64, 'the streamed PNG differs from the plain route\'s');
  const size = config.generation.parameters.img_size;
  assert.deepEqual(await image.evaluate((img) => [img.complete, img.naturalWidth, img.naturalHeight]), [true, size, size]);
  // The bar's maximum comes from the progress events: it counts the denoising steps.
  const progress = page.getByTestId('progress');
  const steps = config.generation.parameters.num_inference_steps;
  assert.deepEqual(await progress.evaluate((p) => [p.max, p.value]), [steps, steps]);
  await screenshot(page, 'text-to-image');
  assertNoProblems(page);
});

test('a plain model gets the tensor form from its metadata, and its outputs', async () => {
  await go(page, `#/model/${encodeURIComponent(config.tensors.model)}`);
  const form = page.locator('[data-testid="playground"][data-task="tensors"]');
  await form.locator('fieldset').first().waitFor();
  // simple: INPUT0, INPUT1 INT32 [-1, 16]; OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.
  assert.equal(await form.locator('fieldset').count(), 2);
  // Data that does not fill the shape is explained before anything is sent.
  await form.locator('input.dim').first().fill('2');
  await form.locator('textarea[data-input="INPUT1"]').fill(JSON.stringify(Array(17).fill(1)));
  await form.getByRole('button', { name: 'Infer' }).click();
  const error = form.locator('form [data-testid="error"]');
  await error.waitFor();
  assert.equal(await error.innerText(), 'INPUT1: shape [1, 16] needs 16 values, the data has 17');
  await form.locator('input.dim').nth(1).fill('2');
  await form.locator('textarea[data-input="INPUT1"]').fill(JSON.stringify([Array(16).fill(1), Array(16).fill(2)]));
  await form.getByRole('button', { name: 'Infer' }).click();
  const sum = form.locator('[data-output="OUTPUT0"] tr');
  await sum.first().waitFor();
  const rows = await sum.evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll('td')].map((td) => Number(td.textContent))));
  const input0 = Array.from({ length: 32 }, (_, i) => i % 100);
  assert.deepEqual(rows, [input0.slice(0, 16).map((v) => v + 1), input0.slice(16).map((v) => v + 2)]);
  await screenshot(page, 'tensors');
  assertNoProblems(page);
});

test('the metrics page charts the requests just made', async () => {
  await go(page, '#/metrics');
  await page.getByTestId('charts').waitFor();
  assert.equal(await page.locator('[data-testid="charts"] canvas').count(), 4);
  // The requests above are within the table's 30 s window once two scrapes saw them.
  const row = page.locator(`[data-testid="metrics-table"] tr[data-model="${config.image.model}"]`);
  await page.waitForFunction((name) => {
    const cells = document.querySelectorAll(`[data-testid="metrics-table"] tr[data-model="${name}"] td`);
    return cells.length && cells[3].textContent !== '–';
  }, config.image.model, { timeout: 20000 });
  const cells = await row.locator('td').allInnerTexts();
  assert.ok(Number(cells[1]) > 0, `requests/s of ${config.image.model}: ${cells[1]}`);
  assert.match(cells[3], /^[\d.]+ (µs|ms|s)$/, `p50 of ${config.image.model}: ${cells[3]}`);
  // A model's own view of the charts.
  await row.locator('a').click();
  await page.waitForFunction((name) => document.querySelector('#metrics-model')?.value === name, config.image.model);
  await screenshot(page, 'metrics');
  assertNoProblems(page);
});

test('the metrics arithmetic follows Prometheus\' text format and histogram_quantile()', async () => {
  const result = await page.evaluate(async () => {
    const { parsePrometheus, quantile } = await import('/console/metrics.js');
    const samples = parsePrometheus([
      '# TYPE h histogram',
      'h_bucket{le="1",model="a \\"b\\", c"} 2',
      'h_bucket{le="2",model="a \\"b\\", c"} 6',
      'h_bucket{le="+Inf",model="a \\"b\\", c"} 8',
      'plain 3.5 1700000000',
      '# EOF',
    ].join('\n'));
    const after = new Map(samples.filter((s) => s.name === 'h_bucket').map((s) => [Number(s.labels.le.replace('+Inf', 'Infinity')), s.value]));
    const before = new Map([[1, 2], [2, 2], [Infinity, 4]]);
    return {
      labels: samples[0].labels,
      plain: samples[3],
      p50: quantile(0.5, null, after),
      p99: quantile(0.99, null, after),
      since: quantile(0.5, before, after),
      none: quantile(0.5, after, after),
    };
  });
  assert.deepEqual(result.labels, { le: '1', model: 'a "b", c' });
  assert.deepEqual(result.plain, { name: 'plain', labels: {}, value: 3.5 });
  // Rank 4 of 8 is the second of the four observations between 1 and 2.
  assert.equal(result.p50, 1.5);
  // Above the last finite bound only that bound is known.
  assert.equal(result.p99, 2);
  // Since `before`: four observations, all between 1 and 2.
  assert.equal(result.since, 1.5);
  assert.equal(result.none, null);
  assertNoProblems(page);
});

test('the autoscaling log shows the autoscaled model\'s decision', async () => {
  await go(page, '#/autoscaling');
  const table = page.getByTestId('autoscaling');
  await table.waitFor();
  const row = table.locator('tbody tr', { hasText: config.autoscaled.name });
  await row.first().waitFor();
  const cells = await row.first().locator('td').allInnerTexts();
  assert.equal(cells[2], `${config.autoscaled.from} → ${config.autoscaled.to}`);
  await screenshot(page, 'autoscaling');
  assertNoProblems(page);
});

test('an unknown page and an unknown model say so', async () => {
  await go(page, '#/nowhere');
  await page.getByText('The console has no page').waitFor();
  await go(page, '#/model/no-such-model');
  await page.getByText('The server has no model named \'no-such-model\'.').waitFor();
  assertNoProblems(page);
});
