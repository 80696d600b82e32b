//! The command-line client under test: the real `flowcast` binary run as a
//! person or a script runs it, pointed at a daemon through the
//! `FLOWCAST_*` environment, its exit code, stdout and stderr collected.
//! [`cli`] runs one command to its end; [`CliProc`] keeps one running
//! (`tail`, `run --follow`) and reads its lines as they come.
//!
//! `RUST_BACKTRACE=1` is set, so that a panic would show in stderr, which
//! [`CliRun::assert_clean`] checks.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Daemon, T};

/// How long one CLI command may take before the test fails.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A finished CLI command.
#[derive(Debug)]
pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// Every stdout line parsed as JSON (panics on a line that is not).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{self:?}"))
            })
            .collect()
    }

    /// Asserts the exit code, and that nothing panicked.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        self.assert_clean();
        assert_eq!(self.code, code, "exit code; {self:#?}");
        self
    }

    /// Asserts that no panic or backtrace reached stderr.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("stack backtrace"),
            "the CLI panicked: {self:#?}"
        );
    }
}

/// `flowcast ARGS` as `user` against `d`'s listeners.
pub fn cli_command(d: &Daemon, user: &str, args: &[&str]) -> Command {
    let mut c = bare_cli(args);
    c.env("FLOWCAST_API", &d.api)
        .env("FLOWCAST_WS", &d.ws)
        .env("FLOWCAST_USER", user);
    c
}

/// `flowcast ARGS` with no daemon settings in the environment.
pub fn bare_cli(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flowcast"));
    c.args(args)
        .env_remove("FLOWCAST_API")
        .env_remove("FLOWCAST_WS")
        .env_remove("FLOWCAST_USER")
        .env_remove("FLOWCAST_TOKEN")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    c
}

/// Runs `flowcast ARGS` as `user` against `d` to its end.
pub fn cli(d: &Daemon, user: &str, args: &[&str]) -> CliRun {
    run_cli(cli_command(d, user, args))
}

/// Runs a prepared command to its end (killed and failed after a minute).
pub fn run_cli(mut cmd: Command) -> CliRun {
    let mut child = spawn_piped(&mut cmd);
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let code = wait_code(&mut child, CLI_TIMEOUT);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let Some(code) = code else {
        panic!("{cmd:?} did not exit within {CLI_TIMEOUT:?}; stdout:\n{stdout}\nstderr:\n{stderr}");
    };
    CliRun {
        code,
        stdout,
        stderr,
    }
}

/// Starts `cmd` with stdout and stderr piped.
fn spawn_piped(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the flowcast binary")
}

fn read_all(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

/// The exit code (a signal death as 128 + signal), or None at the deadline
/// (the process is then killed).
fn wait_code(child: &mut Child, timeout: Duration) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A CLI command left running; killed on drop.
pub struct CliProc {
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl CliProc {
    /// Starts `flowcast ARGS` as `user` against `d`.
    pub fn spawn(d: &Daemon, user: &str, args: &[&str]) -> Self {
        Self::spawn_command(cli_command(d, user, args))
    }

    /// Starts a prepared command.
    pub fn spawn_command(mut cmd: Command) -> Self {
        let mut child = spawn_piped(&mut cmd);
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("piped stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    /// The next stdout line; panics after [`T`].
    pub fn next_line(&self) -> String {
        self.lines
            .recv_timeout(T)
            .unwrap_or_else(|_| panic!("no line from the CLI; stderr:\n{}", self.stderr_text()))
    }

    /// The next stdout line as JSON.
    pub fn next_json(&self) -> Value {
        let line = self.next_line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    /// What the command wrote on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until a stderr line contains `needle`.
    pub async fn wait_stderr(&self, needle: &str) {
        let what = format!("{needle:?} on the CLI's stderr");
        super::wait_until(&what, T, || self.stderr_text().contains(needle)).await;
    }

    /// Waits for the exit; returns the code and the stdout lines not read yet.
    pub fn wait(mut self) -> (i32, Vec<String>) {
        let code = wait_code(&mut self.child, CLI_TIMEOUT)
            .unwrap_or_else(|| panic!("the CLI did not exit; stderr:\n{}", self.stderr_text()));
        let rest: Vec<String> = self.lines.iter().collect();
        let err = self.stderr_text();
        assert!(!err.contains("panicked"), "the CLI panicked:\n{err}");
        (code, rest)
    }
}

impl Drop for CliProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of a listener whose connections the test can cut,
/// and which refuses new ones until reopened: a network drop, as the
/// client sees it.
pub struct CutProxy {
    /// `ip:port` to connect to instead of the target.
    pub addr: String,
    open: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl CutProxy {
    /// A proxy to `target` (`ip:port`), open.
    pub fn start(target: &str) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (o, s, c, target) = (open.clone(), stop.clone(), conns.clone(), target.to_owned());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if !o.load(Ordering::Relaxed) {
                    continue; // dropped: the client sees the connection closed
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server.try_clone().unwrap(), client.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
                c.lock().unwrap().extend([client, server]);
            }
        });
        Self {
            addr,
            open,
            stop,
            conns,
        }
    }

    /// Cuts every connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::Relaxed);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn reopen(&self) {
        self.open.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.cut();
    }
}
