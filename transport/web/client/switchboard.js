// @ts-check
/**
 * @module switchboard
 * The JavaScript client of Switchboard: a WebSocket connection that stays up — it reconnects with
 * jittered exponential backoff, resubscribes with since and epoch, refreshes its token ahead of
 * expiry — with requests that resolve with their answer or reject with a typed error, and topic
 * subscriptions that recover what a reconnect missed or say that they could not. An ES module
 * with no dependency, for browsers and Node.js (22+, or 20 with --experimental-websocket, or any
 * WebSocket implementation given as options.WebSocket).
 *
 *   import { connect } from '/client/switchboard.js';
 *   const client = connect({ url: 'ws://127.0.0.1:8000/web', getToken });
 *   const { data } = await client.request(1, { filters: { name: 'le guin' } });
 *   const sub = await client.subscribe('authors', (m) => apply(m.data), { onMissed: reload });
 *
 * The behaviour mirrors the Go client (transport/client); the names follow the wire.
 */

import { ClientError, ClosedError, ConnectionLostError, QueueFullError, RejectedError, Status, SwitchboardError, TimeoutError, TokenExpiredError } from './errors.js';
import { actionFor, reconnectDelay, refreshIn, tokenExpiry } from './policy.js';
import { decodeFrame, encodeRequest } from './protobuf.js';

export * from './errors.js';
export { CloseCode, actionFor, backoff, jitter, tokenClaims, tokenExpiry } from './policy.js';
export { httpBaseOf, login, refresh, tokenSource } from './http.js';

/** pkg_ids the client itself sends (the contract §1.4). */
const PKG_SUBSCRIBE = 10;
const PKG_UNSUBSCRIBE = 11;
const PKG_REFRESH_TOKEN = 12;

/** The req_id of broadcasts. */
export const ZERO_UUID = '00000000-0000-0000-0000-000000000000';

/**
 * @typedef {object} Options
 * @property {string} url the WebSocket endpoint, ws://host:port/web (wss:// for TLS). The token
 *   goes in its query (browsers cannot set headers on a WebSocket; the server never logs it).
 * @property {string} [token] a bearer token (JWT). Without getToken it is used as long as it lasts.
 * @property {() => Promise<string>} [getToken] returns a fresh token: called for the first
 *   connection when token is empty, refreshBefore ahead of expiry (sent on the live connection
 *   as REFRESH_TOKEN), after a close 4001, and before reconnecting with a token that expired.
 * @property {'json' | 'protobuf'} [format] the frame format; the API is the same. 'json' by default.
 * @property {number} [requestTimeout] ms a request waits for its answer (10 000).
 * @property {number} [handshakeTimeout] ms one connection attempt may take (10 000).
 * @property {number} [reconnectMin] ms, the first wait between attempts (100).
 * @property {number} [reconnectMax] ms, the longest wait between attempts (30 000).
 * @property {number} [connLimitDelay] ms, the least wait after close 1008, the user's
 *   connection limit (5 000).
 * @property {number} [maxClientFaults] closes in a row for something the client sent (1002,
 *   1003, 1007, 1009) before it stops with RejectedError (3).
 * @property {number} [refreshBefore] ms before the token's exp to refresh it on the live
 *   connection, at most half its remaining life (30 000); negative: only after a close 4001.
 * @property {number} [outboundQueue] requests that may wait for a connection (256); past it a
 *   request is refused with QueueFullError.
 * @property {number} [maxMessageBytes] refuse locally (TooLargeError) requests whose frame is
 *   longer: set it to the server's SWITCHBOARD_WS_MAX_MESSAGE_BYTES, so an oversized request
 *   fails alone instead of the server closing the connection (1009) under every request in flight.
 * @property {typeof WebSocket} [WebSocket] the WebSocket constructor (globalThis.WebSocket).
 */

/**
 * An answer: the response envelope as it came.
 * @typedef {object} Answer
 * @property {number} pkg_id
 * @property {string} req_id
 * @property {number} status_code
 * @property {any} data
 * @property {any} meta
 * @property {string | null} msg
 */

