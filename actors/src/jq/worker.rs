//! `flowcast jq-worker`: a sandboxed evaluator process.
//!
//! The daemon never evaluates a filter itself. A filter can loop forever,
//! allocate without bound or build values so deep that dropping or printing
//! them overflows any stack; none of that can be stopped inside a thread. So
//! evaluation happens here, in a child process the daemon can kill
//! (`pool`): started with an empty environment (but for an allocator
//! setting), `/` as its directory and stderr discarded, it first lowers its
//! own limits (memory, no core dumps, a few open files, no file writes, CPU
//! seconds as a backstop), then serves requests (`wire`) one at a time
//! from stdin until stdin closes.
//!
//! A crash here (stack overflow, out of memory, abort) ends this process
//! only; the daemon sees the pipe close, fails the node and starts another
//! worker. The evaluation runs on a thread with a large stack, so what the
//! pre-parse limits allow compiles and runs without overflowing, and values
//! nested deeper than [`MAX_OUTPUT_DEPTH`] are refused without being printed
//! or dropped (dropping is recursive: the value is leaked and the worker
//! retires instead). The main thread watches the parent: if the daemon dies,
//! the worker returns from `main` and ends, whatever the evaluation is doing.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use jaq_json::Val;
use rlimit::Resource;

use super::engine::{self, Filter};
use super::wire::{self, Outcome, Reply, Request};

/// Stack of the evaluation thread: holds the deepest filter the pre-parse
/// limits allow, and deep (but legitimate) recursion of user definitions.
pub const EVAL_STACK_BYTES: usize = 256 * 1024 * 1024;
/// Memory a worker may map beyond what it has mapped when it starts (its
/// code, its evaluation stack): the address-space limit is set that much
/// above the start. (The pool starts workers with mimalloc's up-front 1 GiB
/// arena reservation off, so that address space measures memory in use.)
const MEMORY_BYTES: u64 = 1024 * 1024 * 1024;
/// Open files of a worker: stdin, stdout, stderr and a few to spare.
const OPEN_FILES: u64 = 8;
/// CPU seconds after which the kernel stops a worker (a backstop: the
/// daemon kills an evaluation at its node's deadline).
const CPU_LIMIT_SECS: u64 = 600;
/// A worker that has used this much CPU retires after its current reply,
/// so that the backstop never cuts a fresh evaluation short.
const CPU_RETIRE_SECS: u64 = CPU_LIMIT_SECS / 2;
/// Clock ticks per second in `/proc/self/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;
/// Deepest output accepted (arrays and objects). serde_json, which the
/// daemon reads outputs with, refuses deeper than 128.
pub const MAX_OUTPUT_DEPTH: usize = 100;
/// Longest error text returned.
const MAX_ERROR_BYTES: usize = 4096;
/// Compiled filters kept before the cache is cleared.
const CACHE_LIMIT: usize = 1024;
/// How often the main thread checks that the daemon is still there.
const PARENT_CHECK: Duration = Duration::from_millis(500);

/// Runs the worker: limits, then requests from stdin until it closes.
pub fn main() -> ExitCode {
    let parent = std::os::unix::process::parent_id();
    let (done, finished) = mpsc::channel();
    let (go, limited) = mpsc::channel::<()>();
    // The evaluation thread's stack is mapped before the limits are
    // lowered, and the thread serves nothing until they are.
    let eval = std::thread::Builder::new()
        .name("jq-eval".into())
        .stack_size(EVAL_STACK_BYTES)
        .spawn(move || {
            if limited.recv().is_ok() {
                let r = serve(&mut io::stdin().lock(), &mut io::stdout().lock());
                let _ = done.send(r.is_ok());
            }
        });
    if eval.is_err() {
        return ExitCode::from(3);
    }
    if lower_limits().is_err() {
        // Unsandboxed evaluation is not an option; the daemon sees this
        // worker exit and fails the node.
        return ExitCode::from(2);
    }
    if go.send(()).is_err() {
        return ExitCode::FAILURE;
    }
    loop {
        match finished.recv_timeout(PARENT_CHECK) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) | Err(mpsc::RecvTimeoutError::Disconnected) => return ExitCode::FAILURE,
            // Reparented: the daemon is gone. Returning ends the process,
            // the evaluation thread with it.
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if std::os::unix::process::parent_id() != parent {
                    return ExitCode::FAILURE;
                }
            }
        }
    }
}

