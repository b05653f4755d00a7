//! The webhook tree of the history database: endpoints, events and each endpoint's deliveries.
//!
//! One sled tree, so that an event and its deliveries are written in one atomic batch. Keys
//! start with a byte that says what they are (ids never contain 0x00, seqs are big-endian, so
//! each range below is contiguous and in order):
//! - `w` endpoint -> [`Endpoint`] (JSON)
//! - `e` order 0x00 seq -> [`WebhookEvent`] (JSON), kept until history retention purges the order
//! - `s` order -> [`OrderHookState`]: where the order's events stand, read when its actor starts
//! - `p` endpoint 0x00 order 0x00 seq -> [`DeliveryState`] of a delivery still to make: per
//!   endpoint, per order, oldest first, so the first key of an order is the one to deliver next
//! - `f` endpoint 0x00 order 0x00 seq -> [`DeliveryState`] of a delivery given up
//!
//! Pending deliveries stay here, not in memory: a dispatcher reads the first pending key of each
//! order ([`WebhookStore::heads`]) and deletes it once delivered.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use super::{EventType, WebhookEvent};
use crate::ids::OrderId;

/// The most endpoints a server keeps: each one costs a delivery per event.
pub const MAX_ENDPOINTS: usize = 100;

/// A receiver of events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub events: Vec<EventType>,
    /// `whsec_` + base64 of the key.
    pub secret: String,
    pub created_at_ms: i64,
    /// Set when the receiver answered 410 Gone: nothing is sent to it any more.
    #[serde(default)]
    pub disabled: bool,
}

impl Endpoint {
    /// The id of the endpoint of `url` signed with `secret`: derived from both, so that every
    /// node of a cluster registers the same endpoint under the same id, and registering it again
    /// is the same endpoint.
    pub fn id_for(url: &str, secret: &str) -> String {
        let hash = xxhash_rust::xxh3::xxh3_128(format!("{url}\0{secret}").as_bytes());
        format!("wh_{:024x}", hash >> 32)
    }

    fn wants(&self, kind: EventType) -> bool {
        !self.disabled && self.events.contains(&kind)
    }
}

/// Where one order's events stand.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderHookState {
    /// The seq the next event of the order takes.
    pub next_seq: u64,
    /// The arrival time (unix ms) carried by the last `order.eta`.
    pub eta_sent_ms: Option<i64>,
    /// The last courier event was `courier.offline`.
    pub courier_offline: bool,
}

/// One delivery of one event to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub attempts: u32,
    /// Not before this (unix ms).
    pub next_attempt_ms: i64,
    /// Since when it is being tried (the event's time, or its redelivery's): given up after
    /// the maximum age from here.
    pub since_ms: i64,
    pub last_error: Option<String>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Failed,
}

impl DeliveryStatus {
    fn tag(self) -> u8 {
        match self {
            DeliveryStatus::Pending => b'p',
            DeliveryStatus::Failed => b'f',
        }
    }
}

/// The next delivery of one order to one endpoint.
#[derive(Debug, Clone)]
pub struct PendingHead {
    pub key: Vec<u8>,
    pub order: OrderId,
    pub seq: u64,
    pub state: DeliveryState,
}

/// What [`WebhookStore::put_endpoint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Added,
    /// One with the same id was there: it is replaced.
    Replaced,
    /// Nothing: [`MAX_ENDPOINTS`] are kept already.
    Full,
}

/// The webhook tree, and the endpoints in memory (read at every event write).
#[derive(Clone)]
pub struct WebhookStore {
    tree: sled::Tree,
    endpoints: Arc<RwLock<Vec<Endpoint>>>,
    /// Woken when events were stored or endpoints changed.
    wake: Arc<tokio::sync::Notify>,
}

/// What the webhook tree can fail with: sled's errors (a record that does not decode among them).
pub type WebhookResult<T> = std::result::Result<T, sled::Error>;
type Result<T> = WebhookResult<T>;

fn corrupt(what: &str, e: impl std::fmt::Display) -> sled::Error {
    sled::Error::Unsupported(format!("corrupt webhook {what}: {e}"))
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(what, e))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // unwrap: plain data (strings, numbers, options) always serialises
    serde_json::to_vec(value).unwrap()
}

