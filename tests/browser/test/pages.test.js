// The pages and assets over plain HTTP: who may load them, what they are served with, and that
// the vendored Leaflet is exactly the npm package this project pins.
'use strict';
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { test, before, after } = require('node:test');
const h = require('../lib/harness');

let server, opsToken, watchToken;

before(async () => {
  server = await h.startServer();
  opsToken = server.token('ops');
  const created = await h.api(server.base, 'POST', '/v1/orders', opsToken, { order_id: 'o-pages', destination: { lat: 1, lon: 2 } });
  assert.equal(created.status, 201);
  watchToken = created.body.watch_token;
});

after(async () => {
  if (server) await server.stop();
});

test('the track page needs a watch token for its order (or ops)', async () => {
  const page = await h.api(server.base, 'GET', `/track/o-pages?token=${watchToken}`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type'), /^text\/html/);
  assert.match(page.headers.get('content-security-policy'), /script-src 'self'/);
  assert.equal(page.headers.get('referrer-policy'), 'no-referrer');
  assert.equal(page.headers.get('cache-control'), 'no-store');
  assert.ok(page.body.includes('../assets/leaflet/leaflet.js'));
  assert.equal((await h.api(server.base, 'GET', `/track/o-pages?token=${opsToken}`)).status, 200);

  const missing = await h.api(server.base, 'GET', '/track/o-pages');
  assert.equal(missing.status, 401);
  assert.equal(missing.body.error.code, 'unauthorized');
  assert.equal((await h.api(server.base, 'GET', `/track/o-pages?token=${watchToken}x`)).status, 401);
  assert.equal((await h.api(server.base, 'GET', `/track/other?token=${watchToken}`)).status, 403);
  assert.equal((await h.api(server.base, 'GET', `/track/bad%20id?token=${opsToken}`)).body.error.code, 'bad_order_id');
});

test('assets are embedded in the binary; Leaflet is the pinned npm package, with its licence', async () => {
  const leaflet = path.dirname(require.resolve('leaflet/package.json'));
  for (const [url, file, type] of [
    ['/assets/leaflet/leaflet.js', 'dist/leaflet.js', /^text\/javascript/],
    ['/assets/leaflet/leaflet.css', 'dist/leaflet.css', /^text\/css/],
    ['/assets/leaflet/LICENSE', 'LICENSE', /^text\/plain/],
  ]) {
    const r = await fetch(server.base + url);
    assert.equal(r.status, 200, url);
    assert.match(r.headers.get('content-type'), type, url);
    assert.ok(Buffer.from(await r.arrayBuffer()).equals(fs.readFileSync(path.join(leaflet, file))), `${url} is leaflet's ${file}`);
  }
  const vendored = path.join(h.ROOT, 'services/server/assets/vendor/leaflet/VERSION');
  assert.equal(fs.readFileSync(vendored, 'utf8').trim(), require('leaflet/package.json').version, 'npm run vendor-leaflet after changing the version');

  const gz = await fetch(server.base + '/assets/leaflet/leaflet.js', { headers: { 'Accept-Encoding': 'gzip' } });
  assert.equal(gz.headers.get('content-encoding'), 'gzip');
  for (const name of ['track.js', 'ops.js', 'pages.css']) assert.equal((await fetch(`${server.base}/assets/${name}`)).status, 200, name);
  const nope = await h.api(server.base, 'GET', '/assets/nope.js');
  assert.equal(nope.status, 404);
  assert.equal(nope.body.error.code, 'not_found');
  const config = await h.api(server.base, 'GET', '/assets/config.js');
  assert.equal(config.body, 'window.TRACKLINE_CONFIG = {"tile_url":null};\n', 'no tiles unless configured');
});
