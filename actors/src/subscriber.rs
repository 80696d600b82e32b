//! The Subscriber: the process's one Redis PubSub connection.
//!
//! Shared by every user and session of the process. It SUBSCRIBEs
//! `workflow:events:{user}` when the user's first session joins and
//! UNSUBSCRIBEs when the last one leaves, so an instance receives only the
//! users it serves. Each message goes to that user's [`Fanout`] as shared
//! bytes.
//!
//! When the connection drops (or a periodic PING goes unanswered) it
//! reconnects with exponential backoff and re-subscribes every live channel;
//! sessions stay open meanwhile. The backoff starts over only once the new
//! connection has proved healthy (a message received, or a PING answered
//! with every channel subscribed), not at a bare reconnect. [`Subscriber::ready`] is true only while the
//! connection is up and every live channel is subscribed: connected but deaf
//! never looks healthy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::fanout::{AddSession, CloseAll, Deliver, Fanout, RemoveSession, SessionHandle};
use crate::metrics::Metrics;
use crate::store::keys::{channel, CHANNEL_PREFIX};
use crate::store::CONNECT_TIMEOUT;

/// Most sessions per user per process, unless configured.
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 100;
/// Reconnect delays.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// How often the connection is checked with PING.
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A PING unanswered this long means the connection is dead.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a session could not join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The user already has the maximum number of sessions.
    TooManySessions(usize),
    /// The process is draining: sessions are being closed, none may join.
    ShuttingDown,
}

/// Register a session for its user's events.
#[derive(Message)]
#[rtype(result = "Result<(), JoinError>")]
pub struct Join {
    /// The user.
    pub user: String,
    /// The session.
    pub session: SessionHandle,
}

/// A session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The user.
    pub user: String,
    /// The session's id.
    pub id: u64,
}

/// Close every session with 1001 (drain).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseAllSessions;

struct UserEntry {
    fanout: Addr<Fanout>,
    sessions: std::collections::HashSet<u64>,
}

/// The Subscriber actor.
pub struct Subscriber {
    client: redis::Client,
    sink: Option<PubSubSink>,
    users: HashMap<String, UserEntry>,
    /// Bumped on every (re)connect; messages of older connections are ignored.
    generation: u64,
    stream: Option<SpawnHandle>,
    connecting: bool,
    backoff: Backoff,
    /// Every channel live at the last (re)connect is subscribed.
    resubscribed: bool,
    /// SUBSCRIBEs of new users sent on this connection and not yet confirmed.
    pending: usize,
    /// Fired when the process starts to shut down: no new sessions join.
    shutdown: CancellationToken,
    ready: Arc<AtomicBool>,
    max_sessions_per_user: usize,
    metrics: Metrics,
    /// Threads the Fanout actors run on, one per core: a user's Fanout lives
    /// on the thread its name hashes to, so fan-out work is spread over the
    /// cores instead of sharing this actor's thread.
    fanout_threads: Vec<actix_rt::Arbiter>,
}

/// Picks a Fanout thread for a user (FNV-1a: stable and cheap).
fn thread_of(user: &str, threads: usize) -> usize {
    let h = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    (h % threads.max(1) as u64) as usize
}

impl Subscriber {
    /// A Subscriber on `client`'s server.
    pub fn new(
        client: redis::Client,
        max_sessions_per_user: usize,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            client,
            sink: None,
            users: HashMap::new(),
            generation: 0,
            stream: None,
            connecting: false,
            backoff: BACKOFF,
            resubscribed: false,
            pending: 0,
            shutdown,
            ready: Arc::new(AtomicBool::new(false)),
            max_sessions_per_user,
            metrics,
            fanout_threads: (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
                .map(|_| actix_rt::Arbiter::new())
                .collect(),
        }
    }

