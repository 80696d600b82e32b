//! The Redis side of a test: a private redis-server per test (AOF on, so a
//! restart keeps the data), PubSub subscriptions and PUBLISH for exact
//! control of a user's channel, and inspection of what the daemon stored.
//!
//! Every key, channel and hash field comes from
//! `flowcast_actors::store::keys`: the tests check the daemon's real layout,
//! and a renamed key cannot leave a test silently looking elsewhere.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowcast_actors::store::keys;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// A free port below the ephemeral range, where outgoing connections of
/// the tests' clients cannot take it.
fn redis_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 250) as u16 * 40;
    loop {
        let p = base + NEXT.fetch_add(1, Ordering::Relaxed) % 2_000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn redis_server_bin() -> String {
    std::env::var("FLOWCAST_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// A private redis-server with AOF, on a free port, killed on drop.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        // A port can be taken between the probe and redis-server's bind (by
        // another test's daemon or client): try a few.
        for _ in 0..5 {
            let port = redis_port();
            let dir = std::env::temp_dir()
                .join(format!("flowcast-test-redis-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut r = Self {
                port,
                dir,
                child: None,
            };
            if r.spawn() {
                return r;
            }
        }
        panic!("could not start a redis-server on a free port");
    }

    /// Starts redis-server on `self.port`; false if it exited (port taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new(redis_server_bin())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A blocking connection for checks.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Stops the server (its AOF stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data (AOF reloaded).
    pub fn restart(&mut self) {
        self.stop();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server could not restart on port {}", self.port);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// PubSub: what is on a user's channel
// ---------------------------------------------------------------------------

/// A Redis PubSub subscription collecting messages of one channel.
pub struct Sub {
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Sub {
    pub async fn new(redis: &Redis, channel: &str) -> Self {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut ps = client.get_async_pubsub().await.unwrap();
        ps.subscribe(channel).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        actix_rt::spawn(async move {
            let mut s = ps.into_on_message();
            while let Some(m) = s.next().await {
                let p: String = m.get_payload().unwrap();
                if tx.send(serde_json::from_str(&p).unwrap()).is_err() {
                    break;
                }
            }
        });
        Self { rx }
    }

    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        actix_rt::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Collects messages until `n` arrived or the timeout passed.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }
}

/// An async connection for PUBLISH.
pub async fn publisher(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Publishes `event` on `user`'s channel.
pub async fn publish(conn: &mut redis::aio::MultiplexedConnection, user: &str, event: &Value) {
    redis::cmd("PUBLISH")
        .arg(keys::channel(user))
        .arg(event.to_string())
        .query_async::<i64>(conn)
        .await
        .unwrap();
}

/// Publishes `n` padded `node_completed` events in one pipeline, numbering
/// them on from `seq`.
pub async fn publish_padded(
    conn: &mut redis::aio::MultiplexedConnection,
    user: &str,
    run_id: &str,
    seq: &mut u64,
    n: u64,
    pad: &str,
) {
    let mut pipe = redis::pipe();
    for e in padded(run_id, seq, n, pad) {
        pipe.cmd("PUBLISH").arg(keys::channel(user)).arg(e).ignore();
    }
    pipe.query_async::<()>(conn).await.unwrap();
}

/// `n` padded `node_completed` events of `run_id`, numbered on from `seq`.
fn padded(run_id: &str, seq: &mut u64, n: u64, pad: &str) -> Vec<String> {
    (0..n)
        .map(|_| {
            *seq += 1;
            json!({"type": "node_completed", "run_id": run_id, "seq": *seq, "pad": pad}).to_string()
        })
        .collect()
}

/// Like [`publish_padded`], but each event is also appended to the user's
/// history stream first and published with its history id as `event_id`,
/// as the daemon's commit does, so that a client can resume over them.
pub async fn publish_padded_with_history(
    conn: &mut redis::aio::MultiplexedConnection,
    user: &str,
    run_id: &str,
    seq: &mut u64,
    n: u64,
    pad: &str,
) {
    // The commit script's last steps: XADD, then PUBLISH with the id spliced in.
    const SCRIPT: &str = r#"local id = redis.call('XADD', KEYS[1], '*', 'e', ARGV[2])
        redis.call('PUBLISH', ARGV[1], string.sub(ARGV[2], 1, -2) .. ',"event_id":"' .. id .. '"}')
        return id"#;
    let mut pipe = redis::pipe();
    for e in padded(run_id, seq, n, pad) {
        pipe.cmd("EVAL")
            .arg(SCRIPT)
            .arg(1)
            .arg(keys::history(user))
            .arg(keys::channel(user))
            .arg(e)
            .ignore();
    }
    pipe.query_async::<()>(conn).await.unwrap();
}

/// Appends `n` padded `node_completed` events of run `run_id` (seq 1..=n)
/// to `user`'s history, as the commit script stores them (no `event_id`:
/// the reader splices it in), without publishing them.
pub async fn fill_history(
    conn: &mut redis::aio::MultiplexedConnection,
    user: &str,
    run_id: &str,
    n: u64,
    pad: &str,
) {
    for chunk in (1..=n).collect::<Vec<u64>>().chunks(100) {
        let mut pipe = redis::pipe();
        for seq in chunk {
            let e = json!({"type": "node_completed", "run_id": run_id, "seq": seq, "pad": pad});
            pipe.cmd("XADD")
                .arg(keys::history(user))
                .arg("*")
                .arg(keys::HISTORY_FIELD)
                .arg(e.to_string())
                .ignore();
        }
        pipe.query_async::<()>(conn).await.unwrap();
    }
}

/// Subscribers of `user`'s channel.
pub fn numsub(redis: &Redis, user: &str) -> i64 {
    let v: (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(keys::channel(user))
        .query(&mut redis.conn())
        .unwrap();
    v.1
}

/// The `CLIENT LIST` lines of connections in PubSub mode.
fn pubsub_lines(redis: &Redis) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.conn())
        .unwrap();
    list.lines()
        .filter(|l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('P')))
        })
        .map(String::from)
        .collect()
}

/// Connections in PubSub mode serving WebSockets: all of them but the
/// runners' control listeners (subscribed to [`keys::CONTROL`]).
pub fn pubsub_clients(redis: &Redis) -> usize {
    let clients = pubsub_lines(redis).len();
    let control: (String, usize) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(keys::CONTROL)
        .query(&mut redis.conn())
        .unwrap();
    clients - control.1
}

/// Ids of the connections in PubSub mode.
pub fn pubsub_client_ids(redis: &Redis) -> Vec<String> {
    let mut ids: Vec<String> = pubsub_lines(redis)
        .iter()
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(String::from)
        })
        .collect();
    // CLIENT LIST's order is not the connections' age: compare as sets.
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------
// Stored runs
// ---------------------------------------------------------------------------

