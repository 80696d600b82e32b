//! The command-line client: the real `flowcast` binary against the real
//! daemon, as a person at a terminal (a pseudo-terminal from `script`) and
//! as a script (pipes, `--json`, exit codes) use it, with the worst inputs
//! a hostile or careless user can type.

use std::process::Stdio;

use serde_json::{json, Value};

use crate::support::*;

/// The seed's event sequence for flight-search.
const SEED_TYPES: [&str; 4] = [
    "workflow_started",
    "node_completed",
    "node_completed",
    "workflow_completed",
];

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// Terminal control sequences a hostile tenant would like to reach
/// someone's terminal: clear screen, set the window title, bell, carriage
/// return, right-to-left override.
const HOSTILE: &str = "bad \u{1b}[2J\u{1b}]0;owned\u{7}\r\u{202e} thing";

/// A workflow whose node `a` outputs [`HOSTILE`]; with `fail`, node `b`
/// then fails with it as its error.
fn hostile(tag: &str, fail: bool) -> Value {
    let mut nodes = vec![json!({"id": "a", "kind": "transform", "filter": ".inputs.text"})];
    if fail {
        nodes.push(json!({"id": "b", "kind": "transform", "depends_on": ["a"],
                          "filter": "error(.nodes.a)"}));
    }
    json!({"tag": tag, "nodes": nodes})
}

/// Asserts that no control character (nor a bidi override) is in `text`.
#[track_caller]
fn assert_inert(text: &str) {
    assert!(
        !text.contains(['\u{1b}', '\u{7}', '\r', '\u{202e}']),
        "a control character got through: {text:?}"
    );
}

fn long_delay(tag: &str) -> Value {
    json!({"tag": tag, "nodes": [{"id": "wait", "kind": "delay", "ms": 600_000}]})
}

#[actix_rt::test]
async fn run_follow_prints_each_event_then_the_output_and_exits_0() {
    let (_redis, d) = start(&[]).await;
    let r = cli(
        &d,
        "cleo",
        &["run", "flight-search", "-i", "city=NYC", "--follow"],
    );
    r.assert_code(0);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let kinds: Vec<&str> = lines
        .iter()
        .take(4)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(kinds, SEED_TYPES, "{}", r.stdout);
    assert!(lines[1].contains("search") && lines[1].contains("sha256:"));
    assert!(lines[4].contains("completed"), "{}", r.stdout);
    assert_eq!(lines[5], "format: 1 flights to NYC");
    assert!(!r.stdout.contains('\u{1b}') && !r.stderr.contains('\u{1b}'));
    assert!(r.stderr.contains("queued"), "{}", r.stderr);

    // The same run, and its inputs, as the REST API knows it.
    let id = lines[4].split_whitespace().nth(2).unwrap();
    let view = get(&format!("{}/api/v1/runs/{id}", d.api), Some("cleo")).await;
    assert_eq!(view.body["status"], "completed");
    assert_eq!(view.body["inputs"], json!({"city": "NYC"}));
}

#[actix_rt::test]
async fn run_follow_json_is_the_events_then_the_outputs() {
    let (_redis, d) = start(&[]).await;
    let r = cli(
        &d,
        "cleo",
        &[
            "run",
            "flight-search",
            "--inputs",
            r#"{"city":"Oslo"}"#,
            "-f",
            "--json",
        ],
    );
    r.assert_code(0);
    let lines = r.json_lines();
    assert_eq!(lines.len(), 5, "{}", r.stdout);
    assert_eq!(types(&lines[..4]), SEED_TYPES);
    let seqs: Vec<u64> = lines[..4]
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4], "each event once, in order");
    let last = &lines[4];
    assert_eq!(last["type"], "outputs");
    assert_eq!(last["status"], "completed");
    assert_eq!(last["outputs"], json!({"format": "1 flights to Oslo"}));
    assert_eq!(last["run_id"], lines[0]["run_id"]);

    // Without --follow: the 202 answer, one line.
    let r = cli(&d, "cleo", &["run", "flight-search", "--json"]);
    r.assert_code(0);
    let accepted = r.json_lines();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["status"], "queued");
    // And as text: the run id alone on stdout, for `ID=$(flowcast run ...)`.
    let r = cli(&d, "cleo", &["run", "flight-search"]);
    r.assert_code(0);
    let id = r.stdout.trim();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{:?}", r.stdout);
    wait_run(&d, "cleo", id, T).await;
}

