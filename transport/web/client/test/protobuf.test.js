import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeFrame, encodeRequest, FrameError } from '../protobuf.js';

const hex = (b) => Buffer.from(b).toString('hex');

test('a request is pkg_id, req_id and data, as the Go encoders write it', () => {
  // 08 01 | 12 24 <36 bytes of req_id> | 1a 02 7b 7d
  const id = '550e8400-e29b-41d4-a716-446655440000';
  const b = encodeRequest(1, id, '{}');
  assert.equal(hex(b), '0801' + '1224' + Buffer.from(id).toString('hex') + '1a027b7d');
  assert.equal(hex(encodeRequest(300, 'x', undefined)), '08ac02120178');
  // A negative int32 is sign-extended to ten bytes.
  assert.equal(hex(encodeRequest(-1, 'x', undefined)), '08ffffffffffffffffff01120178');
});

test('an answer decodes to the JSON envelope, status_code 0 included', () => {
  const frame = Buffer.concat([
    Buffer.from('0803', 'hex'),
    Buffer.from([0x12, 3]), Buffer.from('abc'),
    Buffer.from([0x1a, 17]), Buffer.from('{"id":1,"name":"A"}'.slice(0, 17)),
  ]);
  assert.throws(() => decodeFrame(frame), FrameError); // data cut inside the JSON
  const data = '{"id":1,"name":"ü"}';
  const good = Buffer.concat([
    Buffer.from('0803', 'hex'),
    Buffer.from([0x12, 3]), Buffer.from('abc'),
    Buffer.from([0x1a, Buffer.byteLength(data)]), Buffer.from(data),
    Buffer.from('2000', 'hex'), // status_code 0, present
    Buffer.from([0x32, 2]), Buffer.from('hi'),
  ]);
  assert.deepEqual(decodeFrame(good), { pkg_id: 3, req_id: 'abc', data: { id: 1, name: 'ü' }, meta: null, msg: 'hi', status_code: 0 });
});

test('a broadcast has no status_code; topic, seq and epoch when it has them', () => {
  const b = Buffer.concat([
    Buffer.from('0807', 'hex'),
    Buffer.from([0x1a, 2]), Buffer.from('{}'),
    Buffer.from([0x3a, 1]), Buffer.from('t'),
    Buffer.from('40', 'hex'), Buffer.from([0x80, 0x80, 0x80, 0x80, 0x10]), // seq 2^32
    Buffer.from([0x4a, 2]), Buffer.from('e1'),
    Buffer.from('5801', 'hex'), // field 11, varint: unknown, skipped
  ]);
  const f = decodeFrame(b);
  assert.equal(f.status_code, undefined);
  assert.deepEqual({ pkg_id: f.pkg_id, topic: f.topic, seq: f.seq, epoch: f.epoch, data: f.data }, { pkg_id: 7, topic: 't', seq: 2 ** 32, epoch: 'e1', data: {} });
});

test('malformed frames throw FrameError, never anything else', () => {
  for (const bad of ['12', '1205616263', '0a0178', '08ffffffffffffffffffff01', '07', '1a027b']) {
    assert.throws(() => decodeFrame(Buffer.from(bad, 'hex')), FrameError, bad);
  }
});
