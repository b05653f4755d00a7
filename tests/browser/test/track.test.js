// The customer's live page against the real server, in headless Chromium on a phone-sized
// screen: a real order with a planned route, a courier streaming fixes over the real protocol,
// and a second watcher (never dropped) as the reference for what the page must show.
//
// The steps share one order and run in order; each names what it proves.
'use strict';
const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const h = require('../lib/harness');

// Helsinki: east 1.7 km, north 1.8 km, east 0.5 km; the destination is the end of the route.
const ROUTE = [
  [60.164, 24.93],
  [60.164, 24.96],
  [60.18, 24.96],
  [60.18, 24.97],
];
const DEST = { lat: 60.18, lon: 24.97 };
const STEP_M = 80; // between fixes
const DT_MS = 10000; // device time between fixes: 8 m/s, a scooter
const ORDER = 'order-browser-1';
const COURIER = 'courier-browser-1';

let server, browser, page, courier, watcher, watchToken, courierToken, opsToken;
const points = h.along(ROUTE, STEP_M);
// Device times end a little before now: the fixes are in the past but never in the future.
const T0 = Date.now() - (points.length + 6) * DT_MS;
const SEQ0 = Date.now() * 1000;
let sent = 0;

function fix(i) {
  const p = points[i];
  return { seq: SEQ0 + i, time_ms: T0 + i * DT_MS, lat: p.lat, lon: p.lon, accuracy_m: 5, speed_mps: STEP_M / (DT_MS / 1000), heading_deg: p.heading_deg };
}
/** Streams fixes up to (not including) `end`, one frame each, as a live app does, and waits
 * until the reference watcher has the update of the last one (an ack can overtake it). */
async function streamTo(end, pauseMs = 0) {
  for (; sent < end; sent++) {
    await courier.send([fix(sent)]);
    if (pauseMs) await h.sleep(pauseMs);
  }
  const last = fix(end - 1).time_ms;
  await h.waitFor(() => watcher.last.position && watcher.last.position.time_ms === last, `the update of fix ${end - 1}`);
}
const pageState = (p = page) => p.evaluate(() => {
  const s = window.trackline.state;
  return { offset: s.offset, epoch: s.epoch, status: s.status, trail: s.trail, gaps: s.gaps, snapshots: s.snapshots, recovered: s.recovered, connects: s.connects, conn: s.conn, ended: s.ended };
});
/** Waits until the page has applied everything the reference watcher has. */
async function pageCaughtUp(p = page) {
  await h.waitFor(async () => watcher.last && (await pageState(p)).offset === watcher.last.offset, `the page to reach offset ${watcher.last && watcher.last.offset}`);
}
const text = (sel, p = page) => p.locator(sel).innerText();
const settled = (p = page) => h.waitFor(() => p.evaluate(() => !window.trackline.gliding()), 'the marker glide to end');
const trailOf = frames => frames.map(({ lat, lon, time_ms }) => ({ lat, lon, time_ms }));

