//! A small client for the server's HTTP API (PROTOCOL.md): the calls trackctl makes, with errors
//! that say what to do next.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use trackline_core::fix::Fix;
use trackline_core::order::{OrderStatus, OrderView};
use trackline_rest::{
    ChangeStatus, CreateOrder, ErrorAnswer, History, OrderCreated, OrderDetail, OrderList,
    PurgeRequest, Purged, Token, TokenRequest,
};

/// How long one HTTP call may take before we call the server unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The server at one base URL.
#[derive(Debug, Clone)]
pub struct Api {
    pub(crate) http: reqwest::Client,
    base: String,
}

/// The server answered with an error status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{doing}: the server answered {status}: {detail}{hint}")]
pub struct HttpError {
    /// What we were doing, e.g. "creating order o-1".
    pub doing: String,
    pub status: u16,
    /// The server's message and code, or the body.
    pub detail: String,
    hint: &'static str,
}

impl Api {
    /// A client for `server`, e.g. `http://127.0.0.1:8080`.
    ///
    /// # Errors
    /// When `server` is not an `http://` URL (TLS is not built in yet).
    pub fn new(server: &str) -> anyhow::Result<Self> {
        let base = server.trim().trim_end_matches('/').to_string();
        if base.starts_with("https://") {
            bail!("{server}: https is not supported by this build of trackctl yet; use http:// (e.g. through a local tunnel)");
        }
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            bail!("--server {server:?} must be an http:// URL such as http://127.0.0.1:8080");
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Self { http, base })
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The WebSocket URL of `path` (which starts with `/`).
    pub fn ws_url(&self, path: &str) -> String {
        // new() guarantees the http:// prefix
        format!("ws://{}{path}", &self.base["http://".len()..])
    }

    /// The live-map page of an order, openable in a browser.
    pub fn watch_url(&self, order_id: &str, watch_token: &str) -> String {
        // ids are [A-Za-z0-9_.-] and tokens base64url with dots: nothing to escape
        format!("{}/track/{order_id}?token={watch_token}", self.base)
    }

    /// `POST /v1/orders` with an ops token.
    ///
    /// # Errors
    /// When the server is unreachable or refuses (409 when the order exists, 400 when invalid).
    pub async fn create_order(
        &self,
        token: &str,
        order: &CreateOrder,
    ) -> anyhow::Result<OrderCreated> {
        let response = self
            .send(
                self.http
                    .post(self.url("/v1/orders"))
                    .bearer_auth(token)
                    .json(order),
            )
            .await?;
        let response = check(response, &format!("creating order {}", order.order_id)).await?;
        response
            .json()
            .await
            .with_context(|| format!("reading the answer to creating order {}", order.order_id))
    }

    /// `POST /v1/tokens` with an ops token: a token minted by the server, for when we have no secret.
    ///
    /// # Errors
    /// When the server is unreachable or refuses.
    pub async fn mint_token(
        &self,
        token: &str,
        role: &str,
        subject: Option<&str>,
    ) -> anyhow::Result<String> {
        let body = TokenRequest {
            role: role.to_string(),
            subject: subject.map(str::to_string),
            ttl_s: None,
        };
        let response = self
            .send(
                self.http
                    .post(self.url("/v1/tokens"))
                    .bearer_auth(token)
                    .json(&body),
            )
            .await?;
        let response = check(response, &format!("asking the server for a {role} token")).await?;
        let answer: Token = response.json().await.context("reading the minted token")?;
        Ok(answer.token)
    }

    /// `POST /v1/orders/{id}/status`.
    ///
    /// # Errors
    /// When the server is unreachable or refuses (409 on an illegal transition).
    pub async fn set_status(
        &self,
        token: &str,
        order_id: &str,
        status: OrderStatus,
    ) -> anyhow::Result<()> {
        let body = ChangeStatus { status };
        let url = self.url(&format!("/v1/orders/{order_id}/status"));
        let response = self
            .send(self.http.post(url).bearer_auth(token).json(&body))
            .await?;
        check(response, &format!("marking order {order_id} {status}")).await?;
        Ok(())
    }

    /// `PUT /v1/couriers/{id}/plan`: the order in which `courier` visits its orders' stops.
    ///
    /// # Errors
    /// When the server is unreachable or refuses the plan.
    pub async fn set_plan(
        &self,
        token: &str,
        courier: &str,
        plan: &trackline_rest::CourierPlan,
    ) -> anyhow::Result<()> {
        let url = self.url(&format!("/v1/couriers/{courier}/plan"));
        let response = self
            .send(self.http.put(url).bearer_auth(token).json(plan))
            .await?;
        check(response, &format!("setting the plan of courier {courier}")).await?;
        Ok(())
    }

    /// `GET /v1/orders/{id}` with an ops token: the state, route, status log and rejected counts.
    /// `None` when the server does not know the order.
    ///
    /// # Errors
    /// When the server is unreachable or refuses.
    pub async fn order(&self, token: &str, order_id: &str) -> anyhow::Result<Option<OrderDetail>> {
        self.get_found(
            token,
            &format!("/v1/orders/{order_id}"),
            &format!("reading order {order_id}"),
        )
        .await
    }