/**
 * A broadcast: on a subscribed topic (topic set; seq and epoch on topics that keep history), or
 * to every connection (no topic: the 'broadcast' event).
 * @typedef {object} Message
 * @property {number} pkg_id
 * @property {string} [topic]
 * @property {number} [seq]
 * @property {string} [epoch]
 * @property {any} data
 */

/**
 * A place in a topic's stream: the seq of the last message taken and the epoch it counts in.
 * @typedef {{seq: number, epoch: string}} Position
 */

/**
 * Missed tells a subscription that messages may have been lost: it resubscribed from `from` and
 * the server could not replay what came after (history too short, the stream restarted, a topic
 * without history). Reload the state the topic feeds; the messages after `now` follow.
 * @typedef {{topic: string, from: Position, now: Position}} Missed
 */

/**
 * @typedef {object} Pending a request waiting for its answer
 * @property {string} reqId
 * @property {number} pkgId
 * @property {string | Uint8Array} frame
 * @property {(a: Answer) => void} resolve
 * @property {(e: Error) => void} reject
 * @property {ReturnType<typeof setTimeout> | undefined} timer
 * @property {number} sentOn the connection it was written on (0: not yet)
 * @property {boolean} retry write it again on the next connection if its own ends
 * @property {boolean} internal the client's own (resubscribe, token refresh): nobody waits on it
 * @property {((conn: Conn, f: Answer) => void) | undefined} onAnswer runs before the frames after the answer
 */

/**
 * @typedef {object} Conn one WebSocket connection
 * @property {number} id
 * @property {WebSocket} ws
 * @property {boolean} opened
 * @property {boolean} gotFrame
 * @property {ReturnType<typeof setTimeout> | undefined} handshakeTimer
 */

/** A request whose frame is longer than options.maxMessageBytes: it was not sent. */
export class TooLargeError extends ClientError {
  /** @param {number} size @param {number} max */
  constructor(size, max) {
    super(`switchboard: request of ${size} bytes is larger than maxMessageBytes (${max})`);
    this.name = 'TooLargeError';
  }
}

/**
 * connect returns a client that connects at once and stays connected until close().
 * @param {Options} options
 */
export function connect(options) {
  return new Client(options);
}

const utf8 = new TextEncoder();

/** @param {Options} o */
function withDefaults(o) {
  if (!o || typeof o.url !== 'string') throw new TypeError('switchboard: options.url is required (ws://host:port/web)');
  const u = new URL(o.url);
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new TypeError(`switchboard: url ${o.url}: want ws:// or wss://`);
  if (!o.token && typeof o.getToken !== 'function') throw new TypeError('switchboard: options.token or options.getToken is required');
  const format = o.format ?? 'json';
  if (format !== 'json' && format !== 'protobuf') throw new TypeError(`switchboard: unknown format ${format}`);
  const WS = o.WebSocket ?? globalThis.WebSocket;
  if (typeof WS !== 'function') {
    throw new TypeError('switchboard: no WebSocket here: pass options.WebSocket (Node.js 20: run with --experimental-websocket)');
  }
  const o2 = {
    url: o.url,
    token: o.token ?? '',
    getToken: o.getToken,
    format,
    requestTimeout: o.requestTimeout ?? 10_000,
    handshakeTimeout: o.handshakeTimeout ?? 10_000,
    reconnectMin: o.reconnectMin ?? 100,
    reconnectMax: o.reconnectMax ?? 30_000,
    connLimitDelay: o.connLimitDelay ?? 5_000,
    maxClientFaults: o.maxClientFaults ?? 3,
    refreshBefore: o.refreshBefore ?? 30_000,
    outboundQueue: o.outboundQueue ?? 256,
    maxMessageBytes: o.maxMessageBytes ?? 0,
    WebSocket: WS,
  };
  if (o2.reconnectMax < o2.reconnectMin) throw new TypeError('switchboard: reconnectMax is below reconnectMin');
  return o2;
}

