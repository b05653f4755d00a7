//! Broker mode: several trackline nodes behind one ingress, joined by a NATS server.
//!
//! Every order is owned by one node and every courier has one home node, both by rendezvous
//! hashing over `--cluster-nodes` (`trackline_core::cluster`), so nodes agree on placement without
//! talking about it. A node forwards what it does not own to the owner as a NATS request and
//! answers only once the owner has: REST calls on a foreign order, a courier's fixes (to its home
//! node, which knows the courier's orders, and from there to each order's owner), the start and
//! resume of a watch. The owner publishes the updates of an order to every node that has watchers
//! of it (see `remote_watch`). Durable state never leaves its owner's sled; NATS keeps nothing.
//!
//! Subjects: `{prefix}.node.{node}.{kind}`, one set per node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use trackline_core::{CourierId, OrderId};

use crate::cluster::protocol::{CallError, Kind, LinkCall, Positions, RemoteError};
use crate::config::Config;
use crate::orders::errors::OrderError;

/// This node's place in the cluster and its connection to the broker.
pub struct Cluster {
    client: async_nats::Client,
    node: String,
    nodes: Vec<String>,
    prefix: String,
    timeout: Duration,
}

/// A node name or prefix must be one NATS subject token.
fn check_token(what: &str, token: &str) -> anyhow::Result<()> {
    let bad = token.is_empty()
        || token
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>'));
    if bad {
        bail!("{what} {token:?} must be non-empty without spaces, '.', '*' or '>'");
    }
    Ok(())
}

impl Cluster {
    /// Connects to the broker when `--broker` is set; `None` runs the single-node default.
    ///
    /// # Errors
    /// When the cluster flags are inconsistent or the broker cannot be reached.
    pub async fn connect(config: &Config) -> anyhow::Result<Option<Arc<Cluster>>> {
        let Some(url) = &config.broker else {
            return Ok(None);
        };
        let node = config
            .node_id
            .clone()
            .context("--broker needs --node-id (this node's name)")?;
        let nodes: Vec<String> = config
            .cluster_nodes
            .iter()
            .map(|n| n.trim().to_string())
            .collect();
        for name in &nodes {
            check_token("node name", name)?;
        }
        check_token("--broker-prefix", &config.broker_prefix)?;
        if !nodes.contains(&node) {
            bail!("--node-id {node:?} is not one of --cluster-nodes {nodes:?}");
        }
        let mut unique = nodes.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != nodes.len() {
            bail!("--cluster-nodes lists a node twice: {nodes:?}");
        }
        let timeout = Duration::from_millis(config.broker_timeout_ms.max(1));
        let client = async_nats::ConnectOptions::new()
            .name(format!("trackline {node}"))
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            // Unbounded reconnects: a broker restart must not need a trackline restart.
            .max_reconnects(None)
            .event_callback(|event| async move {
                tracing::info!(%event, "broker connection");
            })
            .connect(url.as_str())
            .await
            .with_context(|| format!("connecting to the broker at {url}"))?;
        tracing::info!(broker = %url, %node, ?nodes, "broker mode");
        Ok(Some(Arc::new(Cluster {
            client,
            node,
            nodes,
            prefix: config.broker_prefix.clone(),
            timeout,
        })))
    }

    /// The largest message body the broker carries, less room for headers: a REST call or answer
    /// larger than this cannot be forwarded (the NATS server's `max_payload`, 1 MiB by default).
    pub fn max_body(&self) -> usize {
        self.client
            .server_info()
            .max_payload
            .saturating_sub(8 * 1024)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the broker connection is up (async-nats reconnects by itself; this is its state).
    pub fn broker_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The node that owns `order`.
    pub fn owner_of(&self, order: &OrderId) -> &str {
        &self.nodes[trackline_core::cluster::owner(order.as_str(), &self.nodes)]
    }

    /// The node that keeps `courier`'s links and routes its fixes.
    pub fn home_of(&self, courier: &CourierId) -> &str {
        &self.nodes[trackline_core::cluster::owner(courier.as_str(), &self.nodes)]
    }

    /// Every node but this one.
    pub fn others(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .map(String::as_str)
            .filter(|node| *node != self.node)
    }

    pub fn owns(&self, order: &OrderId) -> bool {
        self.owner_of(order) == self.node
    }

    pub fn is_home_of(&self, courier: &CourierId) -> bool {
        self.home_of(courier) == self.node
    }

    fn subject(&self, node: &str, kind: Kind) -> String {
        format!("{}.node.{node}.{}", self.prefix, kind.as_str())
    }

    /// Sends `call` to `node` and waits for its answer (JSON both ways).
    pub async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        node: &str,
        kind: Kind,
        call: &Q,
    ) -> Result<A, CallError> {
        // unwrap: the call types are plain data; serde_json cannot fail on them
        let payload = Bytes::from(serde_json::to_vec(call).unwrap());
        let answer = self.request(node, kind, HeaderMap::new(), payload).await?;
        serde_json::from_slice(&answer.payload)
            .map_err(|e| CallError::BadAnswer(node.to_string(), e.to_string()))
    }

