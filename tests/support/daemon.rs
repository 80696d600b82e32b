//! The daemon under test: the real `flowcast serve` binary on port 0 against
//! a given Redis, its stderr collected into a log the tests can read, and
//! the ways a process ends (kill -9, a signal, its own exit).
//!
//! The listeners' addresses are read from the daemon's own "listening on"
//! lines, so no port is ever guessed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{repo, Redis};

/// The real daemon, on free ports, killed on drop.
pub struct Daemon {
    child: Child,
    pub api: String,
    pub ws: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `flowcast serve` against `redis` with extra arguments.
    pub fn start(redis: &Redis, extra: &[&str]) -> Self {
        Self::start_with_url(&redis.url(), extra)
    }

    /// Starts `flowcast serve` against the Redis at `redis_url`; the
    /// listeners are on free ports unless `extra` gives `--api-addr` /
    /// `--ws-addr` (a restarted daemon that clients reconnect to).
    pub fn start_with_url(redis_url: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowcast"));
        cmd.arg("serve").args(["--redis-url", redis_url]);
        // Free ports unless the test gives its own (a restart on the same port).
        for flag in ["--api-addr", "--ws-addr"] {
            if !extra.contains(&flag) {
                cmd.args([flag, "127.0.0.1:0"]);
            }
        }
        cmd.arg("--workflows-dir")
            .arg(repo().join("examples/workflows"))
            .args(["--workers", "1"])
            .args(extra)
            .env("RUST_LOG", "info,flowcast_actors=debug")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("daemon binary");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (key, tag) in [("api listening on ", "api"), ("ws listening on ", "ws")] {
                    if let Some(i) = line.find(key) {
                        let _ = tx.send((tag, line[i + key.len()..].trim().to_string()));
                    }
                }
                if std::env::var("FLOWCAST_TEST_ECHO").is_ok() {
                    eprintln!("daemon: {line}");
                }
                log2.lock().unwrap().push(line);
            }
        });
        let role = extra
            .windows(2)
            .find(|w| w[0] == "--role")
            .map(|w| w[1])
            .unwrap_or("all");
        let want_api = role != "fanout";
        let want_ws = role != "runner";
        let (mut api, mut ws) = (String::new(), String::new());
        let deadline = Instant::now() + Duration::from_secs(60);
        while (want_api && api.is_empty()) || (want_ws && ws.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(("api", a)) => api = format!("http://{a}"),
                Ok((_, a)) => ws = format!("ws://{a}"),
                Err(_) => panic!(
                    "daemon did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                ),
            }
        }
        Self {
            child,
            api,
            ws,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's resident memory, KiB (see [`rss_kib`]).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).expect("the daemon's VmRSS")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Whether a log line so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log_count(needle) > 0
    }

    /// How many log lines so far contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).count()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }

    /// Whether the process is still running (it gets 50 ms to show an exit).
    pub fn alive(&mut self) -> bool {
        self.wait_exit(Duration::from_millis(50)).is_none()
    }

    /// The health/metrics base URL (the API listener, or the WS one for fanout-only).
    pub fn http_base(&self) -> String {
        if self.api.is_empty() {
            self.ws.replace("ws://", "http://")
        } else {
            self.api.clone()
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `timeout` for a child process to exit; its status, if it did.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A process's resident memory (VmRSS of /proc/PID/status), KiB; `None`
/// once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Asserts the daemon's log so far shows no panic.
#[track_caller]
pub fn assert_no_panic(d: &Daemon) {
    assert_no_panic_in(&d.log_text());
}

/// Asserts a daemon's output (a log kept from a daemon since dropped, or a
/// process's stderr) shows no panic.
#[track_caller]
pub fn assert_no_panic_in(log: &str) {
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

/// Samples a process's RSS every 10 ms in the background and keeps the
/// highest value seen (tests that bound a daemon's memory).
pub struct PeakRss {
    peak: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sampler: actix_rt::task::JoinHandle<()>,
}

impl PeakRss {
    /// Starts sampling `pid`, from `baseline` KiB.
    pub fn sample(pid: u32, baseline: u64) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let peak = Arc::new(AtomicU64::new(baseline));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let sampler = actix_rt::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                actix_rt::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Self {
            peak,
            stop,
            sampler,
        }
    }

    /// Stops sampling; the highest RSS seen, in KiB.
    pub async fn finish(self) -> u64 {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.await.unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}