fn lower(resource: Resource, soft: u64, hard: u64) -> io::Result<()> {
    let (_, current_hard) = rlimit::getrlimit(resource)?;
    rlimit::setrlimit(resource, soft.min(current_hard), hard.min(current_hard))
}

/// Lowers this process's limits (soft and hard: the filter cannot raise them
/// back, not that it has a way to try).
fn lower_limits() -> io::Result<()> {
    let mapped = mapped_bytes().unwrap_or(EVAL_STACK_BYTES as u64);
    let address_space = mapped + MEMORY_BYTES;
    lower(Resource::AS, address_space, address_space)?;
    lower(Resource::CORE, 0, 0)?;
    lower(Resource::NOFILE, OPEN_FILES, OPEN_FILES)?;
    lower(Resource::FSIZE, 0, 0)?;
    lower(Resource::CPU, CPU_LIMIT_SECS, CPU_LIMIT_SECS + 10)
}

/// Address space this process has mapped, if `/proc` says.
fn mapped_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds this process has used, if `/proc` says.
fn cpu_secs() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces and parentheses).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Compiled filters by source text. Compiling costs far more than most
/// evaluations, and a workflow's filters come back run after run. Each
/// worker has its own (workers share nothing), owned by its one evaluation
/// thread, so jaq's non-`Send` values stay where they were made.
#[derive(Default)]
struct FilterCache {
    filters: HashMap<String, Rc<Filter>>,
}

impl FilterCache {
    /// The compiled filter for `code`, compiling it (within the pre-parse
    /// limits) if needed.
    fn get(&mut self, code: &str) -> Result<Rc<Filter>, String> {
        if let Some(f) = self.filters.get(code) {
            return Ok(f.clone());
        }
        super::scan::precheck(code)?;
        let f = Rc::new(engine::compile(code)?);
        if self.filters.len() >= CACHE_LIMIT {
            self.filters.clear();
        }
        self.filters.insert(code.to_owned(), f.clone());
        Ok(f)
    }
}

/// Serves requests from `r` until it ends, replying on `w`.
pub fn serve(r: &mut impl Read, w: &mut impl Write) -> io::Result<()> {
    let mut cache = FilterCache::default();
    while let Some(req) = wire::read_request(r)? {
        let mut retire = false;
        let outcome = match evaluate(&mut cache, &req, &mut retire) {
            Ok(json) => Outcome::Output(json),
            Err(e) => Outcome::Error(cut(e)),
        };
        retire |= cpu_secs().is_some_and(|s| s >= CPU_RETIRE_SECS);
        wire::write_reply(w, &Reply { outcome, retire })?;
        if retire {
            break;
        }
    }
    Ok(())
}

/// Evaluates one request: the first output as JSON text, or why not.
fn evaluate(cache: &mut FilterCache, req: &Request, retire: &mut bool) -> Result<Vec<u8>, String> {
    let filter = cache.get(&req.filter)?;
    let input = jaq_json::read::parse_single(&req.input)
        .map_err(|e| format!("the filter's input is not JSON: {e}"))?;
    let out = engine::eval_first(&filter, input)?.unwrap_or(Val::Null);
    if engine::depth_exceeds(&out, MAX_OUTPUT_DEPTH) {
        // Dropping it would recurse as deep as it goes: leak it, and let
        // this worker's exit free the memory.
        std::mem::forget(out);
        *retire = true;
        return Err(format!(
            "output is nested deeper than {MAX_OUTPUT_DEPTH} levels"
        ));
    }
    let mut buf = Bounded {
        buf: Vec::new(),
        limit: req.max_output_bytes,
        over: false,
    };
    match jaq_json::write::write(&mut buf, &jaq_json::write::Pp::default(), 0, &out) {
        Ok(()) => Ok(buf.buf),
        Err(_) if buf.over => Err(format!(
            "output is over {} bytes (--max-output-bytes)",
            req.max_output_bytes
        )),
        Err(e) => Err(format!("writing the output: {e}")),
    }
}

/// A buffer that refuses to grow past `limit` bytes.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    /// A write went past the limit.
    over: bool,
}

