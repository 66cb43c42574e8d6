// The console of a server whose repository changes need the management token: without it (or
// with a wrong one) the models table is read-only and has no Load/Unload buttons; with it the
// buttons are there and work, because the console sends the token with its requests.
//
//   node tests/browser/token.mjs CONFIG.json   (test_console.py writes CONFIG.json)

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { assertNoProblems, config, launch, open, screenshot } from './harness.mjs';

let browser;
let page;

before(async () => {
  browser = await launch();
  page = await open(browser);
});

after(async () => {
  await browser?.close();
});

const table = () => page.getByTestId('models');
const buttons = () => table().locator('button[data-action]');
const state = (name) => table().locator(`tr[data-model="${name}"] td`).nth(1);

async function useToken(value) {
  await page.getByTestId('token').fill(value);
  await page.getByRole('button', { name: 'Use token' }).click();
}

test('without the token the models are listed read-only, without buttons', async () => {
  await table().waitFor();
  for (const name of config.models) await table().locator(`tr[data-model="${name}"]`).waitFor();
  assert.match(await page.getByTestId('mode').innerText(), /^Read-only/);
  assert.equal(await buttons().count(), 0);
  await screenshot(page, 'read-only');
  assertNoProblems(page);
});

test('a wrong token leaves the console read-only', async () => {
  await useToken(`${config.token}-wrong`);
  await page.getByTestId('token-state').filter({ hasText: 'token set' }).waitFor();
  await table().waitFor();
  await page.getByTestId('mode').filter({ hasText: /^Read-only/ }).waitFor();
  assert.equal(await buttons().count(), 0);
  assertNoProblems(page);
});

test('with the token the buttons appear, and unload and load the model', async () => {
  await useToken(config.token);
  await table().locator('button[data-action="unload"]').first().waitFor();
  assert.equal(await page.getByTestId('mode').innerText(), '');
  assert.equal(await table().locator('button[data-action="unload"]').count(), config.models.length);
  await screenshot(page, 'with-token');

  const row = table().locator(`tr[data-model="${config.model}"]`);
  await row.locator('button[data-action="unload"]').click();
  await page.waitForFunction((name) => document.querySelector(`[data-testid="models"] tr[data-model="${name}"] td:nth-child(2)`)?.textContent === 'UNAVAILABLE', config.model);
  await row.locator('button[data-action="load"]').click();
  await page.waitForFunction((name) => document.querySelector(`[data-testid="models"] tr[data-model="${name}"] td:nth-child(2)`)?.textContent === 'READY', config.model);
  assert.equal(await state(config.model).innerText(), 'READY');

  // The token lasts for the tab: a reload keeps it.
  await page.reload();
  await table().locator('button[data-action="unload"]').first().waitFor();
  assertNoProblems(page);
});

test('forgetting the token makes the console read-only again', async () => {
  await page.getByRole('button', { name: 'Forget' }).click();
  await page.getByTestId('mode').filter({ hasText: /^Read-only/ }).waitFor();
  assert.equal(await buttons().count(), 0);
  await screenshot(page, 'forgotten');
  assertNoProblems(page);
});
