// The customer's live map of one order: /track/{order}?token=<watch token>.
//
// It reads the order (destination, planned route, epoch) over REST, then follows the JSON watch
// stream with the project's watcher module (clients/js, served as /assets/watch.js). The first
// connection asks for a replay from offset 0 (`since=0&epoch=`), so the trail so far is drawn
// from the server's resume buffer when it still holds it; otherwise the server sends a snapshot
// and the trail starts there. After a drop the watcher reconnects with the last offset and
// epoch, so no update is missed; a snapshot instead of the replay (the server lost the history)
// restarts the trail from that snapshot.
//
// `window.trackline` exposes the page's state for the browser tests (and for anyone curious).
import { watchOrder } from './watch.js';

const config = window.TRACKLINE_CONFIG || {};
const orderId = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
const token = new URLSearchParams(location.search).get('token') || '';
const $ = id => document.getElementById(id);

const STATUS_TEXT = {
  created: 'Order received',
  assigned: 'Courier assigned',
  at_pickup: 'Your rider is at the restaurant',
  picked_up: 'On the way',
  arriving: 'Arriving',
  delivered: 'Delivered',
  cancelled: 'Cancelled',
};
const isFinal = status => status === 'delivered' || status === 'cancelled';
const pickupOf = v => (Array.isArray(v.stops) ? v.stops : []).find(s => s.kind === 'pickup');
// The phase in words: an assigned order whose pickup is still ahead is on its way there.
function phaseText(v) {
  const pickup = pickupOf(v);
  if (v.status === 'assigned' && pickup && pickup.reached_at_ms == null) return 'Your rider is heading to the restaurant';
  return STATUS_TEXT[v.status] || v.status;
}
const narrow = () => window.innerWidth <= 600;

// ---- the map ------------------------------------------------------------------------------
const map = L.map('map', { zoomSnap: 0.5, worldCopyJump: true, zoomControl: false }).setView([20, 0], 2);
L.control.zoom({ position: 'topright' }).addTo(map); // the panel is top left
if (config.tile_url) {
  L.tileLayer(config.tile_url, { maxZoom: 19, referrerPolicy: 'no-referrer', crossOrigin: false }).addTo(map);
} else {
  map.getContainer().classList.add('no-tiles');
}
L.control.scale({ position: 'bottomleft' }).addTo(map);

const routeLine = L.polyline([], { color: '#6b9be6', weight: 5, opacity: 0.75, dashArray: '2 10', lineCap: 'round', interactive: false }).addTo(map);
const trailLine = L.polyline([], { color: '#1f5fcc', weight: 5, opacity: 0.95, lineJoin: 'round', interactive: false }).addTo(map);
// The last stretch of the trail, drawn up to the marker while it glides.
const leadLine = L.polyline([], { color: '#1f5fcc', weight: 5, opacity: 0.95, interactive: false }).addTo(map);

const destIcon = L.divIcon({
  className: 'dest-icon',
  iconSize: [30, 40],
  iconAnchor: [15, 38],
  html: '<svg viewBox="0 0 30 40" aria-hidden="true"><path d="M15 39C15 39 28 24 28 14A13 13 0 0 0 2 14C2 24 15 39 15 39Z" fill="#d9342b" stroke="#fff" stroke-width="2"/><circle cx="15" cy="14" r="5" fill="#fff"/></svg>',
});
const courierIcon = L.divIcon({
  className: 'courier-icon',
  iconSize: [36, 36],
  iconAnchor: [18, 18],
  html: '<div class="courier-arrow"><svg viewBox="0 0 36 36" aria-hidden="true">' +
    '<path class="heading" d="M18 0.5L27 13H9Z" fill="#1f5fcc" stroke="#fff" stroke-width="2" stroke-linejoin="round"/>' +
    '<circle cx="18" cy="18" r="9.5" fill="#1f5fcc" stroke="#fff" stroke-width="3"/></svg></div>',
});
// The pickup (the restaurant): a green pin, so it is not taken for the customer's door.
const pickupIcon = L.divIcon({
  className: 'pickup-icon',
  iconSize: [26, 34],
  iconAnchor: [13, 32],
  html: '<svg viewBox="0 0 30 40" aria-hidden="true"><path d="M15 39C15 39 28 24 28 14A13 13 0 0 0 2 14C2 24 15 39 15 39Z" fill="#1e8a4c" stroke="#fff" stroke-width="2"/><rect x="10" y="9" width="10" height="10" rx="2" fill="#fff"/></svg>',
});
let pickupMarker = null;
let destMarker = null;
let courierMarker = null;

