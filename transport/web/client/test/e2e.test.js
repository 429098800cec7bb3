// The client against whole Switchboard nodes, started and controlled by the Go test that runs
// this file (cmd/switchboard: TestJSClient, jsfixture_test.go) through SWITCHBOARD_FIXTURE.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, ConnectionLostError, login, SwitchboardError, tokenSource, TooLargeError } from '../switchboard.js';
import { waitFor } from './fakews.js';

const fixture = process.env.SWITCHBOARD_FIXTURE;
const skip = fixture ? false : 'SWITCHBOARD_FIXTURE is not set: run through `go test ./cmd/switchboard -run JSClient`';

const ALL = ['get-authors', 'create-author', 'update-author', 'delete-author', 'broadcast'];

async function post(path, body) {
  const res = await fetch(fixture + path, { method: 'POST', body: JSON.stringify(body ?? {}) });
  if (!res.ok) throw new Error(`fixture ${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** startNode starts a node; node.token(user, roles, ttlMs) mints a token for it. */
async function startNode(settings = {}) {
  const n = await post('/nodes', settings);
  n.token = async (user, roles = ALL, ttlMs = 0) => (await post(`/nodes/${n.id}/token`, { user, roles, ttl_ms: ttlMs })).token;
  n.act = (action) => post(`/nodes/${n.id}/${action}`);
  return n;
}

function open(t, options) {
  const c = connect({ reconnectMin: 20, reconnectMax: 300, connLimitDelay: 300, requestTimeout: 10_000, ...options });
  const events = [];
  for (const e of ['disconnected', 'missed', 'error', 'closed']) c.on(e, (a) => events.push([e, a]));
  t.after(() => c.close());
  return { c, events };
}

async function broadcast(node, token, topic, pkgId, data) {
  const res = await fetch(node.http + '/api/broadcast', {
    method: 'POST', headers: { Authorization: `Bearer ${token}` }, body: JSON.stringify({ topic, pkg_id: pkgId, data }),
  });
  assert.equal(res.status, 202, await res.text());
}

let shared;
async function sharedNode() {
  shared ??= await startNode({ max_message_bytes: 4096 });
  return shared;
}

for (const format of ['json', 'protobuf']) {
  test(`requests, typed errors and author events (${format})`, { skip }, async (t) => {
    const node = await sharedNode();
    const { c } = open(t, { url: node.ws, token: await node.token(`js-${format}`, ['get-authors', 'create-author']), format });
    const events = [];
    const sub = await c.subscribe('authors', (m) => events.push(m));
    const name = `Le Guin ${format} ${Date.now()}`;
    const created = await c.request(3, { name });
    assert.equal(created.status_code, 0);
    assert.equal(created.data.name, name);
    const found = await c.request(1, { filters: { name } });
    assert.deepEqual(found.data.map((a) => a.id), [created.data.id]);
    await waitFor(() => events.length === 1, 'the created event');
    assert.deepEqual({ pkg_id: events[0].pkg_id, topic: events[0].topic, event: events[0].data.event, id: events[0].data.author.id },
      { pkg_id: 3, topic: 'authors', event: 'created', id: created.data.id });
    assert.equal(sub.position.seq, events[0].seq);
    assert.ok(sub.position.epoch);

    await assert.rejects(c.request(3, { name }), (e) => e instanceof SwitchboardError && e.status_code === 2 &&
      e.msg === `Author with name '${name}' already exists`);
    await assert.rejects(c.request(3, { name: '' }), (e) => e.status_code === 2 && e.msg === 'Invalid data' && e.errors[0].path === '/name');
    await assert.rejects(c.request(20, {}), (e) => e.permissionDenied && e.status_code === 3);
    await assert.rejects(c.request(99), (e) => e.status_code === 1 && e.msg === 'Unknown pkg_id 99');
    await assert.rejects(c.subscribe('secret', () => {}), (e) => e.permissionDenied);
    const page = await c.request(2, { per_page: 1 });
    assert.equal(page.meta.per_page, 1);
  });
}

test('a request larger than the server takes: refused locally with maxMessageBytes, else close 1009 surfaced', { skip }, async (t) => {
  const node = await sharedNode();
  const token = await node.token('js-big');
  const big = { name: 'x'.repeat(5000) };
  const guarded = open(t, { url: node.ws, token, maxMessageBytes: 4096 });
  await assert.rejects(guarded.c.request(3, big), TooLargeError);
  assert.equal((await guarded.c.request(1, {})).status_code, 0, 'the connection stays');

  const plain = open(t, { url: node.ws, token });
  await plain.c.ready();
  await assert.rejects(plain.c.request(3, big), (e) => e instanceof ConnectionLostError && e.code === 1009);
  assert.ok(plain.events.some(([e, a]) => e === 'error' && /1009/.test(a.message)));
  await plain.c.ready();
  assert.equal((await plain.c.request(1, {})).status_code, 0, 'it reconnected once and works');
});

test('after a broken link the subscription recovers what it missed, once and in order', { skip }, async (t) => {
  const node = await startNode();
  const pub = await node.token('js-pub');
  const { c, events } = open(t, { url: node.ws, token: await node.token('js-sub', []) });
  const seqs = [];
  const sub = await c.subscribe('dashboards.js', (m) => seqs.push([m.seq, m.data.n]));
  for (const n of [1, 2, 3]) await broadcast(node, pub, 'dashboards.js', 7, { n });
  await waitFor(() => seqs.length === 3, 'three live messages');

  await node.act('refuse'); // no new connection until listen
  await node.act('cut');
  await waitFor(() => c.state !== 'connected', 'the client to notice');
  for (const n of [4, 5]) await broadcast(node, pub, 'dashboards.js', 7, { n });
  await node.act('listen');
  await waitFor(() => seqs.length === 5, 'the two missed messages');
  await broadcast(node, pub, 'dashboards.js', 7, { n: 6 });
  await waitFor(() => seqs.length === 6, 'a live one after them');
  assert.deepEqual(seqs.map(([, n]) => n), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(seqs.map(([s]) => s), [1, 2, 3, 4, 5, 6]);
  assert.equal(sub.recovered, true);
  assert.equal(events.filter(([e]) => e === 'missed').length, 0);
});

test('after a restart on the same port the stream is new: the application is told, then follows', { skip }, async (t) => {
  const node = await startNode();
  const pub = await node.token('js-pub');
  const { c, events } = open(t, { url: node.ws, token: await node.token('js-restart', []) });
  const got = [];
  const missed = [];
  const sub = await c.subscribe('dashboards.r', (m) => got.push(m.data.n), { onMissed: (m) => missed.push(m) });
  await broadcast(node, pub, 'dashboards.r', 7, { n: 1 });
  await waitFor(() => got.length === 1, 'the first message');
  const before = sub.position;
  await node.act('restart');
  await waitFor(() => missed.length === 1, 'the missed event');
  assert.equal(events.filter(([e, a]) => e === 'disconnected' && a.code === 1001).length, 1, 'closed with 1001 at the shutdown');
  assert.deepEqual(missed[0].from, before);
  assert.notEqual(missed[0].now.epoch, before.epoch);
  assert.equal(sub.recovered, false);
  await broadcast(node, pub, 'dashboards.r', 7, { n: 2 });
  await waitFor(() => got.length === 2, 'a live message after the restart');
  assert.deepEqual(got, [1, 2]);
});

test('over the connection limit (1008) the client waits, then gets in when a slot frees', { skip }, async (t) => {
  const node = await startNode({ max_conns_per_user: 1 });
  const token = await node.token('js-limited', ['get-authors']);
  const first = open(t, { url: node.ws, token });
  await first.c.ready();
  const second = open(t, { url: node.ws, token, connLimitDelay: 200 });
  await waitFor(() => second.events.some(([e, a]) => e === 'disconnected' && a.code === 1008), 'a 1008');
  const d = second.events.find(([e, a]) => e === 'disconnected' && a.code === 1008)[1];
  assert.ok(d.delay >= 200, `waited ${d.delay} ms`);
  first.c.close();
  await waitFor(() => second.c.state === 'connected' && second.events.filter(([e]) => e === 'disconnected').length > 0, 'the second in', 15_000);
  assert.equal((await second.c.request(1, {})).status_code, 0);
});

test('tokens: refreshed on the live connection ahead of exp; after 4001, a fresh one', { skip }, async (t) => {
  const node = await startNode({ jwt_leeway_ms: 0 });
  const ttl = 2500;
  // Refreshing ahead (pkg_id 12): the connection outlives its first token.
  let minted = 0;
  const ahead = open(t, { url: node.ws, refreshBefore: 1200, getToken: async () => { minted++; return node.token('js-ahead', ['get-authors'], ttl); } });
  await ahead.c.ready();
  const deadline = Date.now() + ttl + 2000;
  await waitFor(() => Date.now() > deadline, 'past the first token', ttl + 5000);
  assert.equal(ahead.c.state, 'connected');
  assert.equal(ahead.events.filter(([e]) => e === 'disconnected').length, 0, 'never closed');
  assert.ok(minted >= 2, `refreshed ${minted - 1} times`);

  // Refreshing only after the server closed with 4001.
  const after = open(t, { url: node.ws, refreshBefore: -1, getToken: () => node.token('js-after', ['get-authors'], ttl) });
  await after.c.ready();
  await waitFor(() => after.events.some(([e, a]) => e === 'disconnected' && a.code === 4001), '4001', ttl + 10_000);
  await after.c.ready();
  assert.equal((await after.c.request(1, {})).status_code, 0);
});

test('login and refresh over HTTP give the client its tokens', { skip }, async (t) => {
  const node = await startNode();
  await assert.rejects(login(node.http, 'admin', 'wrong'), (e) => e instanceof SwitchboardError && e.http_status === 401);
  const tokens = await login(node.http, 'admin', node.password);
  let rotated = 0;
  // minValidity beyond the token's life: every getToken redeems the refresh token.
  const src = tokenSource({ base: node.http, tokens, minValidity: 10 * 3600_000, onTokens: () => rotated++ });
  const { c } = open(t, { url: node.ws, getToken: src.getToken });
  assert.equal((await c.request(1, {})).status_code, 0);
  assert.equal(rotated, 1);
  assert.notEqual(src.tokens.refresh_token, '');
});
