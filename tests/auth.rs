//! `--auth jwt`: REST takes `Authorization: Bearer`, the WebSocket `?token=`;
//! the username is the token's subject and a mismatching `username` is
//! refused.

use std::time::Duration;

use crate::support::*;

/// The daemon's `--jwt-secret` in these tests (and in `cli`'s).
pub const SECRET: &str = "a-test-secret-of-32-bytes-length";

async fn call(method: &str, url: &str, bearer: Option<&str>, body: Option<&str>) -> Resp {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &[u8])> = auth
        .iter()
        .map(|a| ("Authorization", a.as_bytes()))
        .collect();
    request_with_headers(method, url, &headers, body).await
}

#[actix_rt::test]
async fn rest_needs_a_valid_token_and_the_subject_is_the_user() {
    let (_redis, d) = start(&["--auth", "jwt", "--jwt-secret", SECRET]).await;
    let runs = format!("{}/api/v1/runs", d.api);
    let body = r#"{"tag": "flight-search", "inputs": {"city": "NYC"}}"#;

    // The header mode's identity is not enough.
    let r = request("POST", &runs, Some("alice"), Some(body)).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Bearer"));
    for (bad, why) in [
        (
            jwt("alice", "another-secret-of-32-bytes-length", 60),
            "signature",
        ),
        (jwt("alice", SECRET, -120), "expired"),
        ("not.a.token".to_owned(), "malformed"),
    ] {
        let r = call("POST", &runs, Some(&bad), Some(body)).await;
        assert_eq!(r.status, 401, "{why}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "unauthorized", "{why}");
    }

    let alice = jwt("alice", SECRET, 600);
    let r = call("POST", &runs, Some(&alice), Some(body)).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let run_id = r.body["run_id"].as_str().unwrap().to_owned();
    let run_url = format!("{runs}/{run_id}");
    let deadline = std::time::Instant::now() + T;
    loop {
        let r = call("GET", &run_url, Some(&alice), None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        if r.body["status"] == "completed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.text);
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // Bob's token does not show Alice's run.
    let bob = jwt("bob@example.com", SECRET, 600);
    assert_eq!(call("GET", &run_url, Some(&bob), None).await.status, 404);
}

#[actix_rt::test]
async fn websocket_takes_the_token_and_refuses_a_mismatching_username() {
    let (_redis, d) = start(&["--auth", "jwt", "--jwt-secret", SECRET]).await;
    let alice = jwt("alice", SECRET, 600);

    for (query, status) in [
        ("/ws?username=alice".to_owned(), 401),
        (
            format!(
                "/ws?token={}",
                jwt("alice", "another-secret-of-32-bytes-length", 60)
            ),
            401,
        ),
        (format!("/ws?username=bob&token={alice}"), 403),
    ] {
        let url = format!("{}{query}", d.ws);
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status, "{query}")
            }
            other => panic!(
                "{query}: expected HTTP {status}, got {:?}",
                other.map(|_| ())
            ),
        }
    }

    let mut ws = ws_connect(&d, &format!("/ws?token={alice}")).await;
    let mut same = ws_connect(&d, &format!("/ws?username=alice&token={alice}")).await;
    wait_ready(&d).await;
    let r = call(
        "POST",
        &format!("{}/api/v1/runs", d.api),
        Some(&alice),
        Some(r#"{"tag": "flight-search", "inputs": {"city": "Oslo"}}"#),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text);
    for socket in [&mut ws, &mut same] {
        let ev = ws_take(socket, 4, T).await;
        assert_eq!(ev[0]["type"], "workflow_started");
        assert_eq!(ev[3]["type"], "workflow_completed");
        assert!(ev.iter().all(|e| e["run_id"] == r.body["run_id"]));
    }
}

#[test]
fn jwt_mode_without_a_secret_refuses_to_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowcast"))
        .args([
            "serve",
            "--auth",
            "jwt",
            "--api-addr",
            "127.0.0.1:0",
            "--ws-addr",
            "127.0.0.1:0",
        ])
        .args(["--redis-url", "redis://127.0.0.1:1"])
        .env_remove("FLOWCAST_JWT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--jwt-secret"), "{err}");
}
