// The ops map and the bbox query behind it, against the real server started with a tile URL
// template that points at a local tile server (so tiles are exercised without any network).
'use strict';
const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const h = require('../lib/harness');

const COURIERS = {
  'c-1': { lat: 60.17, lon: 24.94 }, // Helsinki
  'c-2': { lat: 60.175, lon: 24.95 }, // Helsinki
  'c-3': { lat: 35.68, lon: 139.76 }, // Tokyo
  'c-4': { lat: -17.8, lon: 179.9 }, // Fiji, east of the antimeridian's west side
  'c-5': { lat: -17.8, lon: -179.9 }, // Fiji, across it
  'c-6': { lat: 60.1695, lon: 24.9335 }, // Helsinki
  'c-7': { lat: 60.1748, lon: 24.9372 }, // Helsinki
  'c-8': { lat: 60.1672, lon: 24.9532, ageMs: 300000 }, // Helsinki, quiet for 5 min: drawn grey
};
const HELSINKI = ['c-1', 'c-2', 'c-6', 'c-7', 'c-8'];

let server, tiles, browser, page, opsToken;
const couriers = {};
let moved = null; // c-1's live position after it moved
let seq = Date.now() * 1000;

/** A fix of courier `id` at `p`, `ageMs` old (the live position is what the GPS filter shows). */
async function place(id, p, ageMs = 0) {
  await couriers[id].send([{ seq: ++seq, time_ms: Date.now() - ageMs, lat: p.lat, lon: p.lon, accuracy_m: 5 }]);
}
const within = (query, token = opsToken) => h.api(server.base, 'GET', `/v1/couriers/within?${query}`, token);
const ids = body => body.couriers.map(c => c.courier_id).sort();
const markerIds = async () => (await page.evaluate(() => window.opsmap.markers())).map(m => m.id).sort();

before(async () => {
  tiles = await h.startTileServer();
  server = await h.startServer(['--tile-url', tiles.template]);
  opsToken = server.token('ops');
  const order = await h.api(server.base, 'POST', '/v1/orders', opsToken, { order_id: 'o-ops-1', destination: { lat: 60.18, lon: 24.96 }, courier_id: 'c-1' });
  if (order.status !== 201) throw new Error(JSON.stringify(order.body));
  for (const [id, p] of Object.entries(COURIERS)) {
    couriers[id] = await h.Courier.connect(server.base, server.token('courier', id));
    await place(id, p, p.ageMs || 40000); // a while ago, so that a later move is a plausible one
  }
  browser = await h.launchBrowser({ viewport: { width: 1280, height: 800 }, locale: 'en-GB' });
  page = await browser.newPage();
});

after(async () => {
  for (const c of Object.values(couriers)) c.close();
  if (browser) await browser.close();
  if (server) await server.stop();
  if (tiles) await tiles.close();
});

test('GET /v1/couriers/within answers the couriers inside the box', async () => {
  const helsinki = await within('south=60.1&west=24.8&north=60.3&east=25.1');
  assert.equal(helsinki.status, 200);
  assert.deepEqual(ids(helsinki.body), HELSINKI);
  assert.equal(helsinki.body.truncated, false);
  const c1 = helsinki.body.couriers.find(c => c.courier_id === 'c-1');
  assert.deepEqual([c1.lat, c1.lon], [60.17, 24.94]);
  assert.ok(Math.abs(c1.time_ms - (Date.now() - 40000)) < 30000);

  const one = await within('south=60.1&west=24.8&north=60.3&east=25.1&limit=1');
  assert.equal(one.body.couriers.length, 1);
  assert.equal(one.body.truncated, true);

  // west > east: the box crosses the antimeridian
  const fiji = await within('south=-18&west=179.5&north=-17&east=-179.5');
  assert.deepEqual(ids(fiji.body), ['c-4', 'c-5']);
  const world = await within('south=-90&west=-180&north=90&east=180');
  assert.deepEqual(ids(world.body), Object.keys(COURIERS));
});

test('every bad parameter of /v1/couriers/within is a 400 with a JSON error', async () => {
  for (const [query, code] of [
    ['west=24.8&north=60.3&east=25.1', 'bad_query'], // south missing
    ['south=x&west=24.8&north=60.3&east=25.1', 'bad_query'],
    ['south=60.1&west=24.8&north=60.3&east=25.1&zoom=3', 'bad_query'],
    ['south=NaN&west=24.8&north=60.3&east=25.1', 'bad_bbox'],
    ['south=60.1&west=24.8&north=inf&east=25.1', 'bad_bbox'],
    ['south=-91&west=24.8&north=60.3&east=25.1', 'bad_bbox'],
    ['south=60.1&west=-180.5&north=60.3&east=25.1', 'bad_bbox'],
    ['south=60.1&west=24.8&north=60.3&east=181', 'bad_bbox'],
    ['south=60.3&west=24.8&north=60.1&east=25.1', 'bad_bbox'], // south of north
    ['south=60.1&west=24.8&north=60.3&east=25.1&limit=0', 'bad_limit'],
    ['south=60.1&west=24.8&north=60.3&east=25.1&limit=5001', 'bad_limit'],
    ['south=60.1&west=24.8&north=60.3&east=25.1&limit=-1', 'bad_query'],
  ]) {
    const r = await within(query);
    assert.equal(r.status, 400, query);
    assert.equal(r.body.error.code, code, `${query}: ${JSON.stringify(r.body)}`);
    assert.equal(typeof r.body.error.message, 'string');
  }
  const q = 'south=60.1&west=24.8&north=60.3&east=25.1';
  assert.equal((await within(q, null)).status, 401);
  assert.equal((await within(q, 'not-a-token')).status, 401);
  assert.equal((await within(q, server.token('courier', 'c-1'))).status, 403);
});

