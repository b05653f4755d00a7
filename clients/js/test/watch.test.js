// The watcher module against the real server binary (target/debug/trackline, started by the
// browser tests' harness): updates in both encodings, resume after a dropped connection, backoff
// while the server cannot be reached, the refusals that stop it, and the end of an order.
// The `ws` package (from tests/browser) is the WebSocket: node 20 has no global one; the
// protocol docs' example runs on node's own (behind a flag in node 20).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { test, before, after } from 'node:test';
import { fileURLToPath } from 'node:url';
import { watchOrder } from '../watch.js';

const harnessPath = fileURLToPath(new URL('../../../tests/browser/lib/harness.js', import.meta.url));
const require = createRequire(harnessPath);
const h = require(harnessPath);
const WS = require('ws');

const COURIER = 'courier-js-1';
let server, opsToken, courier;
let seq = Date.now() * 1000;
let fixTime = Date.now() - 3600 * 1000;
// Fixes sent so far: where the courier is. Not taken from `seq`, whose start follows the clock
// and once put the courier at the destination (an `arriving` order) one run in a hundred.
let steps = 0;

/** An order assigned to the test courier and picked up; answers its watch token. */
async function newOrder(orderId) {
  const created = await h.api(server.base, 'POST', '/v1/orders', opsToken, { order_id: orderId, destination: { lat: 60.2, lon: 24.9 }, courier_id: COURIER });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const picked = await h.api(server.base, 'POST', `/v1/orders/${orderId}/status`, opsToken, { status: 'picked_up' });
  assert.equal(picked.status, 200, JSON.stringify(picked.body));
  return created.body.watch_token;
}

/** Sends `n` fixes north along a meridian, one frame each (every one moves the marker), from
 * 11 km north of the orders' destination and away from it. */
async function sendFixes(n, extra = {}) {
  for (let i = 0; i < n; i++) {
    fixTime += 5000;
    seq += 1;
    steps += 1;
    await courier.send([{ seq, time_ms: fixTime, lat: 60.3 + steps * 1e-4, lon: 24.9, accuracy_m: 4.5, speed_mps: 7.3, heading_deg: 12.5, ...extra }]);
  }
}

/** A watcher whose frames, statuses and sockets are kept for the test to look at. */
function watch(orderId, token, options = {}) {
  const seen = { updates: [], skipped: 0, statuses: [], sockets: [] };
  class Recorded extends WS {
    constructor(...args) {
      super(...args);
      seen.sockets.push(this);
    }
  }
  seen.handle = watchOrder({
    url: server.base,
    orderId,
    token,
    WebSocket: Recorded,
    onUpdate: (u, info) => {
      seen.updates.push(u);
      seen.skipped += info.skipped;
    },
    onStatus: s => seen.statuses.push({ ...s, at: Date.now() }),
    ...options,
  });
  seen.last = () => seen.updates[seen.updates.length - 1];
  seen.states = () => seen.statuses.map(s => s.state);
  return seen;
}

const reachOffset = (seen, offset) => h.waitFor(() => seen.last() && seen.last().offset >= offset, `the watcher to reach offset ${offset}`);

before(async () => {
  server = await h.startServer();
  opsToken = server.token('ops');
  courier = await h.Courier.connect(server.base, server.token('courier', COURIER));
});

after(async () => {
  if (courier) courier.close();
  if (server) await server.stop();
});

test('the server serves this module to the live page, byte for byte', async () => {
  const r = await fetch(`${server.base}/assets/watch.js`);
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /^text\/javascript/);
  assert.equal(await r.text(), fs.readFileSync(new URL('../watch.js', import.meta.url), 'utf8'));
  const page = await fetch(`${server.base}/assets/track.js`).then(res => res.text());
  assert.match(page, /from '\.\/watch\.js'/, 'the page imports it');
});

