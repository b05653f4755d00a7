//! A real HTTP receiver of webhooks for the tests: a TCP server on 127.0.0.1 speaking just
//! enough HTTP/1.1, that answers 500 for a share of requests, never answers some, can go away
//! for a while (its port closed) and come back on the same port, and verifies each delivery's
//! Standard Webhooks signature with its own HMAC (not the server's code).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the receiver misbehaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The share of requests answered 500.
    pub fail_share: f64,
    /// The share of requests never answered (the connection is held open past the sender's
    /// timeout, then dropped).
    pub hang_share: f64,
    /// Answer 410 Gone to everything.
    pub gone: bool,
}

/// One request the receiver accepted (answered 204).
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: Value,
    pub raw_body: Vec<u8>,
    /// The signature matched the secret's HMAC of `id.timestamp.body`.
    pub verified: bool,
}

#[derive(Default)]
struct Shared {
    received: Vec<Received>,
    /// Every request that reached the receiver, whatever it answered.
    requests: usize,
}

/// The receiver; dropped, it stops.
pub struct Receiver {
    addr: SocketAddr,
    key: Vec<u8>,
    faults: Arc<Mutex<Faults>>,
    shared: Arc<Mutex<Shared>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

/// How long a request that is never answered is held (past the sender's 10 s timeout).
const HANG_FOR: Duration = Duration::from_secs(12);

impl Receiver {
    /// Starts a receiver verifying with `secret` (`whsec_` + base64).
    pub async fn start(secret: &str, faults: Faults) -> Self {
        let key = STANDARD
            .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
            .expect("base64 secret");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let mut receiver = Self {
            addr,
            key,
            faults: Arc::new(Mutex::new(faults)),
            shared: Arc::default(),
            serving: None,
        };
        receiver.serve(listener);
        receiver
    }

    /// The URL to register.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (key, faults, shared) = (self.key.clone(), self.faults.clone(), self.shared.clone());
        self.serving = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (key, faults, shared) = (key.clone(), faults.clone(), shared.clone());
                connections.spawn(async move {
                    let _ = answer(stream, &key, &faults, &shared).await;
                });
            }
        }));
    }

    /// Goes away: the port is closed, open connections dropped.
    pub fn go_down(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
    }

    /// Comes back on the same port.
    pub async fn come_back(&mut self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }

    /// What was accepted so far, in the order it arrived.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    /// How many requests arrived, whatever the answer.
    pub fn requests(&self) -> usize {
        self.shared.lock().unwrap().requests
    }

    /// Waits until `done` holds for what was accepted, at most `within`; the accepted ones.
    pub async fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "webhooks not all received within {within:?}: got {} of {} requests: {:?}",
                received.len(),
                self.requests(),
                received.iter().map(|r| &r.id).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.go_down();
    }
}

/// The signature Standard Webhooks prescribes, computed here with the hmac crate directly.
pub fn expected_signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

async fn answer(
    mut stream: TcpStream,
    key: &[u8],
    faults: &Mutex<Faults>,
    shared: &Mutex<Shared>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    shared.lock().unwrap().requests += 1;
    let faults = *faults.lock().unwrap();
    let roll: f64 = rand::rng().random();
    let status = if faults.gone {
        "410 Gone"
    } else if roll < faults.hang_share {
        tokio::time::sleep(HANG_FOR).await;
        return Ok(());
    } else if roll < faults.hang_share + faults.fail_share {
        "500 Internal Server Error"
    } else {
        let (id, timestamp, signature) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        );
        let verified = signature == expected_signature(key, &id, &timestamp, &body);
        shared.lock().unwrap().received.push(Received {
            id,
            timestamp,
            signature,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw_body: body,
            verified,
        });
        "204 No Content"
    };
    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}