/** newReqId returns a random (version 4) UUID; crypto.randomUUID needs a secure context. */
function newReqId() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * The client. Its events (client.on(name, fn) returns a function that removes fn):
 * - 'state' (state): 'connecting', 'connected', 'disconnected' or 'closed';
 * - 'connected' ({url, attempt}): a connection opened (before resubscribing);
 * - 'disconnected' ({code, reason, delay}): a connection ended or an attempt failed; the next
 *   attempt comes after delay ms;
 * - 'missed' (Missed): a subscription could not recover what a reconnect missed: reload;
 * - 'broadcast' (Message): a broadcast to every connection (no topic);
 * - 'error' (Error): something went wrong that the client copes with (a frame it could not
 *   decode, a callback that threw, a close for something it sent, a failed token refresh);
 * - 'closed' ({error}): the client stopped: close() (error null) or gave up for good.
 */
export class Client {
  /** @param {Options} options */
  constructor(options) {
    this.o = withDefaults(options);
    /** 'connecting' | 'connected' | 'disconnected' | 'closed' */
    this.state = 'connecting';
    /** Why the client stopped for good (null while it runs, and after close()). @type {Error | null} */
    this.error = null;
    this._token = this.o.token;
    this._needFreshToken = !this._token;
    /** @type {Conn | null} */ this._conn = null;
    this._connIds = 0;
    /** @type {Map<string, Pending>} */ this._pending = new Map();
    /** @type {Pending[]} */ this._queue = [];
    /** @type {Map<string, Subscription>} */ this._subs = new Map();
    /** @type {Map<string, Set<Function>>} */ this._listeners = new Map();
    this._attempt = 0; // attempts since the last connection that got a frame
    this._failedOpens = 0; // attempts in a row that never opened
    this._faults = 0; // closes in a row for something the client sent
    /** @type {ReturnType<typeof setTimeout> | undefined} */ this._reconnectTimer = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */ this._refreshTimer = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */ this._resubTimer = undefined;
    /** @type {{resolve: () => void, reject: (e: Error) => void}[]} */ this._readyWaiters = [];
    queueMicrotask(() => this._dial());
  }