test('updates arrive in both encodings, the same in each', async () => {
  const token = await newOrder('o-js-enc');
  const json = watch('o-js-enc', token, { encoding: 'json' });
  const proto = watch('o-js-enc', token, { encoding: 'proto' });
  await h.waitFor(() => json.last() && proto.last(), 'both snapshots');
  await sendFixes(4);
  await sendFixes(1, { speed_mps: null, heading_deg: null, accuracy_m: 0 }); // unknown values
  const reference = await h.api(server.base, 'GET', '/v1/orders/o-js-enc', opsToken);
  await reachOffset(json, reference.body.offset);
  await reachOffset(proto, reference.body.offset);

  assert.equal(json.updates[0].type, 'snapshot');
  assert.equal(proto.updates[0].type, 'snapshot');
  assert.deepEqual(
    proto.updates.map(u => u.offset),
    json.updates.map(u => u.offset),
  );
  for (const [i, p] of proto.updates.entries()) {
    const j = json.updates[i];
    for (const field of ['type', 'order_id', 'offset', 'epoch', 'status', 'eta', 'recovered']) assert.deepEqual(p[field], j[field], `${field} of frame ${i}`);
    assert.equal(p.position === null, j.position === null, `position of frame ${i}`);
    if (!p.position) continue;
    for (const field of ['time_ms', 'speed_mps', 'heading_deg', 'accuracy_m']) assert.equal(p.position[field], j.position[field], `${field} of frame ${i}`);
    assert.ok(Math.abs(p.position.lat - j.position.lat) < 1e-7 && Math.abs(p.position.lon - j.position.lon) < 1e-7, `lat/lon of frame ${i}`);
  }
  const known = json.updates[json.updates.length - 2].position;
  assert.deepEqual([known.speed_mps, known.heading_deg, known.accuracy_m], [7.3, 12.5, 4.5]);
  assert.deepEqual([proto.last().position.speed_mps, proto.last().position.heading_deg, proto.last().position.accuracy_m], [null, null, null], 'unknown values are null');
  assert.ok(proto.updates.slice(1).every(u => u.type === 'update'));
  assert.equal(proto.last().status, 'picked_up');
  assert.equal(json.handle.state, 'live');
  json.handle.close();
  proto.handle.close();
  assert.equal(json.handle.state, 'closed');
});

for (const encoding of ['json', 'proto']) {
  test(`${encoding}: a dropped connection resumes with every offset once, in order`, async () => {
    const orderId = `o-js-drop-${encoding}`;
    const token = await newOrder(orderId);
    const seen = watch(orderId, token, { encoding, backoff: { initialMs: 600 } });
    await h.waitFor(() => seen.last(), 'the snapshot');
    await sendFixes(3);
    await reachOffset(seen, seen.updates[0].offset + 3);
    for (let drop = 0; drop < 2; drop++) {
      const before = seen.updates.length;
      // The socket dies without a close handshake, as when the network goes away.
      seen.sockets[seen.sockets.length - 1].terminate();
      await sendFixes(4); // sent while the watcher waits to reconnect (450 ms at least)
      const target = (await h.api(server.base, 'GET', `/v1/orders/${orderId}`, opsToken)).body.offset;
      await reachOffset(seen, target);
      assert.ok(seen.updates.slice(before).some(u => u.recovered), 'the missed updates were replayed');
    }
    const offsets = seen.updates.map(u => u.offset);
    const first = offsets[0];
    assert.deepEqual(offsets, offsets.map((_, i) => first + i), 'contiguous, no duplicates');
    assert.equal(seen.updates.filter(u => u.type === 'snapshot').length, 1, 'one snapshot, then updates only');
    assert.equal(seen.skipped, 0);
    assert.equal(seen.sockets.length, 3);
    assert.equal(seen.states().filter(s => s === 'reconnecting').length, 2);
    const resumeUrl = new URL(seen.sockets[2].url);
    assert.equal(resumeUrl.searchParams.get('epoch'), seen.updates[0].epoch, 'resumed within the epoch');
    seen.handle.close();
  });
}

