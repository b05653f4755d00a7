//! A data dir whose filesystem fills up: the node says it is not ready while the history store
//! cannot write, keeps serving reads, loses no acked fix, and is ready again by itself once
//! there is room (no restart, and no fix needed for it to notice).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use trackline_core::LatLon;
use trackline_rest::HealthStatus;
use trackline_tests::{walk, NewOrder, TestServer};

/// A tmpfs of its own (mounting needs root, which CI has), unmounted when dropped.
struct SmallDisk {
    mount: PathBuf,
    _base: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size_mib: u32) -> Result<Self, String> {
        let base = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mount = base.path().join("disk");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(&mount)
            .status()
            .map_err(|e| format!("running mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed ({status}); it needs root"));
        }
        Ok(Self { mount, _base: base })
    }

    fn path(&self) -> &Path {
        &self.mount
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }

    /// Writes a file until the filesystem refuses more.
    fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler()).expect("creating the filler");
        let chunk = vec![0u8; 64 * 1024];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_data())
            .is_ok()
        {}
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("removing the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

async fn stored_seqs(server: &TestServer) -> Vec<u64> {
    server
        .history("o-full")
        .await
        .iter()
        .map(|f| f.seq)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_makes_the_node_unready_until_its_store_can_write_again() {
    let disk = match SmallDisk::mount(32) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED a_full_disk_makes_the_node_unready...: {why}");
            return;
        }
    };
    // The real binary: its metrics are its own (in-process servers share one recorder), and its
    // log is on the same full disk, as a log file on the data volume would be: a log line that
    // cannot be written is lost, not the server.
    let mut server = TestServer::start_binary_in(disk.path(), &[]);
    let start = LatLon::new(48.8466, 2.4350);
    let order = NewOrder::new("o-full", LatLon::new(48.85, 2.44)).courier("c-full");
    server.create_order(&order).await;
    let fixes = walk(start, 1, 300);

    let mut courier = server.courier("c-full").await;
    courier.send(&fixes[..20]).await;
    courier.wait_ack(20).await;
    let (status, health) = server.readiness().await;
    assert_eq!((status, health.status), (200, HealthStatus::Ready));
    assert_eq!(server.metric("trackline_store_write_failing").await, 0.0);

    disk.fill();
    // A log segment's last page may still take a few groups; then a write fails. Fixes the
    // store cannot write are never acked (the session closes with 1011 instead).
    let failing_since = Instant::now();
    let mut sent = 20;
    let reason = loop {
        let (status, health) = server.readiness().await;
        if health.status == HealthStatus::StoreFailing {
            assert_eq!(status, 503);
            break health.reason.expect("a failing store says why");
        }
        assert!(
            sent < fixes.len() && failing_since.elapsed() < Duration::from_secs(20),
            "/readyz still {status} {health:?} after {sent} fixes on a full disk"
        );
        let _ = courier.try_send(&fixes[sent..sent + 1]).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("history log"), "{reason}");
    assert_eq!(server.metric("trackline_store_write_failing").await, 1.0);
    eprintln!(
        "full disk: not ready {:?} after the disk filled ({} fixes sent since): {reason}",
        failing_since.elapsed(),
        sent - 20
    );
    // Reads are still served.
    assert!(server.history("o-full").await.len() >= 20);
    drop(courier);

    // Room again: the store finds out by itself (no fix arrives meanwhile).
    disk.free();
    let (status, health, took) = server
        .wait_readiness(HealthStatus::Ready, Duration::from_secs(10))
        .await;
    assert_eq!((status, health.reason), (200, None));
    assert_eq!(server.metric("trackline_store_write_failing").await, 0.0);
    eprintln!("full disk: ready again {took:?} after space was freed");

    // The courier resends everything after the last ack it read (what the server acked
    // meanwhile comes back as duplicates) and the rest of its walk, with no restart: all of it
    // stored once, so no acked fix was lost and the fixes of the failed writes were not taken
    // for resends of stored ones.
    let total = fixes.len() as u64;
    let mut courier = server.courier("c-full").await;
    courier.send(&fixes[20..]).await;
    courier.wait_ack(total).await;
    let all: Vec<u64> = (1..=total).collect();
    assert_eq!(stored_seqs(&server).await, all, "every fix stored once");
    drop(courier);

    // And a restart on the same store, after the log segments that failed: it opens and
    // recovers everything.
    server.restart();
    assert_eq!(
        stored_seqs(&server).await,
        all,
        "every fix there after a restart"
    );
}
