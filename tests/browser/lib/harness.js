// The browser-test harness: the real `trackline` binary on a free port over a temporary data
// dir, tokens minted by the real `trackctl`, a courier and a watcher speaking the wire protocol
// (protobuf over WebSocket, loaded from proto/), and headless Debian Chromium driven by
// playwright-core. Every wait has a timeout, so a broken server fails a test instead of hanging.
'use strict';
const { spawn, execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const zlib = require('node:zlib');
const protobuf = require('protobufjs');
const WebSocket = require('ws');

const ROOT = path.resolve(__dirname, '../../..');
const BIN_DIR = process.env.TRACKLINE_BIN_DIR || path.join(process.env.CARGO_TARGET_DIR || path.join(ROOT, 'target'), 'debug');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'tests', 'artifacts');
const TIMEOUT_MS = 15000;

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** Waits until `check()` returns something truthy (it may be async); returns that. */
async function waitFor(check, what, timeoutMs = TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(50);
  }
}

function binary(name) {
  const file = path.join(BIN_DIR, name);
  if (!fs.existsSync(file)) throw new Error(`${file} is missing: build it first (cargo build -p trackline-server --bins -p trackctl)`);
  return file;
}

/** Starts `trackline` on `listen` over `dataDir`; resolves once it logs that it is ready, with
 * the process, the address it listens on, and whether it has exited. */
async function launch({ listen, dataDir, secret, log, extraArgs }) {
  const proc = spawn(binary('trackline'), ['--listen', listen, '--data-dir', path.join(dataDir, 'data'), '--log-format', 'json', ...extraArgs], {
    env: { ...process.env, TRACKLINE_SECRET: secret, RUST_LOG: 'info' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const run = { proc, exited: null, addr: null };
  proc.on('exit', (code, signal) => {
    run.exited = { code, signal };
  });
  run.addr = await new Promise((resolve, reject) => {
    let buffered = '';
    proc.stderr.on('data', chunk => {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        log.push(line);
        try {
          const entry = JSON.parse(line);
          if (entry.fields && entry.fields.message === 'trackline ready') resolve(entry.fields.listen);
        } catch (_) {
          /* not JSON: keep it in the log */
        }
      }
    });
    proc.on('exit', () => reject(new Error('trackline exited before it was ready:\n' + log.join('\n'))));
    setTimeout(() => reject(new Error('trackline not ready in time:\n' + log.join('\n'))), 30000).unref();
  });
  return run;
}

/** Ends a launched server: SIGTERM (graceful), or SIGKILL when `signal` says so or it lingers. */
async function halt(run, signal = 'SIGTERM') {
  if (run.exited) return;
  run.proc.kill(signal);
  const deadline = Date.now() + 15000;
  while (!run.exited && Date.now() < deadline) await sleep(50);
  if (!run.exited) run.proc.kill('SIGKILL');
  while (!run.exited) await sleep(20);
}

/** A running `trackline` on 127.0.0.1 (a free port) over a fresh temporary data dir. */
async function startServer(extraArgs = []) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'trackline-browser-'));
  const secret = crypto.randomBytes(24).toString('hex');
  const log = [];
  let run = await launch({ listen: '127.0.0.1:0', dataDir, secret, log, extraArgs });
  const server = {
    base: `http://${run.addr}`,
    secret,
    log,
    token: (...args) =>
      execFileSync(binary('trackctl'), ['token', ...args], { env: { ...process.env, TRACKLINE_SECRET: secret }, encoding: 'utf8' }).trim(),
    /** Stops the server (`signal`: SIGTERM, or SIGKILL for a crash) and starts it again on the
     * same address and data. */
    async restart(signal = 'SIGTERM') {
      await halt(run, signal);
      run = await launch({ listen: run.addr, dataDir, secret, log, extraArgs });
    },
    async stop() {
      await halt(run);
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return server;
}

/** One HTTP call; answers {status, headers, body} with the body parsed when it is JSON. */
async function api(base, method, urlPath, token, body) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(base + urlPath, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(TIMEOUT_MS) });
  const text = await r.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch (_) {
    /* not JSON */
  }
  return { status: r.status, headers: r.headers, body: parsed };
}