before(async () => {
  server = await h.startServer();
  opsToken = server.token('ops');
  courierToken = server.token('courier', COURIER);
  const created = await h.api(server.base, 'POST', '/v1/orders', opsToken, {
    order_id: ORDER,
    destination: DEST,
    courier_id: COURIER,
    route: ROUTE,
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  watchToken = created.body.watch_token;
  const picked = await h.api(server.base, 'POST', `/v1/orders/${ORDER}/status`, opsToken, { status: 'picked_up' });
  assert.equal(picked.status, 200, JSON.stringify(picked.body));
  watcher = await h.Watcher.connect(server.base, ORDER, watchToken);
  courier = await h.Courier.connect(server.base, courierToken);
  browser = await h.launchBrowser({
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
    locale: 'en-GB',
  });
  page = await browser.newPage();
});

after(async () => {
  if (courier) courier.close();
  if (watcher) watcher.close();
  if (browser) await browser.close();
  if (server) await server.stop();
});

test('the page loads Leaflet from the server and shows the order before the courier moves', async () => {
  const assets = [];
  page.on('request', r => assets.push(new URL(r.url()).host));
  await page.goto(`${server.base}${trackUrl()}`);
  await h.waitFor(async () => (await pageState()).conn === 'live', 'the page to connect');
  assert.ok(await page.evaluate(() => typeof window.L === 'object' && window.L.version === '1.9.4'), 'Leaflet 1.9.4 is loaded');
  assert.deepEqual([...new Set(assets)], [new URL(server.base).host], 'everything comes from the server itself');
  assert.equal(await text('#eta'), 'Waiting for the courier…');
  assert.equal(await text('#status'), 'On the way');
  assert.equal(await text('#conn'), 'live');
  const route = await page.evaluate(() => window.trackline.route());
  assert.deepEqual(route.map(p => [p.lat, p.lon]), ROUTE, 'the planned route is drawn');
  assert.equal(await page.locator('.dest-icon').count(), 1, 'the destination is marked');
  assert.equal(await page.locator('.courier-icon').count(), 0, 'no courier marker before a fix');
  // No tiles configured: a plain background with a scale.
  assert.equal(await page.locator('.leaflet-tile').count(), 0);
  assert.match(await text('.leaflet-control-scale'), /\d+ (m|km)/);
  // The status change made before the page opened came as a replay from offset 0.
  const s = await pageState();
  assert.equal(s.snapshots, 0);
  assert.equal(s.offset, watcher.last.offset);
});

function trackUrl() {
  return `/track/${ORDER}?token=${encodeURIComponent(watchToken)}`;
}

test('the marker glides to each new position, turned by the heading', async () => {
  await streamTo(6, 300);
  await pageCaughtUp();
  await settled();
  const before = await page.evaluate(() => window.trackline.marker());
  const box0 = await page.locator('.courier-icon').boundingBox();

  // One more fix after a pause: the marker moves there smoothly, not in one jump.
  await h.sleep(1500);
  await streamTo(7);
  await pageCaughtUp();
  const target = watcher.last.position;
  const samples = [];
  for (let i = 0; i < 12; i++) {
    samples.push(await page.evaluate(() => ({ at: window.trackline.marker(), gliding: window.trackline.gliding() })));
    await h.sleep(60);
  }
  const between = samples.filter(s => s.gliding && h.metres(s.at, before) > 0.5 && h.metres(s.at, target) > 0.5);
  assert.ok(between.length >= 2, `the marker passes through intermediate positions: ${JSON.stringify(samples)}`);
  await settled();

  const shown = await page.evaluate(() => window.trackline.marker());
  assert.ok(h.metres(shown, target) < 0.01, `the marker ends on the update's position: ${JSON.stringify({ shown, target })}`);
  assert.ok(h.metres(shown, fix(6)) < 30, 'and that is where the courier is');
  const box1 = await page.locator('.courier-icon').boundingBox();
  assert.ok(Math.hypot(box1.x - box0.x, box1.y - box0.y) > 1, `the marker moved on screen: ${JSON.stringify({ box0, box1 })}`);

  const heading = await page.evaluate(() => window.trackline.heading());
  assert.ok(Math.abs(heading - target.heading_deg) < 0.1, `rotated by heading: ${heading} vs ${target.heading_deg}`);
  const transform = await page.locator('.courier-arrow').evaluate(el => el.style.transform);
  assert.match(transform, /^rotate\(90(\.0)?deg\)$/, 'heading east');
});

test('the ETA text follows the courier', async () => {
  const first = await text('#eta');
  // The point estimate, then the window it falls in 8 times out of 10.
  const shape = /^Arriving in \d+ min, \d\d:\d\d · arrives \d\d:\d\d-\d\d:\d\d$/;
  assert.match(first, shape, first);
  await streamTo(25);
  await pageCaughtUp();
  const later = await text('#eta');
  assert.match(later, shape, later);
  assert.notEqual(later, first);
  const minutes = s => Number(/in (\d+) min/.exec(s)[1]);
  assert.ok(minutes(later) < minutes(first), `${first} -> ${later}`);
  // The text is the update's ETA.
  const eta = watcher.last.eta;
  assert.equal(minutes(later), Math.max(1, Math.round(eta.seconds / 60)));
  const hhmm = ms => new Date(ms).toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit' });
  assert.ok(later.includes(`, ${hhmm(eta.arrive_at_ms)} · `), `${later} shows ${hhmm(eta.arrive_at_ms)}`);
  const window = `arrives ${hhmm(eta.window.earliest_ms)}-${hhmm(eta.window.latest_ms)}`;
  assert.ok(later.endsWith(window), `${later} ends with ${window}`);
  await settled();
  await h.sleep(700); // the arrow's turn (a CSS transition) ends
  await h.screenshot(page, 'track-live.png');
});

test('a dropped connection shows "reconnecting" and resumes without a gap', async () => {
  const before = await pageState();
  // The network goes away: new connections fail, and the open one is dropped.
  await browser.context.setOffline(true);
  await page.evaluate(() => window.trackline.drop());
  await h.waitFor(async () => (await text('#conn')) === 'reconnecting…', 'the reconnecting state');
  assert.equal((await pageState()).conn, 'reconnecting');

  // The courier goes on meanwhile.
  await streamTo(35, 100);
  await h.sleep(1500);
  const missed = await pageState();
  assert.equal(missed.offset, before.offset, 'the page really missed these updates');
  assert.ok(watcher.last.offset >= before.offset + 10);
  await h.screenshot(page, 'track-reconnecting.png');

  await browser.context.setOffline(false);
  await pageCaughtUp();
  await h.waitFor(async () => (await text('#conn')) === 'live', 'the live state again');
  const after = await pageState();
  assert.ok(after.connects > before.connects, 'it reconnected');
  assert.equal(after.gaps, 0, 'every offset followed the one before');
  assert.equal(after.snapshots, 0, 'resumed with a replay, not a fresh snapshot');
  assert.ok(after.recovered - before.recovered >= 10, `the missed updates were replayed (${after.recovered - before.recovered})`);
  assert.deepEqual(trailOf(after.trail), watcher.trail(), 'the trail has every position, in order');
  await settled();
  const drawn = await page.evaluate(() => window.trackline.drawnTrail());
  assert.equal(drawn.length, watcher.trail().length, 'and all of them are drawn');
});

test('a page opened mid-delivery draws the trail so far', async () => {
  const late = await browser.newPage();
  await late.goto(`${server.base}${trackUrl()}`);
  await pageCaughtUp(late);
  const s = await pageState(late);
  assert.equal(s.snapshots, 0);
  assert.deepEqual(trailOf(s.trail), watcher.trail());
  await late.close();
});

test('arriving, then the delivered state shows and the stream ends', async () => {
  await streamTo(points.length, 50);
  await pageCaughtUp();
  await h.waitFor(async () => (await text('#status')) === 'Arriving', 'the arriving status');
  const delivered = await h.api(server.base, 'POST', `/v1/orders/${ORDER}/status`, courierToken, { status: 'delivered' });
  assert.equal(delivered.status, 200, JSON.stringify(delivered.body));
  await h.waitFor(async () => (await pageState()).ended, 'the final state');
  assert.match(await text('#eta'), /^Delivered at \d\d:\d\d$/);
  assert.equal(await text('#status'), 'Delivered');
  assert.ok(await page.evaluate(() => document.body.classList.contains('final')));
  await h.waitFor(async () => (await pageState()).conn === 'final', 'the stream to close');
  assert.equal(await page.locator('#conn').isVisible(), false);
  assert.equal(await page.locator('.courier-icon').count(), 0, 'no live marker after delivery');
  await h.waitFor(() => watcher.closeCode === 1000, 'the reference watcher to be closed normally');
  const s = await pageState();
  assert.equal(s.gaps, 0);
  assert.deepEqual(trailOf(s.trail), watcher.trail());
  await h.sleep(1000); // the view settles on trail and destination
  await h.screenshot(page, 'track-delivered.png');
  // The failed connection attempts while offline are logged by Chromium itself; nothing else.
  const errors = browser.errors.filter(e => !/ERR_INTERNET_DISCONNECTED/.test(e));
  assert.deepEqual(errors, [], 'no script errors');
  assert.deepEqual(courier.rejected, [], 'every fix was accepted');
});
