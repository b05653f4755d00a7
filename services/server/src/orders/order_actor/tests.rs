//! The order actor's memory bound.

use super::*;
use crate::metrics::counting;
use futures_util::future::join_all;
use trackline_core::{CourierId, LatLon, OrderId};

/// Stands in for the registry: these orders never change couriers.
struct NoRelinks;

impl Actor for NoRelinks {
    type Context = Context<Self>;
}

impl Handler<Relink> for NoRelinks {
    type Result = ();

    fn handle(&mut self, _: Relink, _: &mut Context<Self>) {}
}

impl Handler<Replan> for NoRelinks {
    type Result = ();

    fn handle(&mut self, _: Replan, _: &mut Context<Self>) {}
}

const START: LatLon = LatLon {
    lat: 48.85,
    lon: 2.35,
};

/// Fix `seq` of a courier riding north-east at ~8 m/s, one fix a second.
fn fix(seq: u64) -> Fix {
    let step = seq as f64 * 6e-5;
    Fix {
        seq,
        time_ms: 1_780_000_000_000 + seq as i64 * 1000,
        pos: LatLon::new(START.lat + step, START.lon + step),
        accuracy_m: Some(5.0),
        speed_mps: Some(8.0),
        heading_deg: Some(34.0),
    }
}

/// What an active order's actor holds (record, filter, ETA, stream with its resume buffer,
/// mailbox), measured with the counting allocator over 1,000 orders that take almost seven
/// minutes of fixes each, compacted every 15 fixes as the server does at one fix a second:
/// the bytes live with the actors running, less those still live once they are gone (what
/// the history store holds for what was written, which outlives the orders; printed too).
#[test]
fn an_active_order_actor_holds_at_most_16_kib() {
    const ORDERS: usize = 1000;
    const FIXES: u64 = 400;
    let _alone = counting::measuring();
    let dir = tempfile::tempdir().unwrap();
    let (per_order, store) = actix::System::new().block_on(async {
        let options = trackline_core::history::StoreOptions {
            cache_bytes: 1024 * 1024,
            ..Default::default()
        };
        let (store, _writer) = HistoryStore::open_with(dir.path(), options).unwrap();
        let settings = Arc::new(OrderSettings {
            arrival_radius_m: 50.0,
            slow_watcher_timeout: Duration::from_secs(10),
            // The courier-silence check, a quarter of this, is what stops an actor whose
            // addresses are all dropped: soon enough to measure what is left without them.
            webhooks: TrackerSettings {
                courier_offline_after: Duration::from_millis(400),
                ..Default::default()
            },
            ..Default::default()
        });
        let registry = NoRelinks.start();
        let deps = OrderDeps {
            store: store.clone(),
            relinks: registry.clone().recipient(),
            replans: registry.recipient(),
            settings,
            approaches: Default::default(),
        };
        // A courier each, as in a fleet: orders of one courier would share their estimates.
        let couriers: Vec<_> = (0..ORDERS)
            .map(|i| CourierId::new(&format!("courier-m-{i}")).unwrap())
            .collect();
        let destination = LatLon::new(START.lat + 0.05, START.lon + 0.05);
        let before = counting::live_bytes();
        let mut actors = Vec::new();
        for (i, courier) in couriers.iter().enumerate() {
            let record = OrderRecord::new(
                OrderId::new(&format!("order-m-{i}")).unwrap(),
                destination,
                Some(courier.clone()),
                Some(vec![START, destination]),
                None,
                now_ms(),
            );
            assert!(store.create_order(record.clone()).await.unwrap());
            actors.push(OrderActor::new(record, deps.clone()).start());
        }
        let mut per_order = vec![(counting::live_bytes() - before) / ORDERS as isize];
        for seq in 1..=FIXES {
            let fixes: Arc<[Fix]> = vec![fix(seq)].into();
            let reports = join_all(actors.iter().zip(&couriers).map(|(actor, courier)| {
                actor.send(Ingest {
                    courier: courier.clone(),
                    fixes: fixes.clone(),
                    invalid: Vec::new().into(),
                    clock_offset_ms: 0,
                })
            }))
            .await;
            for report in reports {
                let report = report.unwrap();
                assert_eq!((report.stored, report.failed), (1, None), "fix {seq}");
            }
            if seq % 15 == 0 {
                store.compact_now().unwrap();
            }
            if seq % 100 == 0 {
                let bytes = counting::live_bytes() - before;
                per_order.push(bytes / ORDERS as isize);
            }
        }
        drop(actors);
        // The actors stop once their addresses are gone, at their next silence check on this
        // thread: let them (a check comes every 100 ms).
        actix_rt::time::sleep(Duration::from_millis(500)).await;
        let left = (counting::live_bytes() - before) / ORDERS as isize;
        (per_order, left)
    });
    let actor = per_order.last().unwrap() - store;
    eprintln!(
        "bytes per active order after 0, 100, 200, 300, 400 fixes: {per_order:?}; \
         the store's of them: {store}; the actor's: {actor}"
    );
    assert!(actor <= 16 * 1024, "{actor} bytes per order actor");
    assert!(
        actor > 0,
        "the actors were measured: {per_order:?}, {store}"
    );
}
