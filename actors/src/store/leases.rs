//! Run leases: which runner process drives a run, and the crash-loop count.
//!
//! A live run is held under `flowcast:run:{id}:owner` with an expiry,
//! renewed by every commit (see `commit`) and by the runner's periodic sweep;
//! a run whose lease lapsed (its runner died) is claimed by another runner
//! and resumed. Claiming checks the run's status in the same script, so a
//! lease is never taken on a run that has ended.
//!
//! # Who holds a lease
//!
//! `--instance-id` names a runner for people; it is not unique per process
//! (an operator may start two processes with one id by mistake, or a
//! restarted process comes up before its predecessor is gone). A lease is
//! therefore held by a [`Holder`], `instance#nonce`, where the nonce is
//! random per process: two processes never hold one lease, every commit
//! names its holder and the commit script refuses a commit whose holder does
//! not hold the lease. Two processes given the same id therefore never both
//! drive one run.
//!
//! A restart of the same instance after kill -9 should resume its runs at
//! once, not after the lease lapses. Its predecessor's leases name the same
//! instance and another nonce; the new process may take such a lease only
//! when that process is gone, and it knows from Redis itself: every runner
//! process keeps one connection named after its nonce ([`Presence`],
//! `CLIENT SETNAME`) open for its whole life, established before it takes
//! any lease. A process that died (kill -9, OOM, panic) had its sockets
//! closed by the kernel, so Redis dropped that connection at once and
//! `CLIENT LIST` no longer shows it ([`present`]); the claim then names the
//! dead holder ([`claim`]'s `gone`) and the script swaps the lease only if it
//! is still exactly that holder. A nonce never comes back, so "gone" cannot
//! turn stale between the check and the claim.
//!
//! A live twin with the same id keeps its presence connection open, so its
//! runs stay with it. The one window is its presence connection being cut
//! (a Redis restart, a network blip) at the moment its twin sweeps: the twin
//! may then take some of its runs. That costs redone work, never
//! correctness: the lease now names the twin, the first process's next
//! commit of such a run is refused as `not_owner` and its run actor lets go,
//! so each run is still driven by exactly one process. A host that vanishes
//! without closing its sockets (power loss) leaves its connection until TCP
//! gives up; its runs are then resumed when their leases lapse, as for any
//! other instance. A process frozen by SIGSTOP keeps its connections, so it
//! counts as alive until its leases lapse; when it wakes its commits are
//! refused.
//!
//! # Crash loops
//!
//! Each claim that takes a run over (a free lease or a dead predecessor's)
//! is a resumption, and the claim script counts resumptions that find the
//! run's stored seq where the previous one left it, i.e. without progress.
//! Past [`MAX_RESUMES_WITHOUT_PROGRESS`] the claim answers
//! [`Claim::Exhausted`]: a run that brings down every runner that resumes it
//! is then failed instead of resumed again. A graceful drain's [`release`]
//! clears the count: letting go of a run on SIGTERM is no crash.
//!
//! A run that only waits (an approval for days, or a child run that does)
//! makes no commits, so every unrelated crash of the runners would count
//! against it and the fourth would fail an innocent run. A resumed run
//! whose active nodes all wait — outside the daemon, with their waits
//! established, or for child runs found running — has therefore done
//! everything a resumption does in the daemon: [`only_waiting`] clears its
//! count then. A run whose own work brings the runners down never gets
//! there (it crashes before), so it is still caught.

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncCommands, AsyncConnectionConfig};

use super::keys;
use super::script::Lua;
use crate::error::Result;

static CLAIM: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/claim.lua")));
static RENEW: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/renew.lua")));
static RELEASE: LazyLock<Lua> = LazyLock::new(|| Lua::new(include_str!("lua/release.lua")));
static ONLY_WAITING: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("lua/only_waiting.lua")));

/// Leases changed per script call.
const CHUNK: usize = 1000;
/// A run resumed this many times in a row without progress is failed
/// rather than resumed once more.
pub const MAX_RESUMES_WITHOUT_PROGRESS: u32 = 3;
/// Separates the instance from the nonce in a lease value.
const SEP: char = '#';
/// Hex digits of a nonce.
const NONCE_LEN: usize = 32;
/// How often the presence connection is checked (and re-opened if lost).
const PRESENCE_CHECK: Duration = Duration::from_secs(1);
/// How long opening or pinging the presence connection may take.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(2);

