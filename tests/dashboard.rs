//! The dashboard at `/`: served from the binary with a strict CSP, and
//! used in a real headless Chromium — start a run from the form, watch it
//! live over SSE without a reload, read an output, approve an approval
//! from its button, survive a dropped stream — plus render times of a
//! 500-node DAG and of 1,000 runs.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

/// A small fan-out/fan-in workflow that makes a readable screenshot.
fn demo() -> Value {
    json!({"tag": "trip-planner", "nodes": [
        {"id": "parse", "kind": "transform", "filter": "{city: .inputs.city}"},
        {"id": "flights", "kind": "transform", "depends_on": ["parse"],
         "filter": "[{to: .nodes.parse.city, price: 120}, {to: .nodes.parse.city, price: 95}]"},
        {"id": "hotels", "kind": "delay", "ms": 300, "depends_on": ["parse"]},
        {"id": "weather", "kind": "transform", "depends_on": ["parse"], "filter": "{sunny: true}"},
        {"id": "cheapest", "kind": "transform", "depends_on": ["flights"],
         "filter": ".nodes.flights | min_by(.price)"},
        {"id": "summary", "kind": "transform", "depends_on": ["cheapest", "hotels", "weather"],
         "filter": "\"fly to \\(.nodes.cheapest.to) for \\(.nodes.cheapest.price)\""}
    ]})
}

/// `layers` × `width` nodes; each depends on one or two of the layer before.
fn wide_dag(tag: &str, layers: usize, width: usize) -> Value {
    let mut nodes = Vec::new();
    for l in 0..layers {
        for i in 0..width {
            let mut n = json!({"id": format!("l{l}n{i}"), "kind": "delay", "ms": 0});
            if l > 0 {
                let mut deps = vec![format!("l{}n{i}", l - 1)];
                if i % 3 == 0 {
                    deps.push(format!("l{}n{}", l - 1, (i + 7) % width));
                }
                deps.dedup();
                n["depends_on"] = json!(deps);
            }
            nodes.push(n);
        }
    }
    json!({"tag": tag, "nodes": nodes})
}

/// Where the screenshot goes: `FLOWCAST_SCREENSHOT` if set, else target/.
fn screenshot_path() -> std::path::PathBuf {
    std::env::var_os("FLOWCAST_SCREENSHOT")
        .map(Into::into)
        .unwrap_or_else(|| repo().join("target/dashboard-run.png"))
}

