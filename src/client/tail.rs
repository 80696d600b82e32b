//! `flowcast tail`: the caller's events as they happen, filtered by type
//! or run on the server, resumed with `last_event_id` whenever the
//! connection drops (see [`super::follow`]). Runs until Ctrl-C, or until
//! `--count` events were printed.

use serde_json::Value;

use super::args::TailArgs;
use super::error::{exit, Result};
use super::follow::{Filter, Follower, Step};
use super::output::{clean, event_detail, event_tone, Out, Tone};

/// Exit code after Ctrl-C (128 + SIGINT).
const INTERRUPTED: i32 = 130;

/// Runs `flowcast tail`; returns the exit code.
pub async fn tail(args: TailArgs, out: Out) -> Result<i32> {
    let id = super::identity(&args.conn)?;
    let filter = Filter {
        types: args.types.clone(),
        run_id: args.run.clone(),
    };
    let mut follower = Follower::new(&args.conn.ws, &id, &filter)?;
    if let Some(after) = args.last_event_id {
        follower.resume_after(after);
    }
    let mut printed = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let step = tokio::select! {
            s = follower.next() => s?,
            _ = &mut interrupted => return Ok(INTERRUPTED),
        };
        match step {
            Step::Event(ev) => {
                let is_event = ev.get("event_id").is_some();
                print(&ev, out)?;
                if is_event {
                    printed += 1;
                    if args.count.is_some_and(|n| printed >= n) {
                        return Ok(exit::OK);
                    }
                }
            }
            Step::Connected { resumed: false } => out.note(&format!(
                "following events at {}; Ctrl-C stops",
                clean(&args.conn.ws)
            )),
            Step::Connected { resumed: true } => out.note(&format!(
                "reconnected; resuming after {}",
                follower.last_event_id().unwrap_or("the start")
            )),
            Step::Lost { reason, retry_in } => out.note(&format!(
                "connection lost ({reason}); reconnecting in {retry_in:?}"
            )),
            Step::Quiet => {}
        }
    }
}

/// One event: a JSON line, or `RUN TYPE DETAIL`. A server notice (no
/// `event_id`, such as `replay_gap`) goes to stderr as text.
fn print(ev: &Value, out: Out) -> Result<()> {
    let kind = ev.get("type").and_then(Value::as_str).unwrap_or("");
    if out.json {
        return out.json_line(ev);
    }
    if ev.get("event_id").is_none() {
        out.note(&out.paint_err(
            Tone::Warn,
            &format!("{}: {}", clean(kind), event_detail(ev)),
        ));
        return Ok(());
    }
    let run = ev.get("run_id").and_then(Value::as_str).unwrap_or("-");
    let line = format!(
        "{} {} {}",
        out.paint(Tone::Dim, &clean(run)),
        out.paint(event_tone(kind), &format!("{:<18}", clean(kind))),
        event_detail(ev)
    );
    out.line(line.trim_end())
}
