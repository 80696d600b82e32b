//! The evaluator pool: where the daemon sends filters to be run, in
//! sandboxed worker processes (`flowcast jq-worker`, see [`super::worker`])
//! it can kill.
//!
//! A fixed number of slots bounds evaluations at once. Workers are started
//! lazily and kept for reuse (their compiled filters with them). An
//! evaluation takes a slot and a worker; if its future is dropped (the run
//! actor's deadline fired, or the run was cancelled), the worker is killed
//! there and then (`kill_on_drop`) and the slot is free at once, so a filter
//! that never ends costs its own node, never other users' work. A worker
//! that dies mid-request (stack overflow, out of memory, abort) fails that
//! evaluation only; the next one starts a fresh worker.

use std::fmt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use super::wire;

/// Evaluations at once unless configured otherwise.
pub const DEFAULT_SLOTS: usize = 32;

/// How to start a worker: a program and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerCommand {
    /// The program (the daemon's own binary).
    pub program: PathBuf,
    /// Its arguments (`["jq-worker"]`).
    pub args: Vec<String>,
}

impl WorkerCommand {
    /// `<this executable> jq-worker`.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self {
            program: std::env::current_exe()?,
            args: vec!["jq-worker".into()],
        })
    }
}

impl Default for WorkerCommand {
    /// `<this executable> jq-worker`, or `flowcast jq-worker` if the
    /// executable's path is unknown.
    fn default() -> Self {
        Self::current_exe().unwrap_or_else(|_| Self {
            program: "flowcast".into(),
            args: vec!["jq-worker".into()],
        })
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// How to start a worker.
    pub command: WorkerCommand,
    /// Evaluations at once.
    pub slots: usize,
    /// Largest output (JSON text) an evaluation may return.
    pub max_output_bytes: usize,
}

/// Why an evaluation gave no value.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// The filter failed (its error, or its output broke a limit): the same
    /// input fails the same way.
    Filter(String),
    /// The worker died mid-request: the filter went too deep or too large.
    Crashed,
    /// No worker could be started or reached.
    Unavailable(String),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Filter(m) => f.write_str(m),
            Self::Crashed => {
                f.write_str("the filter crashed its sandboxed evaluator (too deep or too large)")
            }
            Self::Unavailable(m) => f.write_str(m),
        }
    }
}

/// A worker process and its pipes. Dropping it kills the process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl Worker {
    async fn send(&mut self, request: &[u8]) -> std::io::Result<()> {
        self.stdin.write_all(request).await?;
        self.stdin.flush().await
    }

    async fn recv(&mut self, max_payload: usize) -> std::io::Result<wire::Reply> {
        let mut len = [0u8; 4];
        self.stdout.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max_payload {
            return Err(std::io::Error::other(format!("a reply of {len} bytes")));
        }
        let mut payload = vec![0u8; len];
        self.stdout.read_exact(&mut payload).await?;
        wire::decode_reply(payload).map_err(std::io::Error::other)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

struct Inner {
    cfg: PoolConfig,
    slots: Arc<Semaphore>,
    idle: Mutex<Vec<Worker>>,
}

/// The evaluator pool; clones share it.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("cfg", &self.inner.cfg)
            .field("free_slots", &self.free_slots())
            .finish()
    }
}