  /**
   * on adds a listener; the function it returns removes it.
   * @param {'state' | 'connected' | 'disconnected' | 'missed' | 'broadcast' | 'error' | 'closed'} event
   * @param {(arg: any) => void} fn
   */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => set.delete(fn);
  }

  /** @param {string} event @param {any} arg */
  _emit(event, arg) {
    for (const fn of this._listeners.get(event) ?? []) {
      try {
        fn(arg);
      } catch (e) {
        if (event !== 'error') this._emit('error', e);
      }
    }
  }

  /** @param {string} s */
  _setState(s) {
    if (this.state === s) return;
    this.state = s;
    this._emit('state', s);
  }

  /** ready resolves once the client is connected (at once if it is), or rejects when it stops.
   * @returns {Promise<void>} */
  ready() {
    if (this.state === 'connected') return Promise.resolve();
    if (this.state === 'closed') return Promise.reject(new ClosedError(this.error));
    return new Promise((resolve, reject) => this._readyWaiters.push({ resolve: () => resolve(undefined), reject }));
  }

  /** The position and the recovery of every subscription, by topic. */
  get subscriptions() {
    return new Map(this._subs);
  }

  // ---- connecting ----

  async _dial() {
    if (this.state === 'closed') return;
    this._reconnectTimer = undefined;
    this._setState('connecting');
    const exp = tokenExpiry(this._token);
    const expired = exp !== undefined && exp <= Date.now();
    if (this.o.getToken && (this._needFreshToken || expired)) {
      try {
        const t = await this.o.getToken();
        if (this.state === 'closed') return;
        if (!t) throw new ClientError('switchboard: getToken returned no token');
        this._token = t;
        this._needFreshToken = false;
      } catch (e) {
        if (this.state === 'closed') return;
        this._emit('error', e);
        this._retryLater(0, 'getToken failed', 'backoff');
        return;
      }
    } else if (expired) {
      this._stop(new TokenExpiredError());
      return;
    }
    const u = new URL(this.o.url);
    u.searchParams.set('format', this.o.format);
    u.searchParams.set('token', this._token);
    /** @type {WebSocket} */
    let ws;
    try {
      ws = new this.o.WebSocket(u.toString());
    } catch (e) {
      this._emit('error', e);
      this._retryLater(0, 'could not open a WebSocket', 'backoff');
      return;
    }
    ws.binaryType = 'arraybuffer';
    /** @type {Conn} */
    const conn = { id: ++this._connIds, ws, opened: false, gotFrame: false, handshakeTimer: undefined };
    this._conn = conn;
    conn.handshakeTimer = setTimeout(() => {
      if (!conn.opened) this._abandon(conn);
    }, this.o.handshakeTimeout);
    ws.onopen = () => this._onOpen(conn);
    ws.onmessage = (ev) => this._onMessage(conn, ev);
    ws.onclose = (ev) => this._onClose(conn, ev.code, ev.reason);
    // Browsers follow an error with a close event carrying the code. Some implementations (Node
    // 20's) report a refused connection with an error alone, and leave the socket connecting:
    // an attempt that errs before it opened has failed (1006); after it opened, the close event
    // is given a moment to come with its code.
    ws.onerror = () => {
      if (!conn.opened) {
        this._abandon(conn);
        return;
      }
      setTimeout(() => this._onClose(conn, 1006, ''), 1000);
    };
  }

  /**
   * _abandon gives up an attempt or a connection as broken (1006), whatever its socket does next.
   * @param {Conn} conn
   */
  _abandon(conn) {
    const ws = conn.ws;
    // Detached first: closing a socket that failed can dispatch its error event again at once
    // (Node 20's does), which would come back here.
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      ws.close();
    } catch {
      // not closable in its state: it is dropped all the same
    }
    this._onClose(conn, 1006, '');
  }

  /** @param {Conn} conn */
  _onOpen(conn) {
    if (conn !== this._conn) return;
    clearTimeout(conn.handshakeTimer);
    conn.opened = true;
    this._failedOpens = 0;
    this._setState('connected');
    this._emit('connected', { url: this.o.url, attempt: this._attempt });
    for (const w of this._readyWaiters.splice(0)) w.resolve();
    // Control frames first: the subscriptions' positions, then what waited for a connection.
    for (const s of this._subs.values()) if (s._established) this._resubscribe(conn, s);
    for (const p of this._queue.splice(0)) this._write(conn, p);
    this._scheduleRefresh(conn);
  }

  /**
   * @param {Conn} conn
   * @param {number} code
   * @param {string} reason
   */
  _onClose(conn, code, reason) {
    if (conn !== this._conn) return;
    this._conn = null;
    clearTimeout(conn.handshakeTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._resubTimer);
    const action = actionFor(code);
    const again = [];
    for (const p of this._pending.values()) {
      if (p.sentOn !== conn.id) continue;
      if (p.internal) {
        this._forget(p);
      } else if (p.retry && action !== 'clientFault') {
        p.sentOn = 0;
        again.push(p);
      } else {
        this._forget(p);
        p.reject(new ConnectionLostError(p.pkgId, code, reason));
      }
    }
    this._queue.unshift(...again);
    for (const s of this._subs.values()) {
      s._liveOn = 0;
      s._syncing = false;
    }
    if (this.state === 'closed') return;
    if (conn.gotFrame) this._attempt = 0;
    if (!conn.opened && ++this._failedOpens >= 2 && this.o.getToken) {
      // A browser reports a refused handshake (401 for a revoked or unknown token) only as a
      // connection that failed: after two in a row, try a fresh token too.
      this._needFreshToken = true;
    }
    if (action === 'clientFault') {
      this._emit('error', new ClientError(`switchboard: the server closed the connection with ${code} ${reason} for something this client sent`));
      if (++this._faults >= this.o.maxClientFaults) {
        this._stop(new RejectedError(code, reason));
        return;
      }
    } else if (conn.opened) {
      this._faults = 0;
    }
    if (action === 'freshToken') {
      if (!this.o.getToken) {
        this._stop(new TokenExpiredError());
        return;
      }
      this._needFreshToken = true;
    }
    this._retryLater(code, reason, action);
  }

  /**
   * @param {number} code
   * @param {string} reason
   * @param {import('./policy.js').CloseAction} action
   */
  _retryLater(code, reason, action) {
    const delay = reconnectDelay(action, this._attempt, this.o);
    this._attempt++;
    this._setState('disconnected');
    this._emit('disconnected', { code, reason, delay });
    this._reconnectTimer = setTimeout(() => this._dial(), delay);
  }

  /** @param {Error} err */
  _stop(err) {
    this.error = err;
    this._shutdown(err);
  }

  /** close ends the client: requests waiting fail with ClosedError, subscriptions end. */
  close() {
    if (this.state === 'closed') return;
    this._shutdown(null);
  }

  /** @param {Error | null} err */
  _shutdown(err) {
    this._setState('closed');
    clearTimeout(this._reconnectTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._resubTimer);
    const conn = this._conn;
    this._conn = null;
    if (conn) {
      clearTimeout(conn.handshakeTimer);
      try {
        conn.ws.close(1000);
      } catch {
        // already closing
      }
    }
    const closed = new ClosedError(err);
    for (const p of [...this._pending.values()]) {
      this._forget(p);
      if (!p.internal) p.reject(closed);
    }
    this._queue.length = 0;
    for (const s of this._subs.values()) s._end(closed);
    this._subs.clear();
    for (const w of this._readyWaiters.splice(0)) w.reject(closed);
    this._emit('closed', { error: err });
  }

  // ---- frames ----

  /**
   * @param {Conn} conn
   * @param {MessageEvent} ev
   */
  _onMessage(conn, ev) {
    if (conn !== this._conn) return;
    conn.gotFrame = true;
    /** @type {any} */
    let f;
    try {
      if (this.o.format === 'protobuf') {
        if (!(ev.data instanceof ArrayBuffer)) throw new ClientError('switchboard: text frame on a protobuf connection');
        f = decodeFrame(new Uint8Array(ev.data));
      } else {
        if (typeof ev.data !== 'string') throw new ClientError('switchboard: binary frame on a JSON connection');
        f = JSON.parse(ev.data);
      }
    } catch (e) {
      this._emit('error', e);
      return;
    }
    if (typeof f.status_code === 'number') this._onAnswer(conn, f);
    else this._onBroadcast(conn, f);
  }

  /**
   * @param {Conn} conn
   * @param {Answer} f
   */
  _onAnswer(conn, f) {
    const p = this._pending.get(f.req_id);
    if (!p || p.sentOn !== conn.id) return; // timed out, or an answer to a malformed frame
    this._forget(p);
    if (p.onAnswer) p.onAnswer(conn, f);
    if (f.status_code === Status.OK) p.resolve(f);
    else p.reject(new SwitchboardError(f));
  }

  /** @param {Pending} p */
  _forget(p) {
    this._pending.delete(p.reqId);
    clearTimeout(p.timer);
    const i = this._queue.indexOf(p);
    if (i >= 0) this._queue.splice(i, 1);
  }

  /**
   * @param {Conn} conn
   * @param {Pending} p
   */
  _write(conn, p) {
    p.sentOn = conn.id;
    try {
      conn.ws.send(p.frame);
    } catch (e) {
      // The socket is closing: its close event fails or requeues p.
      this._emit('error', e);
    }
  }

  /**
   * @param {number} pkgId
   * @param {any} data
   * @param {{timeout?: number, retry?: boolean, internal?: boolean, onAnswer?: Pending['onAnswer']}} o
   * @returns {{p: Pending, promise: Promise<Answer>}}
   */
  _newPending(pkgId, data, o) {
    if (!Number.isInteger(pkgId)) throw new TypeError('switchboard: pkg_id must be an integer');
    if (data !== undefined && (data === null || typeof data !== 'object' || Array.isArray(data))) {
      throw new TypeError('switchboard: data must be an object');
    }
    const reqId = newReqId();
    const json = data === undefined ? undefined : JSON.stringify(data);
    const frame = this.o.format === 'protobuf'
      ? encodeRequest(pkgId, reqId, json)
      : JSON.stringify(json === undefined ? { pkg_id: pkgId, req_id: reqId } : { pkg_id: pkgId, req_id: reqId, data })
    ;
    const size = typeof frame === 'string' ? utf8.encode(frame).length : frame.length;
    if (this.o.maxMessageBytes > 0 && size > this.o.maxMessageBytes) throw new TooLargeError(size, this.o.maxMessageBytes);
    /** @type {Pending} */
    const p = {
      reqId, pkgId, frame, resolve: () => {}, reject: () => {}, timer: undefined, sentOn: 0,
      retry: !!o.retry, internal: !!o.internal, onAnswer: o.onAnswer,
    };
    const promise = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    const timeout = o.timeout ?? this.o.requestTimeout;
    p.timer = setTimeout(() => {
      this._forget(p);
      p.reject(new TimeoutError(pkgId, timeout));
    }, timeout);
    this._pending.set(reqId, p);
    return { p, promise };
  }

  /**
   * request sends pkg_id with data and resolves with the answer (status_code 0), or rejects with
   * a SwitchboardError (status_code, msg, data, errors), a TimeoutError, a ConnectionLostError
   * (the connection ended before the answer; with retry: true the request is written again on
   * the next connection instead), a QueueFullError, or a ClosedError. While the client is
   * disconnected the request waits (bounded by its timeout and options.outboundQueue).
   * @param {number} pkgId
   * @param {Record<string, any>} [data]
   * @param {{timeout?: number, retry?: boolean}} [o]
   * @returns {Promise<Answer>}
   */
  request(pkgId, data, o = {}) {
    if (this.state === 'closed') return Promise.reject(new ClosedError(this.error));
    let made;
    try {
      made = this._newPending(pkgId, data, o);
    } catch (e) {
      return Promise.reject(e);
    }
    this._enqueue(made.p);
    return made.promise;
  }

  /** @param {Pending} p */
  _enqueue(p) {
    const conn = this._conn;
    if (conn?.opened) {
      this._write(conn, p);
      return;
    }
    if (this._queue.length >= this.o.outboundQueue) {
      this._forget(p);
      p.reject(new QueueFullError());
      return;
    }
    this._queue.push(p);
  }

  // ---- subscriptions ----

  /**
   * subscribe subscribes to topic and calls onMessage with every broadcast on it, in order and
   * once. After every reconnect the client subscribes again with since and epoch; what the topic
   * kept is replayed, and when it cannot be, onMissed (and the client's 'missed' event) is told:
   * reload the state, then follow. It resolves once the server answered, or rejects with a
   * SwitchboardError (permissionDenied for a topic the user may not read).
   * @param {string} topic
   * @param {(m: Message) => void} onMessage
   * @param {{onMissed?: (m: Missed) => void, from?: Position, timeout?: number}} [o]
   * @returns {Promise<Subscription>}
   */
  async subscribe(topic, onMessage, o = {}) {
    if (typeof onMessage !== 'function') throw new TypeError('switchboard: subscribe needs an onMessage callback');
    if (this.state === 'closed') throw new ClosedError(this.error);
    if (this._subs.has(topic)) throw new ClientError(`switchboard: already subscribed to ${topic}`);
    const s = new Subscription(this, topic, onMessage, o.onMissed);
    if (o.from) s._pos = { seq: o.from.seq, epoch: o.from.epoch ?? '' };
    this._subs.set(topic, s);
    const asked = o.from ? { ...s._pos } : null;
    try {
      // retry: a SUBSCRIBE that was on a connection that ended is sent again (it re-runs the recovery).
      const { p, promise } = this._newPending(PKG_SUBSCRIBE, subscribeData(topic, asked), {
        retry: true, timeout: o.timeout, onAnswer: (conn, f) => this._settle(s, conn, f, asked, true),
      });
      this._enqueue(p);
      await promise;
    } catch (e) {
      if (this._subs.get(topic) === s) this._subs.delete(topic);
      s._end(/** @type {Error} */ (e));
      throw e;
    }
    return s;
  }

  /**
   * _settle takes a SUBSCRIBE answer before the frames after it (the replay) are read.
   * @param {Subscription} s
   * @param {Conn} conn
   * @param {Answer} f
   * @param {Position | null} asked where the SUBSCRIBE resumed from (null: nowhere)
   * @param {boolean} initial the first SUBSCRIBE, whose refusal subscribe() returns
   */
  _settle(s, conn, f, asked, initial) {
    if (s._ended || this._subs.get(s.topic) !== s) return;
    if (f.status_code !== Status.OK) {
      if (initial) return;
      s._syncing = false;
      if (f.status_code === Status.ERROR) {
        // Rate limited, or the history could not be read: it passes. Ask again on this
        // connection after a pause rather than drop it and every other topic.
        s._needResub = true;
        this._scheduleResub(conn);
        return;
      }
      const err = new SwitchboardError(f);
      this._emit('error', err);
      this._subs.delete(s.topic);
      s._end(err);
      return;
    }
    const ans = f.data ?? {};
    const latest = { seq: Number(ans.seq ?? 0), epoch: String(ans.epoch ?? '') };
    let recovered = !!asked && ans.recovered === true;
    if (recovered && asked && (latest.seq < asked.seq || (asked.epoch && latest.epoch && latest.epoch !== asked.epoch))) {
      // The stream is behind the position asked from, or another one: its sequence restarted.
      recovered = false;
    }
    s._established = true;
    s._liveOn = conn.id;
    s._syncing = false;
    s._needResub = false;
    s.recovered = recovered;
    s._pos = recovered && asked ? { seq: asked.seq, epoch: asked.epoch || latest.epoch } : latest;
    if (!recovered && asked) {
      /** @type {Missed} */
      const m = { topic: s.topic, from: asked, now: { ...s._pos } };
      if (s._onMissed) {
        try {
          s._onMissed(m);
        } catch (e) {
          this._emit('error', e);
        }
      }
      this._emit('missed', m);
    }
  }

  /**
   * _resubscribe sends SUBSCRIBE with since and epoch on conn; until its answer the topic's
   * messages on conn are dropped (the answer's replay brings them).
   * @param {Conn} conn
   * @param {Subscription} s
   */
  _resubscribe(conn, s) {
    const asked = { ...s._pos };
    s._syncing = true;
    s._needResub = false;
    const { p, promise } = this._newPending(PKG_SUBSCRIBE, subscribeData(s.topic, asked), {
      internal: true, onAnswer: (c, f) => this._settle(s, c, f, asked, false),
    });
    promise.catch((e) => {
      if (e instanceof TimeoutError && this._conn === conn && s._syncing) {
        s._syncing = false;
        s._needResub = true;
        this._scheduleResub(conn);
      }
    });
    this._write(conn, p);
  }

  /** @param {Conn} conn */
  _scheduleResub(conn) {
    if (this._resubTimer !== undefined) return;
    this._resubTimer = setTimeout(() => {
      this._resubTimer = undefined;
      if (this._conn !== conn) return; // the next connection resubscribes everything
      for (const s of this._subs.values()) if (s._needResub && s._established) this._resubscribe(conn, s);
    }, Math.max(this.o.reconnectMin, 1000));
  }

  /**
   * _onBroadcast routes a broadcast. On a topic with history the position decides: a seq already
   * taken is a duplicate (a replay overlapping live messages) and dropped, the next one is
   * delivered, and a gap or another epoch makes the client resubscribe from its position.
   * @param {Conn} conn
   * @param {any} f
   */
  _onBroadcast(conn, f) {
    /** @type {Message} */
    const m = { pkg_id: f.pkg_id, data: f.data };
    if (!f.topic) {
      this._emit('broadcast', m);
      return;
    }
    m.topic = f.topic;
    if (f.seq) m.seq = f.seq;
    if (f.epoch) m.epoch = f.epoch;
    const s = this._subs.get(f.topic);
    if (!s || s._liveOn !== conn.id || s._syncing) return;
    if (!f.seq) {
      s._deliver(m); // no history: nothing to recover it from
      return;
    }
    const same = !s._pos.epoch || f.epoch === s._pos.epoch;
    if (same && f.seq <= s._pos.seq) return;
    if (same && f.seq === s._pos.seq + 1) {
      s._pos = { seq: f.seq, epoch: f.epoch || s._pos.epoch };
      s._deliver(m);
      return;
    }
    this._resubscribe(conn, s);
  }

  // ---- tokens ----

  /** @param {Conn} conn */
  _scheduleRefresh(conn) {
    clearTimeout(this._refreshTimer);
    if (!this.o.getToken) return;
    const d = refreshIn(tokenExpiry(this._token), Date.now(), this.o.refreshBefore);
    if (d < 0) return;
    this._refreshTimer = setTimeout(() => this._refresh(conn), d);
  }

  /**
   * _refresh gets a fresh token and sends it on the live connection (REFRESH_TOKEN), so that the
   * server does not close it at the old token's exp. A failure is tried again after half of what
   * the token has left (at most 5 s); past exp the server closes with 4001 and the reconnect
   * gets a fresh token.
   * @param {Conn} conn
   */
  async _refresh(conn) {
    const retry = () => {
      if (this._conn !== conn) return;
      const left = (tokenExpiry(this._token) ?? 0) - Date.now();
      if (left <= 0) return;
      this._refreshTimer = setTimeout(() => this._refresh(conn), Math.max(Math.min(left / 2, 5000), 10));
    };
    let token;
    try {
      token = await /** @type {() => Promise<string>} */ (this.o.getToken)();
    } catch (e) {
      this._emit('error', e);
      retry();
      return;
    }
    if (this._conn !== conn || !conn.opened) return;
    const { p, promise } = this._newPending(PKG_REFRESH_TOKEN, { token }, { internal: true });
    this._write(conn, p);
    try {
      await promise;
    } catch (e) {
      this._emit('error', e);
      retry();
      return;
    }
    this._token = token;
    if (this._conn === conn) this._scheduleRefresh(conn);
  }
}

