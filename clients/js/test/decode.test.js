// The protobuf decoder against protobufjs encoding the project's own .proto (from
// tests/browser): every field of OrderUpdate, unknown speed/heading/accuracy as null whether
// absent or sent as the older sentinels, unknown fields skipped, broken bytes refused; and a
// frame that cannot be read stops the watcher with `bad_frame`.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { decodeOrderUpdate, watchOrder } from '../watch.js';

const root = fileURLToPath(new URL('../../../', import.meta.url));
const protobuf = createRequire(path.join(root, 'tests/browser/package.json'))('protobufjs');
const OrderUpdate = protobuf.loadSync(path.join(root, 'proto/trackline/v1/trackline.proto')).lookupType('trackline.v1.OrderUpdate');
const encode = fields => OrderUpdate.encode(OrderUpdate.create(fields)).finish();

test('every field of OrderUpdate is read, in the JSON frames\' names and units', () => {
  const bytes = encode({
    orderId: 'o-1',
    offset: 9007199254740991, // 2^53 - 1
    epoch: 'e-42',
    status: 4,
    position: { timeMs: 1764700000123, latE7: -339123456, lonE7: 1512345678, speedMps: 7.3, headingDeg: 359.5, accuracyM: 4.5 },
    eta: { seconds: -5, arriveAtMs: 1764700300000, window: { earliestMs: 1764700200000, latestMs: 1764700500000 } },
    recovered: true,
    stops: [
      { kind: 1, latE7: 10, lonE7: 20, reachedAtMs: 1764700000000 },
      { kind: 2, latE7: 30, lonE7: 40, eta: { seconds: 60, arriveAtMs: 1764700300000 } },
    ],
  });
  assert.deepEqual(decodeOrderUpdate(bytes), {
    order_id: 'o-1',
    offset: 9007199254740991,
    epoch: 'e-42',
    status: 'arriving',
    position: { lat: -33.9123456, lon: 151.2345678, time_ms: 1764700000123, speed_mps: 7.3, heading_deg: 359.5, accuracy_m: 4.5 },
    eta: { seconds: -5, arrive_at_ms: 1764700300000, window: { earliest_ms: 1764700200000, latest_ms: 1764700500000 } },
    recovered: true,
    stops: [
      { kind: 'pickup', lat: 1e-6, lon: 2e-6, eta: null, reached_at_ms: 1764700000000 },
      { kind: 'dropoff', lat: 3e-6, lon: 4e-6, eta: { seconds: 60, arrive_at_ms: 1764700300000 }, reached_at_ms: null },
    ],
  });
  assert.equal(decodeOrderUpdate(encode({ offset: 1, epoch: 'e', status: 7 })).status, 'at_pickup');
});

test('unknown speed, heading and accuracy are null, absent or sentinel; a real 0 speed or heading stays', () => {
  const absent = decodeOrderUpdate(encode({ orderId: 'o', offset: 1, epoch: 'e', status: 3, position: { timeMs: 5, latE7: 1, lonE7: 2 } }));
  assert.deepEqual(absent.position, { lat: 1e-7, lon: 2e-7, time_ms: 5, speed_mps: null, heading_deg: null, accuracy_m: null });
  assert.equal(absent.eta, null);
  assert.equal(absent.recovered, false);
  const sentinels = decodeOrderUpdate(encode({ offset: 1, epoch: 'e', position: { speedMps: -1, headingDeg: -1, accuracyM: 0 } }));
  assert.deepEqual([sentinels.position.speed_mps, sentinels.position.heading_deg, sentinels.position.accuracy_m], [null, null, null]);
  // protobufjs leaves proto3 zeros out; a field marked `optional` sends them: by hand, then.
  const float = v => [...new Uint8Array(Float32Array.of(v).buffer)];
  const position = [(4 << 3) | 5, ...float(0), (5 << 3) | 5, ...float(0), (6 << 3) | 5, ...float(3)];
  const zeros = decodeOrderUpdate(Uint8Array.from([...encode({ offset: 1, epoch: 'e' }), (5 << 3) | 2, position.length, ...position]));
  assert.deepEqual([zeros.position.speed_mps, zeros.position.heading_deg, zeros.position.accuracy_m], [0, 0, 3]);
});

