//! `trackctl webhooks` through the real binary against a real server: add, list, deliveries,
//! redeliver, rm, and their exit codes.

mod common;
// this binary needs only a running server and trackctl against it
#[allow(dead_code)]
mod live;

use common::{run, stderr_of, stdout_of};
use live::Live;
use serde_json::Value;

#[test]
fn webhooks_are_added_listed_inspected_and_removed() {
    let live = Live::start();
    let added = stdout_of(&mut live.trackctl(&[
        "webhooks",
        "add",
        "http://127.0.0.1:9/hook",
        "--event",
        "order.status",
        "--event",
        "order.eta",
        "--json",
    ]));
    let added: Value = serde_json::from_str(&added).unwrap();
    let id = added["id"].as_str().unwrap().to_string();
    assert!(added["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(
        added["events"],
        serde_json::json!(["order.status", "order.eta"])
    );

    let listed = stdout_of(&mut live.trackctl(&["webhooks", "list"]));
    assert!(
        listed.contains(&id) && listed.contains("order.status,order.eta"),
        "{listed}"
    );
    assert!(!listed.contains(added["secret"].as_str().unwrap()));

    // Nothing failed yet: exit code 1, and redelivering moves nothing.
    let failed = run(&mut live.trackctl(&["webhooks", "deliveries", &id, "--status", "failed"]));
    assert_eq!(failed.status.code(), Some(1), "{}", stderr_of(&failed));
    let redelivered = stdout_of(&mut live.trackctl(&["webhooks", "redeliver", &id]));
    assert!(redelivered.starts_with("0 failed"), "{redelivered}");

    let bad = run(&mut live.trackctl(&["webhooks", "add", "ftp://example.com/"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr_of(&bad).contains("bad_url"), "{}", stderr_of(&bad));

    stdout_of(&mut live.trackctl(&["webhooks", "rm", &id]));
    let gone = run(&mut live.trackctl(&["webhooks", "rm", &id]));
    assert_eq!(gone.status.code(), Some(2));
    assert!(
        stderr_of(&gone).contains("not_found"),
        "{}",
        stderr_of(&gone)
    );
    let none = run(&mut live.trackctl(&["webhooks", "list"]));
    assert_eq!(none.status.code(), Some(1));
}
