// A watcher of one order's watch stream (`GET /v1/orders/{id}/watch`, proto/README.md), for
// browsers and node: it follows the stream in either encoding, reconnects after a drop with
// exponential backoff and jitter, and resumes from the last offset and epoch it applied, so the
// caller sees every update once, in order. Failures that a retry cannot mend (a refused token, an
// order that does not exist, a frame it cannot read) stop it and are reported.
//
// No dependencies and no build step: the protobuf `OrderUpdate` is read by the small decoder
// below, which knows the one message of proto/trackline/v1/trackline.proto it needs.

/** The subprotocol of each encoding. */
export const PROTOCOLS = Object.freeze({ json: 'trackline.v1.json', proto: 'trackline.v1.proto' });

/** The lower-case status words of the `OrderStatus` enum, by number (as in the JSON frames). */
const STATUS_NAMES = ['unspecified', 'created', 'assigned', 'picked_up', 'arriving', 'delivered', 'cancelled', 'at_pickup'];
const STOP_KINDS = ['unspecified', 'pickup', 'dropoff'];

const FINAL_STATUSES = new Set(['delivered', 'cancelled']);

/** Reconnect delays: the first retry after about `initialMs`, doubling up to `maxMs`. */
const DEFAULT_BACKOFF = Object.freeze({ initialMs: 500, maxMs: 10000, factor: 2, jitter: 0.25 });

/** Answers of the access check that a retry cannot change: bad id, bad or expired token, a
 * token for something else, no such order. */
const TERMINAL_HTTP = new Set([400, 401, 403, 404]);

/** Close codes that say this client spoke the protocol wrongly: reconnecting would only repeat
 * it (protocol error, unsupported data, bad payload, too large, missing extension). */
const TERMINAL_CLOSE = new Set([1002, 1003, 1007, 1009, 1010]);

/** The server closes with 1008 when the token expired (or another policy): whether that is for
 * good is asked over HTTP. */
const CLOSE_POLICY = 1008;

/** An error the watcher stopped on: `code` is the server's machine code where it gave one. */
export class WatchError extends Error {
  constructor(code, message, { status = null, closeCode = null } = {}) {
    super(message);
    this.name = 'WatchError';
    this.code = code;
    this.status = status;
    this.closeCode = closeCode;
  }
}

/**
 * Watches one order until it ends, `close()` is called, or a failure stops it.
 *
 * @param {object} options
 * @param {string|URL} options.url the server's base URL (`https://host/`, or `ws(s)://`; a path
 *   prefix is kept).
 * @param {string} options.orderId
 * @param {string} options.token a watch token for the order, or an ops token.
 * @param {'json'|'proto'} [options.encoding='json']
 * @param {number} [options.since] resume after this offset (with `epoch`): `0` replays everything
 *   the server still holds.
 * @param {string} [options.epoch] the epoch `since` belongs to.
 * @param {(update: object, info: {skipped: number}) => void} options.onUpdate every snapshot and
 *   update, in the shape of the JSON frames (`type`, `order_id`, `offset`, `epoch`, `status`,
 *   `position`, `eta`, `recovered`; protobuf frames carry only these). A `type: 'snapshot'` means
 *   start afresh. `skipped` counts offsets the server left out because this watcher read slower
 *   than updates came (it then sends the latest state only).
 * @param {(status: object) => void} [options.onStatus] `{state}` with state `connecting`
 *   (`attempt`), `live`, `reconnecting` (`delayMs`, `closeCode`, `reason`), `ended` (the final
 *   state came and the server closed), `failed` (`error`: a {@link WatchError}) or `closed`.
 * @param {typeof WebSocket} [options.WebSocket] defaults to the global one (browsers, node >= 22);
 *   in older node pass the `ws` package's.
 * @param {typeof fetch} [options.fetch] asks over HTTP why a connection was refused (a WebSocket
 *   cannot tell); defaults to the global one.
 * @param {{initialMs?: number, maxMs?: number, factor?: number, jitter?: number}} [options.backoff]
 * @returns {{close(): void, reconnectNow(): void, drop(): void, readonly offset: number|null,
 *   readonly epoch: string|null, readonly state: string}}
 */
