// A scripted stand-in for WebSocket, given to the client as options.WebSocket: the tests play the
// server (open, answer, broadcast, close with a code) and read what the client sent.

/** waitFor polls cond every 5 ms until it holds, failing after ms (a bound against hangs only). */
export async function waitFor(cond, what, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** fakeServer returns a WebSocket class and the sockets the client opened with it. */
export function fakeServer() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = new URL(url);
      this.sent = [];
      this.readyState = 0;
      this.binaryType = 'blob';
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error('not open');
      this.sent.push(data);
    }
    close(code = 1000, reason = '') {
      if (this.readyState === 3) return;
      const opened = this.readyState === 1;
      this.readyState = 3;
      queueMicrotask(() => this.onclose?.({ code: opened ? code : 1006, reason: opened ? reason : '' }));
    }
    // The server's side.
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }
    serverClose(code, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    /** refuseLikeNode20 fails the attempt as Node 20's WebSocket does: an error event and no
     * close, and an error again, at once, when the client closes it. */
    refuseLikeNode20() {
      this.close = () => this.onerror?.({});
      this.onerror?.({});
    }
    push(obj) {
      this.onmessage?.({ data: JSON.stringify(obj) });
    }
    requests() {
      return this.sent.map((s) => JSON.parse(s));
    }
    /** answer answers the request matching pred with status (0 by default) and data. */
    answer(pred, data, status = 0, msg = null) {
      const r = this.requests().find(pred);
      if (!r) throw new Error('no such request');
      this.push({ pkg_id: r.pkg_id, req_id: r.req_id, status_code: status, data, meta: null, msg });
      return r;
    }
  }
  return {
    FakeWebSocket,
    sockets,
    get last() {
      return sockets[sockets.length - 1];
    },
  };
}

/** jwt makes an unsigned token whose exp is expMs (the client only reads exp). */
export function jwt(expMs, sub = 'u') {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b64({ alg: 'none' })}.${b64({ sub, exp: Math.floor(expMs / 1000) })}.x`;
}