/**
 * @param {string} topic
 * @param {Position | null} since
 */
function subscribeData(topic, since) {
  /** @type {{topic: string, since?: number, epoch?: string}} */
  const d = { topic };
  if (since) {
    d.since = since.seq;
    if (since.epoch) d.epoch = since.epoch; // omitted when unknown: "" is no stream at all
  }
  return d;
}

/**
 * A topic subscription that survives reconnects (Client.subscribe).
 */
export class Subscription {
  /**
   * @param {Client} client
   * @param {string} topic
   * @param {(m: Message) => void} onMessage
   * @param {((m: Missed) => void) | undefined} onMissed
   */
  constructor(client, topic, onMessage, onMissed) {
    this._client = client;
    /** The topic. */
    this.topic = topic;
    this._onMessage = onMessage;
    this._onMissed = onMissed;
    /** @type {Position} */ this._pos = { seq: 0, epoch: '' };
    this._established = false;
    this._liveOn = 0;
    this._syncing = false;
    this._needResub = false;
    this._ended = false;
    /** Whether the latest (re)subscribe recovered everything after its since. */
    this.recovered = false;
    /** Why the subscription ended (null while it runs). @type {Error | null} */
    this.error = null;
    /** @type {() => void} */
    let done = () => {};
    /** Resolves when the subscription ends (unsubscribe, the client's end, a refusal). */
    this.done = new Promise((resolve) => { done = () => resolve(undefined); });
    this._done = done;
  }

  /** Where the subscription is: the last message delivered, or the stream's position from the
   * latest SUBSCRIBE answer. Keep it to resume later with subscribe(topic, fn, {from}). */
  get position() {
    return { ...this._pos };
  }

  /** @param {Message} m */
  _deliver(m) {
    if (this._ended) return;
    try {
      this._onMessage(m);
    } catch (e) {
      this._client._emit('error', e);
    }
  }

  /** @param {Error} err */
  _end(err) {
    if (this._ended) return;
    this._ended = true;
    this.error = err;
    this._done();
  }

  /**
   * unsubscribe ends the subscription; the server is told (pkg_id 11) when the subscription is
   * on the live connection.
   */
  async unsubscribe() {
    const c = this._client;
    if (this._ended) return;
    const live = !!c._conn?.opened && this._liveOn === c._conn.id;
    if (c._subs.get(this.topic) === this) c._subs.delete(this.topic);
    this._end(new ClientError('switchboard: unsubscribed'));
    if (!live) return;
    try {
      await c.request(PKG_UNSUBSCRIBE, { topic: this.topic });
    } catch (e) {
      if (e instanceof ConnectionLostError || e instanceof ClosedError) return; // the server forgets a connection's subscriptions with it
      throw e;
    }
  }
}