export function watchOrder(options) {
  const { url, orderId, token, encoding = 'json', onUpdate, onStatus = () => {} } = options;
  const Socket = options.WebSocket || globalThis.WebSocket;
  const fetchFn = options.fetch || globalThis.fetch;
  const backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
  if (!url) throw new TypeError('watchOrder: url (the server base URL) is required');
  if (typeof orderId !== 'string' || !orderId) throw new TypeError('watchOrder: orderId is required');
  if (typeof token !== 'string' || !token) throw new TypeError('watchOrder: token is required');
  if (!(encoding in PROTOCOLS)) throw new TypeError(`watchOrder: encoding must be "json" or "proto", not ${JSON.stringify(encoding)}`);
  if (typeof onUpdate !== 'function') throw new TypeError('watchOrder: onUpdate must be a function');
  if ((options.since === undefined) !== (options.epoch === undefined)) throw new TypeError('watchOrder: since and epoch go together');
  if (options.since !== undefined && !(Number.isSafeInteger(options.since) && options.since >= 0)) {
    throw new TypeError(`watchOrder: since must be an offset (an integer >= 0), not ${options.since}`);
  }
  if (options.WebSocket !== undefined && typeof options.WebSocket !== 'function') throw new TypeError('watchOrder: options.WebSocket must be a WebSocket constructor');
  if (typeof Socket !== 'function') throw new TypeError('watchOrder: no global WebSocket here; pass one as options.WebSocket (in node < 22, the ws package)');

  const base = baseUrl(url);
  const orderPath = 'v1/orders/' + encodeURIComponent(orderId);
  let offset = options.since === undefined ? null : options.since;
  let epoch = options.epoch === undefined ? null : options.epoch;
  let state = 'connecting';
  let socket = null;
  let retryTimer = null;
  let attempt = 0;
  let delayMs = backoff.initialMs;

  const report = (next, details = {}) => {
    state = next;
    callerCode(onStatus, { state: next, ...details });
  };
  const stopped = () => state === 'ended' || state === 'failed' || state === 'closed';

  function watchUrl() {
    const u = new URL(orderPath + '/watch', base);
    u.protocol = u.protocol === 'https:' || u.protocol === 'wss:' ? 'wss:' : 'ws:';
    u.searchParams.set('token', token);
    if (offset !== null && epoch !== null) {
      u.searchParams.set('since', String(offset));
      u.searchParams.set('epoch', epoch);
    }
    return u.toString();
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (stopped()) return;
    attempt++;
    report('connecting', { attempt });
    const resumed = offset !== null && epoch !== null;
    let ws;
    try {
      ws = new Socket(watchUrl(), PROTOCOLS[encoding]);
    } catch (e) {
      // A URL the WebSocket refuses, or a page policy that forbids it: no retry helps.
      fail(new WatchError('bad_url', `cannot open ${orderPath}/watch on ${base}: ${e.message}`));
      return;
    }
    ws.binaryType = 'arraybuffer';
    socket = ws;
    let opened = false;
    let first = true;
    let ended = false;
    ws.onopen = () => {
      if (socket !== ws) return;
      opened = true;
      report('live');
    };
    ws.onmessage = ev => {
      if (socket !== ws || stopped()) return;
      let update;
      try {
        if (encoding === 'json') {
          update = jsonFrame(ev.data);
        } else {
          // Protobuf frames do not say snapshot or update: the first frame of a connection is a
          // snapshot unless it continues the resume asked for (the next offset of that epoch),
          // which is what a JSON frame would say.
          const m = protoFrame(ev.data);
          const continues = resumed && m.epoch === epoch && m.offset === offset + 1;
          update = { type: first && !continues ? 'snapshot' : 'update', ...m };
        }
      } catch (e) {
        fail(new WatchError('bad_frame', `unreadable ${encoding} frame: ${e.message}`));
        return;
      }
      first = false;
      // A frame arrived: the connection works, so the next drop starts the backoff afresh.
      attempt = 0;
      delayMs = backoff.initialMs;
      ended = FINAL_STATUSES.has(update.status);
      apply(update);
    };
    ws.onclose = ev => {
      if (socket !== ws) return;
      socket = null;
      if (stopped()) return;
      if (ended) {
        report('ended', { closeCode: ev.code });
        return;
      }
      if (TERMINAL_CLOSE.has(ev.code)) {
        fail(new WatchError('closed', `the server closed the stream: ${ev.code} ${ev.reason || ''}`.trim(), { closeCode: ev.code }));
        return;
      }
      // A refused upgrade (401, 403, 404...) looks like any other failed connection to a
      // WebSocket; so does an expired token's 1008. Ask over HTTP before retrying.
      const askWhy = !opened || ev.code === CLOSE_POLICY;
      retry(ev.code, ev.reason || '', askWhy);
    };
    // Every error is followed by a close event, which decides.
    ws.onerror = () => {};
  }

  /** Applies one decoded frame: drops what was already applied, counts what was skipped. */
  function apply(update) {
    let skipped = 0;
    if (update.type !== 'snapshot' && offset !== null && epoch === update.epoch) {
      if (update.offset <= offset) return; // seen before this reconnect
      skipped = update.offset - offset - 1;
    }
    offset = update.offset;
    epoch = update.epoch;
    callerCode(onUpdate, update, { skipped });
  }

  async function retry(closeCode, reason, askWhy) {
    const wait = Math.round(delayMs * (1 - backoff.jitter + Math.random() * 2 * backoff.jitter));
    delayMs = Math.min(delayMs * backoff.factor, backoff.maxMs);
    report('reconnecting', { delayMs: wait, closeCode, reason });
    retryTimer = setTimeout(connect, wait);
    if (askWhy) {
      const refusal = await accessRefusal();
      if (refusal && !stopped()) fail(refusal);
    }
  }

  /** The access check: a WatchError when the server refuses this token or order for good. */
  async function accessRefusal() {
    if (typeof fetchFn !== 'function') return null;
    const u = new URL(orderPath, base);
    u.protocol = u.protocol === 'wss:' || u.protocol === 'https:' ? 'https:' : 'http:';
    let answer;
    try {
      answer = await fetchFn(u.toString(), { headers: { Authorization: 'Bearer ' + token } });
    } catch (_) {
      return null; // unreachable: the retries go on
    }
    if (!TERMINAL_HTTP.has(answer.status)) return null;
    let error = {};
    try {
      error = (await answer.json()).error || {};
    } catch (_) {
      /* no JSON body: the status says enough */
    }
    return new WatchError(error.code || 'http_' + answer.status, error.message || `the server answered ${answer.status}`, { status: answer.status });
  }

  function fail(error) {
    clearTimeout(retryTimer);
    retryTimer = null;
    const ws = socket;
    socket = null;
    report('failed', { error });
    if (ws) ws.close(1000);
  }

  connect();

  return {
    /** Stops watching: closes the connection and cancels any retry. */
    close() {
      if (stopped()) return;
      clearTimeout(retryTimer);
      retryTimer = null;
      const ws = socket;
      socket = null;
      report('closed');
      if (ws) ws.close(1000);
    },
    /** Retries at once when waiting to reconnect (the network is back, the page is shown). */
    reconnectNow() {
      if (retryTimer !== null) connect();
    },
    /** Drops the connection as a network failure would; the watcher reconnects and resumes. */
    drop() {
      if (socket) socket.close(4000, 'dropped by the client');
    },
    /** The offset of the last frame passed to `onUpdate` (null before the first). */
    get offset() {
      return offset;
    },
    get epoch() {
      return epoch;
    },
    get state() {
      return state;
    },
  };
}

