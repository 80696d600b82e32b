//! A real browser: Debian's headless `chromium` driven through
//! `chromedriver` (started here on a free port, in its own process group
//! with a fresh profile) by the `fantoccini` WebDriver client.
//!
//! No browser is a failure, never a skip: `scripts/test.sh` installs
//! `chromium` and `chromium-driver`, and a machine where that failed must
//! not pass the dashboard's tests silently.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use super::T;

/// The flags that work for headless Chromium in containers and CI.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
];

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// A headless Chromium session, killed with its driver on drop.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a Chromium session; panics (loudly, with
    /// what to install) when either is missing.
    pub async fn start() -> Self {
        let driver_bin = on_path("chromedriver").unwrap_or_else(|| {
            panic!(
                "chromedriver not found on PATH: the dashboard is tested in a real browser; \
                 install Debian's chromium and chromium-driver (scripts/test.sh does)"
            )
        });
        let chromium = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|n| on_path(n))
            .unwrap_or_else(|| panic!("chromium not found on PATH: install Debian's chromium"));
        let port = super::free_port();
        let profile =
            std::env::temp_dir().join(format!("flowcast-chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).unwrap();
        let mut cmd = Command::new(&driver_bin);
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: Chromium's processes are killed with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd.spawn().expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({
            "goog:chromeOptions": {"binary": chromium, "args": args},
        });
        let caps = caps.as_object().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            let attempt =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps.clone())
                    .connect(&url)
                    .await;
            match attempt {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    log_retry(&e);
                    actix_rt::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no Chromium session through chromedriver at {url}: {e}"),
            }
        };
        Self {
            client,
            driver,
            profile,
        }
    }

    /// Evaluates `script` (a function body; `return` gives the value).
    pub async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns true.
    pub async fn wait_js(&self, what: &str, script: &str) {
        self.wait_js_within(what, script, T).await
    }

    /// [`Browser::wait_js`] with another deadline.
    pub async fn wait_js_within(&self, what: &str, script: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self
                    .js("return document.body ? document.body.innerText : ''")
                    .await;
                panic!("timed out waiting for {what}; page text:\n{body}");
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element `css` selects.
    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replaces the text of the input `css` selects, by typing.
    pub async fn type_into(&self, css: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        el.clear().await.unwrap();
        el.send_keys(text).await.unwrap();
    }

    /// Ends the session (Chromium exits) and the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

fn log_retry(e: &fantoccini::error::NewSessionError) {
    if std::env::var("FLOWCAST_TEST_ECHO").is_ok() {
        eprintln!("browser: waiting for chromedriver: {e}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pgid = self.driver.id().to_string();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
