// The client's behaviour against a scripted server (fakews.js): answers, refusals, reconnects by
// close code, token refresh and topic recovery. Its behaviour against the real server is
// e2e.test.js.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, ClosedError, ConnectionLostError, QueueFullError, RejectedError, SwitchboardError, TokenExpiredError } from '../switchboard.js';
import { fakeServer, jwt, waitFor } from './fakews.js';

function setup(extra = {}) {
  const srv = fakeServer();
  const events = [];
  const c = connect({
    url: 'ws://sb.test/web', token: jwt(Date.now() + 3600_000), WebSocket: srv.FakeWebSocket,
    reconnectMin: 5, reconnectMax: 50, connLimitDelay: 200, requestTimeout: 2000, ...extra,
  });
  for (const e of ['state', 'connected', 'disconnected', 'missed', 'error', 'closed']) c.on(e, (a) => events.push([e, a]));
  return { srv, c, events };
}

async function opened(srv, n) {
  await waitFor(() => srv.sockets.length >= n, `socket ${n}`);
  srv.sockets[n - 1].open();
  return srv.sockets[n - 1];
}

test('requests resolve with their answer, matched by req_id; refusals are typed', async (t) => {
  const { srv, c } = setup();
  t.after(() => c.close());
  const ws = await opened(srv, 1);
  assert.equal(ws.url.searchParams.get('format'), 'json');
  assert.ok(ws.url.searchParams.get('token'));
  const a = c.request(1, { filters: { name: 'x' } });
  const b = c.request(3, { name: '' });
  await waitFor(() => ws.sent.length === 2, 'two requests');
  const [ra, rb] = ws.requests();
  assert.deepEqual(ra.data, { filters: { name: 'x' } });
  assert.match(ra.req_id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  // Answered out of order: matched by req_id all the same.
  ws.push({ pkg_id: 3, req_id: rb.req_id, status_code: 2, data: { errors: [{ path: '/name', message: 'too short' }] }, meta: null, msg: 'Invalid data' });
  ws.push({ pkg_id: 1, req_id: ra.req_id, status_code: 0, data: [{ id: 1, name: 'x' }], meta: null, msg: null });
  assert.deepEqual((await a).data, [{ id: 1, name: 'x' }]);
  await assert.rejects(b, (e) => e instanceof SwitchboardError && e.status_code === 2 && e.invalidData &&
    e.msg === 'Invalid data' && e.errors[0].path === '/name' && e.pkg_id === 3);
  await assert.rejects(c.request(1, [1]), TypeError);
});

test('requests wait for a connection, within a bound; in-flight ones fail or are retried when it drops', async (t) => {
  const { srv, c } = setup({ outboundQueue: 2 });
  t.after(() => c.close());
  const q1 = c.request(1, {});
  const q2 = c.request(1, {});
  await assert.rejects(c.request(1, {}), QueueFullError);
  const ws = await opened(srv, 1);
  assert.equal(ws.sent.length, 2, 'the queued requests go out on open');
  const plain = c.request(1, {});
  const retried = c.request(3, { name: 'r' }, { retry: true });
  await waitFor(() => ws.sent.length === 4, 'written');
  ws.serverClose(1011, 'internal error');
  for (const p of [q1, q2, plain]) {
    await assert.rejects(p, (e) => e instanceof ConnectionLostError && e.code === 1011);
  }
  const ws2 = await opened(srv, 2);
  await waitFor(() => ws2.sent.length === 1, 'the retried request on the next connection');
  ws2.answer((r) => r.pkg_id === 3, { id: 9, name: 'r' });
  assert.equal((await retried).data.id, 9);
});

test('1001 and 1013 reconnect soon; 1008 waits at least connLimitDelay', async (t) => {
  const { srv, c, events } = setup();
  t.after(() => c.close());
  (await opened(srv, 1)).serverClose(1001, 'server shutting down');
  (await opened(srv, 2)).serverClose(1013, 'slow consumer');
  (await opened(srv, 3)).serverClose(1008, 'Maximum concurrent connections exceeded');
  await waitFor(() => srv.sockets.length === 4, 'the attempt after 1008');
  const delays = events.filter(([e]) => e === 'disconnected').map(([, a]) => [a.code, a.delay]);
  assert.equal(delays.length, 3);
  assert.ok(delays[0][1] <= 5 && delays[1][1] <= 5, `soon: ${JSON.stringify(delays)}`);
  assert.ok(delays[2][0] === 1008 && delays[2][1] >= 200, `1008: ${JSON.stringify(delays)}`);
});

test('a client the server keeps refusing (1002/1003/1007/1009) stops instead of looping', async (t) => {
  const { srv, c, events } = setup({ maxClientFaults: 3 });
  t.after(() => c.close());
  const p = c.request(1, {});
  (await opened(srv, 1)).serverClose(1009, 'message too big');
  await assert.rejects(p, (e) => e instanceof ConnectionLostError && e.code === 1009);
  (await opened(srv, 2)).serverClose(1003, 'binary');
  (await opened(srv, 3)).serverClose(1002, 'protocol error');
  await waitFor(() => c.state === 'closed', 'the client to stop');
  assert.ok(c.error instanceof RejectedError && c.error.code === 1002);
  assert.equal(srv.sockets.length, 3, 'no fourth attempt');
  assert.equal(events.filter(([e]) => e === 'error').length, 3, 'each fault surfaced');
  await assert.rejects(c.request(1, {}), ClosedError);
  await assert.rejects(c.ready(), ClosedError);
});

test('4001 gets a fresh token before reconnecting; without getToken the client stops', async (t) => {
  let n = 0;
  const { srv, c } = setup({ token: undefined, getToken: async () => jwt(Date.now() + 3600_000, `fresh-${++n}`) });
  t.after(() => c.close());
  const ws1 = await opened(srv, 1);
  assert.equal(n, 1, 'the first connection gets its token from getToken');
  ws1.serverClose(4001, 'token expired');
  const ws2 = await opened(srv, 2);
  assert.equal(n, 2);
  assert.notEqual(ws2.url.searchParams.get('token'), ws1.url.searchParams.get('token'));

  const s2 = setup();
  t.after(() => s2.c.close());
  (await opened(s2.srv, 1)).serverClose(4001, 'token expired');
  await waitFor(() => s2.c.state === 'closed', 'stop');
  assert.ok(s2.c.error instanceof TokenExpiredError);
});

test('the token is refreshed on the live connection ahead of its expiry (pkg_id 12)', async (t) => {
  const fresh = jwt(Date.now() + 3600_000, 'next');
  const { srv, c } = setup({ token: jwt(Date.now() + 2000), refreshBefore: 1500, getToken: async () => fresh });
  t.after(() => c.close());
  const ws = await opened(srv, 1);
  await waitFor(() => ws.requests().some((r) => r.pkg_id === 12), 'REFRESH_TOKEN', 5000);
  const r = ws.answer((r) => r.pkg_id === 12, { expires_at: 'later' });
  assert.equal(r.data.token, fresh);
  ws.serverClose(1001, '');
  const ws2 = await opened(srv, 2);
  assert.equal(ws2.url.searchParams.get('token'), fresh, 'the next connection uses the refreshed token');
});

test('subscriptions resume with since and epoch; duplicates dropped, gaps resubscribed, losses reported', async (t) => {
  const { srv, c, events } = setup();
  t.after(() => c.close());
  const got = [];
  const missed = [];
  const ws1 = await opened(srv, 1);
  const subP = c.subscribe('authors', (m) => got.push(m.seq), { onMissed: (m) => missed.push(m) });
  await waitFor(() => ws1.sent.length === 1, 'SUBSCRIBE');
  assert.deepEqual(ws1.requests()[0].data, { topic: 'authors' });
  ws1.answer((r) => r.pkg_id === 10, { topic: 'authors', seq: 4, epoch: 'e1', recovered: false });
  const sub = await subP;
  ws1.push({ pkg_id: 3, req_id: '0', topic: 'authors', seq: 5, epoch: 'e1', data: {} });
  ws1.push({ pkg_id: 3, req_id: '0', topic: 'authors', seq: 5, epoch: 'e1', data: {} }); // duplicate
  ws1.push({ pkg_id: 3, req_id: '0', topic: 'authors', seq: 6, epoch: 'e1', data: {} });
  assert.deepEqual(got, [5, 6]);
  assert.deepEqual(sub.position, { seq: 6, epoch: 'e1' });

  // A gap on the live connection: resubscribe from the position, on the same connection.
  ws1.push({ pkg_id: 3, req_id: '0', topic: 'authors', seq: 9, epoch: 'e1', data: {} });
  assert.deepEqual(ws1.requests().at(-1).data, { topic: 'authors', since: 6, epoch: 'e1' });
  ws1.answer((r) => r.pkg_id === 10 && r.data.since === 6, { topic: 'authors', seq: 9, epoch: 'e1', recovered: true });
  for (const s of [7, 8, 9]) ws1.push({ pkg_id: 3, req_id: '0', topic: 'authors', seq: s, epoch: 'e1', data: {} });
  assert.deepEqual(got, [5, 6, 7, 8, 9]);

  // Reconnect: SUBSCRIBE with since and epoch before anything else; recovered with the replay.
  ws1.serverClose(1001, 'server shutting down');
  const ws2 = await opened(srv, 2);
  assert.deepEqual(ws2.requests()[0].data, { topic: 'authors', since: 9, epoch: 'e1' });
  ws2.answer((r) => r.pkg_id === 10, { topic: 'authors', seq: 10, epoch: 'e1', recovered: true });
  ws2.push({ pkg_id: 3, req_id: '0', topic: 'authors', seq: 10, epoch: 'e1', data: {} });
  assert.deepEqual(got, [5, 6, 7, 8, 9, 10]);
  assert.equal(missed.length, 0);
  assert.equal(sub.recovered, true);

  // The stream restarted meanwhile: recovered false, the application is told, then follows anew.
  ws2.serverClose(1006, '');
  const ws3 = await opened(srv, 3);
  ws3.answer((r) => r.pkg_id === 10, { topic: 'authors', seq: 2, epoch: 'e2', recovered: false });
  assert.deepEqual(missed, [{ topic: 'authors', from: { seq: 10, epoch: 'e1' }, now: { seq: 2, epoch: 'e2' } }]);
  assert.deepEqual(events.filter(([e]) => e === 'missed').map(([, m]) => m.topic), ['authors']);
  ws3.push({ pkg_id: 3, req_id: '0', topic: 'authors', seq: 3, epoch: 'e2', data: {} });
  assert.deepEqual(got.at(-1), 3);

  // A server that claims recovery from a stream behind the position is not believed.
  ws3.serverClose(1006, '');
  const ws4 = await opened(srv, 4);
  ws4.answer((r) => r.pkg_id === 10, { topic: 'authors', seq: 1, epoch: 'e2', recovered: true });
  assert.equal(missed.length, 2);

  const unsub = sub.unsubscribe();
  await waitFor(() => ws4.requests().some((r) => r.pkg_id === 11), 'UNSUBSCRIBE');
  ws4.answer((r) => r.pkg_id === 11, { topic: 'authors' });
  await unsub;
  ws4.push({ pkg_id: 3, req_id: '0', topic: 'authors', seq: 2, epoch: 'e2', data: {} });
  assert.equal(got.at(-1), 3, 'nothing after unsubscribe');
});

test('a refused subscription rejects typed; callbacks that throw do not stop the client', async (t) => {
  const { srv, c, events } = setup();
  t.after(() => c.close());
  const ws = await opened(srv, 1);
  const denied = c.subscribe('secret', () => {});
  await waitFor(() => ws.sent.length === 1, 'SUBSCRIBE');
  ws.answer((r) => r.pkg_id === 10, { missing_roles: ['x'] }, 3, 'Permission denied');
  await assert.rejects(denied, (e) => e instanceof SwitchboardError && e.permissionDenied);
  const ok = c.subscribe('dashboards.a', () => { throw new Error('boom'); });
  await waitFor(() => ws.sent.length === 2, 'SUBSCRIBE 2');
  ws.answer((r) => r.data?.topic === 'dashboards.a', { topic: 'dashboards.a', seq: 0, epoch: '', recovered: false });
  await ok;
  ws.push({ pkg_id: 7, req_id: '0', topic: 'dashboards.a', seq: 1, epoch: 'x', data: {} });
  assert.ok(events.some(([e, a]) => e === 'error' && a.message === 'boom'));
  assert.equal(c.state, 'connected');
});

test('an attempt that fails with an error event alone (no close) is retried', async (t) => {
  const { srv, c, events } = setup();
  t.after(() => c.close());
  await waitFor(() => srv.sockets.length === 1, 'first attempt');
  srv.sockets[0].refuseLikeNode20();
  await opened(srv, 2);
  assert.equal(c.state, 'connected');
  assert.deepEqual(events.filter(([e]) => e === 'disconnected').map(([, a]) => a.code), [1006]);
});