// ---- state --------------------------------------------------------------------------------
const state = {
  orderId,
  epoch: null,
  offset: null, // the last offset applied; the next connection resumes after it
  status: null,
  view: null, // the last order state (REST or stream)
  trail: [], // [{lat, lon, time_ms, offset}], every distinct position, oldest first
  frames: 0,
  snapshots: 0,
  recovered: 0, // frames replayed after a resume
  gaps: 0, // updates whose offset did not follow the last one (must stay 0)
  connects: 0,
  conn: 'connecting',
  ended: false,
  problem: null,
};

// ---- text ---------------------------------------------------------------------------------
const clock = ms => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
function duration(seconds) {
  const min = Math.max(1, Math.round(seconds / 60));
  if (min < 60) return min + ' min';
  return Math.floor(min / 60) + ' h ' + (min % 60) + ' min';
}
function etaText(v) {
  if (v.status === 'delivered') return 'Delivered' + (v.updated_at_ms ? ' at ' + clock(v.updated_at_ms) : '');
  if (v.status === 'cancelled') return 'This order was cancelled';
  if (v.eta) {
    const w = v.eta.window;
    const window = w ? ' · arrives ' + clock(w.earliest_ms) + '-' + clock(w.latest_ms) : '';
    return 'Arriving in ' + duration(v.eta.seconds) + ', ' + clock(v.eta.arrive_at_ms) + window;
  }
  return v.position ? 'Working out the arrival time…' : 'Waiting for the courier…';
}
function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 20) return 'just now';
  if (s < 90) return s + ' s ago';
  return Math.round(s / 60) + ' min ago';
}
function renderText() {
  const v = state.view;
  if (!v) return;
  $('eta').textContent = state.problem || etaText(v);
  $('status').textContent = phaseText(v);
  $('seen').textContent = v.position && !isFinal(v.status) ? 'Courier position updated ' + ago(v.position.time_ms) : '';
  document.body.classList.toggle('final', v.status === 'delivered');
  document.body.classList.toggle('cancelled', v.status === 'cancelled');
  document.title = (isFinal(v.status) ? STATUS_TEXT[v.status] : $('eta').textContent) + ' · your delivery';
}
setInterval(renderText, 5000);

function setConn(kind, text) {
  state.conn = kind;
  const el = $('conn');
  el.className = 'conn ' + kind;
  el.textContent = text;
}

// ---- the view -----------------------------------------------------------------------------
let follow = true;
map.on('dragstart', () => {
  follow = false;
  $('recenter').hidden = false;
});
$('recenter').addEventListener('click', () => {
  follow = true;
  $('recenter').hidden = true;
  fitView();
});

function fitView() {
  // A fit asked for while Leaflet animates a zoom would be undone when that animation ends.
  if (map._animatingZoom) {
    map.once('zoomend', fitView);
    return;
  }
  const pts = [];
  if (courierMarker) pts.push(courierMarker.getLatLng());
  if (destMarker) pts.push(destMarker.getLatLng());
  if (pickupMarker && state.view && !pickupReached(state.view)) pts.push(pickupMarker.getLatLng());
  if (!courierMarker) pts.push(...routeLine.getLatLngs(), ...trailLine.getLatLngs());
  if (!pts.length) return;
  const pad = narrow()
    ? { paddingTopLeft: [30, 40], paddingBottomRight: [30, 150] }
    : { paddingTopLeft: [370, 40], paddingBottomRight: [40, 40] };
  map.fitBounds(L.latLngBounds(pts), Object.assign({ maxZoom: 17 }, pad));
}
function keepInView() {
  if (!follow || !courierMarker) return;
  if (!map.getBounds().pad(-0.12).contains(courierMarker.getLatLng())) fitView();
}