#[actix_rt::test]
async fn the_page_and_its_assets_come_from_the_binary_with_a_strict_csp() {
    let (_redis, d) = start(&[]).await;
    let r = get(&format!("{}/", d.api), None).await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("/ui/app.js"), "{}", r.text);
    let page = awc::Client::new()
        .get(format!("{}/", d.api))
        .send()
        .await
        .unwrap();
    let csp = page
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let events_origin = d.ws.replace("ws://", "http://");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        csp.contains(&format!("connect-src 'self' {events_origin}")),
        "{csp}"
    );
    assert_eq!(
        page.headers().get("referrer-policy").unwrap(),
        "no-referrer"
    );
    for (asset, ct) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("graph.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ] {
        let r = awc::Client::new()
            .get(format!("{}/ui/{asset}", d.api))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset}");
        assert_eq!(r.headers().get("content-type").unwrap(), ct, "{asset}");
    }
    let r = get(&format!("{}/ui/nope.js", d.api), None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "not_found");
    let r = get(&format!("{}/ui/config.json", d.api), None).await;
    assert_eq!(
        r.body,
        json!({"auth": "header", "events_url": format!("{events_origin}/events")})
    );
    // A hostile Host header never reaches the CSP or the config.
    let r = request_with_headers(
        "GET",
        &format!("{}/ui/config.json", d.api),
        &[("Host", b"evil.example;x=y")],
        None,
    )
    .await;
    assert_eq!(r.body["events_url"], Value::Null, "{}", r.text);
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn a_run_started_from_the_form_is_watched_live_in_a_real_browser() {
    let (_redis, d) = start(&[]).await;
    register(&d, "alice", &demo()).await;
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/?username=alice", d.api))
        .await
        .unwrap();
    b.wait_js(
        "the workflows in the form",
        "return !!document.querySelector('#wf-tag option[value=\"flight-search\"]')",
    )
    .await;
    b.wait_js(
        "the live stream",
        "return document.getElementById('live').dataset.state === 'live'",
    )
    .await;
    b.js("window.__sameDocument = true; return null").await;

    // Start flight-search from the form, typing its inputs.
    b.js("document.getElementById('wf-tag').value = 'flight-search'; return null")
        .await;
    b.type_into("#wf-inputs", r#"{"city": "NYC"}"#).await;
    b.click("#start-run").await;
    b.wait_js("the run page", "return location.hash.startsWith('#/runs/')")
        .await;
    b.wait_js(
        "both nodes completed",
        "const s = id => document.querySelector(`[data-node='${id}']`)?.dataset.status; \
         return s('search') === 'completed' && s('format') === 'completed'",
    )
    .await;
    assert_eq!(
        b.js("return window.__sameDocument === true").await,
        json!(true),
        "updated without a reload"
    );
    b.wait_js(
        "the event log",
        "const t = [...document.querySelectorAll('#event-log tbody tr')].map(r => r.dataset.type); \
         return t.length === 4 && t[0] === 'workflow_started' && t[3] === 'workflow_completed'",
    )
    .await;
    b.wait_js(
        "the run's status",
        "return document.getElementById('run-status').textContent === 'completed'",
    )
    .await;
    // An output: click a node, then from the keyboard.
    b.click("[data-node='format']").await;
    b.wait_js(
        "format's output",
        "return document.getElementById('node-output').textContent.includes('1 flights to NYC')",
    )
    .await;
    b.js("document.querySelector(\"[data-node='search']\").focus(); return null")
        .await;
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    b.wait_js(
        "search's output (Enter on the focused node)",
        "return document.getElementById('node-id').textContent === 'search' && \
         document.getElementById('node-output').textContent.includes('\"price\": 120')",
    )
    .await;
    // The event log's type filter.
    b.click("input[value='node_completed']").await;
    assert_eq!(
        b.js("return [...document.querySelectorAll('#event-log tbody tr')].filter(r => !r.hidden).length")
            .await,
        json!(2)
    );
    b.click("input[value='node_completed']").await;

    // The list shows it, with nodes done/total.
    b.click("a[href='#/']").await;
    b.wait_js(
        "the run in the list",
        "const r = document.querySelector('#runs tbody tr'); \
         return !!r && r.cells[2].textContent === 'completed' && r.cells[3].textContent === '2/2'",
    )
    .await;

    // Nothing was loaded from anywhere but the two listeners.
    let urls = b
        .js("return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]")
        .await;
    let allowed = [d.api.clone(), d.ws.replace("ws://", "http://")];
    for u in urls.as_array().unwrap() {
        let u = u.as_str().unwrap();
        assert!(
            allowed.iter().any(|a| u.starts_with(&format!("{a}/"))),
            "the page loaded {u} from outside"
        );
    }

    // A run of a wider workflow for the screenshot (docs/dashboard-run.png).
    b.type_into("#wf-inputs", r#"{"city": "Lisbon"}"#).await;
    b.js("document.getElementById('wf-tag').value = 'trip-planner'; return null")
        .await;
    b.click("#start-run").await;
    b.wait_js(
        "the demo run completed",
        "return document.getElementById('run-status')?.textContent === 'completed' && \
         document.querySelector(\"[data-node='summary']\")?.dataset.status === 'completed'",
    )
    .await;
    b.click("[data-node='summary']").await;
    b.wait_js(
        "summary's output",
        "return document.getElementById('node-output').textContent.includes('fly to Lisbon')",
    )
    .await;
    let png = b.client.screenshot().await.unwrap();
    let path = screenshot_path();
    std::fs::write(&path, png).unwrap();
    eprintln!("dashboard: screenshot saved to {}", path.display());
    b.close().await;
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn an_approval_is_approved_from_its_button_and_the_run_finishes_live() {
    let (_redis, d) = start(&[]).await;
    register(
        &d,
        "alice",
        &json!({"tag": "review", "nodes": [
            {"id": "draft", "kind": "transform", "filter": "{text: \"hello \\(.inputs.who)\"}"},
            {"id": "gate", "kind": "approval", "depends_on": ["draft"],
             "prompt": "\"publish \\(.nodes.draft.text)?\"", "timeout_ms": 600000},
            {"id": "publish", "kind": "transform", "depends_on": ["gate"],
             "when": ".nodes.gate.approved", "filter": "{published: .nodes.draft.text, note: .nodes.gate.comment}"},
            {"id": "discard", "kind": "transform", "depends_on": ["gate"],
             "when": ".nodes.gate.approved | not", "filter": "\"discarded\""}
        ]}),
    )
    .await;
    let run = start_run(&d, "alice", "review", json!({"who": "world"})).await;
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/?username=alice#/runs/{run}", d.api))
        .await
        .unwrap();
    b.wait_js(
        "the live stream",
        "return document.getElementById('live').dataset.state === 'live'",
    )
    .await;
    b.js("window.__sameDocument = true; return null").await;
    b.wait_js(
        "the approval asking, with its prompt",
        "const a = document.querySelector(\"#approvals .approval[data-node='gate']\"); \
         return !!a && a.textContent.includes('publish hello world?') && !!a.querySelector('button.approve')",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector(\"[data-node='gate']\").dataset.status")
            .await,
        json!("approval"),
        "the waiting node is lit as waiting for a decision"
    );
    b.type_into("#comment-gate", "looks good").await;
    b.click("#approvals .approval[data-node='gate'] button.approve")
        .await;
    b.wait_js(
        "gate and publish completed, discard skipped",
        "const s = id => document.querySelector(`[data-node='${id}']`)?.dataset.status; \
         return s('gate') === 'completed' && s('publish') === 'completed' && s('discard') === 'skipped'",
    )
    .await;
    b.wait_js(
        "the run completed",
        "return document.getElementById('run-status').textContent === 'completed'",
    )
    .await;
    b.wait_js(
        "no approval left to decide",
        "return document.getElementById('approvals').textContent.includes('No node is waiting')",
    )
    .await;
    assert_eq!(
        b.js("return window.__sameDocument === true").await,
        json!(true),
        "updated without a reload"
    );
    let types = b
        .js("return [...document.querySelectorAll('#event-log tbody tr')].map(r => r.dataset.type)")
        .await;
    let types: Vec<&str> = types
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "workflow_started",
            "node_completed",
            "approval_required",
            "node_completed",
            "node_skipped",
            "node_completed",
            "workflow_completed"
        ]
    );
    // The decision, as the node's output.
    b.click("[data-node='publish']").await;
    b.wait_js(
        "publish's output",
        "const o = document.getElementById('node-output').textContent; \
         return o.includes('hello world') && o.includes('looks good')",
    )
    .await;
    let view = wait_run(&d, "alice", &run, T).await;
    let gate = node_output(&d, "alice", &view, "gate").await;
    assert_eq!(gate["approved"], true);
    assert_eq!(gate["by"], "alice");
    assert_eq!(gate["comment"], "looks good");
    b.close().await;
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn the_page_says_reconnecting_and_resumes_without_losing_events() {
    let redis = Redis::start();
    let api = format!("127.0.0.1:{}", free_port());
    let ws = format!("127.0.0.1:{}", free_port());
    let args = ["--api-addr", api.as_str(), "--ws-addr", ws.as_str()];
    let mut d = Daemon::start(&redis, &args);
    wait_ready(&d).await;
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/?username=carol", d.api))
        .await
        .unwrap();
    b.wait_js(
        "the live stream",
        "return document.getElementById('live').dataset.state === 'live'",
    )
    .await;
    b.js("window.__sameDocument = true; return null").await;

    d.kill9();
    b.wait_js(
        "the reconnecting notice",
        "return document.getElementById('live').dataset.state === 'reconnecting' && \
         document.getElementById('live').textContent.startsWith('reconnecting')",
    )
    .await;
    // Back on the same addresses; a run happens before the page is back.
    let d = Daemon::start(&redis, &args);
    wait_ready(&d).await;
    let run = start_run(&d, "carol", "flight-search", json!({"city": "Rome"})).await;
    wait_run(&d, "carol", &run, T).await;
    b.wait_js_within(
        "the missed run, completed, after the resume",
        &format!(
            "const r = document.querySelector(\"#runs tr[data-run='{run}']\"); \
             return document.getElementById('live').dataset.state === 'live' && !!r && \
             r.cells[2].textContent === 'completed' && r.cells[3].textContent === '2/2'"
        ),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        b.js("return window.__sameDocument === true").await,
        json!(true)
    );
    b.close().await;
    assert_no_panic(&d);
}

/// Submits `n` runs, waiting out 429s and 503s (quotas, a busy machine).
async fn submit_many(d: &Daemon, user: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let r = post(
            &format!("{}/api/v1/runs", d.api),
            Some(user),
            &json!({"tag": "flight-search", "inputs": {"city": format!("c{}", ids.len())}}),
        )
        .await;
        match r.status {
            202 => ids.push(r.body["run_id"].as_str().unwrap().to_owned()),
            429 | 503 => actix_rt::time::sleep(Duration::from_millis(200)).await,
            s => panic!("submit: {s} {}", r.text),
        }
    }
    ids
}

/// Measures, does not assert: how long the run page takes to render a
/// 500-node DAG, and the runs page a list of 1,000 runs (route start to
/// DOM built, REST calls included). The numbers go to stderr. Then pages
/// through those runs 25 at a time (`next_cursor`), which it does assert.
#[actix_rt::test]
async fn render_times_of_a_500_node_dag_and_a_1000_run_list() {
    // A thousand runs of one user: above the default rate limit.
    let (_redis, d) = start(&["--max-runs-per-sec-per-user", "100000"]).await;
    register(&d, "meas", &wide_dag("wide-500", 25, 20)).await;
    let big = start_run(&d, "meas", "wide-500", json!({})).await;
    wait_run(&d, "meas", &big, Duration::from_secs(120)).await;
    let t0 = Instant::now();
    let ids = submit_many(&d, "meas", 999).await;
    for id in &ids {
        wait_run(&d, "meas", id, Duration::from_secs(120)).await;
    }
    eprintln!(
        "dashboard: 999 runs submitted and finished in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/?username=meas#/runs/{big}", d.api))
        .await
        .unwrap();
    b.wait_js(
        "the 500-node run page",
        "const t = window.flowcastTimings?.runPage; return !!t && t.nodes === 500",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelectorAll('svg.dag [data-status=\"completed\"]').length")
            .await,
        json!(500)
    );
    let run_page = b.js("return window.flowcastTimings.runPage").await;

    b.js("sessionStorage.setItem('flowcast.pageSize', '1000'); location.hash = '#/'; return null")
        .await;
    b.wait_js(
        "the 1,000-run list",
        "const t = window.flowcastTimings?.runList; return !!t && t.rows === 1000",
    )
    .await;
    let run_list = b.js("return window.flowcastTimings.runList").await;

    // Pages of 25 follow next_cursor: every run on exactly one page, newest
    // first, and the last page has no older one.
    b.js(
        "const s = document.getElementById('page-size'); s.value = '25'; \
          s.dispatchEvent(new Event('change')); return null",
    )
    .await;
    let rows = "return [...document.querySelectorAll('#runs tbody tr')].map(r => r.dataset.run)";
    let mut listed: Vec<String> = Vec::new();
    let mut first = String::new();
    loop {
        b.wait_js(
            "a page of runs",
            &format!(
                "const r = document.querySelectorAll('#runs tbody tr'); \
                 return r.length > 0 && r.length <= 25 && r[0].dataset.run !== {first:?}"
            ),
        )
        .await;
        let page: Vec<String> = serde_json::from_value(b.js(rows).await).unwrap();
        assert!(!listed.contains(&page[0]), "a page came twice");
        first = page[0].clone();
        listed.extend(page);
        if b.js("return document.getElementById('runs-older').disabled")
            .await
            == json!(true)
        {
            break;
        }
        b.click("#runs-older").await;
    }
    assert_eq!(listed.len(), 1000, "every run once over the pages");
    let unique: std::collections::HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), 1000);
    assert_eq!(listed.last(), Some(&big), "the oldest run comes last");
    b.click("#runs-newer").await;
    b.wait_js(
        "the page before the last",
        &format!(
            "return document.querySelector('#runs tbody tr')?.dataset.run === {:?}",
            listed[listed.len() - 1 - (listed.len() - 1) % 25 - 25]
        ),
    )
    .await;
    eprintln!(
        "dashboard: run page with a 500-node DAG rendered in {:.0} ms ({run_page}); \
         list of 1,000 runs rendered in {:.0} ms ({run_list})",
        run_page["ms"].as_f64().unwrap(),
        run_list["ms"].as_f64().unwrap()
    );
    b.close().await;
    assert_no_panic(&d);
}