#[actix_rt::test]
async fn a_failed_run_exits_1_and_hostile_text_reaches_no_terminal() {
    let (_redis, d) = start(&[]).await;
    let dir = tempdir("fail");
    for (tag, fail) in [("boom", true), ("loud", false)] {
        let file = dir.join(format!("{tag}.json"));
        std::fs::write(&file, hostile(tag, fail).to_string()).unwrap();
        cli(&d, "mallory", &["workflows", "put", file.to_str().unwrap()]).assert_code(0);
    }
    let text = format!("text={HOSTILE}");

    let r = cli(&d, "mallory", &["run", "boom", "-i", &text, "--follow"]);
    r.assert_code(1);
    assert!(r.stdout.contains("node_failed") && r.stdout.contains("workflow_failed"));
    assert!(r.stdout.contains("failed: node b"), "{}", r.stdout);
    assert_inert(&r.stdout);
    assert_inert(&r.stderr);

    let r = cli(
        &d,
        "mallory",
        &["run", "boom", "-i", &text, "--follow", "--json"],
    );
    r.assert_code(1);
    let lines = r.json_lines();
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "outputs");
    assert_eq!(last["status"], "failed");
    assert_eq!(last["failed_node"], "b");

    // Outputs and inputs are shown, escaped.
    let r = cli(&d, "mallory", &["run", "loud", "-i", &text, "--follow"]);
    r.assert_code(0);
    assert!(r.stdout.contains("a: bad \\u{1b}[2J"), "{}", r.stdout);
    assert_inert(&r.stdout);
    let id = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("✓ run "))
        .unwrap();
    let id = id.split_whitespace().next().unwrap();
    let show = cli(&d, "mallory", &["runs", "show", id]);
    show.assert_code(0);
    assert!(
        show.stdout.contains("inputs   {\"text\":"),
        "{}",
        show.stdout
    );
    assert_inert(&show.stdout);
    // JSON keeps the text exactly (escaped by JSON itself).
    let json = cli(&d, "mallory", &["run", "loud", "-i", &text, "-f", "--json"]);
    assert_eq!(json.json_lines().last().unwrap()["outputs"]["a"], HOSTILE);
}

#[actix_rt::test]
async fn cancel_ends_a_followed_run_which_exits_1() {
    let (_redis, d) = start(&[]).await;
    register(&d, "hank", &long_delay("long")).await;
    let follow = CliProc::spawn(&d, "hank", &["run", "long", "--follow", "--json"]);
    let started = follow.next_json();
    assert_eq!(started["type"], "workflow_started");
    let id = started["run_id"].as_str().unwrap().to_owned();

    let r = cli(&d, "ivan", &["cancel", &id]);
    r.assert_code(4);
    assert!(
        r.stderr.contains("not_found"),
        "another user's run: {}",
        r.stderr
    );

    let r = cli(&d, "hank", &["cancel", &id]);
    r.assert_code(0);
    assert_eq!(r.stdout.trim(), format!("run {id} cancelled"));
    let (code, rest) = follow.wait();
    assert_eq!(code, 1, "{rest:?}");
    let rest: Vec<Value> = rest
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(types(&rest), ["workflow_cancelled", "outputs"]);
    assert_eq!(rest[1]["status"], "cancelled");

    // Again: it already is (200); a completed run cannot be (409).
    cli(&d, "hank", &["cancel", &id]).assert_code(0);
    let done = start_run(&d, "hank", "flight-search", json!({})).await;
    wait_run(&d, "hank", &done, T).await;
    let r = cli(&d, "hank", &["cancel", &done]);
    r.assert_code(4);
    assert!(r.stderr.contains("run_finished"), "{}", r.stderr);
    assert!(r.stderr.contains("HTTP 409"), "{}", r.stderr);
}

