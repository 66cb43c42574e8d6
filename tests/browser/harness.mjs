// What the console's browser tests share: the configuration tests/python/test_console.py writes
// (a JSON file named on the command line), Debian's Chromium driven by playwright-core (from the
// cached node_modules the configuration names), and pages that record every console error and
// uncaught exception so that each test can fail on them.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

export const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

// playwright-core lives outside the clone (~/.cache/ferroserve/node-<hash>/node_modules), where
// an import from this file would not look; require() from that folder finds it.
const { chromium } = createRequire(path.join(config.node_modules, '..', 'package.json'))('playwright-core');

/** A 1366x768 Chromium (a laptop screen), headless. */
export function launch() {
  return chromium.launch({
    executablePath: config.chromium ?? '/usr/bin/chromium',
    headless: true,
    // Root in a container has no user namespaces for Chromium's sandbox.
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
}

/**
 * A new page at the console's URL. `page.problems` lists the console errors and uncaught
 * exceptions seen so far, except those an `expect(pattern)` call allowed: a failing request the
 * test makes on purpose is logged by Chromium itself ("Failed to load resource: ... 400").
 */
export async function open(browser) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  const problems = [];
  const allowed = [];
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const text = `console error: ${message.text()} (${message.location().url ?? ''})`;
    const i = allowed.findIndex((p) => p.test(text));
    if (i >= 0) allowed.splice(i, 1);
    else problems.push(text);
  });
  page.on('pageerror', (error) => problems.push(`uncaught exception: ${error.stack ?? error}`));
  page.on('requestfailed', (request) => {
    // The console aborts its own requests when the user leaves a page; anything else is a fault.
    if (request.failure()?.errorText !== 'net::ERR_ABORTED') {
      problems.push(`request failed: ${request.method()} ${request.url()}: ${request.failure()?.errorText}`);
    }
  });
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (!['data:', 'blob:'].includes(url.protocol) && url.origin !== new URL(config.url).origin) {
      problems.push(`external request: ${request.url()}`);
    }
  });
  page.problems = problems;
  /** Allows one console error matching `pattern` (a RegExp). */
  page.expectConsoleError = (pattern) => allowed.push(pattern);
  await page.goto(config.url);
  return page;
}

/** Fails when the page logged an error or threw, naming each. */
export function assertNoProblems(page) {
  assert.deepEqual(page.problems, [], `the page had errors:\n${page.problems.join('\n')}`);
}

let shots = 0;

/** Saves a full-page screenshot into the test's folder, numbered in the order taken. */
export async function screenshot(page, name) {
  shots += 1;
  await page.screenshot({ path: path.join(config.screenshots, `${String(shots).padStart(2, '0')}-${name}.png`), fullPage: true });
}

/** Goes to a console page by its hash, as a link in the page would (no reload). */
export async function go(page, hash) {
  await page.evaluate((h) => { location.hash = h; }, hash);
}
