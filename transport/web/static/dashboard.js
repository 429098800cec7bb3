// @ts-check
// The dashboard page: log in, then one connection (the JavaScript client, served by this same
// server at /client/switchboard.js) feeds the live charts (topic sys.stats), the authors table
// (topic authors) and the console. What the user's roles do not allow is explained, not shown.

import { connect, login, tokenClaims, tokenSource, SwitchboardError } from '/client/switchboard.js';
import { statsCharts } from './charts.js';
import { AuthorsTable } from './authors.js';
import { wireConsole } from './console.js';

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const TOKENS_KEY = 'switchboard.tokens';
const base = location.origin;
const wsURL = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/web`;

/** @type {import('/client/switchboard.js').Client | null} */
let client = null;
/** @type {ReturnType<typeof statsCharts> | null} */
let charts = null;

/** What the page exposes for its own tests (the browser test reads it; nothing depends on it). */
const page = { samples: () => (charts ? Math.min(...charts.map((c) => c.samples)) : 0), reloads: 0, client: () => client };
Object.defineProperty(globalThis, 'switchboardPage', { value: page });

// ---- tokens ----

/** @returns {import('/client/switchboard.js').Tokens | null} */
function storedTokens() {
  try {
    return JSON.parse(sessionStorage.getItem(TOKENS_KEY) ?? 'null');
  } catch {
    return null;
  }
}

/** roles reads the roles in the token the way Keycloak lays them out (the server decides anyway:
 * these only choose what the page offers). @param {string} token */
function rolesOf(token) {
  const c = tokenClaims(token) ?? {};
  const roles = new Set(c.realm_access?.roles ?? []);
  for (const client of Object.values(c.resource_access ?? {})) for (const r of /** @type {any} */ (client).roles ?? []) roles.add(r);
  return { user: c.preferred_username ?? c.sub ?? '?', roles };
}

// ---- log in and out ----

function showLogin(message = '') {
  $('app').hidden = true;
  $('logout').hidden = true;
  $('who').textContent = '';
  $('login').hidden = false;
  $('login-error').textContent = message;
  setStatus('offline');
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const form = /** @type {HTMLFormElement} */ (ev.target);
  const fd = new FormData(form);
  $('login-error').textContent = '';
  try {
    const tokens = await login(base, String(fd.get('username')), String(fd.get('password')));
    sessionStorage.setItem(TOKENS_KEY, JSON.stringify(tokens));
    form.reset();
    start(tokens);
  } catch (e) {
    $('login-error').textContent = e instanceof SwitchboardError
      ? (e.http_status === 401 ? 'Wrong user name or password.' : `${e.msg} (HTTP ${e.http_status})`)
      : `The server did not answer: ${/** @type {Error} */ (e).message}`;
  }
});

$('logout').addEventListener('click', () => {
  client?.close();
  client = null;
  sessionStorage.removeItem(TOKENS_KEY);
  showLogin();
});

// ---- the live page ----

/** @param {string} state */
function setStatus(state, text = state) {
  const el = $('status');
  el.dataset.state = state;
  el.textContent = text;
}

/** @param {string} text */
function notice(text) {
  const el = $('notice');
  el.textContent = `${new Date().toLocaleTimeString()} — ${text}`;
  el.hidden = false;
}

/** @param {import('/client/switchboard.js').Tokens} tokens */
function start(tokens) {
  client?.close();
  const { user, roles } = rolesOf(tokens.access_token);
  $('login').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  $('who').textContent = `${user} · ${[...roles].filter((r) => !r.startsWith('default-roles')).sort().join(', ') || 'no roles'}`;

  const src = tokenSource({ base, tokens, onTokens: (t) => sessionStorage.setItem(TOKENS_KEY, JSON.stringify(t)) });
  const c = connect({
    url: wsURL,
    token: tokens.access_token,
    // A refresh token the server no longer takes ends the session: back to the login form.
    getToken: () => src.getToken().catch((e) => {
      if (e instanceof SwitchboardError && e.http_status === 401) {
        sessionStorage.removeItem(TOKENS_KEY);
        queueMicrotask(() => {
          c.close();
          showLogin('Your session has ended: log in again.');
        });
      }
      throw e;
    }),
    reconnectMax: 5000, // a dashboard should come back soon after its server does
  });
  client = c;
  c.on('state', (s) => {
    if (s === 'connecting') setStatus('connecting', 'connecting…');
    else if (s === 'connected') setStatus('connected', 'live');
    else if (s === 'closed') setStatus('closed', 'stopped');
  });
  c.on('disconnected', (d) => {
    setStatus('disconnected', `reconnecting in ${(d.delay / 1000).toFixed(1)} s`);
    charts?.forEach((ch) => ch.gap());
  });
  c.on('closed', ({ error }) => {
    if (error) notice(`The connection stopped for good: ${error.message}. Reload the page to try again.`);
  });

  charts ??= statsCharts(document);
  followStats(c);
  followAuthors(c, roles);
  wireConsoleOnce();
}

/** @param {import('/client/switchboard.js').Client} c */
async function followStats(c) {
  const explain = $('stats-explain');
  try {
    await c.subscribe('sys.stats', (m) => {
      $('node').textContent = `node ${m.data.node}`;
      charts?.forEach((ch) => ch.push(m.data));
    });
    explain.hidden = true;
    $('charts').hidden = false;
  } catch (e) {
    if (!(e instanceof SwitchboardError)) return;
    $('charts').hidden = true;
    explain.hidden = false;
    explain.textContent = e.permissionDenied
      ? 'Your roles do not let you read the live figures (topic sys.stats).'
      : `The live figures are not available: ${e.msg}`;
  }
}

/**
 * @param {import('/client/switchboard.js').Client} c
 * @param {Set<string>} roles
 */
async function followAuthors(c, roles) {
  const explain = $('authors-explain');
  const table = new AuthorsTable(/** @type {HTMLTableSectionElement} */ ($('authors-body')), $('authors-count'), {
    canUpdate: roles.has('update-author'),
    canDelete: roles.has('delete-author'),
    onRename: async (a) => {
      const name = prompt(`Rename author ${a.id}`, a.name);
      if (name && name !== a.name) await act(() => c.request(4, { id: a.id, name }));
    },
    onDelete: async (a) => {
      if (confirm(`Delete author ${a.id} (${a.name})?`)) await act(() => c.request(5, { id: a.id }));
    },
  });
  const reload = async () => {
    table.reloading();
    const answer = await c.request(1, {}, { retry: true });
    table.load(answer.data);
  };
  try {
    await c.subscribe('authors', (m) => table.apply(m.data), {
      onMissed: () => {
        page.reloads++;
        notice('Reconnected: author changes made while the page was away could not be replayed, so the table was reloaded.');
        reload().catch((e) => notice(`Reloading the authors failed: ${e.message}`));
      },
    });
    await reload();
    explain.hidden = true;
    $('authors-live').hidden = false;
  } catch (e) {
    if (!(e instanceof SwitchboardError)) return;
    $('authors-live').hidden = true;
    explain.hidden = false;
    explain.textContent = e.permissionDenied
      ? 'Your roles do not include get-authors: the authors are not shown.'
      : `The authors are not available: ${e.msg}`;
    return;
  }
  const form = /** @type {HTMLFormElement} */ ($('author-form'));
  const canCreate = roles.has('create-author');
  form.hidden = !canCreate;
  $('author-explain').hidden = canCreate;
  $('author-explain').textContent = canCreate ? '' : 'Your roles do not include create-author: you see the table live, but cannot change it.';
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    const input = /** @type {HTMLInputElement} */ (form.elements.namedItem('name'));
    if (await act(() => c.request(3, { name: input.value }))) form.reset();
  };

  /** act runs a change and shows its refusal, if any. @param {() => Promise<any>} f */
  async function act(f) {
    $('author-error').textContent = '';
    try {
      await f();
      return true;
    } catch (e) {
      const err = /** @type {any} */ (e);
      $('author-error').textContent = err.errors?.length ? `${err.msg}: ${err.errors.map((x) => `${x.path} ${x.message}`).join('; ')}` : (err.msg ?? err.message);
      return false;
    }
  }
}

let consoleWired = false;
function wireConsoleOnce() {
  if (consoleWired) return;
  consoleWired = true;
  wireConsole(/** @type {HTMLFormElement} */ ($('console-form')), $('console-out'), () => client);
}

const saved = storedTokens();
if (saved) start(saved);
else showLogin();