fn endpoint_key(id: &str) -> Vec<u8> {
    [b"w", id.as_bytes()].concat()
}

fn event_key(order: &OrderId, seq: u64) -> Vec<u8> {
    [b"e", order.as_str().as_bytes(), &[0], &seq.to_be_bytes()].concat()
}

fn state_key(order: &OrderId) -> Vec<u8> {
    [b"s", order.as_str().as_bytes()].concat()
}

fn deliveries_prefix(tag: u8, endpoint: &str) -> Vec<u8> {
    [&[tag], endpoint.as_bytes(), &[0]].concat()
}

fn delivery_key(tag: u8, endpoint: &str, order: &OrderId, seq: u64) -> Vec<u8> {
    [
        &deliveries_prefix(tag, endpoint)[..],
        order.as_str().as_bytes(),
        &[0],
        &seq.to_be_bytes(),
    ]
    .concat()
}

/// The pending delivery stored as `key` (after its endpoint prefix of `prefix_len` bytes) and
/// `value`.
fn pending_head(key: &[u8], value: &[u8], prefix_len: usize) -> Result<PendingHead> {
    let (order, seq) = order_and_seq(key, prefix_len)?;
    Ok(PendingHead {
        key: key.to_vec(),
        order,
        seq,
        state: decode("delivery", value)?,
    })
}

/// The order and seq of a delivery key (after its endpoint prefix of `prefix_len` bytes).
fn order_and_seq(key: &[u8], prefix_len: usize) -> Result<(OrderId, u64)> {
    let rest = &key[prefix_len.min(key.len())..];
    let bad = || corrupt("delivery key", String::from_utf8_lossy(key));
    if rest.len() < 9 {
        return Err(bad());
    }
    let (order, seq) = rest.split_at(rest.len() - 9);
    let order = std::str::from_utf8(order).map_err(|_| bad())?;
    let order = OrderId::new(order).map_err(|_| bad())?;
    let seq = u64::from_be_bytes(seq[1..].try_into().map_err(|_| bad())?);
    Ok((order, seq))
}

