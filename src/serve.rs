//! The daemon as a library function: [`serve`] wires the actors and
//! listeners together and runs until its shutdown token fires, then drains.
//!
//! Start-up fails fast and says why (Redis unreachable: which URL and what to
//! run). Shutdown (the binary fires the token on SIGTERM/SIGINT; tests may
//! fire it themselves) drains: stop accepting runs and connections, let
//! running work finish (what does not finish is durable and resumes on the
//! next start), flush the Publisher, close every session with 1001, return
//! Ok, all within the grace period, even with Redis down.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Arbiter, Supervisor};
use actix_web::{App, HttpServer};
use anyhow::{bail, Context};
use flowcast_actors::metrics::Metrics;
use flowcast_actors::publisher::Publisher;
use flowcast_actors::registry;
use flowcast_actors::runner::{Drain, Runner, RunnerConfig};
use flowcast_actors::store::leases::Presence;
use flowcast_actors::store::{self, requests, workflows, Retention};
use flowcast_actors::subscriber::{CloseAllSessions, Subscriber};
use flowcast_web::auth::{Auth, JwtVerifier};
use flowcast_web::dashboard::DashboardConfig;
use flowcast_web::{AppState, WsConfig};
use tokio_util::sync::CancellationToken;

use crate::config::{AuthMode, ServeConfig};

/// Default workflows folder, used when present and none is configured.
const DEFAULT_WORKFLOWS_DIR: &str = "examples/workflows";
/// How long a Redis command may take before it counts as failed.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Time the HTTP servers get to finish requests after a drain (at most).
const SERVER_SHUTDOWN: Duration = Duration::from_secs(5);
/// How long a WebSocket handshake request may take to arrive.
const WS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time the sessions' close frames get to reach the sockets.
const CLOSE_FLUSH: Duration = Duration::from_millis(200);

fn workflows_dir(cfg: &ServeConfig) -> anyhow::Result<Option<PathBuf>> {
    match &cfg.workflows_dir {
        Some(d) if d.is_dir() => Ok(Some(d.clone())),
        Some(d) => bail!("--workflows-dir {} is not a directory", d.display()),
        None => Ok(Some(PathBuf::from(DEFAULT_WORKFLOWS_DIR)).filter(|d| d.is_dir())),
    }
}