#[actix_rt::test]
async fn approve_reject_and_signal_show_the_servers_error_code_and_message() {
    let (_redis, d) = start(&[]).await;
    let run = start_run(&d, "nina", "flight-search", json!({})).await;
    wait_run(&d, "nina", &run, T).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    for args in [
        vec!["approve", &unknown, "gate", "--comment", "ok"],
        vec!["reject", &unknown, "gate"],
        vec!["signal", &unknown, "go", r#"{"n": 1}"#],
        vec!["approve", &run, "no-such-node"],
        vec!["signal", &run, "go"],
    ] {
        let r = cli(&d, "nina", &args);
        r.assert_code(4);
        // `error: <code>: <message> (HTTP <status>)`, the server's words.
        let first = r.stderr.lines().next().unwrap_or_default();
        let (code, rest) = first
            .strip_prefix("error: ")
            .and_then(|l| l.split_once(": "))
            .unwrap_or_else(|| panic!("{args:?}: {}", r.stderr));
        assert!(!code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        assert!(
            rest.ends_with(')') && rest.contains("(HTTP 4"),
            "{args:?}: {}",
            r.stderr
        );
    }
    // A payload that is not JSON never leaves the machine.
    let r = cli(&d, "nina", &["signal", &run, "go", "{not json"]);
    r.assert_code(2);
    assert!(r.stderr.contains("not JSON"), "{}", r.stderr);
}

/// A workflow that waits for a decision on `gate`, then branches on it:
/// approved, `paid` waits for the signal `paid`; rejected, `refused`
/// outputs the decision's comment.
fn gated(tag: &str) -> Value {
    json!({"tag": tag, "nodes": [
        {"id": "gate", "kind": "approval", "prompt": "\"ship \\(.inputs.item)?\""},
        {"id": "paid", "kind": "signal", "name": "paid", "depends_on": ["gate"],
         "when": ".nodes.gate.approved"},
        {"id": "refused", "kind": "transform", "depends_on": ["gate"],
         "when": ".nodes.gate.approved | not", "filter": ".nodes.gate.comment"}
    ]})
}

#[actix_rt::test]
async fn approve_and_signal_take_a_followed_run_through_its_waits_to_exit_0() {
    let (_redis, d) = start(&[]).await;
    register(&d, "olga", &gated("gated")).await;
    let follow = CliProc::spawn(&d, "olga", &["run", "gated", "-i", "item=book", "--follow"]);
    // The follower shows what is asked, and the command that answers it.
    let asked = loop {
        let line = follow.next_line();
        if line.starts_with("approval_required") {
            break line;
        }
    };
    assert!(
        asked.contains("gate: ship book? (flowcast approve|reject "),
        "{asked}"
    );
    let hint = asked
        .split_once("(flowcast approve|reject ")
        .map(|(_, h)| h.trim_end_matches(')'))
        .unwrap_or_else(|| panic!("no hint in {asked:?}"));
    let (run, node) = hint.split_once(' ').unwrap();
    assert_eq!(node, "gate");
    assert!(uuid::Uuid::parse_str(run).is_ok(), "{asked}");

    let r = cli(
        &d,
        "olga",
        &["approve", run, "gate", "--comment", "ship it"],
    );
    r.assert_code(0);
    assert_eq!(r.stdout.trim(), format!("gate approved in run {run}"));
    // Decided once: a second decision is the server's 409.
    let again = cli(&d, "olga", &["reject", run, "gate"]);
    again.assert_code(4);
    assert!(
        again.stderr.starts_with("error: already_decided: ") && again.stderr.contains("(HTTP 409)"),
        "{}",
        again.stderr
    );
    // Only the run's owner decides; to anyone else the run does not exist.
    cli(&d, "mallory", &["approve", run, "gate"]).assert_code(4);

    wait_event(&d, "olga", run, "node_completed", T, |e| {
        e["node_id"] == "gate"
    })
    .await;
    let r = cli(&d, "olga", &["signal", run, "paid", r#"{"amount": 12}"#]);
    r.assert_code(0);
    assert_eq!(r.stdout.trim(), format!("signal paid sent to run {run}"));
    // Taken once: again is a 409 (already signalled, or the run it
    // completed has ended by now).
    let again = cli(&d, "olga", &["signal", run, "paid", "{}"]);
    again.assert_code(4);
    assert!(
        ["already_signalled", "run_finished"]
            .iter()
            .any(|c| again.stderr.starts_with(&format!("error: {c}: "))),
        "{}",
        again.stderr
    );

    let (code, rest) = follow.wait();
    assert_eq!(code, 0, "{rest:?}");
    let run_view = wait_run(&d, "olga", run, T).await;
    assert_eq!(run_view["status"], "completed");
    assert_eq!(run_view["nodes"]["refused"]["status"], "skipped");
    let gate = node_output(&d, "olga", &run_view, "gate").await;
    assert_eq!(
        (&gate["approved"], &gate["by"], &gate["comment"]),
        (&json!(true), &json!("olga"), &json!("ship it"))
    );
    assert_eq!(
        node_output(&d, "olga", &run_view, "paid").await,
        json!({"amount": 12})
    );
}

#[actix_rt::test]
async fn reject_prints_the_decision_as_json_and_the_run_takes_the_other_branch() {
    let (_redis, d) = start(&[]).await;
    register(&d, "olga", &gated("gated")).await;
    let run = start_run(&d, "olga", "gated", json!({"item": "lamp"})).await;
    // Before the approval asks, there is nothing to decide.
    let early = cli(&d, "olga", &["approve", &run, "paid"]);
    early.assert_code(4);
    wait_event(&d, "olga", &run, "approval_required", T, |_| true).await;

    let r = cli(
        &d,
        "olga",
        &[
            "reject",
            &run,
            "gate",
            "--comment",
            "out of stock",
            "--json",
        ],
    );
    r.assert_code(0);
    let answer = r.json_lines();
    assert_eq!(answer.len(), 1, "{}", r.stdout);
    assert_eq!(answer[0]["run_id"], json!(run));
    assert_eq!(answer[0]["node_id"], "gate");
    let decision = &answer[0]["decision"];
    assert_eq!(decision["approved"], false);
    assert_eq!(decision["by"], "olga");
    assert_eq!(decision["comment"], "out of stock");

    let view = wait_run(&d, "olga", &run, T).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["nodes"]["paid"]["status"], "skipped");
    assert_eq!(
        node_output(&d, "olga", &view, "refused").await,
        json!("out of stock")
    );
    // The run has ended: a signal now is refused, and says why.
    let late = cli(&d, "olga", &["signal", &run, "paid"]);
    late.assert_code(4);
    assert!(
        late.stderr.starts_with("error: run_finished: "),
        "{}",
        late.stderr
    );
}

#[actix_rt::test]
async fn signal_reads_its_payload_from_a_file_or_stdin_and_json_prints_the_answer() {
    let (_redis, d) = start(&[]).await;
    let wf = json!({"tag": "two-signals", "nodes": [
        {"id": "a", "kind": "signal", "name": "first"},
        {"id": "b", "kind": "signal", "name": "second"}
    ]});
    register(&d, "pia", &wf).await;
    let run = start_run(&d, "pia", "two-signals", json!({})).await;
    let dir = tempdir("signal-payload");
    let file = dir.join("payload.json");
    std::fs::write(&file, r#"{"from": "file", "n": [1, 2]}"#).unwrap();
    let at = format!("@{}", file.display());
    let r = cli(&d, "pia", &["signal", &run, "first", &at, "--json"]);
    r.assert_code(0);
    let answer = r.json_lines();
    assert_eq!(
        answer,
        [json!({"run_id": run, "signal": "first", "status": "received"})]
    );
    let mut cmd = cli_command(&d, "pia", &["signal", &run, "second", "@-"]);
    let r = run_with_stdin(&mut cmd, r#"{"from": "stdin"}"#);
    r.assert_code(0);
    let view = wait_run(&d, "pia", &run, T).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        node_output(&d, "pia", &view, "a").await,
        json!({"from": "file", "n": [1, 2]})
    );
    assert_eq!(
        node_output(&d, "pia", &view, "b").await,
        json!({"from": "stdin"})
    );
}

#[actix_rt::test]
async fn tail_prints_a_run_started_meanwhile_and_filters_on_the_server() {
    let (_redis, d) = start(&[]).await;
    let all = CliProc::spawn(&d, "tess", &["tail", "--json", "--count", "4"]);
    let done = CliProc::spawn(
        &d,
        "tess",
        &["tail", "--types", "workflow_completed", "--count", "1"],
    );
    all.wait_stderr("following events").await;
    done.wait_stderr("following events").await;
    wait_ready(&d).await; // the fan-out has subscribed the user's channel
    let other = start_run(&d, "someone-else", "flight-search", json!({})).await;
    wait_run(&d, "someone-else", &other, T).await;
    let run = start_run(&d, "tess", "flight-search", json!({"city": "Rome"})).await;

    let events: Vec<Value> = (0..4).map(|_| all.next_json()).collect();
    assert_eq!(types(&events), SEED_TYPES);
    assert!(
        events.iter().all(|e| e["run_id"] == run.as_str()),
        "only tess's events"
    );
    assert_eq!(all.wait().0, 0);

    let line = done.next_line();
    assert!(
        line.starts_with(&format!("{run} workflow_completed")),
        "{line}"
    );
    assert_eq!(done.wait().0, 0);

    let r = cli(&d, "tess", &["tail", "--types", "bogus"]);
    r.assert_code(4);
    assert!(
        r.stderr.contains("invalid_types") && r.stderr.contains("bogus"),
        "{}",
        r.stderr
    );
}

#[actix_rt::test]
async fn tail_resumes_after_a_dropped_connection_with_no_gap_and_no_duplicate() {
    let (_redis, d) = start(&[]).await;
    let proxy = CutProxy::start(d.ws.trim_start_matches("ws://"));
    let mut cmd = cli_command(&d, "ulla", &["tail", "--json", "--count", "8"]);
    cmd.env("FLOWCAST_WS", format!("ws://{}", proxy.addr));
    let tail = CliProc::spawn_command(cmd);
    tail.wait_stderr("following events").await;
    wait_ready(&d).await;

    let first = start_run(&d, "ulla", "flight-search", json!({})).await;
    let before: Vec<Value> = (0..4).map(|_| tail.next_json()).collect();
    assert!(before.iter().all(|e| e["run_id"] == first.as_str()));

    proxy.cut();
    tail.wait_stderr("connection lost").await;
    let second = start_run(&d, "ulla", "flight-search", json!({})).await;
    wait_run(&d, "ulla", &second, T).await; // finished while the client was away
    proxy.reopen();

    let after: Vec<Value> = (0..4).map(|_| tail.next_json()).collect();
    assert!(
        after.iter().all(|e| e["run_id"] == second.as_str()),
        "{after:?}"
    );
    assert_eq!(types(&after), SEED_TYPES);
    let seqs: Vec<u64> = after.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert!(tail.stderr_text().contains("reconnected; resuming after"));
    assert_eq!(tail.wait().0, 0);
}

#[actix_rt::test]
async fn workflows_put_ls_show_run_and_rm() {
    let (_redis, d) = start(&[]).await;
    let dir = tempdir("wf");
    let wf = json!({"tag": "greet", "nodes": [
        {"id": "hello", "kind": "transform", "filter": "\"hello \\(.inputs.name)\""}
    ]});
    let file = dir.join("greet.json");
    std::fs::write(&file, wf.to_string()).unwrap();
    let file = file.to_str().unwrap();
    let w = |args: &[&str]| cli(&d, "wanda", args);

    let r = w(&["workflows", "put", file]);
    r.assert_code(0);
    assert_eq!(r.stdout.trim(), "registered greet (1 node, 1 entry node)");
    assert!(w(&["workflows", "put", file])
        .stdout
        .starts_with("replaced greet"));
    let ls = w(&["workflows", "ls", "--json"]);
    ls.assert_code(0);
    let tags: Vec<Value> = ls.json_lines().iter().map(|l| l["tag"].clone()).collect();
    assert!(tags.contains(&json!("greet")) && tags.contains(&json!("flight-search")));
    assert!(w(&["workflows", "ls"])
        .stdout
        .lines()
        .any(|l| l.trim() == "greet" || l.starts_with("greet ")));
    let show = w(&["workflows", "show", "greet", "--json"]);
    assert_eq!(show.json_lines()[0]["nodes"], wf["nodes"]);

    let r = w(&["run", "greet", "-i", "name=Ada", "--follow"]);
    r.assert_code(0);
    assert!(r.stdout.ends_with("hello: hello Ada\n"), "{}", r.stdout);

    w(&["workflows", "rm", "greet"]).assert_code(0);
    let r = w(&["workflows", "rm", "greet"]);
    r.assert_code(4);
    assert!(r.stderr.contains("not_found"), "{}", r.stderr);

    // Registered under another tag, from stdin.
    let mut cmd = cli_command(&d, "wanda", &["workflows", "put", "-", "--tag", "greet2"]);
    let r = run_with_stdin(&mut cmd, &json!({"nodes": wf["nodes"]}).to_string());
    r.assert_code(0);
    assert!(r.stdout.starts_with("registered greet2"), "{}", r.stdout);

    // A cycle: the server's message names the nodes.
    let cyclic = dir.join("cycle.json");
    std::fs::write(
        &cyclic,
        json!({"tag": "loop", "nodes": [
            {"id": "x", "kind": "delay", "ms": 1, "depends_on": ["y"]},
            {"id": "y", "kind": "delay", "ms": 1, "depends_on": ["x"]}
        ]})
        .to_string(),
    )
    .unwrap();
    let r = w(&["workflows", "put", cyclic.to_str().unwrap()]);
    r.assert_code(4);
    assert!(r.stderr.contains("invalid_workflow"), "{}", r.stderr);
    assert!(r.stderr.contains('x') && r.stderr.contains('y'));

    // Files that are not workflows never reach the daemon.
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not json").unwrap();
    let untagged = dir.join("untagged.json");
    std::fs::write(&untagged, json!({"nodes": []}).to_string()).unwrap();
    for (f, says) in [
        (text.to_str().unwrap(), "not JSON"),
        ("/nonexistent/wf.json", "cannot read"),
        (untagged.to_str().unwrap(), "pass --tag"),
    ] {
        let r = w(&["workflows", "put", f]);
        r.assert_code(2);
        assert!(r.stderr.contains(says), "{f}: {}", r.stderr);
    }
}

#[actix_rt::test]
async fn runs_lists_filters_pages_and_shows_a_run() {
    let (_redis, d) = start(&[]).await;
    let mut ids = Vec::new();
    for city in ["A", "B", "C"] {
        let id = start_run(&d, "rita", "flight-search", json!({"city": city})).await;
        wait_run(&d, "rita", &id, T).await;
        ids.push(id);
    }
    let r = cli(&d, "rita", &["runs", "--json"]);
    r.assert_code(0);
    let listed: Vec<Value> = r.json_lines();
    let listed_ids: Vec<&str> = listed
        .iter()
        .map(|v| v["run_id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed_ids, newest_first);
    assert_eq!(
        cli(&d, "rita", &["runs", "--limit", "2", "--json"])
            .json_lines()
            .len(),
        2
    );
    let completed = cli(&d, "rita", &["runs", "--status", "completed", "--json"]);
    assert_eq!(completed.json_lines().len(), 3);
    assert!(cli(&d, "rita", &["runs", "--status", "failed", "--json"])
        .stdout
        .is_empty());
    assert!(
        cli(&d, "other", &["runs", "--json"]).stdout.is_empty(),
        "only rita's runs"
    );

    let table = cli(&d, "rita", &["runs"]);
    table.assert_code(0);
    assert!(table.stdout.starts_with("RUN"), "{}", table.stdout);
    assert!(table.stdout.contains(&ids[0]));

    let show = cli(&d, "rita", &["runs", "show", &ids[0]]);
    show.assert_code(0);
    assert!(
        show.stdout.contains("status   completed"),
        "{}",
        show.stdout
    );
    let search = show
        .stdout
        .lines()
        .find(|l| l.starts_with("search"))
        .unwrap();
    let cols: Vec<&str> = search.split_whitespace().collect();
    assert_eq!(&cols[..2], ["search", "completed"]);
    assert_eq!(cols[2], "1");
    assert!(cols[3].starts_with("sha256:"));
    let json = cli(&d, "rita", &["runs", "show", &ids[0], "--json"]).json_lines();
    assert_eq!(json[0]["nodes"]["format"]["status"], "completed");
    // Global flags are taken after a nested subcommand and before it.
    assert_eq!(
        cli(&d, "rita", &["runs", "--json", "show", &ids[0]]).json_lines(),
        json
    );
}

#[actix_rt::test]
async fn an_unreachable_daemon_is_named_with_what_to_start() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let api = format!("http://127.0.0.1:{port}");
    let ws = format!("ws://127.0.0.1:{port}");
    for (args, url, flag) in [
        (vec!["runs"], &api, "--api"),
        (vec!["run", "flight-search", "--follow"], &api, "--api"),
        (vec!["workflows", "ls"], &api, "--api"),
        (vec!["tail"], &ws, "--ws"),
    ] {
        let mut cmd = bare_cli(&args);
        cmd.env("FLOWCAST_API", &api)
            .env("FLOWCAST_WS", &ws)
            .env("FLOWCAST_USER", "u");
        let r = run_cli(cmd);
        r.assert_code(3);
        assert!(
            r.stderr
                .contains(&format!("cannot reach the flowcast daemon at {url}")),
            "{}",
            r.stderr
        );
        assert!(
            r.stderr.contains("flowcast serve") && r.stderr.contains(flag),
            "{}",
            r.stderr
        );
    }
}

#[actix_rt::test]
async fn the_progress_bar_is_drawn_on_a_terminal_and_absent_when_piped() {
    let (_redis, d) = start(&[]).await;
    let on_a_terminal = |extra_env: &str, args: &str| {
        let line = format!(
            "{extra_env} '{}' run flight-search -i city=NYC --follow {args}",
            env!("CARGO_BIN_EXE_flowcast")
        );
        let mut cmd = std::process::Command::new("script");
        // -e: script exits with the command's code; the typescript is discarded.
        cmd.args(["-qec", &line, "/dev/null"])
            .env("FLOWCAST_API", &d.api)
            .env("FLOWCAST_WS", &d.ws)
            .env("FLOWCAST_USER", "pty")
            .env("TERM", "xterm")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        run_cli(cmd)
    };
    let tty = on_a_terminal("", "");
    tty.assert_code(0);
    assert!(
        tty.stdout.contains("\u{1b}["),
        "escape codes on a terminal: {:?}",
        tty.stdout
    );
    assert!(tty.stdout.contains("2/2 nodes"), "{:?}", tty.stdout);
    assert!(tty.stdout.contains("format"), "{:?}", tty.stdout);
    assert!(tty.stdout.contains("1 flights to NYC"));
    assert!(
        !tty.stdout.contains("node_completed"),
        "a bar, not event lines"
    );

    // NO_COLOR: the bar is still drawn, without colours.
    let plain = on_a_terminal("NO_COLOR=1", "");
    plain.assert_code(0);
    assert!(plain.stdout.contains("2/2 nodes"));
    for sgr in ["[1m", "[2m", "[31m", "[32m", "[34m", "[36m"] {
        let code = format!("\u{1b}{sgr}");
        assert!(
            !plain.stdout.contains(&code),
            "no colour: {:?}",
            plain.stdout
        );
    }

    // --json on a terminal: JSON lines, no bar.
    let json = on_a_terminal("", "--json");
    json.assert_code(0);
    assert!(!json.stdout.contains('\u{1b}'), "{:?}", json.stdout);

    // Piped: event lines, no escape codes at all.
    let piped = cli(
        &d,
        "pty",
        &["run", "flight-search", "-i", "city=NYC", "--follow"],
    );
    piped.assert_code(0);
    assert!(piped.stdout.contains("node_completed"));
    assert!(!piped.stdout.contains('\u{1b}') && !piped.stderr.contains('\u{1b}'));
}

#[actix_rt::test]
async fn the_worst_input_gets_an_error_that_says_what_is_wrong_never_a_panic() {
    let (_redis, d) = start(&["--max-body-bytes", "65536"]).await;
    let dir = tempdir("hostile");
    let huge = dir.join("huge.json");
    std::fs::write(&huge, json!({"blob": "x".repeat(200_000)}).to_string()).unwrap();
    let huge_arg = format!("@{}", huge.display());
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["run", "flight-search", "-i", "city"],
            2,
            "expected key=value",
        ),
        (vec!["run", "flight-search", "-i", "=x"], 2, "key is empty"),
        (vec!["run", "flight-search", "-i", "n:=nope"], 2, "not JSON"),
        (
            vec!["run", "flight-search", "--inputs", "[1]"],
            2,
            "must be a JSON object",
        ),
        (
            vec!["run", "flight-search", "--inputs", "@/nonexistent"],
            2,
            "cannot read",
        ),
        (
            vec!["run", "flight-search", "--inputs", &huge_arg],
            4,
            "body_too_large",
        ),
        (vec!["run", ""], 2, "value is required"),
        (vec!["run", "../../x?y#z"], 4, "HTTP 4"),
        (vec!["run", "no-such-workflow"], 4, "not_found"),
        (vec!["runs", "--limit", "0"], 2, "0"),
        (
            vec!["runs", "--limit", "99999999999999999999"],
            2,
            "99999999999999999999",
        ),
        (vec!["runs", "--status", "bogus"], 2, "bogus"),
        (vec!["runs", "show", ".."], 4, "invalid_run_id"),
        (vec!["runs", "show", "../../api/v1/workflows"], 4, "HTTP 4"),
        (vec!["runs", "show", "a\u{1}b\u{202e}"], 4, "HTTP 4"),
        (vec!["workflows", "show", "a b"], 4, "invalid_tag"),
        (vec!["tail", "--run", "not-a-uuid"], 4, "invalid_run_id"),
        (
            vec!["tail", "--last-event-id", "garbage"],
            4,
            "invalid_last_event_id",
        ),
        (
            vec!["runs", "--api", "https://127.0.0.1:1"],
            2,
            "https is not supported",
        ),
        (vec!["runs", "--api", "http://[::1"], 2, "--api"),
        (
            vec!["tail", "--ws", "wss://127.0.0.1:1"],
            2,
            "wss is not supported",
        ),
        (
            vec!["tail", "--ws", "http://127.0.0.1:1"],
            2,
            "expected a ws:// URL",
        ),
        (vec!["runs", "--user", "a\u{1b}b"], 2, "--user"),
        (vec!["runs", "--user", ""], 2, "--user"),
        (vec!["runs", "--token", "a b"], 2, "--token"),
        (vec!["completions", "tcsh"], 2, "tcsh"),
        (vec!["bogus"], 2, "bogus"),
    ];
    for (args, code, says) in cases {
        let r = cli(&d, "mallory", &args);
        assert_eq!(r.code, code, "{args:?}: {r:#?}");
        r.assert_clean();
        assert!(
            r.stderr.contains(says),
            "{args:?} should say {says:?}: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }

    // No identity at all.
    let mut cmd = bare_cli(&["runs"]);
    cmd.env("FLOWCAST_API", &d.api);
    let r = run_cli(cmd);
    r.assert_code(2);
    assert!(r.stderr.contains("--user") && r.stderr.contains("FLOWCAST_USER"));

    // A reader that goes away (`| head`): a quiet exit, no panic.
    let mut cmd = cli_command(&d, "mallory", &["workflows", "ls"]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn jwt_tokens_identify_the_caller_on_rest_and_websocket() {
    let secret = crate::auth::SECRET;
    let (_redis, d) = start(&["--auth", "jwt", "--jwt-secret", secret]).await;
    let tok = jwt("jill", secret, 600);
    let mut cmd = bare_cli(&[
        "run",
        "flight-search",
        "-i",
        "city=NYC",
        "--follow",
        "--json",
    ]);
    cmd.env("FLOWCAST_API", &d.api)
        .env("FLOWCAST_WS", &d.ws)
        .env("FLOWCAST_TOKEN", &tok);
    let r = run_cli(cmd);
    r.assert_code(0);
    assert_eq!(
        r.json_lines().last().unwrap()["outputs"]["format"],
        "1 flights to NYC"
    );

    // A user name is no identity in jwt mode: the server's 401, with a hint.
    let r = cli(&d, "jill", &["runs"]);
    r.assert_code(4);
    assert!(
        r.stderr.contains("unauthorized") && r.stderr.contains("--token"),
        "{}",
        r.stderr
    );
    let bad = jwt("jill", "another-secret-of-enough-bytes", 600);
    let mut cmd = bare_cli(&["tail"]);
    cmd.env("FLOWCAST_WS", &d.ws).env("FLOWCAST_TOKEN", &bad);
    let r = run_cli(cmd);
    r.assert_code(4);
    assert!(r.stderr.contains("HTTP 401"), "{}", r.stderr);
}

#[actix_rt::test]
async fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let r = run_cli(bare_cli(&["completions", shell]));
        r.assert_code(0);
        assert!(
            r.stdout.contains("flowcast") && r.stdout.contains("workflows"),
            "{shell}"
        );
    }
}

/// A fresh directory under the target dir for a test's files.
fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowcast-cli-{name}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a command with `input` on its stdin.
fn run_with_stdin(cmd: &mut std::process::Command, input: &str) -> CliRun {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