/** Runs a callback of the caller's: its bug must neither end the stream nor go unseen. */
function callerCode(fn, ...args) {
  try {
    fn(...args);
  } catch (e) {
    queueMicrotask(() => {
      throw e;
    });
  }
}

function baseUrl(url) {
  const u = new URL(String(url), globalThis.location ? globalThis.location.href : undefined);
  if (!u.pathname.endsWith('/')) u.pathname += '/';
  u.search = '';
  u.hash = '';
  return u;
}

function jsonFrame(data) {
  if (typeof data !== 'string') throw new Error('a binary frame on the JSON stream');
  const update = JSON.parse(data);
  if (!update || typeof update !== 'object' || !Number.isSafeInteger(update.offset) || typeof update.epoch !== 'string') {
    throw new Error('no offset or epoch');
  }
  return update;
}

function protoFrame(data) {
  if (typeof data === 'string') throw new Error('a text frame on the protobuf stream');
  return decodeOrderUpdate(new Uint8Array(data));
}

/**
 * Reads a protobuf `OrderUpdate` (trackline.v1) into the JSON frames' field names: `lat`/`lon` in
 * degrees, `status` as the lower-case word, unknown speed, heading or accuracy as null (absent, or
 * the older sentinels: negative speed or heading, accuracy 0). Unknown fields are skipped.
 *
 * @param {Uint8Array} bytes
 * @returns {{order_id: string, offset: number, epoch: string, status: string,
 *   position: object|null, eta: object|null, recovered: boolean, stops: object[]}}
 */
export function decodeOrderUpdate(bytes) {
  const out = { order_id: '', offset: 0, epoch: '', status: 'unspecified', position: null, eta: null, recovered: false, stops: [] };
  readMessage(bytes, (field, r, wire) => {
    if (field === 1 && wire === 2) out.order_id = r.string();
    else if (field === 2 && wire === 0) out.offset = r.uint64();
    else if (field === 3 && wire === 2) out.epoch = r.string();
    else if (field === 4 && wire === 0) out.status = STATUS_NAMES[r.uint64()] || 'unspecified';
    else if (field === 5 && wire === 2) out.position = decodePosition(r.bytes());
    else if (field === 6 && wire === 2) out.eta = decodeEta(r.bytes());
    else if (field === 7 && wire === 0) out.recovered = r.uint64() !== 0;
    else if (field === 8 && wire === 2) out.stops.push(decodeStop(r.bytes()));
    else return false;
    return true;
  });
  return out;
}