    /// True while connected with every live channel subscribed.
    pub fn ready(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Ready only while connected with every live channel subscribed: the
    /// channels live at (re)connect and every new one since.
    fn update_ready(&self) {
        let ready = self.sink.is_some() && self.resubscribed && self.pending == 0;
        self.ready.store(ready, Ordering::SeqCst);
    }

    fn disconnected(&mut self, why: &str, ctx: &mut Context<Self>) {
        self.sink = None;
        self.resubscribed = false;
        self.pending = 0;
        self.update_ready();
        if let Some(h) = self.stream.take() {
            ctx.cancel_future(h);
        }
        let wait = self.backoff.next_delay();
        log::warn!("subscriber: {why}; reconnecting in {wait:?}");
        self.metrics
            .redis_errors
            .with_label_values(&["subscriber"])
            .inc();
        ctx.run_later(wait, |act, ctx| act.connect(ctx));
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        // Already connected (a second failure report scheduled this) or on the way.
        if self.connecting || self.sink.is_some() {
            return;
        }
        self.connecting = true;
        self.generation += 1;
        let gen = self.generation;
        let client = self.client.clone();
        async move {
            let pubsub = actix_rt::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::Io, "connect timed out"))
                })??;
            Ok::<_, redis::RedisError>(pubsub.split())
        }
        .into_actor(self)
        .map(move |r, act, ctx| {
            act.connecting = false;
            match r {
                Ok((sink, stream)) => {
                    if gen > 1 {
                        act.metrics
                            .redis_reconnects
                            .with_label_values(&["subscriber"])
                            .inc();
                        log::info!(
                            "subscriber: reconnected; re-subscribing {} channels",
                            act.users.len()
                        );
                    }
                    let stream = stream
                        .map(Some)
                        .chain(futures_util::stream::once(async { None }))
                        .map(move |m| (gen, m));
                    if let Some(old) = act.stream.replace(ctx.add_stream(stream)) {
                        ctx.cancel_future(old);
                    }
                    act.sink = Some(sink);
                    act.resubscribed = false;
                    act.pending = 0;
                    act.update_ready();
                    act.resubscribe(ctx);
                }
                Err(e) => act.disconnected(&format!("connect failed ({e})"), ctx),
            }
        })
        .spawn(ctx);
    }

    /// Subscribes every live channel on a fresh connection.
    fn resubscribe(&mut self, ctx: &mut Context<Self>) {
        let Some(mut sink) = self.sink.clone() else {
            return;
        };
        let channels: Vec<String> = self.users.keys().map(|u| channel(u)).collect();
        let gen = self.generation;
        async move {
            if !channels.is_empty() {
                sink.subscribe(channels).await?;
            }
            Ok::<_, redis::RedisError>(())
        }
        .into_actor(self)
        .map(move |r, act, ctx| {
            if gen != act.generation || act.sink.is_none() {
                return;
            }
            match r {
                Ok(()) => {
                    act.resubscribed = true;
                    act.update_ready();
                }
                Err(e) => act.disconnected(&format!("subscribe failed ({e})"), ctx),
            }
        })
        .spawn(ctx);
    }

    fn ping(&mut self, ctx: &mut Context<Self>) {
        let Some(mut sink) = self.sink.clone() else {
            return;
        };
        let gen = self.generation;
        async move {
            // While subscribed (RESP2) PING is answered `["pong", ""]`, not `PONG`:
            // any non-error reply means the connection is alive.
            let ping = async { sink.ping::<redis::Value>().await?.extract_error() };
            match actix_rt::time::timeout(PING_TIMEOUT, ping).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("PING timed out".to_string()),
            }
        }
        .into_actor(self)
        .map(move |r, act, ctx| {
            if gen != act.generation || act.sink.is_none() {
                return;
            }
            match r {
                // Subscribed and answering: healthy, not just reconnected.
                Ok(()) if act.resubscribed => act.backoff.reset(),
                Ok(()) => {}
                Err(e) => act.disconnected(&e, ctx),
            }
        })
        .spawn(ctx);
    }

    /// Runs a (un)subscribe on the live connection; a failure forces a reconnect
    /// (which subscribes exactly the live channels).
    fn command(&mut self, subscribe: bool, user: &str, ctx: &mut Context<Self>) {
        let Some(mut sink) = self.sink.clone() else {
            return;
        };
        let ch = channel(user);
        let gen = self.generation;
        if subscribe {
            // Not ready until the new channel is subscribed.
            self.pending += 1;
            self.update_ready();
        }
        async move {
            if subscribe {
                sink.subscribe(ch).await
            } else {
                sink.unsubscribe(ch).await
            }
        }
        .into_actor(self)
        .map(move |r, act, ctx| {
            if gen != act.generation || act.sink.is_none() {
                return;
            }
            match r {
                Ok(()) => {
                    if subscribe {
                        act.pending = act.pending.saturating_sub(1);
                        act.update_ready();
                    }
                }
                Err(e) => act.disconnected(&format!("(un)subscribe failed ({e})"), ctx),
            }
        })
        .spawn(ctx);
    }
}