    /// Sends a raw request to `node`, measured per kind and outcome.
    pub async fn request(
        &self,
        node: &str,
        kind: Kind,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Message, CallError> {
        if !self.broker_connected() {
            // Without a broker nobody can answer: say so now rather than after the timeout.
            metrics::counter!("trackline_broker_requests_total", "kind" => kind.as_str(), "outcome" => "failed")
                .increment(1);
            return Err(CallError::Unavailable(
                node.to_string(),
                "the broker is not connected".into(),
            ));
        }
        let started = Instant::now();
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(payload)
            .timeout(Some(self.timeout));
        let outcome = self
            .client
            .send_request(self.subject(node, kind), request)
            .await;
        metrics::histogram!("trackline_broker_request_seconds", "kind" => kind.as_str())
            .record(started.elapsed().as_secs_f64());
        let label = if outcome.is_ok() { "ok" } else { "failed" };
        metrics::counter!("trackline_broker_requests_total", "kind" => kind.as_str(), "outcome" => label)
            .increment(1);
        outcome.map_err(|e| CallError::Unavailable(node.to_string(), e.to_string()))
    }

    /// Publishes a note to `node` without waiting for anything (updates, unwatch).
    pub async fn notify<Q: Serialize>(&self, node: &str, kind: Kind, note: &Q) {
        // unwrap: the note types are plain data; serde_json cannot fail on them
        let payload = Bytes::from(serde_json::to_vec(note).unwrap());
        match self.client.publish(self.subject(node, kind), payload).await {
            Ok(()) => metrics::counter!("trackline_broker_published_total").increment(1),
            Err(error) => tracing::debug!(%error, node, "broker publish failed"),
        }
    }

    /// Sends this node's new courier positions to every node.
    pub async fn broadcast_positions(&self, positions: &Positions) {
        // unwrap: positions are plain data; serde_json cannot fail on them
        let payload = Bytes::from(serde_json::to_vec(positions).unwrap());
        match self.client.publish(self.positions_subject(), payload).await {
            Ok(()) => metrics::counter!("trackline_broker_published_total").increment(1),
            Err(error) => tracing::debug!(%error, "sharing positions failed"),
        }
    }

    fn positions_subject(&self) -> String {
        format!("{}.positions", self.prefix)
    }

    /// The positions other nodes share.
    ///
    /// # Errors
    /// When the broker refuses the subscription.
    pub async fn peer_positions(
        &self,
    ) -> anyhow::Result<impl futures_util::Stream<Item = Positions> + use<>> {
        use futures_util::StreamExt;
        let subscriber = self.client.subscribe(self.positions_subject()).await?;
        let me = self.node.clone();
        Ok(subscriber.filter_map(move |message| {
            let positions = serde_json::from_slice::<Positions>(&message.payload)
                .ok()
                .filter(|p| p.from != me);
            std::future::ready(positions)
        }))
    }

    /// Answers a request received from another node.
    pub async fn reply(&self, to: &Message, headers: HeaderMap, payload: Bytes) {
        let Some(reply) = to.reply.clone() else {
            return;
        };
        if let Err(error) = self
            .client
            .publish_with_headers(reply, headers, payload)
            .await
        {
            tracing::debug!(%error, "broker reply failed");
        }
    }

    /// Answers a request with JSON.
    pub async fn reply_json<A: Serialize>(&self, to: &Message, answer: &A) {
        // unwrap: the answer types are plain data; serde_json cannot fail on them
        let payload = Bytes::from(serde_json::to_vec(answer).unwrap());
        self.reply(to, HeaderMap::new(), payload).await;
    }

    /// Links (or unlinks) `courier` and `order` at the courier's home node; returns once the link
    /// is durable there.
    ///
    /// # Errors
    /// [`OrderError::Node`] when the home node cannot be reached, [`OrderError::Remote`] when it
    /// could not store the link.
    pub async fn link(
        &self,
        courier: &CourierId,
        order: &OrderId,
        linked: bool,
    ) -> Result<(), OrderError> {
        let call = LinkCall {
            courier: courier.clone(),
            order: order.clone(),
            linked,
        };
        let home = self.home_of(courier).to_string();
        let answer: Result<(), RemoteError> = self.call(&home, Kind::Link, &call).await?;
        Ok(answer?)
    }

    /// The requests addressed to this node, with their kind.
    ///
    /// # Errors
    /// When the broker refuses the subscription.
    pub async fn incoming(
        &self,
    ) -> anyhow::Result<impl futures_util::Stream<Item = (Kind, Message)> + use<>> {
        use futures_util::StreamExt;
        let subject = format!("{}.node.{}.*", self.prefix, self.node);
        let subscriber = self
            .client
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("subscribing to {subject}"))?;
        Ok(subscriber.filter_map(|message| {
            let kind = message.subject.rsplit('.').next().and_then(Kind::parse);
            std::future::ready(kind.map(|kind| (kind, message)))
        }))
    }
}
