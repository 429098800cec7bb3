// @ts-check
// Tokens over HTTP: POST /login (the development users, or the identity provider's password
// grant) and POST /refresh (a new access token from a refresh token), and a getToken for the
// client that refreshes when the token it holds is about to expire.

import { SwitchboardError } from './errors.js';
import { tokenExpiry } from './policy.js';

/**
 * What /login and /refresh answer.
 * @typedef {object} Tokens
 * @property {string} access_token
 * @property {string} refresh_token
 * @property {number} expires_in seconds
 */

/**
 * httpBaseOf derives the HTTP façade's base URL from the WebSocket URL: ws://h/web → http://h.
 * @param {string} wsUrl
 */
export function httpBaseOf(wsUrl) {
  const u = new URL(wsUrl);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = u.pathname.replace(/\/$/, '').replace(/\/web$/, '');
  u.search = '';
  u.hash = '';
  return u.toString().replace(/\/$/, '');
}

/**
 * postJSON posts body to base+path and returns the answer's JSON, or throws a SwitchboardError
 * carrying the HTTP status, detail (msg) and errors.
 * @param {string} base
 * @param {string} path
 * @param {any} body
 * @param {typeof fetch} [fetchImpl]
 */
async function postJSON(base, path, body, fetchImpl = globalThis.fetch) {
  const res = await fetchImpl(base.replace(/\/$/, '') + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  let out = null;
  try {
    out = await res.json();
  } catch {
    out = null;
  }
  if (!res.ok) {
    throw new SwitchboardError({ http_status: res.status, msg: out?.detail ?? res.statusText, data: out });
  }
  return out;
}

/**
 * login exchanges a user name and password for tokens (POST /login).
 * @param {string} base the server's HTTP base URL, e.g. http://127.0.0.1:8000
 * @param {string} username
 * @param {string} password
 * @param {{fetch?: typeof fetch}} [o]
 * @returns {Promise<Tokens>}
 */
export function login(base, username, password, o = {}) {
  return postJSON(base, '/login', { username, password }, o.fetch);
}

/**
 * refresh exchanges a refresh token for new tokens (POST /refresh). Keep the refresh token it
 * answers: it replaces the one sent.
 * @param {string} base
 * @param {string} refreshToken
 * @param {{fetch?: typeof fetch}} [o]
 * @returns {Promise<Tokens>}
 */
export function refresh(base, refreshToken, o = {}) {
  return postJSON(base, '/refresh', { refresh_token: refreshToken }, o.fetch);
}

/**
 * tokenSource keeps a login's tokens and gives the client a getToken: it answers the access
 * token while it has more than minValidity left, and otherwise redeems the refresh token first
 * (one redemption at a time: a refresh token may be good for one use only). onTokens sees every
 * new pair, to store it.
 * @param {{base: string, tokens: Tokens, minValidity?: number, onTokens?: (t: Tokens) => void, fetch?: typeof fetch}} o
 */
export function tokenSource(o) {
  let tokens = o.tokens;
  const minValidity = o.minValidity ?? 60_000;
  /** @type {Promise<string> | null} */
  let inFlight = null;
  return {
    /** The tokens held now. */
    get tokens() {
      return tokens;
    },
    /** @returns {Promise<string>} */
    getToken() {
      const exp = tokenExpiry(tokens.access_token);
      if (exp !== undefined && exp - Date.now() > minValidity) return Promise.resolve(tokens.access_token);
      inFlight ??= refresh(o.base, tokens.refresh_token, { fetch: o.fetch })
        .then((t) => {
          tokens = t;
          o.onTokens?.(t);
          return t.access_token;
        })
        .finally(() => {
          inFlight = null;
        });
      return inFlight;
    },
  };
}
