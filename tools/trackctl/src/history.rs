//! Where route history comes from: a running server over HTTP (an ops token), or the data dir of
//! a stopped one, opened with the same store code the server uses. The history commands (`replay`,
//! `export`, `stats`, `orders`, `purge`) see one interface and cannot tell the two apart.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use trackline_core::auth::{Role, DEFAULT_TTL_S};
use trackline_core::fix::Fix;
use trackline_core::history::{HistoryStore, StoreError, WriterGuard};
use trackline_core::order::OrderView;
use trackline_core::OrderId;
use trackline_rest::{OrderDetail, Purged};

use crate::api::Api;
use crate::cli::{GlobalArgs, StatusFilter};

/// The history of a running server or of a data dir.
pub enum Source {
    Server {
        api: Api,
        token: String,
    },
    DataDir {
        dir: PathBuf,
        store: HistoryStore,
        writer: WriterGuard,
    },
}

/// What a running server's lock on its data dir looks like from sled.
const LOCK_ERROR: &str = "could not acquire lock";

impl Source {
    /// The data dir when `data_dir` is given, else the server of `global` with an ops token
    /// (`--token`, or minted from `--secret`).
    ///
    /// # Errors
    /// No credentials for the server, or a data dir that is missing, not a trackline data dir, or
    /// held by a running server.
    pub fn open(global: &GlobalArgs, data_dir: Option<&Path>) -> anyhow::Result<Source> {
        match data_dir {
            Some(dir) => Source::open_data_dir(dir),
            None => Ok(Source::Server {
                api: Api::new(&global.server)?,
                token: ops_token(global)?,
            }),
        }
    }

    /// Opens a stopped server's data dir for reading (and for `purge`).
    ///
    /// # Errors
    /// When the directory does not exist or holds no history store (nothing is created), or a
    /// running server holds it.
    pub fn open_data_dir(dir: &Path) -> anyhow::Result<Source> {
        if !dir.is_dir() {
            bail!(
                "no data dir at {}: pass the directory the server runs with (its --data-dir / TRACKLINE_DATA_DIR)",
                dir.display()
            );
        }
        // sled's main file; without it sled would happily create an empty store here
        if !dir.join("db").is_file() {
            bail!(
                "{} is not a trackline data dir (no sled `db` file in it): pass the directory the server runs with",
                dir.display()
            );
        }
        match HistoryStore::open(dir) {
            Ok((store, writer)) => Ok(Source::DataDir {
                dir: dir.to_path_buf(),
                store,
                writer,
            }),
            Err(StoreError::Sled(err)) if err.to_string().contains(LOCK_ERROR) => bail!(
                "the data dir is in use by a running server; use --server or stop it ({} is locked by another process)",
                dir.display()
            ),
            Err(err) => Err(anyhow::Error::new(err))
                .with_context(|| format!("opening the history in {}", dir.display())),
        }
    }

