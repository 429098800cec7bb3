// @ts-check
// The one protobuf message of the wire, switchboard.v1.Frame (transport/switchboard.proto),
// written out by hand: the message is flat, so a generated codec and its runtime would weigh far
// more than these few functions. data and meta stay JSON text inside the frame, so everything
// above the envelope is the same as on a JSON connection.

/** Field numbers of switchboard.v1.Frame. */
const F = Object.freeze({ pkgId: 1, reqId: 2, data: 3, statusCode: 4, meta: 5, msg: 6, topic: 7, seq: 8, epoch: 9 });

const VARINT = 0;
const I64 = 1;
const LEN = 2;
const I32 = 5;

const utf8 = new TextEncoder();
// fatal: false — a server bug must not make the client throw on a string; bad bytes become U+FFFD.
const utf8Decoder = new TextDecoder('utf-8', { fatal: false });

/**
 * A decoded server frame: an answer (statusCode set) or a broadcast (statusCode undefined).
 * @typedef {object} WireFrame
 * @property {number} pkg_id
 * @property {string} req_id
 * @property {number} [status_code]
 * @property {any} data
 * @property {any} meta
 * @property {string | null} msg
 * @property {string} [topic]
 * @property {number} [seq]
 * @property {string} [epoch]
 */

/**
 * @param {number[]} out
 * @param {number} v a non-negative integer below 2^53
 */
function pushVarint(out, v) {
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}

/**
 * pushInt32 appends an int32 value as protobuf does: negative values sign-extended to ten bytes.
 * @param {number[]} out
 * @param {number} v
 */
function pushInt32(out, v) {
  if (v >= 0) {
    pushVarint(out, v);
    return;
  }
  let u = BigInt.asUintN(64, BigInt(v)); // two's complement in 64 bits: ten bytes
  while (u >= 0x80n) {
    out.push(Number(u & 0x7fn) | 0x80);
    u >>= 7n;
  }
  out.push(Number(u));
}

/**
 * @param {number[]} out
 * @param {number} field
 * @param {Uint8Array} bytes
 */
function pushBytes(out, field, bytes) {
  pushVarint(out, (field << 3) | LEN);
  pushVarint(out, bytes.length);
  for (const b of bytes) out.push(b);
}

/**
 * encodeRequest returns a request Frame: pkg_id, req_id and data (JSON text of an object; none
 * when data is undefined).
 * @param {number} pkgId
 * @param {string} reqId
 * @param {string | undefined} dataJSON
 * @returns {Uint8Array}
 */
export function encodeRequest(pkgId, reqId, dataJSON) {
  /** @type {number[]} */
  const out = [];
  if (pkgId !== 0) {
    pushVarint(out, (F.pkgId << 3) | VARINT);
    pushInt32(out, pkgId | 0);
  }
  pushBytes(out, F.reqId, utf8.encode(reqId));
  if (dataJSON !== undefined && dataJSON.length > 0) pushBytes(out, F.data, utf8.encode(dataJSON));
  return Uint8Array.from(out);
}

/** A Frame that does not decode. */
export class FrameError extends Error {
  /** @param {string} what */
  constructor(what) {
    super(`switchboard: undecodable protobuf frame: ${what}`);
    this.name = 'FrameError';
  }
}

/**
 * readVarint reads a varint at pos. The value is exact up to 2^53 (seq never gets near that);
 * low32 holds its low 32 bits exactly, which is what an int32 field keeps (a negative int32 is
 * sign-extended to ten bytes on the wire).
 * @param {Uint8Array} b
 * @param {number} pos
 * @returns {[number, number, number]} value, low 32 bits as a signed int32, position after it
 */
function readVarint(b, pos) {
  let v = 0;
  let mul = 1;
  let lo = 0;
  for (let i = 0; i < 10; i++) {
    if (pos >= b.length) throw new FrameError('truncated varint');
    const byte = b[pos++];
    v += (byte & 0x7f) * mul;
    mul *= 0x80;
    if (i < 5) lo |= (byte & 0x7f) << (7 * i); // bits past 32 fall off, as they should
    if (byte < 0x80) return [v, lo | 0, pos];
  }
  throw new FrameError('varint longer than ten bytes');
}

/**
 * @param {Uint8Array} raw
 * @param {string} field
 */
function parseJSON(raw, field) {
  if (raw.length === 0) return null;
  try {
    return JSON.parse(utf8Decoder.decode(raw));
  } catch {
    throw new FrameError(`${field} is not JSON`);
  }
}

/**
 * decodeFrame decodes a server Frame into the same shape a JSON frame parses to. Fields Frame
 * does not have are skipped; a known field of the wrong wire type is an error.
 * @param {Uint8Array} b
 * @returns {WireFrame}
 */
export function decodeFrame(b) {
  /** @type {WireFrame} */
  const f = { pkg_id: 0, req_id: '', data: null, meta: null, msg: null };
  let hasData = false;
  let pos = 0;
  while (pos < b.length) {
    let tag;
    [tag, , pos] = readVarint(b, pos);
    const num = Math.floor(tag / 8);
    const type = tag % 8;
    if (num === 0) throw new FrameError('field number 0');
    const varintField = num === F.pkgId || num === F.statusCode || num === F.seq;
    const bytesField = num >= F.reqId && num <= F.epoch && !varintField;
    if ((varintField && type !== VARINT) || (bytesField && type !== LEN)) {
      throw new FrameError(`field ${num} of wire type ${type}`);
    }
    if (type === VARINT) {
      let v, lo;
      [v, lo, pos] = readVarint(b, pos);
      if (num === F.pkgId) f.pkg_id = lo;
      else if (num === F.statusCode) f.status_code = lo;
      else if (num === F.seq) f.seq = v;
    } else if (type === LEN) {
      let n;
      [n, , pos] = readVarint(b, pos);
      if (pos + n > b.length) throw new FrameError('truncated bytes');
      const raw = b.subarray(pos, pos + n);
      pos += n;
      switch (num) {
        case F.reqId: f.req_id = utf8Decoder.decode(raw); break;
        case F.data: f.data = parseJSON(raw, 'data'); hasData = raw.length > 0; break;
        case F.meta: f.meta = parseJSON(raw, 'meta'); break;
        case F.msg: f.msg = utf8Decoder.decode(raw); break;
        case F.topic: f.topic = utf8Decoder.decode(raw); break;
        case F.epoch: f.epoch = utf8Decoder.decode(raw); break;
      }
    } else if (type === I64) {
      pos += 8;
    } else if (type === I32) {
      pos += 4;
    } else {
      throw new FrameError(`wire type ${type}`); // groups: Frame has none, the server sends none
    }
    if (pos > b.length) throw new FrameError('truncated value');
  }
  if (!hasData && f.status_code === undefined) f.data = {}; // a broadcast's data is an object
  if (f.topic === '') delete f.topic;
  if (f.epoch === '') delete f.epoch;
  return f;
}