impl WebhookStore {
    /// Opens the tree in `db` and reads the endpoints.
    ///
    /// # Errors
    /// When sled fails or an endpoint does not decode.
    pub fn open(db: &sled::Db) -> Result<Self> {
        let tree = db.open_tree("webhooks")?;
        let endpoints = tree
            .scan_prefix(b"w")
            .map(|item| decode::<Endpoint>("endpoint", &item?.1))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tree,
            endpoints: Arc::new(RwLock::new(endpoints)),
            wake: Arc::default(),
        })
    }

    fn read_endpoints(&self) -> std::sync::RwLockReadGuard<'_, Vec<Endpoint>> {
        // A panic while holding the lock leaves plain data behind: keep serving it.
        self.endpoints.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_endpoints(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Endpoint>> {
        self.endpoints.write().unwrap_or_else(|e| e.into_inner())
    }

    /// What dispatchers wait on: events stored, endpoints changed.
    pub fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Stores `events` (of any orders) with a pending delivery to every endpoint that wants
    /// each, unless an event is stored already (a log segment folded again after a crash).
    /// Not flushed: the caller's log or flush makes them durable.
    ///
    /// # Errors
    /// When sled fails.
    pub fn store_events<'a>(
        &self,
        events: impl IntoIterator<Item = &'a WebhookEvent>,
    ) -> Result<()> {
        let endpoints = self.read_endpoints().clone();
        if endpoints.is_empty() {
            // Nobody to deliver to: an endpoint gets the events of changes made after it was
            // registered. Storing them anyway cost every fleet write a sled insert (and sled's
            // flushes) for events no one would ever read.
            return Ok(());
        }
        let mut stored = 0;
        for event in events {
            let order = event.order_id();
            let key = event_key(order, event.seq);
            if self.tree.contains_key(&key)? {
                continue;
            }
            let mut batch = sled::Batch::default();
            batch.insert(key, encode(event));
            let state = DeliveryState {
                event_id: event.id.clone(),
                kind: event.kind,
                attempts: 0,
                next_attempt_ms: 0,
                since_ms: event.at_ms,
                last_error: None,
            };
            for endpoint in endpoints.iter().filter(|e| e.wants(event.kind)) {
                let key = delivery_key(b'p', &endpoint.id, order, event.seq);
                batch.insert(key, encode(&state));
            }
            let mut hook_state = self.order_state(order)?;
            hook_state.next_seq = hook_state.next_seq.max(event.seq + 1);
            match event.kind {
                EventType::OrderEta => {
                    hook_state.eta_sent_ms = event.data.eta.map(|e| e.arrive_at_ms)
                }
                EventType::CourierOffline => hook_state.courier_offline = true,
                EventType::CourierOnline => hook_state.courier_offline = false,
                _ => {}
            }
            batch.insert(state_key(order), encode(&hook_state));
            self.tree.apply_batch(batch)?;
            stored += 1;
        }
        if stored > 0 {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Where `order`'s events stand (the default for an order without any).
    ///
    /// # Errors
    /// When sled fails or the state does not decode.
    pub fn order_state(&self, order: &OrderId) -> Result<OrderHookState> {
        match self.tree.get(state_key(order))? {
            Some(bytes) => decode("order state", &bytes),
            None => Ok(OrderHookState::default()),
        }
    }

    /// `order`'s events, oldest first.
    ///
    /// # Errors
    /// When sled fails or an event does not decode.
    pub fn events_of(&self, order: &OrderId) -> Result<Vec<WebhookEvent>> {
        let prefix = [b"e", order.as_str().as_bytes(), &[0]].concat();
        self.tree
            .scan_prefix(prefix)
            .map(|item| decode("event", &item?.1))
            .collect()
    }

    /// The event `seq` of `order`.
    ///
    /// # Errors
    /// When sled fails or the event does not decode.
    pub fn event(&self, order: &OrderId, seq: u64) -> Result<Option<WebhookEvent>> {
        self.tree
            .get(event_key(order, seq))?
            .map(|bytes| decode("event", &bytes))
            .transpose()
    }

    /// Whether any endpoint is registered (events are filed only then).
    pub fn has_endpoints(&self) -> bool {
        !self.read_endpoints().is_empty()
    }

    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.read_endpoints().clone()
    }

    pub fn endpoint(&self, id: &str) -> Option<Endpoint> {
        self.read_endpoints().iter().find(|e| e.id == id).cloned()
    }

    /// Adds (or replaces) an endpoint, durably.
    ///
    /// # Errors
    /// When sled fails.
    pub fn put_endpoint(&self, endpoint: Endpoint) -> Result<Put> {
        let mut endpoints = self.write_endpoints();
        let known = endpoints.iter().position(|e| e.id == endpoint.id);
        if known.is_none() && endpoints.len() >= MAX_ENDPOINTS {
            return Ok(Put::Full);
        }
        self.tree
            .insert(endpoint_key(&endpoint.id), encode(&endpoint))?;
        self.tree.flush()?;
        let put = match known {
            Some(i) => {
                endpoints[i] = endpoint;
                Put::Replaced
            }
            None => {
                endpoints.push(endpoint);
                Put::Added
            }
        };
        drop(endpoints);
        self.wake.notify_one();
        Ok(put)
    }

    /// Removes an endpoint and its deliveries; false when there was none.
    ///
    /// # Errors
    /// When sled fails.
    pub fn remove_endpoint(&self, id: &str) -> Result<bool> {
        let mut endpoints = self.write_endpoints();
        let Some(i) = endpoints.iter().position(|e| e.id == id) else {
            return Ok(false);
        };
        endpoints.remove(i);
        drop(endpoints);
        self.tree.remove(endpoint_key(id))?;
        for tag in [b'p', b'f'] {
            for key in self.tree.scan_prefix(deliveries_prefix(tag, id)).keys() {
                self.tree.remove(key?)?;
            }
        }
        self.tree.flush()?;
        self.wake.notify_one();
        Ok(true)
    }

    /// The next pending delivery of each order to `endpoint` (at most `limit`), oldest order
    /// key first: one seek per order, however many events wait behind each.
    ///
    /// # Errors
    /// When sled fails or a delivery does not decode.
    pub fn heads(&self, endpoint: &str, limit: usize) -> Result<Vec<PendingHead>> {
        let prefix = deliveries_prefix(b'p', endpoint);
        let mut from = prefix.clone();
        let mut heads = Vec::new();
        while heads.len() < limit {
            let Some((key, value)) = self.tree.range(from.clone()..).next().transpose()? else {
                break;
            };
            if !key.starts_with(&prefix) {
                break;
            }
            let head = pending_head(&key, &value, prefix.len())?;
            // Past every key of this order: its id, then 0x01 (after the 0x00 separator).
            from = [&prefix[..], head.order.as_str().as_bytes(), &[1]].concat();
            heads.push(head);
        }
        Ok(heads)
    }

    /// The next pending delivery of `order` to `endpoint`, if any: one seek.
    ///
    /// # Errors
    /// When sled fails or the delivery does not decode.
    pub fn head_of(&self, endpoint: &str, order: &OrderId) -> Result<Option<PendingHead>> {
        let prefix = deliveries_prefix(b'p', endpoint);
        // Order ids hold no 0x00: this is exactly the order's keys.
        let of_order = [&prefix[..], order.as_str().as_bytes(), &[0]].concat();
        match self.tree.scan_prefix(of_order).next().transpose()? {
            Some((key, value)) => Ok(Some(pending_head(&key, &value, prefix.len())?)),
            None => Ok(None),
        }
    }

    /// The delivery was made: it goes.
    ///
    /// # Errors
    /// When sled fails.
    pub fn delivered(&self, head: &PendingHead) -> Result<()> {
        self.tree.remove(&head.key)?;
        Ok(())
    }

    /// The delivery will be tried again, as `state` says.
    ///
    /// # Errors
    /// When sled fails.
    pub fn retry_later(&self, head: &PendingHead, state: &DeliveryState) -> Result<()> {
        self.tree.insert(&head.key, encode(state))?;
        Ok(())
    }

    /// The delivery is given up: kept as failed, and the order's next one may go.
    ///
    /// # Errors
    /// When sled fails.
    pub fn give_up(&self, head: &PendingHead, state: &DeliveryState) -> Result<()> {
        let mut failed_key = head.key.clone();
        failed_key[0] = b'f';
        let mut batch = sled::Batch::default();
        batch.remove(head.key.clone());
        batch.insert(failed_key, encode(state));
        self.tree.apply_batch(batch)
    }

    /// `endpoint`'s deliveries of one status (at most `limit`), by order then seq.
    ///
    /// # Errors
    /// When sled fails or a delivery does not decode.
    pub fn deliveries(
        &self,
        endpoint: &str,
        status: DeliveryStatus,
        limit: usize,
    ) -> Result<Vec<(OrderId, DeliveryState)>> {
        let prefix = deliveries_prefix(status.tag(), endpoint);
        self.tree
            .scan_prefix(&prefix)
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                let (order, _) = order_and_seq(&key, prefix.len())?;
                Ok((order, decode("delivery", &value)?))
            })
            .collect()
    }

    /// Moves `endpoint`'s failed deliveries (every one, or the one of `event_id`) back to
    /// pending, to be tried from now for the maximum age again; returns how many.
    ///
    /// # Errors
    /// When sled fails or a delivery does not decode.
    pub fn redeliver(&self, endpoint: &str, event_id: Option<&str>, now_ms: i64) -> Result<usize> {
        let mut moved = 0;
        for item in self.tree.scan_prefix(deliveries_prefix(b'f', endpoint)) {
            let (key, value) = item?;
            let mut state: DeliveryState = decode("delivery", &value)?;
            if event_id.is_some_and(|id| id != state.event_id) {
                continue;
            }
            state.attempts = 0;
            state.next_attempt_ms = 0;
            state.since_ms = now_ms;
            let mut pending_key = key.to_vec();
            pending_key[0] = b'p';
            let mut batch = sled::Batch::default();
            batch.remove(key);
            batch.insert(pending_key, encode(&state));
            self.tree.apply_batch(batch)?;
            moved += 1;
        }
        if moved > 0 {
            self.tree.flush()?;
            self.wake.notify_one();
        }
        Ok(moved)
    }

    /// Deletes an order's events and state (its history is purged) and the failed deliveries
    /// given up before `failed_before_ms`; returns how many events went.
    ///
    /// # Errors
    /// When sled fails.
    pub fn purge_order(&self, order: &OrderId) -> Result<usize> {
        let prefix = [b"e", order.as_str().as_bytes(), &[0]].concat();
        let mut removed = 0;
        for key in self.tree.scan_prefix(prefix).keys() {
            self.tree.remove(key?)?;
            removed += 1;
        }
        self.tree.remove(state_key(order))?;
        Ok(removed)
    }

    /// Deletes the failed deliveries whose trying began before `cutoff_ms`; returns how many.
    ///
    /// # Errors
    /// When sled fails or a delivery does not decode.
    pub fn purge_failed_before(&self, cutoff_ms: i64) -> Result<usize> {
        let mut removed = 0;
        for item in self.tree.scan_prefix(b"f") {
            let (key, value) = item?;
            let state: DeliveryState = decode("delivery", &value)?;
            if state.since_ms < cutoff_ms {
                self.tree.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fix::LatLon;
    use crate::order::OrderRecord;

    fn store() -> (tempfile::TempDir, WebhookStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        (dir, WebhookStore::open(&db).unwrap())
    }

    fn endpoint(id: &str, events: &[EventType]) -> Endpoint {
        Endpoint {
            id: id.into(),
            url: "http://127.0.0.1:9/hook".into(),
            events: events.to_vec(),
            secret: super::super::signature::generate_secret(),
            created_at_ms: 0,
            disabled: false,
        }
    }

    fn event(order: &str, seq: u64, kind: EventType) -> WebhookEvent {
        let record = OrderRecord::new(
            OrderId::new(order).unwrap(),
            LatLon::new(1.0, 2.0),
            None,
            None,
            None,
            0,
        );
        WebhookEvent::of(&record, kind, seq, 0)
    }

    #[test]
    fn heads_are_the_oldest_pending_event_of_each_order_for_each_endpoint() {
        let (_dir, store) = store();
        for hook in [
            endpoint("all", &EventType::ALL),
            endpoint("eta", &[EventType::OrderEta]),
        ] {
            assert_eq!(store.put_endpoint(hook.clone()).unwrap(), Put::Added);
            assert_eq!(store.put_endpoint(hook).unwrap(), Put::Replaced);
        }
        let events = [
            event("a", 1, EventType::OrderCreated),
            event("a", 2, EventType::OrderEta),
            event("b", 1, EventType::OrderEta),
            event("a", 3, EventType::OrderStatus),
        ];
        store.store_events(&events).unwrap();
        // Stored again (a log folded twice): no second delivery.
        store.store_events(&events).unwrap();
        let heads = store.heads("all", 10).unwrap();
        let seen: Vec<_> = heads
            .iter()
            .map(|h| (h.order.as_str().to_string(), h.seq))
            .collect();
        assert_eq!(seen, [("a".to_string(), 1), ("b".to_string(), 1)]);
        store.delivered(&heads[0]).unwrap();
        let next = store.heads("all", 10).unwrap();
        assert_eq!(next[0].seq, 2);
        let a = OrderId::new("a").unwrap();
        let head_of_a = store.head_of("all", &a).unwrap().unwrap();
        assert_eq!((head_of_a.order.as_str(), head_of_a.seq), ("a", 2));
        assert_eq!(head_of_a.key, next[0].key);
        let none = OrderId::new("c").unwrap();
        assert!(store.head_of("all", &none).unwrap().is_none());
        store.give_up(&next[0], &next[0].state).unwrap();
        assert_eq!(store.heads("all", 10).unwrap()[0].seq, 3);
        let failed = store.deliveries("all", DeliveryStatus::Failed, 10).unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(store.redeliver("all", Some("nope"), 5).unwrap(), 0);
        assert_eq!(store.redeliver("all", None, 5).unwrap(), 1);
        assert_eq!(store.heads("all", 10).unwrap()[0].seq, 2);
        let eta_only = store
            .deliveries("eta", DeliveryStatus::Pending, 10)
            .unwrap();
        assert_eq!(eta_only.len(), 2);
        assert_eq!(
            store
                .order_state(&OrderId::new("a").unwrap())
                .unwrap()
                .next_seq,
            4
        );
        assert!(store.remove_endpoint("eta").unwrap());
        assert!(store.heads("eta", 10).unwrap().is_empty());
        assert_eq!(store.purge_order(&OrderId::new("a").unwrap()).unwrap(), 3);
    }
}
