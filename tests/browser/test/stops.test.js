// The live page of an order with a pickup (issue 16), in headless Chromium on a phone-sized
// screen against the real server: the pickup and the destination on the map, the phase in
// words as the courier heads to the restaurant and reaches it, and the arrival window.
'use strict';
const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const h = require('../lib/harness');

// Helsinki: the courier rides 1 km east to the restaurant, then 1.6 km north to the door.
const START = [60.164, 24.93];
const PICKUP = { lat: 60.164, lon: 24.948 };
const DEST = { lat: 60.178, lon: 24.948 };
const ORDER = 'order-browser-stops';
const COURIER = 'courier-browser-stops';
const STEP_M = 50;
const DT_MS = 10000; // 5 m/s

let server, browser, page, courier, watchToken;
const points = h.along([START, [PICKUP.lat, PICKUP.lon]], STEP_M);
const T0 = Date.now() - (points.length + 6) * DT_MS;
const SEQ0 = Date.now() * 1000;

function fix(i) {
  const p = points[i];
  return { seq: SEQ0 + i, time_ms: T0 + i * DT_MS, lat: p.lat, lon: p.lon, accuracy_m: 5, speed_mps: STEP_M / (DT_MS / 1000), heading_deg: p.heading_deg };
}
const text = sel => page.locator(sel).innerText();
const pageStatus = () => page.evaluate(() => window.trackline.state.status);

before(async () => {
  server = await h.startServer();
  const ops = server.token('ops');
  const created = await h.api(server.base, 'POST', '/v1/orders', ops, {
    order_id: ORDER,
    destination: DEST,
    courier_id: COURIER,
    // The food is ready in a quarter of an hour.
    pickup: { ...PICKUP, ready_at_ms: Date.now() + 15 * 60 * 1000, dwell_s: 120 },
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  watchToken = created.body.watch_token;
  courier = await h.Courier.connect(server.base, server.token('courier', COURIER));
  browser = await h.launchBrowser({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, locale: 'en-GB' });
  page = await browser.newPage();
});

after(async () => {
  if (courier) courier.close();
  if (browser) await browser.close();
  if (server) await server.stop();
});

test('heading to the restaurant: both pins, the phase, and the window around the door ETA', async () => {
  await courier.send([fix(0), fix(1), fix(2)]);
  await page.goto(`${server.base}/track/${ORDER}?token=${encodeURIComponent(watchToken)}`);
  await h.waitFor(async () => (await text('#eta')).includes('arrives'), 'the ETA with its window');
  assert.equal(await text('#status'), 'Your rider is heading to the restaurant');
  assert.equal(await page.locator('.pickup-icon').count(), 1, 'the pickup pin');
  assert.equal(await page.locator('.dest-icon').count(), 1, 'the destination pin');
  const eta = await text('#eta');
  assert.match(eta, /^Arriving in \d+ min, \d\d:\d\d · arrives \d\d:\d\d-\d\d:\d\d$/, eta);
  // The food is ready in 15 minutes and takes 2 to hand over: the door is further off than that.
  const minutes = Number(/in (\d+) min/.exec(eta)[1]);
  assert.ok(minutes >= 17, eta);
  await h.sleep(500);
  await h.screenshot(page, 'track-heading-to-pickup.png');
});

test('at the restaurant the phase says so', async () => {
  const rest = [];
  for (let i = 3; i < points.length; i++) rest.push(fix(i));
  await courier.send(rest);
  await h.waitFor(async () => (await pageStatus()) === 'at_pickup', 'the at_pickup update');
  assert.equal(await text('#status'), 'Your rider is at the restaurant');
  await h.sleep(500);
  await h.screenshot(page, 'track-at-pickup.png');
});