/// A runner process: the operator's instance name and a random nonce of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `--instance-id`.
    pub instance: String,
    /// Random per process, 32 lower-case hex digits.
    pub nonce: String,
}

impl Holder {
    /// A new process of `instance`, with a fresh nonce.
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: instance.into(),
            nonce: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Reads a lease value; `None` for one not written by a [`Holder`].
    pub fn parse(value: &str) -> Option<Self> {
        let (instance, nonce) = value.rsplit_once(SEP)?;
        let hex = nonce.len() == NONCE_LEN
            && nonce
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        hex.then(|| Self {
            instance: instance.into(),
            nonce: nonce.into(),
        })
    }
}

/// The lease value, `instance#nonce`.
impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{SEP}{}", self.instance, self.nonce)
    }
}

/// Whom a run's lease is with, as seen by one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Nobody: it lapsed or was released.
    Free,
    /// This process.
    Mine,
    /// Another process of this instance (a predecessor, or a twin): it may
    /// be taken over if that process is gone.
    SameInstance(Holder),
    /// Another instance (or a value no [`Holder`] wrote): wait for the lease to lapse.
    Other,
}

impl Held {
    /// Classifies a lease value `value` for `me`.
    pub fn of(value: Option<&str>, me: &Holder) -> Self {
        let Some(v) = value else { return Self::Free };
        match Holder::parse(v) {
            Some(h) if h == *me => Self::Mine,
            Some(h) if h.instance == me.instance => Self::SameInstance(h),
            _ => Self::Other,
        }
    }
}

/// What a claim came to (the claim script's reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Someone else holds it, or the run has ended.
    NotOurs,
    /// The lease is ours; resume the run.
    Taken,
    /// The lease is ours, but the run has been resumed
    /// [`MAX_RESUMES_WITHOUT_PROGRESS`] times without progress: fail it.
    Exhausted,
}

impl redis::FromRedisValue for Claim {
    fn from_redis_value(v: redis::Value) -> std::result::Result<Self, redis::ParsingError> {
        Ok(match i64::from_redis_value(v)? {
            0 => Self::NotOurs,
            1 => Self::Taken,
            2 => Self::Exhausted,
            other => return Err(format!("claim script answered {other}").into()),
        })
    }
}

/// The lease value of a run, if any.
pub async fn holder<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
) -> Result<Option<String>> {
    Ok(conn.get(keys::owner(run_id)).await?)
}

/// Takes a run's lease for `me` if it is free, already `me`'s, or held by
/// `gone` (a lease value whose process is known to be dead), and the run has
/// not ended. Taking it over counts as a resumption (see the module header).
pub async fn claim<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
    me: &Holder,
    gone: Option<&str>,
    lease: Duration,
) -> Result<Claim> {
    let keys = [keys::owner(run_id), keys::run(run_id)];
    let args = [
        me.to_string(),
        lease.as_millis().to_string(),
        gone.unwrap_or_default().to_owned(),
        MAX_RESUMES_WITHOUT_PROGRESS.to_string(),
    ];
    Ok(CLAIM.invoke(conn, &keys, &args).await?)
}

/// Extends the leases `me` holds on `runs`.
pub async fn renew<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    runs: &[String],
    me: &Holder,
    lease: Duration,
) -> Result<()> {
    let args = [me.to_string(), lease.as_millis().to_string()];
    for chunk in runs.chunks(CHUNK) {
        let keys: Vec<String> = chunk.iter().map(|r| keys::owner(r)).collect();
        let _: i64 = RENEW.invoke(conn, &keys, &args).await?;
    }
    Ok(())
}

/// Deletes the leases `me` holds on `runs` (they resume elsewhere at once)
/// and clears their crash-loop counts: a drain is no crash.
pub async fn release<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    runs: &[String],
    me: &Holder,
) -> Result<()> {
    let args = [me.to_string()];
    for chunk in runs.chunks(CHUNK) {
        let keys: Vec<String> = chunk
            .iter()
            .flat_map(|r| [keys::owner(r), keys::run(r)])
            .collect();
        let _: i64 = RELEASE.invoke(conn, &keys, &args).await?;
    }
    Ok(())
}