// ---- the courier marker: glides between positions, turned by heading ----------------------
let anim = null; // {from, to, start, dur}
let lastMoveAt = 0;
let rotation = null; // degrees, unwrapped so that 350 -> 10 turns 20 degrees, not 340

function arrow() {
  return courierMarker && courierMarker.getElement() && courierMarker.getElement().querySelector('.courier-arrow');
}
function turn(heading) {
  const el = arrow();
  if (!el) return;
  if (heading === null || heading === undefined || !(heading >= 0)) {
    el.classList.remove('has-heading');
    return;
  }
  if (rotation === null) rotation = heading;
  else rotation += ((heading - rotation) % 360 + 540) % 360 - 180;
  el.classList.add('has-heading');
  el.style.transition = 'transform 0.6s linear';
  el.style.transform = 'rotate(' + rotation.toFixed(1) + 'deg)';
}
function finishGlide() {
  if (!anim) return;
  courierMarker.setLatLng(anim.to);
  trailLine.addLatLng(anim.to);
  leadLine.setLatLngs([]);
  anim = null;
}
function glide(now) {
  if (!anim) return;
  const t = Math.min(1, (now - anim.start) / anim.dur);
  if (t >= 1) {
    finishGlide();
    return;
  }
  const at = L.latLng(anim.from.lat + (anim.to.lat - anim.from.lat) * t, anim.from.lng + (anim.to.lng - anim.from.lng) * t);
  courierMarker.setLatLng(at);
  leadLine.setLatLngs([anim.from, at]);
  requestAnimationFrame(glide);
}
function moveCourier(p) {
  const to = L.latLng(p.lat, p.lon);
  if (!courierMarker) {
    courierMarker = L.marker(to, { icon: courierIcon, zIndexOffset: 1000, keyboard: false, title: 'Courier' }).addTo(map);
    trailLine.addLatLng(to);
    lastMoveAt = performance.now();
    turn(p.heading_deg);
    return;
  }
  finishGlide(); // a glide still under way ends where it was going
  const now = performance.now();
  // Glide over about the time between updates, so the marker keeps moving until the next one.
  const dur = Math.min(2000, Math.max(250, (now - lastMoveAt) * 0.9));
  lastMoveAt = now;
  turn(p.heading_deg);
  const from = courierMarker.getLatLng();
  if (document.hidden || from.equals(to)) {
    courierMarker.setLatLng(to);
    trailLine.addLatLng(to);
    return;
  }
  anim = { from, to, start: now, dur };
  requestAnimationFrame(glide);
}
function removeCourier() {
  finishGlide();
  if (courierMarker) courierMarker.remove();
  courierMarker = null;
}
function resetTrail() {
  finishGlide();
  state.trail = [];
  trailLine.setLatLngs([]);
  if (courierMarker) courierMarker.remove();
  courierMarker = null;
  rotation = null;
}

// ---- applying order state -----------------------------------------------------------------
function pickupReached(v) {
  const pickup = pickupOf(v);
  return !pickup || pickup.reached_at_ms != null;
}

function showStatic(v) {
  const pickup = pickupOf(v);
  if (pickup && !pickupMarker) {
    pickupMarker = L.marker([pickup.lat, pickup.lon], { icon: pickupIcon, keyboard: false, title: 'Pickup' }).addTo(map);
  }
  if (v.destination && !destMarker) {
    destMarker = L.marker([v.destination.lat, v.destination.lon], { icon: destIcon, keyboard: false, title: 'Destination' }).addTo(map);
  }
  if (Array.isArray(v.route) && v.route.length > 1) routeLine.setLatLngs(v.route);
}

