// Small DOM helpers shared by the console's pages. Everything a server sends is put in the page
// as text (never as HTML), so a model name or an error message cannot inject markup.

/**
 * Makes an element. `props`: attributes, except `class`, `text`, `dataset`, event handlers
 * (`onclick`, ...) and properties that are not attributes (`value`, `checked`, `disabled`, ...).
 * Children: nodes, strings, or null/false (skipped), possibly nested in arrays.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key in PROPERTIES) el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

const PROPERTIES = { value: 1, checked: 1, disabled: 1, hidden: 1, selected: 1 };

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** Shows an error (an Error's message, or a string) in `el`, or hides `el` when there is none. */
export function showError(el, error) {
  if (!error) {
    el.hidden = true;
    el.textContent = '';
    return;
  }
  el.hidden = false;
  el.textContent = error instanceof Error ? error.message : String(error);
}

/** An element for showing a section's errors: hidden until it has one. */
export function errorBox() {
  return h('p', { class: 'error', role: 'alert', hidden: true, dataset: { testid: 'error' } });
}

export function mib(bytes) {
  return (bytes / (1024 * 1024)).toFixed(1);
}

/** A number with at most `digits` significant digits, without trailing zeros. */
export function short(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  if (value === 0) return '0';
  return Number(value.toPrecision(digits)).toString();
}

/** `ms` milliseconds, in the unit that reads best. */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  if (ms < 1) return `${short(ms * 1000)} µs`;
  if (ms < 1000) return `${short(ms)} ms`;
  return `${short(ms / 1000)} s`;
}

/** An RFC 3339 time in the reader's time zone (as it is, when it does not parse). */
export function localTime(rfc3339) {
  const date = new Date(rfc3339);
  return Number.isNaN(date.getTime()) ? rfc3339 : date.toLocaleString();
}

/** Whether an error is the cancellation of a request this page gave up (not worth showing). */
export function isAbort(error) {
  return error?.name === 'AbortError';
}