fn listener(addr: SocketAddr, reuse_port: bool) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Runs the daemon until `shutdown` fires, then drains it. Must run inside
/// an actix system.
pub async fn serve(cfg: ServeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let auth = match (cfg.auth, &cfg.jwt_secret) {
        (AuthMode::Header, _) => Auth::Header,
        (AuthMode::Jwt, Some(secret)) if secret.len() >= 16 => {
            Auth::Jwt(Arc::new(JwtVerifier::new(secret.as_bytes())))
        }
        (AuthMode::Jwt, _) => {
            bail!("--auth jwt needs --jwt-secret / FLOWCAST_JWT_SECRET of at least 16 bytes")
        }
    };
    let client = redis::Client::open(cfg.redis_url.as_str())
        .with_context(|| format!("--redis-url {:?} is not a Redis URL", cfg.redis_url))?;
    let hint = "start one with scripts/start.sh, or `redis-server --appendonly yes`, or point --redis-url / FLOWCAST_REDIS_URL at a running Redis";
    let redis = match store::connect(&client, Some(REDIS_RESPONSE_TIMEOUT)).await {
        Ok(c) => c,
        Err(e) => bail!("cannot reach Redis at {}: {e}; {hint}", cfg.redis_url),
    };
    if let Err(e) = store::ping(&mut redis.clone()).await {
        bail!(
            "Redis at {} does not answer PING: {e}; {hint}",
            cfg.redis_url
        );
    }
    log::info!("connected to Redis at {}", cfg.redis_url);

    // Bind before any actor starts: a taken port fails start-up cleanly.
    let api_listener = if cfg.role.runs_runner() {
        Some(listener(cfg.api_addr, false)?)
    } else {
        None
    };
    let ws_listener = if cfg.role.runs_fanout() {
        Some(listener(cfg.ws_addr, cfg.reuse_port)?)
    } else {
        None
    };

    let metrics = Metrics::new();
    let ws_cfg = WsConfig::from(&cfg);

    // The runner half works on threads of its own: the Runner and its run
    // actors on one, the Publisher on another, so that node execution and
    // large commits never delay the fan-out (which stays on this thread and
    // its Fanout threads) or each other. Stopped at the end of the drain.
    let mut threads = Vec::new();
    let mut runner = None;
    if cfg.role.runs_runner() {
        requests::ensure_group(&mut redis.clone()).await?;
        if let Some(dir) = workflows_dir(&cfg)? {
            let dags = registry::read_dir(&dir, cfg.max_nodes)?;
            for dag in &dags {
                workflows::put_shared(&mut redis.clone(), dag).await?;
            }
            // Once all are stored: they may run each other as children.
            for dag in &dags {
                let wf = &dag.workflow;
                let shared = workflows::Resolve::Shared;
                if let Err(e) =
                    workflows::check_children(&mut redis.clone(), shared, wf, cfg.max_child_depth)
                        .await?
                {
                    bail!("workflow {:?} in {}: {e}", wf.tag, dir.display());
                }
            }
            log::info!(
                "registered {} shared workflows from {}",
                dags.len(),
                dir.display()
            );
        }
        // Blocking reads get their own connection, with room for the BLOCK time.
        let reader = store::connect(&client, Some(Duration::from_secs(10))).await?;
        let publisher_thread = Arbiter::new();
        let publisher = {
            let (conn, m, keep) = (redis.clone(), metrics.clone(), Retention::from(&cfg));
            Supervisor::start_in_arbiter(&publisher_thread.handle(), move |_| {
                Publisher::new(conn, keep, m)
            })
        };
        let mut rcfg = RunnerConfig::from(&cfg);
        // Filters run in sandboxed children: `<this binary> jq-worker`.
        rcfg.jq_worker = flowcast_actors::jq::WorkerCommand::current_exe()
            .context("cannot find this executable to start jq evaluators")?;
        log::info!(
            "runner instance {} (this process: {})",
            rcfg.holder.instance,
            rcfg.holder
        );
        // Announced before the runner takes any lease: a process of the same
        // instance takes over only leases whose process is not present.
        let presence = Presence::announce(&client, &rcfg.holder)
            .await
            .context("cannot open the runner's presence connection to Redis")?;
        let runner_thread = Arbiter::new();
        // Cancel requests from other instances arrive through the process's
        // one control subscription, `outside::listen` below.
        let (conn, m, sd) = (redis.clone(), metrics.clone(), shutdown.clone());
        runner = Some(Supervisor::start_in_arbiter(
            &runner_thread.handle(),
            move |_| Runner::new(rcfg, conn, reader, publisher, m, sd).with_presence(presence),
        ));
        threads.extend([runner_thread, publisher_thread]);
    }

    let (mut subscriber, mut subscriber_ready) = (None, None);
    if cfg.role.runs_fanout() {
        let sub = Subscriber::new(
            client.clone(),
            cfg.max_sessions_per_user,
            metrics.clone(),
            shutdown.clone(),
        );
        subscriber_ready = Some(sub.ready());
        subscriber = Some(Supervisor::start(move |_| sub));
    }

    let state = AppState {
        redis: redis.clone(),
        runner: runner.clone(),
        subscriber: subscriber.clone(),
        subscriber_ready,
        shutdown: shutdown.clone(),
        limits: (&cfg).into(),
        ws: ws_cfg.clone(),
        next_session: Arc::new(AtomicU64::new(1)),
        metrics,
        auth,
        dashboard: DashboardConfig {
            events_url: cfg.events_url.clone(),
            events_port: match &ws_listener {
                Some(l) => Some(l.local_addr()?.port()),
                None => None,
            },
        },
        waiters: flowcast_actors::outside::Waiters::default(),
    };
    if cfg.role.runs_runner() {
        // The runner's control subscription: wakes long-polling claims and
        // the run actors waiting on the outside, forwards cancel requests.
        actix_rt::spawn(flowcast_actors::outside::listen(
            client.clone(),
            state.waiters.clone(),
            runner.clone(),
            shutdown.clone(),
        ));
    }

    let mut servers = Vec::new();
    if let Some(l) = api_listener {
        let st = state.clone();
        let mut srv =
            HttpServer::new(move || App::new().configure(flowcast_web::configure_api(st.clone())))
                .disable_signals()
                .shutdown_timeout(SERVER_SHUTDOWN.as_secs());
        if let Some(w) = cfg.workers {
            srv = srv.workers(w);
        }
        let srv = srv.listen(l)?;
        for a in srv.addrs() {
            log::info!("api listening on {a}");
        }
        servers.push(srv.run());
    }
    if let Some(l) = ws_listener {
        let st = state.clone();
        let user_timeout = ws_cfg.tcp_user_timeout;
        let mut srv =
            HttpServer::new(move || App::new().configure(flowcast_web::configure_ws(st.clone())))
                .disable_signals()
                .shutdown_timeout(SERVER_SHUTDOWN.as_secs())
                .max_connections(100_000)
                // A connect storm of tens of thousands of handshakes can keep a
                // request head waiting longer than actix's default 5 s (408).
                .client_request_timeout(WS_HANDSHAKE_TIMEOUT)
                .backlog(4096)
                .on_connect(move |conn, _ext| {
                    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                        let _ = tcp.set_nodelay(true);
                        // Cuts a peer that stopped reading, even if its session is stalled.
                        let _ =
                            socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(user_timeout));
                    }
                });
        if let Some(w) = cfg.workers {
            srv = srv.workers(w);
        }
        let srv = srv.listen(l)?;
        for a in srv.addrs() {
            log::info!("ws listening on {a}");
        }
        servers.push(srv.run());
    }
    let handles: Vec<_> = servers.iter().map(|s| s.handle()).collect();
    for s in servers {
        actix_rt::spawn(s);
    }

    shutdown.cancelled().await;
    let grace = cfg.drain_grace();
    let deadline = Instant::now() + grace;
    log::info!("draining (grace {} ms)", grace.as_millis());
    // Every step is bounded by what is left of the grace: whatever is not
    // done by then is durable in Redis or redone on the next start.
    let left = || deadline.saturating_duration_since(Instant::now());
    if let Some(r) = &runner {
        // The runner keeps back part of the grace for the steps below.
        let runner_grace = grace - (grace / 10).min(Duration::from_millis(500));
        let drain = r.send(Drain {
            grace: runner_grace,
        });
        if actix_rt::time::timeout(left(), drain).await.is_err() {
            log::warn!("runner did not drain within the grace");
        }
    }
    if let Some(s) = &subscriber {
        let _ = actix_rt::time::timeout(left(), s.send(CloseAllSessions)).await;
        // Let the close frames reach the sockets.
        actix_rt::time::sleep(CLOSE_FLUSH.min(left())).await;
    }
    for h in handles {
        if actix_rt::time::timeout(left(), h.stop(true)).await.is_err() {
            log::warn!("HTTP connections still open at the end of the grace; closing them");
        }
    }
    for t in threads {
        t.stop();
    }
    log::info!("drained; bye");
    Ok(())
}
