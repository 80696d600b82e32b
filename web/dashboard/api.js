// Who the user is, the REST calls, and the live event stream (SSE).
//
// Identity is never a cookie: a username (header mode) or a token (jwt
// mode) kept in session storage and sent with every call as X-User-ID or
// Authorization: Bearer, and as the username/token parameter of /events.

export const session = { config: null, auth: null };

const USER_KEY = 'flowcast.username';
const TOKEN_KEY = 'flowcast.token';

/** Loads /ui/config.json: {auth: "header"|"jwt", events_url}. */
export async function loadConfig() {
  const r = await fetch('/ui/config.json');
  session.config = await r.json();
}

function subjectOf(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes)).sub || '?';
  } catch {
    return '?';
  }
}

/**
 * The identity from the page's URL (?username= or ?token=, which is then
 * removed from the address bar and history) or from session storage.
 */
export function readIdentity() {
  const params = new URLSearchParams(location.search);
  const token = params.get('token');
  const user = params.get('username');
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    params.delete('token');
    const q = params.toString();
    history.replaceState(null, '', location.pathname + (q ? `?${q}` : '') + location.hash);
  }
  if (user) sessionStorage.setItem(USER_KEY, user);
  return identity();
}

function identity() {
  if (session.config.auth === 'jwt') {
    const token = sessionStorage.getItem(TOKEN_KEY);
    session.auth = token ? { kind: 'jwt', token, user: subjectOf(token) } : null;
  } else {
    const user = sessionStorage.getItem(USER_KEY);
    session.auth = user ? { kind: 'header', user } : null;
  }
  return session.auth;
}

/** Signs in with a username (header mode) or a token (jwt mode). */
export function signIn(value) {
  sessionStorage.setItem(session.config.auth === 'jwt' ? TOKEN_KEY : USER_KEY, value);
  return identity();
}

export function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
  session.auth = null;
}

/** A header value carrying UTF-8 (fetch sends each code unit as one byte). */
function utf8Header(text) {
  return String.fromCharCode(...new TextEncoder().encode(text));
}

/** An error answered by the API: {status, code, message}. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Calls the REST API as the signed-in user; resolves to the JSON answer. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const a = session.auth;
  if (a && a.kind === 'jwt') headers.Authorization = `Bearer ${a.token}`;
  else if (a) headers['X-User-ID'] = utf8Header(a.user);
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let r;
  try {
    r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the server (${e.message})`);
  }
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!r.ok) {
    const e = data && data.error;
    const err = new ApiError(r.status, (e && e.code) || `http_${r.status}`,
      (e && e.message) || `${r.status} ${r.statusText}`);
    // The identity itself was refused: back to the sign-in form.
    if (r.status === 401 || err.code === 'invalid_user') {
      window.dispatchEvent(new CustomEvent('flowcast:signin', { detail: err.message }));
    }
    throw err;
  }
  return data;
}

/**
 * The user's live events over SSE. EventSource reconnects by itself and
 * resumes with Last-Event-ID; when it gives up (an HTTP error, a drain),
 * this reopens it with last_event_id= after a growing pause. `onState`
 * hears "connecting", "live", "reconnecting" or "unavailable"; `onResync`
 * is called when events may have been missed (a reopen without a known
 * position, or a replay_gap), so that views reload from REST.
 */
export class Live {
  constructor({ onEvent, onState, onResync }) {
    Object.assign(this, { onEvent, onState, onResync });
    this.lastId = null;
    this.es = null;
    this.pause = 1000;
    this.timer = null;
  }

  start() {
    if (!session.config.events_url) {
      this.onState('unavailable');
      return;
    }
    this.open(false);
  }

  stop() {
    clearTimeout(this.timer);
    if (this.es) this.es.close();
    this.es = null;
  }

  url() {
    const u = new URL(session.config.events_url, location.href);
    const a = session.auth;
    if (a.kind === 'jwt') u.searchParams.set('token', a.token);
    else u.searchParams.set('username', a.user);
    if (this.lastId) u.searchParams.set('last_event_id', this.lastId);
    return u;
  }

  open(reopening) {
    this.onState(reopening ? 'reconnecting' : 'connecting');
    const es = new EventSource(this.url());
    this.es = es;
    let resync = reopening && !this.lastId;
    es.onopen = () => {
      this.pause = 1000;
      this.onState('live');
      if (resync) {
        resync = false;
        this.onResync();
      }
    };
    es.onmessage = (m) => {
      if (m.lastEventId) this.lastId = m.lastEventId;
      let ev;
      try {
        ev = JSON.parse(m.data);
      } catch {
        return;
      }
      if (ev.type === 'replay_gap') this.onResync();
      else this.onEvent(ev);
    };
    es.onerror = () => {
      if (es !== this.es) return;
      this.onState('reconnecting');
      if (es.readyState === EventSource.CLOSED) {
        this.timer = setTimeout(() => this.open(true), this.pause);
        this.pause = Math.min(this.pause * 2, 15000);
      }
    };
  }
}
