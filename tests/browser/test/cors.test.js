// A web app of another origin in a real browser: Chromium's own preflight and CORS checks on the
// reads a watcher's page makes with a watch token, and the watch upgrade, for an origin the server
// lists (--cors-origin) and one it does not.
'use strict';
const assert = require('node:assert/strict');
const http = require('node:http');
const { test, before, after } = require('node:test');
const h = require('../lib/harness');

let listed, unlisted, server, browser, watchToken;

/** A site of its own (an origin other than the server's) serving one empty page. */
async function startSite() {
  const srv = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' }).end('<!doctype html><title>app</title>');
  });
  await new Promise(resolve => srv.listen(0, '127.0.0.1', resolve));
  return { origin: `http://127.0.0.1:${srv.address().port}`, close: () => new Promise(resolve => srv.close(resolve)) };
}

before(async () => {
  listed = await startSite();
  unlisted = await startSite();
  server = await h.startServer(['--cors-origin', listed.origin]);
  const created = await h.api(server.base, 'POST', '/v1/orders', server.token('ops'), { order_id: 'o-cors', destination: { lat: 48.85, lon: 2.35 } });
  assert.equal(created.status, 201);
  watchToken = created.body.watch_token;
  browser = await h.launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
  for (const site of [listed, unlisted]) if (site) await site.close();
});

/** What a page of `site` gets from the server: the order read with a bearer header (which needs a
 * preflight) and the opening of the watch stream. */
async function fromPage(site) {
  const page = await browser.newPage();
  try {
    await page.goto(site.origin + '/');
    return await page.evaluate(
      async ({ base, token }) => {
        const read = await fetch(`${base}/v1/orders/o-cors`, { headers: { Authorization: `Bearer ${token}` } })
          .then(async r => ({ status: r.status, order: (await r.json()).order_id }))
          .catch(e => ({ error: e.name }));
        const watch = await new Promise(resolve => {
          const ws = new WebSocket(`${base.replace(/^http/, 'ws')}/v1/orders/o-cors/watch?token=${token}`, 'trackline.v1.json');
          ws.onmessage = () => {
            ws.close();
            resolve('update');
          };
          ws.onerror = () => resolve('refused');
          setTimeout(() => resolve('timeout'), 10000);
        });
        return { read, watch };
      },
      { base: server.base, token: watchToken },
    );
  } finally {
    await page.close();
  }
}

test('a page of a listed origin reads the order through a preflight and watches it', async () => {
  const seen = await fromPage(listed);
  assert.deepEqual(seen.read, { status: 200, order: 'o-cors' });
  assert.equal(seen.watch, 'update');
});

test('a page of another origin can neither read the order nor open its watch stream', async () => {
  const seen = await fromPage(unlisted);
  assert.deepEqual(seen.read, { error: 'TypeError' }, 'the browser withholds the answer');
  assert.equal(seen.watch, 'refused');
});