impl Actor for Subscriber {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.connect(ctx);
        ctx.run_interval(PING_INTERVAL, |act, ctx| act.ping(ctx));
    }
}

impl Supervised for Subscriber {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        self.connecting = false;
        self.disconnected("restarted", ctx);
    }
}

impl StreamHandler<(u64, Option<redis::Msg>)> for Subscriber {
    fn handle(&mut self, (gen, msg): (u64, Option<redis::Msg>), ctx: &mut Self::Context) {
        if gen != self.generation {
            return;
        }
        let Some(msg) = msg else {
            self.stream = None;
            self.disconnected("connection lost", ctx);
            return;
        };
        self.backoff.reset();
        let Some(user) = msg.get_channel_name().strip_prefix(CHANNEL_PREFIX) else {
            return;
        };
        let Some(entry) = self.users.get(user) else {
            return; // a message racing our UNSUBSCRIBE
        };
        let Ok(text) = ByteString::try_from(msg.get_payload_bytes().to_vec()) else {
            log::warn!(
                "subscriber: non-UTF-8 message on {}",
                msg.get_channel_name()
            );
            return;
        };
        entry.fanout.do_send(Deliver { payload: text });
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // Stream ends are signalled in-band (None) so that old streams can be told apart.
    }
}

impl Handler<Join> for Subscriber {
    type Result = Result<(), JoinError>;

    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) -> Self::Result {
        if self.shutdown.is_cancelled() {
            return Err(JoinError::ShuttingDown);
        }
        let live = self.users.get(&msg.user).map_or(0, |e| e.sessions.len());
        if live >= self.max_sessions_per_user {
            return Err(JoinError::TooManySessions(self.max_sessions_per_user));
        }
        let metrics = self.metrics.clone();
        let is_new = !self.users.contains_key(&msg.user);
        let entry = self.users.entry(msg.user.clone()).or_insert_with(|| {
            let user = msg.user.clone();
            let thread = &self.fanout_threads[thread_of(&user, self.fanout_threads.len())];
            UserEntry {
                fanout: Fanout::start_in_arbiter(&thread.handle(), |_| Fanout::new(user, metrics)),
                sessions: Default::default(),
            }
        });
        entry.sessions.insert(msg.session.id);
        entry.fanout.do_send(AddSession(msg.session));
        if is_new {
            self.command(true, &msg.user, ctx);
        }
        Ok(())
    }
}

impl Handler<Leave> for Subscriber {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Self::Context) {
        let Some(entry) = self.users.get_mut(&msg.user) else {
            return;
        };
        entry.fanout.do_send(RemoveSession { id: msg.id });
        entry.sessions.remove(&msg.id);
        if entry.sessions.is_empty() {
            if let Some(e) = self.users.remove(&msg.user) {
                // Stops once it has handled what is queued for it.
                drop(e.fanout);
            }
            self.command(false, &msg.user, ctx);
        }
    }
}

impl Handler<CloseAllSessions> for Subscriber {
    type Result = ();

    fn handle(&mut self, _: CloseAllSessions, _ctx: &mut Self::Context) {
        self.shutdown.cancel();
        for e in self.users.values() {
            e.fanout.do_send(CloseAll);
        }
    }
}
