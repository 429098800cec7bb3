import { test } from 'node:test';
import assert from 'node:assert/strict';
import { actionFor, backoff, jitter, reconnectDelay, refreshIn, tokenClaims, tokenExpiry } from '../policy.js';

test('each close code gets the reaction its meaning asks for', () => {
  assert.equal(actionFor(1001), 'soon');
  assert.equal(actionFor(1013), 'soon');
  assert.equal(actionFor(1008), 'connLimit');
  assert.equal(actionFor(4001), 'freshToken');
  for (const c of [1002, 1003, 1007, 1009]) assert.equal(actionFor(c), 'clientFault', `code ${c}`);
  for (const c of [1000, 1006, 1011, 4999]) assert.equal(actionFor(c), 'backoff', `code ${c}`);
});

test('backoff doubles from min, stays under max, and is jittered into [d/2, d]', () => {
  const lo = () => 0;
  const hi = () => 0.999999;
  assert.equal(backoff(0, 100, 30000, lo), 50);
  assert.equal(backoff(3, 100, 30000, lo), 400);
  assert.ok(backoff(3, 100, 30000, hi) <= 800);
  assert.equal(backoff(20, 100, 30000, lo), 15000);
  assert.ok(backoff(20, 100, 30000, hi) <= 30000);
  assert.equal(backoff(5, 0, 1000), 0);
  for (let i = 0; i < 100; i++) {
    const d = jitter(1000);
    assert.ok(d >= 500 && d <= 1000, `jitter ${d}`);
  }
});

test('reconnect delays: soon after 1001/1013, at least connLimitDelay after 1008', () => {
  const o = { reconnectMin: 100, reconnectMax: 30000, connLimitDelay: 5000 };
  assert.ok(reconnectDelay('soon', 7, o) <= 100);
  assert.ok(reconnectDelay('freshToken', 7, o) <= 100);
  const cl = reconnectDelay('connLimit', 0, o);
  assert.ok(cl >= 5000 && cl <= 7500, `1008 delay ${cl}`);
  assert.ok(reconnectDelay('backoff', 2, o) <= 400);
});

test('refreshIn: refreshBefore ahead of exp, at most half of what is left', () => {
  const now = 1_000_000;
  assert.equal(refreshIn(now + 120_000, now, 30_000), 90_000);
  assert.equal(refreshIn(now + 10_000, now, 30_000), 5_000);
  assert.equal(refreshIn(now - 1, now, 30_000), 0);
  assert.equal(refreshIn(undefined, now, 30_000), -1);
  assert.equal(refreshIn(now + 10_000, now, -1), -1);
});

test('tokenExpiry reads exp from a JWT without verifying it', () => {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const tok = `${b64({ alg: 'RS256' })}.${b64({ exp: 1700000000, sub: 'ü' })}.sig`;
  assert.equal(tokenExpiry(tok), 1700000000 * 1000);
  assert.equal(tokenClaims(tok).sub, 'ü');
  assert.equal(tokenExpiry('not a token'), undefined);
  assert.equal(tokenExpiry(''), undefined);
});
