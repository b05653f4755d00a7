//! `trackctl token` through the real binary: the token alone on stdout, verifiable with the secret.

mod common;

use std::process::{Output, Stdio};

use common::{run, trackctl};

use trackline_core::auth::{Role, TokenKeys};
use trackline_core::{now_ms, CourierId, OrderId};

const SECRET: &str = "test-secret-not-for-production";

/// The token on stdout, checking it is alone on one line.
fn token_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert!(
        stdout.ends_with('\n') && stdout.lines().count() == 1,
        "{stdout:?}"
    );
    stdout.trim_end().to_string()
}

#[test]
fn mints_each_role_verifiable_with_the_secret() {
    let keys = TokenKeys::new(SECRET.as_bytes());
    let cases = [
        (
            vec!["token", "courier", "bike-7"],
            Role::Courier(CourierId::new("bike-7").unwrap()),
        ),
        (
            vec!["token", "watch", "order-42"],
            Role::Watch(OrderId::new("order-42").unwrap()),
        ),
        (vec!["token", "ops"], Role::Ops),
    ];
    for (args, role) in cases {
        let output = run(trackctl(&args).args(["--secret", SECRET]));
        let (verified, exp) = keys.verify(&token_of(&output)).unwrap();
        assert_eq!(verified, role);
        // the default lifetime is a day
        let ttl = exp - now_ms() / 1000;
        assert!((86_390..=86_400).contains(&ttl), "ttl {ttl}");
    }
}

#[test]
fn secret_comes_from_the_environment_and_ttl_takes_units() {
    let output = run(trackctl(&["token", "ops", "--ttl", "90m"]).env("TRACKLINE_SECRET", SECRET));
    let (_, exp) = TokenKeys::new(SECRET.as_bytes())
        .verify(&token_of(&output))
        .unwrap();
    let ttl = exp - now_ms() / 1000;
    assert!((5390..=5400).contains(&ttl), "ttl {ttl}");

    let output =
        run(trackctl(&["token", "--ttl", "30", "courier", "c1"]).env("TRACKLINE_SECRET", SECRET));
    let (_, exp) = TokenKeys::new(SECRET.as_bytes())
        .verify(&token_of(&output))
        .unwrap();
    assert!(exp - now_ms() / 1000 <= 30);
}

#[test]
fn without_a_secret_it_says_how_to_pass_one() {
    let output = run(&mut trackctl(&["token", "ops"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--secret") && stderr.contains("TRACKLINE_SECRET"),
        "{stderr}"
    );
}

#[test]
fn bad_ids_and_ttls_are_errors() {
    for args in [
        &["token", "courier", "no spaces", "--secret", SECRET][..],
        &["token", "watch", "../etc", "--secret", SECRET],
        &["token", "ops", "--ttl", "0", "--secret", SECRET],
        &["token", "ops", "--ttl", "soon", "--secret", SECRET],
        &["token"],
    ] {
        let output = run(&mut trackctl(args));
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn a_closed_stdout_exits_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    // nobody will read: the write fails with EPIPE
    drop(reader);
    let output = trackctl(&["token", "ops", "--secret", SECRET])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