test('fields this decoder does not know are skipped, whatever their wire type', () => {
  const known = encode({ orderId: 'o-2', offset: 3, epoch: 'e', status: 5 });
  const extra = Uint8Array.from([
    ...known,
    (12 << 3) | 0, 0x96, 0x01, // varint
    (13 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8, // fixed64
    (14 << 3) | 2, 3, 0x61, 0x62, 0x63, // bytes
    (15 << 3) | 5, 1, 2, 3, 4, // fixed32
    0xa0, 0x01, 0x07, // field 20 (a two-byte key), varint
  ]);
  assert.deepEqual(decodeOrderUpdate(extra), decodeOrderUpdate(known));
  assert.equal(decodeOrderUpdate(extra).status, 'delivered');
});

test('broken bytes are refused with a reason', () => {
  const good = encode({ orderId: 'o-3', offset: 3, epoch: 'epoch' });
  assert.throws(() => decodeOrderUpdate(good.subarray(0, good.length - 2)), /truncated/);
  assert.throws(() => decodeOrderUpdate(Uint8Array.from([0x10, 0xff])), /truncated varint/);
  assert.throws(() => decodeOrderUpdate(Uint8Array.from([(9 << 3) | 3])), /wire type 3/);
  assert.throws(() => decodeOrderUpdate(Uint8Array.from([0x0a, 0x02, 0xc3, 0x28])), /invalid|encoded|decode/i, 'order_id that is not UTF-8');
  assert.throws(() => decodeOrderUpdate(Uint8Array.from([0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])), /beyond 2\^53/);
});

test('an unreadable frame stops the watcher with bad_frame', async () => {
  // A socket that opens and sends one frame that is not an OrderUpdate.
  let closedWith = null;
  class BrokenServer {
    constructor(url, protocol) {
      this.url = url;
      this.protocol = protocol;
      setTimeout(() => {
        this.onopen();
        this.onmessage({ data: Uint8Array.from([(9 << 3) | 4]).buffer });
      }, 5);
    }
    close(code) {
      closedWith = code;
    }
  }
  const statuses = [];
  const updates = [];
  const failed = new Promise(resolve => {
    watchOrder({
      url: 'http://127.0.0.1:1',
      orderId: 'o',
      token: 't',
      encoding: 'proto',
      WebSocket: BrokenServer,
      onUpdate: u => updates.push(u),
      onStatus: s => {
        statuses.push(s.state);
        if (s.state === 'failed') resolve(s.error);
      },
    });
  });
  const error = await failed;
  assert.equal(error.code, 'bad_frame');
  assert.match(error.message, /unreadable proto frame: wire type 4/);
  assert.deepEqual(statuses, ['connecting', 'live', 'failed']);
  assert.equal(closedWith, 1000, 'the socket is closed');
  assert.deepEqual(updates, []);
});

test('a WebSocket that refuses the URL stops the watcher with bad_url, once', () => {
  let attempts = 0;
  class Refusing {
    constructor() {
      attempts++;
      throw new SyntaxError('the URL is not allowed here');
    }
  }
  const statuses = [];
  const handle = watchOrder({ url: 'http://127.0.0.1:1', orderId: 'o', token: 't', WebSocket: Refusing, onUpdate: () => {}, onStatus: s => statuses.push(s) });
  assert.equal(handle.state, 'failed');
  assert.deepEqual(statuses.map(s => s.state), ['connecting', 'failed']);
  assert.equal(statuses[1].error.code, 'bad_url');
  assert.match(statuses[1].error.message, /not allowed here/);
  assert.equal(attempts, 1);
});

test('bad options are refused at once', () => {
  const base = { url: 'http://127.0.0.1:1', orderId: 'o', token: 't', onUpdate: () => {}, WebSocket: class {} };
  for (const [change, message] of [
    [{ encoding: 'xml' }, /encoding must be "json" or "proto"/],
    [{ since: 3 }, /since and epoch go together/],
    [{ since: -1, epoch: 'e' }, /since must be an offset/],
    [{ token: '' }, /token is required/],
    [{ onUpdate: undefined }, /onUpdate must be a function/],
    [{ WebSocket: 42 }, /WebSocket must be a WebSocket constructor/],
  ]) {
    assert.throws(() => watchOrder({ ...base, ...change }), message, JSON.stringify(change));
  }
});