/// Clears the crash-loop count of a resumed run that now only waits (see
/// the module header), if `me` holds it.
pub async fn only_waiting<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    run_id: &str,
    me: &str,
) -> Result<bool> {
    let keys = [keys::owner(run_id), keys::run(run_id)];
    let n: i64 = ONLY_WAITING.invoke(conn, &keys, &[me]).await?;
    Ok(n == 1)
}

/// Nonces of the runner processes whose presence connection is open now.
pub async fn present<C: ConnectionLike + Send + Sync>(conn: &mut C) -> Result<HashSet<String>> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("normal")
        .query_async(conn)
        .await?;
    Ok(present_in(&list))
}

/// The nonces named in a `CLIENT LIST` reply.
fn present_in(client_list: &str) -> HashSet<String> {
    client_list
        .lines()
        .filter_map(|line| {
            line.split(' ')
                .find_map(|f| f.strip_prefix("name="))?
                .strip_prefix(keys::PRESENCE_PREFIX)
                .map(str::to_owned)
        })
        .collect()
}

/// A runner process's presence connection: open for as long as the process
/// lives, named [`keys::PRESENCE_PREFIX`]`{nonce}`.
pub struct Presence {
    client: redis::Client,
    name: String,
    conn: Option<MultiplexedConnection>,
}

impl Presence {
    /// Opens and names the connection. Call it before taking any lease.
    pub async fn announce(client: &redis::Client, me: &Holder) -> Result<Self> {
        let mut p = Self {
            client: client.clone(),
            name: format!("{}{}", keys::PRESENCE_PREFIX, me.nonce),
            conn: None,
        };
        p.conn = Some(p.open().await?);
        Ok(p)
    }

    async fn open(&self) -> Result<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(PRESENCE_TIMEOUT))
            .set_response_timeout(Some(PRESENCE_TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.name)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(conn)
    }

    /// Keeps the connection open while `alive()` holds, re-opening it when
    /// it is lost (a Redis restart).
    pub async fn keep(mut self, alive: impl Fn() -> bool) {
        while alive() {
            match self.conn.as_mut() {
                Some(c) => {
                    if super::ping(c).await.is_err() {
                        self.conn = None;
                        continue;
                    }
                }
                None => match self.open().await {
                    Ok(c) => {
                        log::info!("runner: presence connection {} re-opened", self.name);
                        self.conn = Some(c);
                    }
                    Err(e) => log::debug!("runner: presence connection unavailable ({e})"),
                },
            }
            actix_rt::time::sleep(PRESENCE_CHECK).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_reads_back_from_its_lease_value() {
        let h = Holder::new("runner#a b");
        let v = h.to_string();
        assert_eq!(Holder::parse(&v), Some(h.clone()));
        assert_ne!(Holder::new("runner#a b").nonce, h.nonce);
        // Values no Holder wrote (an older version's bare instance id).
        assert_eq!(Holder::parse("runner-a"), None);
        assert_eq!(Holder::parse("runner-a#xyz"), None);
        assert_eq!(Holder::parse(&format!("a#{}", "G".repeat(32))), None);
    }

    #[test]
    fn leases_are_classified_by_instance_and_process() {
        let me = Holder::new("a");
        let twin = Holder::new("a");
        let other = Holder::new("b");
        assert_eq!(Held::of(None, &me), Held::Free);
        assert_eq!(Held::of(Some(&me.to_string()), &me), Held::Mine);
        assert_eq!(
            Held::of(Some(&twin.to_string()), &me),
            Held::SameInstance(twin)
        );
        assert_eq!(Held::of(Some(&other.to_string()), &me), Held::Other);
        // A bare instance id (an older version's lease) is never taken early.
        assert_eq!(Held::of(Some("a"), &me), Held::Other);
    }

    #[test]
    fn presence_is_read_from_connection_names() {
        let list = format!(
            "id=3 addr=127.0.0.1:1 laddr=127.0.0.1:6379 fd=8 name={p}abc age=1 db=0\n\
             id=4 addr=127.0.0.1:2 laddr=127.0.0.1:6379 fd=9 name= age=1 db=0\n\
             id=5 addr=127.0.0.1:3 laddr=127.0.0.1:6379 fd=10 name=other age=1\n\
             id=6 addr=127.0.0.1:4 laddr=127.0.0.1:6379 fd=11 name={p}def age=2\n",
            p = keys::PRESENCE_PREFIX
        );
        let got = present_in(&list);
        assert_eq!(got, HashSet::from(["abc".to_owned(), "def".to_owned()]));
    }
}