    /// `GET /v1/orders/{id}/history?format=json`: the stored fixes with `from_ms <= time_ms <=
    /// to_ms`, oldest first. `None` when the server does not know the order.
    ///
    /// # Errors
    /// When the server is unreachable or refuses.
    pub async fn history(
        &self,
        token: &str,
        order_id: &str,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
    ) -> anyhow::Result<Option<Vec<Fix>>> {
        let mut path = format!("/v1/orders/{order_id}/history?format=json");
        for (name, value) in [("from_ms", from_ms), ("to_ms", to_ms)] {
            if let Some(value) = value {
                path.push_str(&format!("&{name}={value}"));
            }
        }
        let answer: Option<History> = self
            .get_found(
                token,
                &path,
                &format!("reading the history of order {order_id}"),
            )
            .await?;
        Ok(answer.map(History::into_fixes))
    }

    /// `GET /v1/orders?status=..&limit=..`: orders, most recently updated first.
    ///
    /// # Errors
    /// When the server is unreachable or refuses.
    pub async fn orders(
        &self,
        token: &str,
        status: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<OrderView>> {
        let path = format!("/v1/orders?status={status}&limit={limit}");
        let response = self
            .send(self.http.get(self.url(&path)).bearer_auth(token))
            .await?;
        let response = check(response, "listing orders").await?;
        let listing: OrderList = response.json().await.context("reading the order list")?;
        Ok(listing.orders)
    }

    /// `POST /v1/admin/purge`: deletes history older than `before_ms` (the server's retention
    /// period when `None`).
    ///
    /// # Errors
    /// When the server is unreachable or refuses (400 without a cutoff or a retention period).
    pub async fn purge(&self, token: &str, before_ms: Option<i64>) -> anyhow::Result<Purged> {
        let body = PurgeRequest { before_ms };
        let response = self
            .send(
                self.http
                    .post(self.url("/v1/admin/purge"))
                    .bearer_auth(token)
                    .json(&body),
            )
            .await?;
        let response = check(response, "purging history").await?;
        response.json().await.context("reading the purge counts")
    }

    /// A GET whose 404 `not_found` answer means "no such order" rather than an error.
    async fn get_found<T: DeserializeOwned>(
        &self,
        token: &str,
        path: &str,
        doing: &str,
    ) -> anyhow::Result<Option<T>> {
        let response = self
            .send(self.http.get(self.url(path)).bearer_auth(token))
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            let body = response.text().await.unwrap_or_default();
            return match serde_json::from_str::<ErrorAnswer>(&body) {
                Ok(ErrorAnswer { error }) if error.code == "not_found" => Ok(None),
                _ => bail!(
                    "{doing}: the server answered 404 for {path}; is {} a trackline server of this version?",
                    self.base
                ),
            };
        }
        let response = check(response, doing).await?;
        let value = response
            .json()
            .await
            .with_context(|| format!("{doing}: reading the answer"))?;
        Ok(Some(value))
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        request.send().await.map_err(|err| {
            let hint = if err.is_connect() || err.is_timeout() {
                format!(
                    "; is the server running at {}? start it with `trackline`, or point --server / TRACKLINE_SERVER at it",
                    self.base
                )
            } else {
                String::new()
            };
            anyhow::Error::new(err).context(format!("reaching {}{hint}", self.base))
        })
    }
}

/// Turns a non-2xx answer into an error carrying the server's `{"error": {...}}` message.
pub(crate) async fn check(
    response: reqwest::Response,
    doing: &str,
) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let doing = doing.to_string();
    let detail = match serde_json::from_str::<ErrorAnswer>(&body) {
        Ok(ErrorAnswer { error }) => format!("{} ({})", error.message, error.code),
        Err(_) if body.trim().is_empty() => status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string(),
        Err(_) => body.trim().chars().take(300).collect(),
    };
    let hint = match status.as_u16() {
        401 => "; the token is missing, expired or signed with another secret: mint one with `trackctl token ops --secret ...`",
        403 => "; this needs an ops token (`trackctl token ops`)",
        _ => "",
    };
    Err(HttpError {
        doing,
        status: status.as_u16(),
        detail,
        hint,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_derived_from_the_base() {
        let api = Api::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!(api.base(), "http://127.0.0.1:8080");
        assert_eq!(
            api.ws_url("/v1/courier/ws"),
            "ws://127.0.0.1:8080/v1/courier/ws"
        );
        assert_eq!(
            api.watch_url("o-1", "a.b.c"),
            "http://127.0.0.1:8080/track/o-1?token=a.b.c"
        );
    }

    #[test]
    fn only_http_servers_are_accepted() {
        assert!(Api::new("https://example.org").is_err());
        assert!(Api::new("127.0.0.1:8080").is_err());
        assert!(Api::new("http://").is_err());
    }
}