const proto = protobuf.loadSync(path.join(ROOT, 'proto', 'trackline', 'v1', 'trackline.proto'));
const CourierFrame = proto.lookupType('trackline.v1.CourierFrame');
const ServerFrame = proto.lookupType('trackline.v1.ServerFrame');

/** A courier app: sends fixes over the courier stream and waits for each frame's ack. */
class Courier {
  static async connect(base, token) {
    const ws = new WebSocket(base.replace(/^http/, 'ws') + '/v1/courier/ws', { headers: { Authorization: `Bearer ${token}` } });
    const courier = new Courier(ws);
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
      ws.once('unexpected-response', (_, res) => reject(new Error(`courier upgrade refused: ${res.statusCode}`)));
    });
    return courier;
  }

  constructor(ws) {
    this.ws = ws;
    this.acked = 0n;
    this.rejected = [];
    this.waiters = [];
    ws.on('message', data => {
      const frame = ServerFrame.toObject(ServerFrame.decode(data), { longs: String });
      if (frame.ack) this.acked = BigInt(frame.ack.seq);
      if (frame.rejected) this.rejected.push(frame.rejected);
      this.waiters = this.waiters.filter(w => !w());
    });
  }

  /** Sends `fixes` ({seq, time_ms, lat, lon, accuracy_m, speed_mps, heading_deg}) in one frame. */
  async send(fixes) {
    const message = CourierFrame.create({
      fixes: fixes.map(f => ({
        seq: String(f.seq),
        timeMs: String(f.time_ms),
        latE7: Math.round(f.lat * 1e7),
        lonE7: Math.round(f.lon * 1e7),
        accuracyM: f.accuracy_m ?? 5,
        speedMps: f.speed_mps ?? -1,
        headingDeg: f.heading_deg ?? -1,
      })),
    });
    const top = fixes.reduce((m, f) => (BigInt(f.seq) > m ? BigInt(f.seq) : m), 0n);
    const acked = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ack for seq ${top}`)), TIMEOUT_MS);
      this.waiters.push(() => {
        if (this.acked >= top) {
          clearTimeout(timer);
          resolve();
          return true;
        }
        return false;
      });
    });
    this.ws.send(CourierFrame.encode(message).finish());
    await acked;
  }

  close() {
    this.ws.close(1000);
  }
}

/** A customer's watcher that never drops: the reference every page is compared with. */
class Watcher {
  static async connect(base, orderId, token) {
    const url = `${base.replace(/^http/, 'ws')}/v1/orders/${encodeURIComponent(orderId)}/watch?token=${encodeURIComponent(token)}`;
    const ws = new WebSocket(url, 'trackline.v1.json');
    const watcher = new Watcher(ws);
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    await waitFor(() => watcher.frames.length > 0, 'the watcher snapshot');
    return watcher;
  }

  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    this.closeCode = null;
    ws.on('message', data => this.frames.push(JSON.parse(String(data))));
    ws.on('close', code => {
      this.closeCode = code;
    });
  }

  get last() {
    return this.frames[this.frames.length - 1];
  }

  /** Every distinct position, oldest first (as the page's trail keeps them). */
  trail() {
    const out = [];
    for (const f of this.frames) {
      const p = f.position;
      const last = out[out.length - 1];
      if (p && !(last && last.time_ms === p.time_ms && last.lat === p.lat && last.lon === p.lon)) out.push({ lat: p.lat, lon: p.lon, time_ms: p.time_ms });
    }
    return out;
  }

  close() {
    this.ws.close(1000);
  }
}

/** Points every `stepM` metres along a polyline of [lat, lon] (and its last point), each with the
 * heading of its leg. */
function along(route, stepM) {
  const R = 6371008.8;
  const rad = d => (d * Math.PI) / 180;
  const legs = [];
  let total = 0;
  for (let i = 0; i + 1 < route.length; i++) {
    const [lat1, lon1] = route[i];
    const [lat2, lon2] = route[i + 1];
    const dy = rad(lat2 - lat1) * R;
    const dx = rad(lon2 - lon1) * R * Math.cos(rad((lat1 + lat2) / 2));
    const len = Math.hypot(dx, dy);
    legs.push({ lat1, lon1, lat2, lon2, start: total, len, heading: ((Math.atan2(dx, dy) * 180) / Math.PI + 360) % 360 });
    total += len;
  }
  const out = [];
  for (let d = 0; d < total; d += stepM) {
    const leg = legs.find(l => d < l.start + l.len);
    const t = (d - leg.start) / leg.len;
    out.push({ lat: leg.lat1 + (leg.lat2 - leg.lat1) * t, lon: leg.lon1 + (leg.lon2 - leg.lon1) * t, heading_deg: leg.heading });
  }
  const [lat, lon] = route[route.length - 1];
  out.push({ lat, lon, heading_deg: legs[legs.length - 1].heading });
  return out;
}

/** Distance in metres between two {lat, lon}. */
function metres(a, b) {
  const R = 6371008.8;
  const rad = d => (d * Math.PI) / 180;
  const h = Math.sin(rad(b.lat - a.lat) / 2) ** 2 + Math.cos(rad(a.lat)) * Math.cos(rad(b.lat)) * Math.sin(rad(b.lon - a.lon) / 2) ** 2;
  return 2 * R * Math.asin(Math.sqrt(h));
}

/** Headless Debian Chromium with a fresh profile; `options` are Playwright context options. */
async function launchBrowser(options = {}) {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium (tests/run.sh does)`);
  const { chromium } = require('playwright-core');
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'trackline-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic'],
    timeout: 60000,
    ...options,
  });
  const errors = [];
  context.on('weberror', e => errors.push(String(e.error())));
  return {
    context,
    errors,
    async newPage() {
      const page = await context.newPage();
      page.on('pageerror', e => errors.push(String(e)));
      page.on('console', m => {
        if (m.type() === 'error') errors.push(`console: ${m.text()}`);
      });
      return page;
    },
    async close() {
      await context.close().catch(() => {});
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

async function screenshot(page, name) {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file });
  return file;
}