impl Pool {
    /// A pool; no worker starts until one is needed.
    pub fn new(cfg: PoolConfig) -> Self {
        let slots = Arc::new(Semaphore::new(cfg.slots.max(1)));
        Self {
            inner: Arc::new(Inner {
                cfg,
                slots,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Slots not taken by an evaluation.
    pub fn free_slots(&self) -> usize {
        self.inner.slots.available_permits()
    }

    /// Workers waiting for a request.
    pub fn idle_workers(&self) -> usize {
        self.idle().len()
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        // A panic while holding the lock leaves a valid Vec.
        self.inner.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle worker that is still alive.
    fn checkout(&self) -> Option<Worker> {
        let mut idle = self.idle();
        while let Some(mut w) = idle.pop() {
            if w.alive() {
                return Some(w);
            }
        }
        None
    }

    fn checkin(&self, w: Worker) {
        let mut idle = self.idle();
        if idle.len() < self.inner.cfg.slots {
            idle.push(w);
        }
    }

    fn spawn(&self) -> Result<Worker, EvalError> {
        let cmd = &self.inner.cfg.command;
        let unavailable = |e: String| {
            EvalError::Unavailable(format!(
                "cannot start the jq evaluator ({} {}): {e}",
                cmd.program.display(),
                cmd.args.join(" ")
            ))
        };
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .env_clear()
            // Reserve no 1 GiB arena up front: the worker's address-space
            // limit is then a limit on memory it actually maps.
            .env("MIMALLOC_ARENA_RESERVE", "0")
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| unavailable(e.to_string()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(unavailable("no pipes".into()));
        };
        Ok(Worker {
            child,
            stdin,
            stdout,
        })
    }

    /// Runs `filter` on `input` in a worker and returns its first output
    /// (`null` if it yields none). Dropping the future kills the worker.
    pub async fn eval(&self, filter: &str, input: &Value) -> Result<Value, EvalError> {
        let _slot = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| EvalError::Unavailable("the jq evaluator pool is closed".into()))?;
        let max_output = self.inner.cfg.max_output_bytes;
        let input = serde_json::to_vec(input)
            .map_err(|e| EvalError::Filter(format!("the filter's input is not JSON: {e}")))?;
        let request = wire::encode_request(filter, &input, max_output);
        drop(input);
        let max_reply = max_output.saturating_add(wire::REPLY_OVERHEAD_BYTES);

        let mut worker = match self.checkout() {
            Some(mut w) => {
                if w.send(&request).await.is_ok() {
                    w
                } else {
                    // It died while idle: a fresh one gets the request.
                    let mut w = self.spawn()?;
                    w.send(&request).await.map_err(|_| EvalError::Crashed)?;
                    w
                }
            }
            None => {
                let mut w = self.spawn()?;
                w.send(&request).await.map_err(|_| EvalError::Crashed)?;
                w
            }
        };
        let reply = match worker.recv(max_reply).await {
            Ok(r) => r,
            Err(e) => {
                log::info!(
                    "jq evaluator {} died mid-request ({e}); the node fails",
                    worker.child.id().unwrap_or(0)
                );
                return Err(EvalError::Crashed);
            }
        };
        if !reply.retire {
            self.checkin(worker);
        }
        match reply.outcome {
            wire::Outcome::Error(e) => Err(EvalError::Filter(e)),
            wire::Outcome::Output(json) => serde_json::from_slice(&json)
                .map_err(|e| EvalError::Filter(format!("the filter's output is not JSON ({e})"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sh_pool(script: &str, slots: usize) -> Pool {
        Pool::new(PoolConfig {
            command: WorkerCommand {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
            },
            slots,
            max_output_bytes: 1024,
        })
    }

    fn state_of(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 2..].chars().next()
    }

    #[actix_rt::test]
    async fn a_worker_that_dies_mid_request_is_a_crash() {
        let pool = sh_pool("head -c 4 >/dev/null; exit 1", 2);
        let e = pool.eval(".", &serde_json::json!(1)).await.unwrap_err();
        assert_eq!(e, EvalError::Crashed);
        assert!(e.to_string().contains("crashed its sandboxed evaluator"));
        assert_eq!(pool.free_slots(), 2);
        assert_eq!(pool.idle_workers(), 0);
    }

    #[actix_rt::test]
    async fn replies_are_read_and_workers_reused() {
        // A fake worker: reads nothing, answers `1` (kind 0, flags 0), stays.
        let pool = sh_pool(
            "printf '\\000\\000\\000\\003\\000\\000\\061'; exec sleep 1000",
            1,
        );
        assert_eq!(
            pool.eval(".", &serde_json::json!(null)).await,
            Ok(serde_json::json!(1))
        );
        assert_eq!(pool.idle_workers(), 1);
    }

    #[actix_rt::test]
    async fn dropping_an_evaluation_kills_its_worker_and_frees_its_slot() {
        let dir = std::env::temp_dir().join(format!("flowcast-pool-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let script = format!("echo $$ > {}; exec sleep 1000", dir.display());
        let pool = sh_pool(&script, 1);
        let input = serde_json::json!(1);
        let mut eval = Box::pin(pool.eval(".", &input));
        let pid: u32 = loop {
            tokio::select! {
                r = &mut eval => panic!("the fake worker never answers: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    let pid = std::fs::read_to_string(&dir).ok();
                    if let Some(pid) = pid.and_then(|p| p.trim().parse().ok()) {
                        break pid;
                    }
                }
            }
        };
        assert_eq!(pool.free_slots(), 0);
        drop(eval);
        assert_eq!(pool.free_slots(), 1, "the slot is free at once");
        let _ = std::fs::remove_file(&dir);
        // Killed: gone, or a zombie until the runtime reaps it.
        for _ in 0..100 {
            if matches!(state_of(pid), None | Some('Z')) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("worker {pid} still runs: {:?}", state_of(pid));
    }

    #[actix_rt::test]
    async fn a_missing_program_is_unavailable() {
        let pool = Pool::new(PoolConfig {
            command: WorkerCommand {
                program: "/nonexistent/flowcast".into(),
                args: vec![],
            },
            slots: 1,
            max_output_bytes: 10,
        });
        let e = pool.eval(".", &serde_json::json!(1)).await.unwrap_err();
        assert!(
            matches!(e, EvalError::Unavailable(ref m) if m.contains("/nonexistent")),
            "{e:?}"
        );
    }
}