test('the ops map shows every live courier in the viewport, from the R-tree', async () => {
  assert.equal((await h.api(server.base, 'GET', '/ops/map')).status, 401);
  assert.equal((await h.api(server.base, 'GET', `/ops/map?token=${server.token('courier', 'c-1')}`)).status, 403);

  await page.goto(`${server.base}/ops/map?token=${encodeURIComponent(opsToken)}`);
  // It opens on wherever the couriers are: all of them.
  const all = Object.keys(COURIERS).length;
  await h.waitFor(async () => (await markerIds()).length === all, 'every courier on the map');
  assert.equal(await page.locator('#count').innerText(), `${all} couriers in view`);

  // Zoomed in on Helsinki: only the two there.
  await page.evaluate(() => window.opsmap.map.setView([60.171, 24.943], 14.5, { animate: false }));
  await h.waitFor(async () => JSON.stringify(await markerIds()) === JSON.stringify(HELSINKI), 'only the Helsinki couriers');
  await h.waitFor(async () => (await page.locator('#count').innerText()) === `${HELSINKI.length} couriers in view`, 'the count');
  // The one quiet for minutes is drawn grey, the others blue.
  assert.equal(await page.locator('.ops-dot.stale').count(), 1);
  assert.equal(await page.locator('[data-courier="c-8"] .ops-dot.stale').count(), 1);
});

test('a courier that moves moves on the map, live', async () => {
  const to = { lat: 60.1712, lon: 24.9425 }; // 150 m on, 40 s later
  await place('c-1', to);
  const live = (await within('south=60.1&west=24.8&north=60.3&east=25.1')).body.couriers.find(c => c.courier_id === 'c-1');
  assert.ok(h.metres(live, to) < 20, `the live index follows the courier: ${JSON.stringify(live)}`);
  moved = live;
  const c1 = async () => (await page.evaluate(() => window.opsmap.markers())).find(m => m.id === 'c-1');
  await h.waitFor(async () => (await c1()).target.time_ms === live.time_ms, 'the new position to be polled');
  // It glides there rather than jumping.
  const samples = [];
  for (let i = 0; i < 10; i++) {
    samples.push(await c1());
    await h.sleep(100);
  }
  assert.ok(samples.some(m => h.metres(m, live) > 1 && h.metres(m, COURIERS['c-1']) > 1), `an intermediate position: ${JSON.stringify(samples)}`);
  await h.waitFor(async () => !(await page.evaluate(() => window.opsmap.moving())), 'the glide to end');
  assert.ok(h.metres(await c1(), live) < 0.01);
});

test('clicking a courier shows its position, the time of its fix and its orders', async () => {
  await page.click('[data-courier="c-1"]');
  const popup = page.locator('.leaflet-popup-content');
  await popup.waitFor({ state: 'visible' });
  await h.waitFor(async () => (await popup.innerText()).includes('orders: o-ops-1'), 'the courier\'s orders');
  await h.sleep(400); // the popup fades in
  const text = await popup.innerText();
  const at = `${moved.lat.toFixed(5)}, ${moved.lon.toFixed(5)}`;
  assert.match(text, /^c-1\n.*\nlast fix \d\d:\d\d:\d\d \(\d+ s ago\)\norders: o-ops-1 \((assigned|picked up|arriving)\)$/, text);
  assert.equal(text.split('\n')[1], at);
  const href = await popup.locator('a').getAttribute('href');
  assert.equal(href, `../track/o-ops-1?token=${encodeURIComponent(opsToken)}`);
  // A courier without orders says so.
  await page.click('[data-courier="c-2"]');
  await h.waitFor(async () => (await popup.innerText()).includes('no active orders'), 'c-2 without orders');
  await page.click('[data-courier="c-1"]');
  await h.waitFor(async () => (await popup.innerText()).includes('orders: o-ops-1'), 'c-1 again');
  await h.sleep(400);
  await h.screenshot(page, 'ops-map.png');
});

test('tiles come from the configured template, without the token in a Referer', async () => {
  const config = await h.api(server.base, 'GET', '/assets/config.js');
  assert.equal(config.status, 200);
  assert.ok(config.body.includes(JSON.stringify(tiles.template)), config.body);
  assert.ok((await page.locator('img.leaflet-tile-loaded').count()) > 0, 'tiles are shown');
  const zoom14 = tiles.requests.filter(r => r.url.startsWith('/tiles/14/') || r.url.startsWith('/tiles/15/'));
  assert.ok(zoom14.length > 0, JSON.stringify(tiles.requests.slice(0, 5)));
  assert.deepEqual(tiles.requests.filter(r => r.referer !== null), [], 'no Referer reaches the tile server');
  assert.deepEqual(browser.errors, [], 'no script errors');
});