    /// Where the history comes from, for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Server { api, .. } => api.base().to_string(),
            Source::DataDir { dir, .. } => format!("data dir {}", dir.display()),
        }
    }

    /// True for a data dir.
    pub fn is_offline(&self) -> bool {
        matches!(self, Source::DataDir { .. })
    }

    /// One order with its route, status log and rejected counts; `None` when unknown.
    ///
    /// # Errors
    /// When the server or the store fails.
    pub async fn order(&self, order: &OrderId) -> anyhow::Result<Option<OrderDetail>> {
        match self {
            Source::Server { api, token } => api.order(token, order.as_str()).await,
            Source::DataDir { store, .. } => {
                let (store, id) = (store.clone(), order.clone());
                let record = blocking(move || store.order(&id)).await?;
                Ok(record.map(|record| OrderDetail {
                    state: record.view(),
                    route: record
                        .route
                        .as_ref()
                        .map(|route| route.iter().map(|p| [p.lat, p.lon]).collect()),
                    rejected: Some(record.rejected),
                    status_log: Some(record.status_log),
                    clock: Some(record.clock),
                    pickup: record.pickup.as_ref().map(Into::into),
                }))
            }
        }
    }

    /// The order's stored fixes with `from_ms <= time_ms <= to_ms`, oldest first; `None` when
    /// the order is unknown.
    ///
    /// # Errors
    /// When the server or the store fails.
    pub async fn fixes(
        &self,
        order: &OrderId,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
    ) -> anyhow::Result<Option<Vec<Fix>>> {
        match self {
            Source::Server { api, token } => {
                api.history(token, order.as_str(), from_ms, to_ms).await
            }
            Source::DataDir { store, .. } => {
                let (store, id) = (store.clone(), order.clone());
                blocking(move || {
                    if store.order(&id)?.is_none() {
                        return Ok(None);
                    }
                    let from = from_ms.unwrap_or(i64::MIN);
                    let to = to_ms.unwrap_or(i64::MAX);
                    store.fixes(&id, from, to).map(Some)
                })
                .await
            }
        }
    }

    /// Orders, most recently updated first, as the server lists them.
    ///
    /// # Errors
    /// When the server or the store fails.
    pub async fn orders(
        &self,
        filter: StatusFilter,
        limit: usize,
    ) -> anyhow::Result<Vec<OrderView>> {
        match self {
            Source::Server { api, token } => api.orders(token, filter.as_str(), limit).await,
            Source::DataDir { store, .. } => {
                let store = store.clone();
                let mut views = blocking(move || {
                    let mut views = Vec::new();
                    for record in store.all_orders() {
                        let view = record?.view();
                        if filter.wants(&view) {
                            views.push(view);
                        }
                    }
                    Ok(views)
                })
                .await?;
                views.sort_by_key(|v| std::cmp::Reverse(v.updated_at_ms));
                views.truncate(limit);
                Ok(views)
            }
        }
    }

    /// Deletes fixes older than `before_ms` and orders that ended before it (the server's
    /// retention period when `None`, which a data dir does not know).
    ///
    /// # Errors
    /// When the server or the store fails, or a data dir is purged without a cutoff.
    pub async fn purge(&self, before_ms: Option<i64>) -> anyhow::Result<Purged> {
        match self {
            Source::Server { api, token } => api.purge(token, before_ms).await,
            Source::DataDir { store, .. } => {
                let Some(before_ms) = before_ms else {
                    bail!(
                        "purging a data dir needs a cutoff: pass --before DATE or --older-than 30d"
                    );
                };
                let store = store.clone();
                let stats = blocking(move || store.purge_before(before_ms)).await?;
                Ok(Purged {
                    before_ms,
                    fixes: stats.fixes,
                    orders: stats.orders,
                })
            }
        }
    }

    /// Reads one order and every fix it has, then lets go of the source (so a data dir is not
    /// kept locked by a long replay).
    ///
    /// # Errors
    /// Exit 1 (nothing found) for an unknown order; the server's or the store's failures.
    pub fn read_whole_order(
        self,
        runtime: &tokio::runtime::Runtime,
        order: &OrderId,
    ) -> anyhow::Result<(OrderDetail, Vec<Fix>)> {
        let where_from = self.describe();
        let loaded = runtime.block_on(async {
            let Some(detail) = self.order(order).await? else {
                return Ok(None);
            };
            // all of it: a filter or an ETA recomputed from it starts where the server started
            let fixes = self.fixes(order, None, None).await?.unwrap_or_default();
            Ok::<_, anyhow::Error>(Some((detail, fixes)))
        });
        self.close();
        loaded?.ok_or_else(|| {
            crate::exit::nothing_found(format!("order {order} does not exist on {where_from}"))
        })
    }

    /// Lets go of the data dir: waits until the store's writer has finished, so the lock is
    /// released when this returns.
    pub fn close(self) {
        if let Source::DataDir { store, writer, .. } = self {
            drop(store);
            writer.join();
        }
    }
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("a history store task failed")?
        .context("reading the history store")
}

/// The ops token for HTTP calls: `--token`, or one minted from `--secret` for the next hour.
///
/// # Errors
/// When neither is given, saying what to pass (or to go offline with `--data-dir`).
pub fn ops_token(global: &GlobalArgs) -> anyhow::Result<String> {
    if let Some(token) = global
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Ok(token.to_string());
    }
    if let Some(secret) = global.secret.as_deref().filter(|s| !s.is_empty()) {
        let keys = trackline_core::auth::TokenKeys::new(secret.as_bytes());
        return Ok(keys.mint(&Role::Ops, DEFAULT_TTL_S.min(3600)));
    }
    bail!(
        "this needs an ops token: pass --token (or set TRACKLINE_TOKEN) with one from `trackctl token ops`, \
         or --secret (TRACKLINE_SECRET) to mint it; or read a stopped server's data with --data-dir DIR"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackline_core::LatLon;

    #[test]
    fn order_detail_reads_the_ops_answer() {
        let json = serde_json::json!({
            "order_id": "o-1", "status": "picked_up", "courier_id": "c-1",
            "destination": {"lat": 45.0, "lon": 13.0}, "position": null, "eta": null,
            "offset": 3, "epoch": "00000000000000aa", "updated_at_ms": 10,
            "route": [[45.1, 13.1], [45.0, 13.0]],
            "rejected": {"impossible_speed": 2},
            "status_log": [{"status": "assigned", "at_ms": 1}, {"status": "picked_up", "at_ms": 5}]
        });
        let detail: OrderDetail = serde_json::from_value(json).unwrap();
        assert_eq!(detail.state.order_id.as_str(), "o-1");
        assert_eq!(detail.route_points().unwrap()[1], LatLon::new(45.0, 13.0));
        assert_eq!(detail.rejected.as_ref().unwrap()["impossible_speed"], 2);
        assert_eq!(detail.status_log.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn a_missing_or_foreign_data_dir_is_refused_without_creating_anything() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = format!("{:#}", Source::open_data_dir(&missing).err().unwrap());
        assert!(err.contains("no data dir"), "{err}");
        assert!(!missing.exists());
        let err = format!("{:#}", Source::open_data_dir(dir.path()).err().unwrap());
        assert!(err.contains("not a trackline data dir"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn no_credentials_says_what_to_pass() {
        let global = GlobalArgs {
            server: "http://127.0.0.1:1".into(),
            token: None,
            secret: None,
        };
        let err = ops_token(&global).unwrap_err().to_string();
        assert!(
            err.contains("--token") && err.contains("--data-dir"),
            "{err}"
        );
    }
}
