// The dashboard's entry point: sign-in, the page frame, the live stream
// status, and routing between the runs page (#/) and a run (#/runs/{id}).

import { session, loadConfig, readIdentity, signIn, signOut, Live } from './api.js';
import { h, fill } from './dom.js';
import { RunsPage } from './runs.js';
import { RunPage } from './run.js';

/** Render times of the last pages shown, for people and tests. */
const timings = {};
window.flowcastTimings = timings;

const LIVE_TEXT = {
  connecting: 'connecting…',
  live: 'live',
  reconnecting: 'reconnecting…',
  unavailable: 'no live updates',
};

let page = null;
let live = null;
const main = document.getElementById('main');
const who = document.getElementById('who');
const liveBadge = document.getElementById('live');

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  if (!session.auth) return;
  if (page && page.destroy) page.destroy();
  const m = location.hash.match(/^#\/runs\/([^/]+)$/);
  page = m
    ? new RunPage(main, decodeURIComponent(m[1]), { timings })
    : new RunsPage(main, { navigate, timings });
  document.title = m ? `Run ${decodeURIComponent(m[1]).slice(0, 8)} · flowcast` : 'flowcast';
  page.show();
}

function setLive(state) {
  liveBadge.dataset.state = state;
  liveBadge.textContent = LIVE_TEXT[state] || state;
}

function showSignIn(message) {
  const jwt = session.config.auth === 'jwt';
  const input = h('input', {
    id: 'identity', name: 'identity', required: true, autocomplete: jwt ? 'off' : 'username',
    type: jwt ? 'password' : 'text', maxlength: jwt ? undefined : 128,
  });
  const error = h('p', { class: 'error', role: 'alert' }, message || '');
  who.replaceChildren();
  setLive('unavailable');
  fill(main, h('section', { class: 'panel signin', 'aria-labelledby': 'signin-h' },
    h('h2', { id: 'signin-h' }, 'Sign in'),
    h('form', {
      onsubmit: (e) => {
        e.preventDefault();
        const v = input.value.trim();
        if (!v) {
          error.textContent = jwt ? 'Paste a token.' : 'Enter a username.';
          return;
        }
        signIn(v);
        start();
      },
    },
    h('label', { for: 'identity' }, jwt ? 'Token' : 'Username'), input,
    h('button', { type: 'submit' }, 'Sign in'), error),
    h('p', { class: 'muted' }, jwt
      ? 'Links may carry the token: /?token=…'
      : 'Links may carry the username: /?username=alice')));
  input.focus();
}

function start() {
  fill(who, 'Signed in as ', h('strong', { id: 'user' }, session.auth.user), ' ',
    h('button', {
      type: 'button',
      class: 'link',
      onclick: () => {
        if (live) live.stop();
        signOut();
        showSignIn();
      },
    }, 'Sign out'));
  live = new Live({
    onEvent: (ev) => page && page.onEvent(ev),
    onState: setLive,
    onResync: () => route(),
  });
  live.start();
  route();
}

async function boot() {
  try {
    await loadConfig();
  } catch (e) {
    fill(main, h('p', { class: 'error', role: 'alert' }, `Cannot load the configuration: ${e.message}`));
    return;
  }
  window.addEventListener('hashchange', route);
  window.addEventListener('flowcast:signin', (e) => {
    if (!session.auth) return;
    if (live) live.stop();
    if (page && page.destroy) page.destroy();
    page = null;
    signOut();
    showSignIn(`Signed out: ${e.detail}`);
  });
  if (readIdentity()) start();
  else showSignIn();
}

boot();
