// The ops map: /ops/map?token=<ops token>. Every live courier in the viewport, from
// GET /v1/couriers/within (the live index), polled every 2 s and whenever the view moves. Markers
// glide to their new positions; a click shows the courier's position, the time of its fix and its
// active orders (each a link to the order's live page).
//
// `window.opsmap` exposes the page's state for the browser tests.
'use strict';
(function () {
  const config = window.TRACKLINE_CONFIG || {};
  const token = new URLSearchParams(location.search).get('token') || '';
  const $ = id => document.getElementById(id);
  const POLL_MS = 2000;
  const STALE_MS = 60000; // a courier without a fix for this long is drawn grey
  const LIMIT = 1000;

  const map = L.map('map', { zoomSnap: 0.5, worldCopyJump: true, zoomControl: false }).setView([20, 0], 2);
  L.control.zoom({ position: 'topright' }).addTo(map); // the panel is top left
  if (config.tile_url) {
    L.tileLayer(config.tile_url, { maxZoom: 19, referrerPolicy: 'no-referrer' }).addTo(map);
  } else {
    map.getContainer().classList.add('no-tiles');
  }
  L.control.scale({ position: 'bottomleft' }).addTo(map);

  const state = { polls: 0, errors: 0, last: null, truncated: false, stopped: false };
  const markers = new Map(); // courier id -> {marker, data, from, to, start}

  const icon = stale => L.divIcon({ className: 'ops-icon', iconSize: [16, 16], iconAnchor: [8, 8], html: '<div class="ops-dot' + (stale ? ' stale' : '') + '"></div>' });
  const liveIcon = icon(false);
  const staleIcon = icon(true);
  const wrap = lon => ((((lon + 180) % 360) + 360) % 360) - 180;
  const clockS = ms => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    return s < 90 ? s + ' s ago' : Math.round(s / 60) + ' min ago';
  }
  const escape = s => String(s).replace(/[&<>"']/g, c => '&#' + c.charCodeAt(0) + ';');

  const STATUS_TEXT = { created: 'created', assigned: 'assigned', picked_up: 'picked up', arriving: 'arriving' };
  function ordersHtml(orders) {
    if (orders === undefined) return '<span class="muted">orders: loading…</span>';
    if (orders === null) return '<span class="muted">orders: not available</span>';
    if (!orders.length) return '<span class="muted">no active orders</span>';
    return 'orders: ' + orders.map(o => {
      const href = '../track/' + encodeURIComponent(o.order_id) + '?token=' + encodeURIComponent(token);
      return '<a href="' + escape(href) + '" target="_blank" rel="noopener noreferrer">' + escape(o.order_id) + '</a> (' + escape(STATUS_TEXT[o.status] || o.status) + ')';
    }).join(', ');
  }
  function popupHtml(c, orders) {
    return '<div class="popup-body"><b>' + escape(c.courier_id) + '</b><br>' +
      c.lat.toFixed(5) + ', ' + c.lon.toFixed(5) + '<br>' +
      'last fix ' + clockS(c.time_ms) + ' <span class="muted">(' + ago(c.time_ms) + ')</span><br>' +
      ordersHtml(orders) + '</div>';
  }

  // A courier's orders: the active orders listed by GET /v1/orders, filtered here (the API has no
  // per-courier listing), fetched when a popup opens and reused for a few seconds.
  let activeOrders = null; // {at, promise}
  function ordersOf(courierId) {
    if (!activeOrders || Date.now() - activeOrders.at > 5000) {
      const url = new URL('../v1/orders', location.href);
      url.searchParams.set('status', 'active');
      url.searchParams.set('limit', '10000');
      activeOrders = {
        at: Date.now(),
        promise: fetch(url, { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' }).then(r => (r.ok ? r.json() : Promise.reject(new Error('HTTP ' + r.status)))),
      };
    }
    return activeOrders.promise.then(
      body => body.orders.filter(o => o.courier_id === courierId),
      () => {
        activeOrders = null;
        return null;
      },
    );
  }

  /** The viewport as the API takes it: longitudes in [-180, 180], west > east across 180. */
  function viewBox() {
    const b = map.getBounds();
    const south = Math.max(-90, b.getSouth());
    const north = Math.min(90, b.getNorth());
    let west = b.getWest();
    let east = b.getEast();
    if (east - west >= 360) {
      west = -180;
      east = 180;
    } else {
      west = wrap(west);
      east = wrap(east);
      if (east === -180) east = 180;
    }
    return { south, west, north, east };
  }

  // One animation loop for every moving marker.
  let animating = false;
  function animate(now) {
    animating = false;
    for (const m of markers.values()) {
      if (!m.to) continue;
      const t = Math.min(1, (now - m.start) / POLL_MS);
      m.marker.setLatLng([m.from.lat + (m.to.lat - m.from.lat) * t, m.from.lng + (m.to.lng - m.from.lng) * t]);
      if (t >= 1) m.to = null;
      else animating = true;
    }
    if (animating) requestAnimationFrame(animate);
  }

  function show(couriers) {
    const seen = new Set();
    const now = performance.now();
    for (const c of couriers) {
      seen.add(c.courier_id);
      const stale = Date.now() - c.time_ms > STALE_MS;
      let m = markers.get(c.courier_id);
      if (!m) {
        const marker = L.marker([c.lat, c.lon], { icon: stale ? staleIcon : liveIcon, title: c.courier_id, riseOnHover: true })
          .bindPopup('', { autoPan: false })
          .addTo(map);
        marker.getElement().dataset.courier = c.courier_id;
        m = { marker, data: c, to: null };
        marker.on('popupopen', () => {
          m.orders = undefined;
          marker.setPopupContent(popupHtml(m.data, m.orders));
          ordersOf(c.courier_id).then(orders => {
            m.orders = orders;
            if (marker.isPopupOpen()) marker.setPopupContent(popupHtml(m.data, m.orders));
          });
        });
        markers.set(c.courier_id, m);
      } else {
        const at = m.marker.getLatLng();
        if (at.lat !== c.lat || at.lng !== c.lon) {
          m.from = at;
          m.to = L.latLng(c.lat, c.lon);
          m.start = now;
          if (document.hidden) {
            m.marker.setLatLng(m.to);
            m.to = null;
          }
        }
        m.marker.setIcon(stale ? staleIcon : liveIcon);
        m.marker.getElement().dataset.courier = c.courier_id;
      }
      m.data = c;
      if (m.marker.isPopupOpen()) m.marker.setPopupContent(popupHtml(c, m.orders));
    }
    for (const [id, m] of markers) {
      if (!seen.has(id)) {
        m.marker.remove();
        markers.delete(id);
      }
    }
    if (!animating && [...markers.values()].some(m => m.to)) {
      animating = true;
      requestAnimationFrame(animate);
    }
  }

  async function fetchWithin(box) {
    const url = new URL('../v1/couriers/within', location.href);
    for (const [k, v] of Object.entries(box)) url.searchParams.set(k, v.toFixed(6));
    url.searchParams.set('limit', String(LIMIT));
    const r = await fetch(url, { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' });
    const body = await r.json().catch(() => null);
    if (!r.ok) {
      const err = new Error((body && body.error && body.error.message) || 'HTTP ' + r.status);
      err.status = r.status;
      throw err;
    }
    return body;
  }

  let inFlight = null;
  let again = false;
  async function poll() {
    if (state.stopped) return;
    if (inFlight) {
      again = true;
      return inFlight;
    }
    inFlight = (async () => {
      try {
        const body = await fetchWithin(viewBox());
        state.polls++;
        state.last = body;
        state.truncated = body.truncated;
        show(body.couriers);
        const n = body.couriers.length;
        $('count').textContent = n + (n === 1 ? ' courier' : ' couriers') + ' in view' + (body.truncated ? ' (the nearest ' + n + ' shown)' : '');
        $('updated').textContent = 'updated ' + clockS(Date.now());
        $('error').textContent = '';
      } catch (e) {
        state.errors++;
        $('error').textContent = e.status === 401 ? 'Your ops token is missing or expired.' : e.status === 403 ? 'This needs an ops token.' : 'Cannot reach the server: ' + e.message;
        if (e.status === 401 || e.status === 403) state.stopped = true;
      }
    })();
    await inFlight;
    inFlight = null;
    if (again) {
      again = false;
      await poll();
    }
  }

  let moveTimer = null;
  map.on('moveend', () => {
    clearTimeout(moveTimer);
    moveTimer = setTimeout(poll, 150);
  });

  async function start() {
    // Start on wherever the couriers are.
    try {
      const all = await fetchWithin({ south: -90, west: -180, north: 90, east: 180 });
      if (all.couriers.length) {
        map.fitBounds(L.latLngBounds(all.couriers.map(c => [c.lat, c.lon])), { padding: [60, 60], maxZoom: 15, animate: false });
      }
    } catch (_) {
      /* the poll below reports it */
    }
    await poll();
    setInterval(poll, POLL_MS);
  }

  window.opsmap = {
    state,
    map,
    poll,
    markers: () => [...markers.entries()].map(([id, m]) => ({ id, lat: m.marker.getLatLng().lat, lon: m.marker.getLatLng().lng, target: m.data })),
    moving: () => [...markers.values()].some(m => m.to),
  };

  start();
})();