/** A PNG of `size` x `size` pixels: a light ground with a darker frame (a stand-in map tile). */
function tilePng(size = 256) {
  const raw = Buffer.alloc((size * 3 + 1) * size);
  for (let y = 0; y < size; y++) {
    raw[y * (size * 3 + 1)] = 0;
    for (let x = 0; x < size; x++) {
      const edge = x === 0 || y === 0;
      const o = y * (size * 3 + 1) + 1 + x * 3;
      raw[o] = edge ? 190 : 228;
      raw[o + 1] = edge ? 205 : 238;
      raw[o + 2] = edge ? 190 : 222;
    }
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

/** A local tile server: answers every /tiles/{z}/{x}/{y}.png with the same tile and counts them. */
async function startTileServer() {
  const png = tilePng();
  const requests = [];
  const srv = http.createServer((req, res) => {
    requests.push({ url: req.url, referer: req.headers.referer || null });
    if (/^\/tiles\/\d+\/\d+\/\d+\.png$/.test(req.url)) {
      res.writeHead(200, { 'Content-Type': 'image/png', 'Content-Length': png.length });
      res.end(png);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise(resolve => srv.listen(0, '127.0.0.1', resolve));
  return {
    template: `http://127.0.0.1:${srv.address().port}/tiles/{z}/{x}/{y}.png`,
    requests,
    close: () => new Promise(resolve => srv.close(resolve)),
  };
}

module.exports = { ROOT, ARTIFACTS, sleep, waitFor, startServer, api, Courier, Watcher, along, metres, launchBrowser, screenshot, startTileServer };