function decodePosition(bytes) {
  const p = { lat: 0, lon: 0, time_ms: 0, speed_mps: null, heading_deg: null, accuracy_m: null };
  readMessage(bytes, (field, r, wire) => {
    if (field === 1 && wire === 0) p.time_ms = r.int64();
    else if (field === 2 && wire === 0) p.lat = r.sint32() / 1e7;
    else if (field === 3 && wire === 0) p.lon = r.sint32() / 1e7;
    else if (field === 4 && wire === 5) p.speed_mps = known(r.float(), v => v >= 0);
    else if (field === 5 && wire === 5) p.heading_deg = known(r.float(), v => v >= 0);
    else if (field === 6 && wire === 5) p.accuracy_m = known(r.float(), v => v > 0);
    else return false;
    return true;
  });
  return p;
}

function decodeEta(bytes) {
  const e = { seconds: 0, arrive_at_ms: 0 };
  readMessage(bytes, (field, r, wire) => {
    if (field === 1 && wire === 0) e.seconds = r.int64();
    else if (field === 2 && wire === 0) e.arrive_at_ms = r.int64();
    else if (field === 3 && wire === 2) e.window = decodeWindow(r.bytes());
    else return false;
    return true;
  });
  return e;
}

function decodeWindow(bytes) {
  const w = { earliest_ms: 0, latest_ms: 0 };
  readMessage(bytes, (field, r, wire) => {
    if (field === 1 && wire === 0) w.earliest_ms = r.int64();
    else if (field === 2 && wire === 0) w.latest_ms = r.int64();
    else return false;
    return true;
  });
  return w;
}

/** A `Stop` with the JSON frames' names: `kind` as the word, null ETA or reached time when unset. */
function decodeStop(bytes) {
  const s = { kind: 'unspecified', lat: 0, lon: 0, eta: null, reached_at_ms: null };
  readMessage(bytes, (field, r, wire) => {
    if (field === 1 && wire === 0) s.kind = STOP_KINDS[r.uint64()] || 'unspecified';
    else if (field === 2 && wire === 0) s.lat = r.sint32() / 1e7;
    else if (field === 3 && wire === 0) s.lon = r.sint32() / 1e7;
    else if (field === 4 && wire === 2) s.eta = decodeEta(r.bytes());
    else if (field === 5 && wire === 0) s.reached_at_ms = r.int64();
    else return false;
    return true;
  });
  return s;
}

/** A float32 as the shortest decimal that reads back as the same float32 (as the JSON frames
 * print it), or null when it is a sentinel for unknown. */
function known(value, valid) {
  if (!Number.isFinite(value) || !valid(value)) return null;
  for (let digits = 1; digits < 9; digits++) {
    const short = Number(value.toPrecision(digits));
    if (Math.fround(short) === value) return short;
  }
  return value;
}

/** Calls `onField(number, reader, wireType)` for each field; it answers false for a field it does
 * not know, which is then skipped by its wire type. */
function readMessage(bytes, onField) {
  const r = new Reader(bytes);
  while (r.pos < bytes.length) {
    const key = r.uint64();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (field === 0) throw new Error('field number 0');
    if (!onField(field, r, wire)) r.skip(wire);
  }
}

class Reader {
  constructor(bytes) {
    this.buf = bytes;
    this.pos = 0;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** A varint as a BigInt (64 bits at most). */
  varint() {
    let value = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= this.buf.length) throw new Error('truncated varint');
      const b = this.buf[this.pos++];
      value |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asUintN(64, value);
    }
    throw new Error('varint longer than 10 bytes');
  }

  uint64() {
    return safe(this.varint());
  }

  int64() {
    return safe(BigInt.asIntN(64, this.varint()));
  }

  sint32() {
    const n = Number(BigInt.asUintN(32, this.varint()));
    return (n >>> 1) ^ -(n & 1);
  }

  float() {
    this.need(4);
    const v = this.view.getFloat32(this.pos, true);
    this.pos += 4;
    return v;
  }

  bytes() {
    const len = this.uint64();
    this.need(len);
    const out = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }

  string() {
    return new TextDecoder('utf-8', { fatal: true }).decode(this.bytes());
  }

  skip(wire) {
    const fixed = { 1: 8, 5: 4 }[wire];
    if (wire === 0) {
      this.varint();
    } else if (wire === 2) {
      this.bytes();
    } else if (fixed) {
      this.need(fixed);
      this.pos += fixed;
    } else {
      throw new Error(`wire type ${wire} not supported`);
    }
  }

  need(n) {
    if (this.pos + n > this.buf.length) throw new Error('truncated field');
  }
}

function safe(big) {
  const n = Number(big);
  if (!Number.isSafeInteger(n)) throw new Error(`integer ${big} beyond 2^53`);
  return n;
}