test('after a server crash and restart the watcher comes back by itself, without a repeat or a gap', async () => {
  const orderId = 'o-js-restart';
  const token = await newOrder(orderId);
  const seen = watch(orderId, token, { encoding: 'proto', backoff: { initialMs: 100, maxMs: 400 } });
  await h.waitFor(() => seen.last(), 'the snapshot');
  await sendFixes(3);
  await reachOffset(seen, (await h.api(server.base, 'GET', `/v1/orders/${orderId}`, opsToken)).body.offset);
  const lives = () => seen.states().filter(s => s === 'live').length;
  courier.close();
  await server.restart('SIGKILL');
  await h.waitFor(() => lives() === 2 && seen.handle.state === 'live', 'the watcher to be live again');
  courier = await h.Courier.connect(server.base, server.token('courier', COURIER));
  await sendFixes(3);
  const after = (await h.api(server.base, 'GET', `/v1/orders/${orderId}`, opsToken)).body;
  await reachOffset(seen, after.offset);

  assert.ok(seen.states().includes('reconnecting'));
  const updates = seen.updates.filter(u => u.type === 'update');
  const first = seen.updates[0].offset;
  assert.deepEqual(updates.map(u => u.offset), updates.map((_, i) => first + 1 + i), 'every update once, in order, across the crash');
  assert.equal(seen.last().offset, after.offset);
  assert.equal(seen.last().epoch, seen.updates[0].epoch, 'the order keeps its epoch across a restart');
  // Nothing changed while the server was down, so resuming from the last offset needs no replay
  // (the replay buffer is empty after a restart) and no fresh snapshot.
  assert.equal(seen.updates.filter(u => u.type === 'snapshot').length, 1);
  assert.equal(seen.skipped, 0);
  seen.handle.close();
});

test('a server that cannot be reached is retried with growing, jittered delays until close()', async () => {
  const port = await new Promise(resolve => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: free } = probe.address();
      probe.close(() => resolve(free));
    });
  });
  const statuses = [];
  const handle = watchOrder({
    url: `http://127.0.0.1:${port}`,
    orderId: 'o-nowhere',
    token: 'any',
    WebSocket: WS,
    backoff: { initialMs: 40, maxMs: 320, factor: 2, jitter: 0.25 },
    onUpdate: () => assert.fail('no update can come'),
    onStatus: s => statuses.push({ ...s, at: Date.now() }),
  });
  await h.waitFor(() => statuses.filter(s => s.state === 'reconnecting').length >= 7, 'seven retries');
  handle.close();
  const delays = statuses.filter(s => s.state === 'reconnecting').map(s => s.delayMs);
  const expected = [40, 80, 160, 320, 320, 320, 320];
  for (const [i, want] of expected.entries()) {
    assert.ok(delays[i] >= want * 0.75 && delays[i] <= want * 1.25, `retry ${i}: ${delays[i]} ms, expected ${want} ms ± 25 % (${delays})`);
  }
  assert.ok(new Set(delays.slice(3, 7)).size > 1, `jittered: ${delays}`);
  // Each attempt waited its delay.
  const connecting = statuses.filter(s => s.state === 'connecting');
  for (let i = 1; i < 7; i++) assert.ok(connecting[i].at - connecting[i - 1].at >= delays[i - 1] - 5, `attempt ${i} came after its delay`);
  const attempts = connecting.length;
  await h.sleep(800);
  assert.equal(statuses.filter(s => s.state === 'connecting').length, attempts, 'no attempt after close()');
  assert.equal(handle.state, 'closed');
});

test('a refused token, another order\'s token, a missing order and a bad id stop it', async () => {
  await newOrder('o-js-refused');
  const other = await newOrder('o-js-other');
  for (const [orderId, token, status, code] of [
    ['o-js-refused', 'not-a-token', 401, 'unauthorized'],
    ['o-js-refused', other, 403, 'forbidden'],
    ['o-js-missing', opsToken, 404, 'not_found'],
    ['bad id', opsToken, 400, 'bad_order_id'],
  ]) {
    const seen = watch(orderId, token, { backoff: { initialMs: 50 } });
    await h.waitFor(() => seen.handle.state === 'failed', `${orderId} with a ${status} to fail`);
    const { error } = seen.statuses.find(s => s.state === 'failed');
    assert.equal(error.status, status, error.message);
    assert.equal(error.code, code, error.message);
    assert.ok(error.message.length > 0);
    const attempts = seen.sockets.length;
    await h.sleep(400);
    assert.equal(seen.sockets.length, attempts, `no retry after ${status}`);
    assert.deepEqual(seen.updates, []);
  }
});

