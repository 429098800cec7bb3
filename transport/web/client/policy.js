// @ts-check
// How the client reacts to the way a connection ended, and how long it waits before the next
// attempt. Kept apart from the client so that the policy can be tested on its own.

/** Close codes the client acts on (RFC 6455 §7.4.1; the Switchboard contract §1.1, §1.3, §3). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001, // a node shutting down
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED: 1003, // binary frame on a JSON connection, text on protobuf
  ABNORMAL: 1006, // no close frame: the connection broke (or the handshake was refused)
  INVALID_DATA: 1007, // invalid UTF-8
  POLICY: 1008, // the user's connection limit
  TOO_BIG: 1009,
  INTERNAL: 1011,
  TRY_AGAIN: 1013, // slow consumer, missed topic messages
  TOKEN_EXPIRED: 4001,
});

/**
 * What a close code asks of the client.
 * @typedef {'backoff' | 'soon' | 'connLimit' | 'freshToken' | 'clientFault'} CloseAction
 */

/**
 * actionFor maps the server's close code to the client's reaction.
 * - 1001: the node is going away; another node (or this one, restarted) takes the client.
 * - 1013: cut off as slow, or the topic lost messages: resubscribing with since recovers, and
 *   waiting longer would only widen the gap.
 * - 1008: another connection of the user has to end first; hammering does not help.
 * - 4001: the token expired: get a fresh one first.
 * - 1002, 1003, 1007, 1009: the server refused what this client sent; reconnecting to send the
 *   same again would loop.
 * - anything else (1006 a broken link, 1011, 1000 from the server): the usual backoff.
 * @param {number} code
 * @returns {CloseAction}
 */
export function actionFor(code) {
  switch (code) {
    case CloseCode.GOING_AWAY:
    case CloseCode.TRY_AGAIN:
      return 'soon';
    case CloseCode.POLICY:
      return 'connLimit';
    case CloseCode.TOKEN_EXPIRED:
      return 'freshToken';
    case CloseCode.PROTOCOL_ERROR:
    case CloseCode.UNSUPPORTED:
    case CloseCode.INVALID_DATA:
    case CloseCode.TOO_BIG:
      return 'clientFault';
    default:
      return 'backoff';
  }
}

/**
 * jitter returns a duration in [d/2, d]: half fixed, half random ("equal jitter"), so that a
 * crowd of clients cut off at once (a node's shutdown) spreads out, yet none comes back at once
 * in a tight loop.
 * @param {number} d milliseconds
 * @param {() => number} [random] in [0, 1)
 */
export function jitter(d, random = Math.random) {
  if (d <= 1) return d;
  const half = d / 2;
  return half + random() * (d - half);
}

/**
 * backoff is the wait before attempt number `attempt` (0 for the first retry): exponential from
 * min, capped at max, with jitter.
 * @param {number} attempt
 * @param {number} min milliseconds
 * @param {number} max milliseconds
 * @param {() => number} [random]
 */
export function backoff(attempt, min, max, random = Math.random) {
  if (min <= 0) return 0;
  let d = min;
  for (let i = 0; i < attempt && d < max; i++) d *= 2;
  return jitter(Math.min(d, max), random);
}

/**
 * reconnectDelay is the wait after a connection that ended with `action`; `attempt` counts the
 * attempts since the last connection that received a frame.
 * @param {CloseAction} action
 * @param {number} attempt
 * @param {{reconnectMin: number, reconnectMax: number, connLimitDelay: number}} o
 * @param {() => number} [random]
 */
export function reconnectDelay(action, attempt, o, random = Math.random) {
  switch (action) {
    case 'soon':
    case 'freshToken':
      return jitter(o.reconnectMin, random);
    case 'connLimit': {
      const d = backoff(attempt, o.reconnectMin, o.reconnectMax, random);
      return d < o.connLimitDelay ? o.connLimitDelay + jitter(o.connLimitDelay, random) / 2 : d;
    }
    default:
      return backoff(attempt, o.reconnectMin, o.reconnectMax, random);
  }
}

/**
 * refreshIn is how long to wait before refreshing a token that expires at expMs: refreshBefore
 * ahead of it, but at most half of what it has left (a short-lived token is refreshed half-way).
 * Returns -1 when nothing is to be scheduled (exp unknown, or refreshing ahead disabled).
 * @param {number | undefined} expMs
 * @param {number} nowMs
 * @param {number} refreshBefore milliseconds; negative disables refreshing ahead
 */
export function refreshIn(expMs, nowMs, refreshBefore) {
  if (!expMs || refreshBefore < 0) return -1;
  const left = expMs - nowMs;
  if (left <= 0) return 0;
  return Math.max(left - Math.min(refreshBefore, left / 2), 0);
}

/**
 * tokenExpiry reads the exp claim of a JWT, in milliseconds since the epoch, without verifying
 * anything (the server does): it only tells the client when to ask for a fresh token.
 * @param {string} token
 * @returns {number | undefined}
 */
export function tokenExpiry(token) {
  const claims = tokenClaims(token);
  return claims && typeof claims.exp === 'number' ? claims.exp * 1000 : undefined;
}

/**
 * tokenClaims decodes a JWT's payload (unverified), or undefined when it is not a JWT.
 * @param {string} token
 * @returns {Record<string, any> | undefined}
 */
export function tokenClaims(token) {
  const part = typeof token === 'string' ? token.split('.')[1] : undefined;
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((part.length + 3) % 4);
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return undefined;
  }
}