/// A run's stored status (empty if it has none).
pub fn run_status(conn: &mut redis::Connection, id: &str) -> String {
    let s: Option<String> = redis::cmd("HGET")
        .arg(keys::run(id))
        .arg(keys::field::STATUS)
        .query(conn)
        .unwrap();
    s.unwrap_or_default()
}

/// (status, stored seq, stored events) of a run.
pub fn run_stored(conn: &mut redis::Connection, id: &str) -> (String, u64, u64) {
    let (st, seq, n): (Option<String>, Option<u64>, u64) = redis::pipe()
        .hget(keys::run(id), keys::field::STATUS)
        .hget(keys::run(id), keys::field::SEQ)
        .llen(keys::run_events(id))
        .query(conn)
        .unwrap();
    (st.unwrap_or_default(), seq.unwrap_or(0), n)
}

/// A run's owner lease, if one is held.
pub fn run_owner(conn: &mut redis::Connection, id: &str) -> Option<String> {
    redis::cmd("GET").arg(keys::owner(id)).query(conn).unwrap()
}

/// (node_completed events, finished runs) over `ids`, read from Redis.
pub fn progress(conn: &mut redis::Connection, ids: &[String]) -> (usize, usize) {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.lrange(keys::run_events(id), 0, -1);
    }
    let lists: Vec<Vec<String>> = pipe.query(conn).unwrap();
    let mut nodes = 0;
    let mut runs = 0;
    for l in lists {
        nodes += l
            .iter()
            .filter(|e| e.contains("\"type\":\"node_completed\""))
            .count();
        runs += l
            .iter()
            .filter(|e| e.contains("\"type\":\"workflow_completed\""))
            .count();
    }
    (nodes, runs)
}

/// Run requests delivered to some runner and not acknowledged.
pub fn pending_count(conn: &mut redis::Connection) -> usize {
    let v: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(keys::REQUESTS)
        .arg(keys::GROUP)
        .query(conn)
        .unwrap();
    redis::from_redis_value(v[0].clone()).unwrap()
}

/// The runs a user's active-run quota counts (queued or running).
pub fn user_active_runs(conn: &mut redis::Connection, user: &str) -> Vec<String> {
    redis::cmd("SMEMBERS")
        .arg(keys::user_active(user))
        .query(conn)
        .unwrap()
}

/// Entries ever added to the run-request stream (deleted ones included).
pub fn request_count(conn: &mut redis::Connection) -> usize {
    // Acknowledged requests are deleted: count every entry ever added.
    let info: redis::Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(keys::REQUESTS)
        .query(conn)
        .unwrap();
    let map: std::collections::HashMap<String, redis::Value> =
        redis::from_redis_value(info).unwrap();
    redis::from_redis_value(map["entries-added"].clone()).unwrap()
}

/// Finished runs leave nothing behind: not active, no lease.
pub fn assert_clean(conn: &mut redis::Connection, ids: &[String]) {
    let active: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::ACTIVE)
        .query(conn)
        .unwrap();
    assert!(active.is_empty(), "runs still active: {active:?}");
    for id in ids {
        assert_eq!(run_owner(conn, id), None, "finished run {id} still leased");
    }
}