#[actix_rt::test]
async fn jwt_mode_signs_in_with_a_token_that_leaves_the_address_bar() {
    const SECRET: &str = "a-dashboard-secret-of-32-bytes!!";
    let (_redis, d) = start(&["--auth", "jwt", "--jwt-secret", SECRET]).await;
    let token = jwt("dora", SECRET, 600);
    let b = Browser::start().await;
    b.client
        .goto(&format!("{}/?token={token}", d.api))
        .await
        .unwrap();
    b.wait_js(
        "signed in as the token's subject, live",
        "return document.getElementById('user')?.textContent === 'dora' && \
         document.getElementById('live').dataset.state === 'live'",
    )
    .await;
    assert_eq!(
        b.js("return location.search.includes('token')").await,
        json!(false),
        "the token is removed from the URL"
    );
    // Runs started elsewhere show up live, over the token's stream.
    let r = request_with_headers(
        "POST",
        &format!("{}/api/v1/runs", d.api),
        &[("Authorization", format!("Bearer {token}").as_bytes())],
        Some(r#"{"tag": "flight-search", "inputs": {"city": "Oslo"}}"#),
    )
    .await;
    let run = r.body["run_id"].as_str().unwrap().to_owned();
    b.wait_js(
        "the run, completed",
        &format!(
            "const r = document.querySelector(\"#runs tr[data-run='{run}']\"); \
             return !!r && r.cells[2].textContent === 'completed'"
        ),
    )
    .await;

    // A token the server refuses leads back to the sign-in form, saying why.
    b.js("sessionStorage.setItem('flowcast.token', 'not-a-token'); location.reload(); return null")
        .await;
    b.wait_js(
        "the sign-in form with the reason",
        "const f = document.getElementById('identity'); \
         return !!f && f.type === 'password' && document.body.innerText.includes('invalid token')",
    )
    .await;
    b.close().await;
    assert_no_panic(&d);
}