impl Write for Bounded {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.buf.len() + b.len() > self.limit {
            self.over = true;
            return Err(io::Error::other("over the limit"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An error text cut to [`MAX_ERROR_BYTES`] at a character boundary.
fn cut(mut e: String) -> String {
    if e.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !e.is_char_boundary(end) {
            end -= 1;
        }
        e.truncate(end);
        e.push('…');
    }
    e
}

/// Evaluates in this process, on a thread like a worker's (for tests).
#[cfg(test)]
pub(crate) fn eval_here(
    filter: &str,
    input: &serde_json::Value,
    max_output_bytes: usize,
) -> Result<serde_json::Value, String> {
    let req = Request {
        max_output_bytes,
        filter: filter.into(),
        input: input.to_string().into_bytes(),
    };
    std::thread::Builder::new()
        .stack_size(EVAL_STACK_BYTES)
        .spawn(move || evaluate(&mut FilterCache::default(), &req, &mut false))
        .map_err(|e| e.to_string())?
        .join()
        .map_err(|_| "the evaluation panicked".to_string())?
        .and_then(|json| serde_json::from_slice(&json).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// Runs requests through `serve` in memory; returns the replies.
    fn ask(reqs: &[(&str, Value, usize)]) -> Vec<Reply> {
        let mut input = Vec::new();
        for (f, v, max) in reqs {
            input.extend(wire::encode_request(f, v.to_string().as_bytes(), *max));
        }
        let mut out = Vec::new();
        // The worker's own big stack: as in `main`.
        std::thread::Builder::new()
            .stack_size(EVAL_STACK_BYTES)
            .spawn(move || {
                serve(&mut input.as_slice(), &mut out).unwrap();
                out
            })
            .unwrap()
            .join()
            .map(|out| {
                let mut replies = Vec::new();
                let mut r = out.as_slice();
                while r.len() >= 4 {
                    let len = u32::from_be_bytes(r[..4].try_into().unwrap()) as usize;
                    replies.push(wire::decode_reply(r[4..4 + len].to_vec()).unwrap());
                    r = &r[4 + len..];
                }
                replies
            })
            .unwrap()
    }

    fn output(r: &Reply) -> Value {
        match &r.outcome {
            Outcome::Output(b) => serde_json::from_slice(b).unwrap(),
            Outcome::Error(e) => panic!("error: {e}"),
        }
    }

    fn error(r: &Reply) -> &str {
        match &r.outcome {
            Outcome::Error(e) => e,
            Outcome::Output(b) => panic!("output: {}", String::from_utf8_lossy(b)),
        }
    }

    #[test]
    fn evaluates_and_reuses_compiled_filters() {
        let big = 1 << 20;
        let r = ask(&[
            (".a + 1", json!({"a": 1}), big),
            (".a + 1", json!({"a": 41}), big),
            ("empty", json!(1), big),
            ("error(\"boom\")", json!(1), big),
            ("[range(10)]", json!(null), 10),
            ("[range(3)]", json!(null), 7),
        ]);
        assert_eq!(output(&r[0]), json!(2));
        assert_eq!(output(&r[1]), json!(42));
        assert_eq!(output(&r[2]), json!(null));
        assert_eq!(error(&r[3]), "\"boom\"");
        assert_eq!(error(&r[4]), "output is over 10 bytes (--max-output-bytes)");
        assert_eq!(output(&r[5]), json!([0, 1, 2]));
        assert!(r.iter().all(|r| !r.retire));
    }

    #[test]
    fn deep_values_are_refused_without_printing_or_dropping() {
        let r = ask(&[
            ("reduce range(100000) as $i (0; [.])", json!(null), 1 << 20),
            ("1", json!(null), 1 << 20),
        ]);
        assert_eq!(r.len(), 1, "the worker retires after leaking");
        assert!(r[0].retire);
        assert!(
            error(&r[0]).contains("nested deeper than 100"),
            "{:?}",
            r[0]
        );
        let ok = ask(&[("reduce range(99) as $i (0; [.])", json!(null), 1 << 20)]);
        assert!(matches!(ok[0].outcome, Outcome::Output(_)));
    }

    #[test]
    fn forbidden_functions_are_refused_here_too() {
        let r = ask(&[
            ("env", json!(null), 1 << 20),
            ("halt", json!(null), 1 << 20),
        ]);
        assert!(error(&r[0]).contains("`env` is not available"));
        assert!(error(&r[1]).contains("`halt` is not available"));
    }

    #[test]
    fn errors_are_cut() {
        let long = "é".repeat(5000);
        assert!(cut(long).len() <= MAX_ERROR_BYTES + '…'.len_utf8());
        assert_eq!(cut("short".into()), "short");
    }
}