// The watcher passes each frame once, in order; `skipped` counts offsets the server left out.
function applyFrame(u, { skipped }) {
  state.frames++;
  if (u.recovered) state.recovered++;
  if (skipped) state.gaps++;
  if (u.type === 'snapshot') {
    // A fresh start: the first frame without resume, or a resume the server could not serve.
    state.snapshots++;
    resetTrail();
  }
  state.epoch = u.epoch;
  state.offset = u.offset;
  state.status = u.status;
  state.view = u;
  showStatic(u);
  const p = u.position;
  const last = state.trail[state.trail.length - 1];
  if (p && !(last && last.time_ms === p.time_ms && last.lat === p.lat && last.lon === p.lon)) {
    state.trail.push({ lat: p.lat, lon: p.lon, time_ms: p.time_ms, offset: u.offset });
    moveCourier(p);
    keepInView();
  } else if (p && courierMarker) {
    turn(p.heading_deg);
  }
  if (isFinal(u.status)) {
    state.ended = true;
    removeCourier();
    if (follow) fitView();
  }
  renderText();
}

// ---- the watch stream: clients/js follows it (resume, backoff, refusals) ------------------
const REFUSED = { 401: 'This tracking link has expired', 403: 'This link is not for this order', 404: 'This order does not exist' };
let watcher = null;

function onStatus(s) {
  if (s.state === 'connecting') state.connects++;
  else if (s.state === 'live') setConn('live', 'live');
  else if (s.state === 'reconnecting') setConn('reconnecting', 'reconnecting…');
  else if (s.state === 'ended') setConn('final', '');
  else if (s.state === 'failed') fatal(REFUSED[s.error.status] || 'Live updates stopped: ' + s.error.message);
}
const reconnectNow = () => watcher && watcher.reconnectNow();
window.addEventListener('online', reconnectNow);
document.addEventListener('visibilitychange', () => {
  if (!document.hidden) reconnectNow();
});

function fatal(message) {
  state.problem = message;
  setConn('final', '');
  $('eta').textContent = message;
  $('status').textContent = '';
  if (watcher) watcher.close();
}

function fetchOrder() {
  return fetch(new URL('../v1/orders/' + encodeURIComponent(orderId), location.href), {
    headers: { Authorization: 'Bearer ' + token },
    cache: 'no-store',
  });
}

async function start() {
  // Replay from the start of the stream: draws the trail so far when the server still holds
  // it; a snapshot comes instead when it does not (or when the order could not be read).
  let resume = {};
  try {
    const r = await fetchOrder();
    if (REFUSED[r.status]) return fatal(REFUSED[r.status]);
    if (r.ok) {
      const v = await r.json();
      showStatic(v);
      state.view = Object.assign({}, v, { position: null });
      state.status = v.status;
      resume = { since: 0, epoch: v.epoch };
      renderText();
      fitView();
    }
  } catch (e) {
    console.warn('order state not loaded; the stream will bring it', e);
  }
  watcher = watchOrder({ url: new URL('../', location.href), orderId, token, encoding: 'json', ...resume, onUpdate: applyFrame, onStatus });
}

window.trackline = {
  state,
  map,
  /** The courier marker's shown position, or null. */
  marker: () => (courierMarker ? { lat: courierMarker.getLatLng().lat, lon: courierMarker.getLatLng().lng } : null),
  /** The marker's rotation in [0, 360), or null when it shows no heading. */
  heading: () => (arrow() && arrow().classList.contains('has-heading') ? ((rotation % 360) + 360) % 360 : null),
  gliding: () => anim !== null,
  /** Points of the drawn trail (the glide under way not included). */
  drawnTrail: () => trailLine.getLatLngs().map(p => ({ lat: p.lat, lon: p.lng })),
  route: () => routeLine.getLatLngs().map(p => ({ lat: p.lat, lon: p.lng })),
  /** Drops the watch connection as a network failure would; the page reconnects by itself. */
  drop: () => watcher && watcher.drop(),
};

start();