test('the final state ends the watcher, with no reconnect', async () => {
  const token = await newOrder('o-js-end');
  const seen = watch('o-js-end', token, { encoding: 'proto' });
  await h.waitFor(() => seen.last(), 'the snapshot');
  await sendFixes(2);
  const delivered = await h.api(server.base, 'POST', '/v1/orders/o-js-end/status', opsToken, { status: 'delivered' });
  assert.equal(delivered.status, 200, JSON.stringify(delivered.body));
  await h.waitFor(() => seen.handle.state === 'ended', 'the end');
  assert.equal(seen.last().status, 'delivered');
  assert.equal(seen.statuses.find(s => s.state === 'ended').closeCode, 1000);
  await h.sleep(300);
  assert.equal(seen.sockets.length, 1, 'no reconnect after the end');

  // Watching it again, resuming where it ended, sends the final state once more and ends.
  const again = watch('o-js-end', token, { since: seen.last().offset, epoch: seen.last().epoch });
  await h.waitFor(() => again.handle.state === 'ended', 'the second end');
  assert.equal(again.last().status, 'delivered');
});

test('an expired token on a live stream stops it with 401', async () => {
  const token = await newOrder('o-js-expiring');
  const short = (await h.api(server.base, 'POST', '/v1/tokens', opsToken, { role: 'watch', subject: 'o-js-expiring', ttl_s: 2 })).body.token;
  assert.ok(short, 'a short-lived token');
  const seen = watch('o-js-expiring', short, { backoff: { initialMs: 50 } });
  await h.waitFor(() => seen.last(), 'the snapshot');
  await h.waitFor(() => seen.handle.state === 'failed', 'the expiry to stop it', 10000);
  const { error } = seen.statuses.find(s => s.state === 'failed');
  assert.equal(error.status, 401);
  assert.ok(token, 'the order has a long-lived token too');
});

test("the protocol docs' watcher runs as written, on node's own WebSocket", async () => {
  const token = await newOrder('o-js-docs');
  const readme = fs.readFileSync(new URL('../../../proto/README.md', import.meta.url), 'utf8');
  const snippet = /```js\n([\s\S]*?)```/.exec(readme.slice(readme.indexOf('### A watcher in JavaScript')))[1];
  let script = snippet;
  for (const [from, to] of [
    ["'@trackline/watch'", JSON.stringify(new URL('../watch.js', import.meta.url).href)],
    ["'https://track.example.com'", JSON.stringify(server.base)],
    ["'o-123'", "'o-js-docs'"],
    ['watchToken', JSON.stringify(token)],
  ]) {
    assert.ok(script.includes(from), `the example has ${from}`);
    script = script.replace(from, to);
  }
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'trackline-js-')), 'example.mjs');
  fs.writeFileSync(file, script);
  const child = spawn(process.execPath, [...(globalThis.WebSocket ? [] : ['--experimental-websocket']), file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', d => (out += d));
  child.stderr.on('data', d => (err += d));
  const exited = new Promise(resolve => child.on('exit', code => resolve(code)));
  try {
    await h.waitFor(() => /^snapshot \d+ picked_up/m.test(out), `the example's snapshot (stdout: ${out}, stderr: ${err})`);
    await sendFixes(2);
    assert.equal((await h.api(server.base, 'POST', '/v1/orders/o-js-docs/status', opsToken, { status: 'delivered' })).status, 200);
    assert.equal(await exited, 0, `the example ends by itself when the order does (stderr: ${err})`);
  } finally {
    child.kill();
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  }
  assert.match(out, /^live/m);
  assert.equal((out.match(/^update \d+ picked_up \{/gm) || []).length, 2, out);
  assert.match(out, /^update \d+ delivered/m);
  assert.match(out, /^ended/m);
});
