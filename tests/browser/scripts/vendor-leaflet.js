// Copies Leaflet from node_modules (the version pinned in package.json) into the server's assets,
// where the binary embeds it. Run after changing the version: `npm ci && npm run vendor-leaflet`.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const FILES = [
  ['dist/leaflet.js', 'leaflet.js'],
  ['dist/leaflet.css', 'leaflet.css'],
  ['LICENSE', 'LICENSE'],
];
const from = path.dirname(require.resolve('leaflet/package.json'));
const to = path.resolve(__dirname, '../../../services/server/assets/vendor/leaflet');
fs.mkdirSync(to, { recursive: true });
for (const [src, dst] of FILES) fs.copyFileSync(path.join(from, src), path.join(to, dst));
const version = require('leaflet/package.json').version;
fs.writeFileSync(path.join(to, 'VERSION'), version + '\n');
console.log(`vendored leaflet ${version} into ${path.relative(process.cwd(), to)}`);
