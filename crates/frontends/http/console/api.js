// The console's only way to the server: every request carries the management token when the
// user gave one, and every failure becomes an ApiError whose message is the server's own
// (`{"error": ...}`), so pages can show it as it is.

const TOKEN_KEY = 'ferroserve.management-token';

/** The management token this tab uses ('' for none). Kept for the tab's life only. */
export function token() {
  return sessionStorage.getItem(TOKEN_KEY) ?? '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
  }
}

/**
 * fetch() with the token, answering the Response when its status is 2xx and throwing an
 * ApiError otherwise. An AbortError (the caller gave up) is passed on as it is.
 */
export async function call(path, { method = 'GET', body, headers = {}, signal } = {}) {
  const all = new Headers(headers);
  const bearer = token();
  if (bearer) all.set('Authorization', `Bearer ${bearer}`);
  let response;
  try {
    response = await fetch(path, { method, body, headers: all, signal, cache: 'no-store' });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(`${method} ${path}: the server did not answer (${error.message})`, 0);
  }
  if (!response.ok) {
    throw new ApiError(`${method} ${path}: ${await failure(response)}`, response.status);
  }
  return response;
}

async function failure(response) {
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string') return `${body.error} (HTTP ${response.status})`;
  } catch {
    // Not JSON: show the start of the body as it is.
  }
  const reason = `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''}`;
  return text ? `${reason}: ${text.slice(0, 500)}` : reason;
}

export async function getJson(path, options = {}) {
  return (await call(path, options)).json();
}

export async function postJson(path, value, options = {}) {
  const response = await call(path, {
    ...options,
    method: 'POST',
    body: JSON.stringify(value),
    headers: { 'Content-Type': 'application/json', ...options.headers },
  });
  return response.json();
}

/** `name` made safe for a path segment. */
export function seg(name) {
  return encodeURIComponent(name);
}

/**
 * The Server-Sent Events of a streamed answer, as {event, data} with `data` parsed as JSON,
 * read with fetch so that the request can be a POST with a body (EventSource only GETs).
 */
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = parseEvent(block);
      if (event) yield event;
    }
  }
  const last = parseEvent(buffer);
  if (last) yield last;
}

function parseEvent(block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    // Lines starting with ':' are comments (the server's keep-alives).
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  if (!data.length) return null;
  const text = data.join('\n');
  try {
    return { event, data: JSON.parse(text) };
  } catch {
    return { event, data: text };
  }
}
