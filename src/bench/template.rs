//! Naming: bench users, `{user}` templates for URLs and channels, which
//! connections a shard opens, and the loopback-only check on targets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use anyhow::{bail, Context};

/// The placeholder replaced by a user name.
pub const USER: &str = "{user}";

/// A URL or channel name with `{user}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    /// A template; it must mention `{user}` when `per_user` is set.
    pub fn new(text: &str, per_user: bool) -> anyhow::Result<Self> {
        if per_user && !text.contains(USER) {
            bail!("{text:?} has no {USER} placeholder");
        }
        Ok(Self(text.to_owned()))
    }

    /// The text for one user (names are URL-safe by construction).
    pub fn fill(&self, user: &str) -> String {
        self.0.replace(USER, user)
    }
}

/// The name of bench user `i`.
pub fn user_name(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}")
}

/// Checks a bench name prefix: letters, digits, `-`, `_`, `.` only, so that
/// names need no escaping in URLs and channels.
pub fn check_prefix(prefix: &str) -> anyhow::Result<()> {
    if prefix.is_empty()
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("user prefix {prefix:?} must be letters, digits, '-', '_' or '.'");
    }
    Ok(())
}

/// `--shard i/n`: this process opens the connections whose global index is
/// `i` modulo `n`, so that several processes share one load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's index, `0..count`.
    pub index: usize,
    /// How many processes share the load.
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("shard {s:?} is not i/n with i < n (like 0/2)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// The global connection indices this shard opens, out of `total`.
    pub fn connections(&self, total: usize) -> impl Iterator<Item = usize> {
        (self.index..total).step_by(self.count)
    }
}

/// The user of global connection `conn` when `users` users share the
/// connections round-robin.
pub fn user_of(conn: usize, users: usize) -> usize {
    conn % users.max(1)
}

/// The loopback source addresses 127.0.0.1 ..= 127.0.0.`n` (none for 0).
/// Each gives its own ~28K ephemeral ports towards one server port.
pub fn source_addrs(n: u8) -> Vec<Ipv4Addr> {
    (1..=n).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
}

/// An HTTP connection to the server of `url`, a loopback address only.
pub fn loopback_http(url: &str) -> anyhow::Result<crate::http::HttpConn> {
    crate::http::HttpConn::at(loopback_target(url)?, url)
}

/// Host and port of an `http://`, `ws://` or `redis://` URL, refusing
/// anything but a loopback address (the bench never loads another machine).
pub fn loopback_target(url: &str) -> anyhow::Result<SocketAddr> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{url:?} is not a URL"))?;
    let default_port = match scheme {
        "http" | "ws" => 80,
        "redis" => 6379,
        other => bail!("{url:?}: scheme {other:?} not supported (http, ws, redis; no TLS)"),
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let parse_port = |p: &str| {
        p.parse::<u16>()
            .with_context(|| format!("{url:?}: bad port {p:?}"))
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .with_context(|| format!("{url:?}: unclosed ["))?;
        match after.strip_prefix(':') {
            Some(p) => (h, parse_port(p)?),
            None => (h, default_port),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(p)?),
            None => (authority, default_port),
        }
    };
    let ip: IpAddr = match host {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .parse()
            .with_context(|| format!("{url:?}: host {h:?} must be a loopback IP or localhost"))?,
    };
    if !ip.is_loopback() {
        bail!("{url:?}: {ip} is not a loopback address; the bench only targets this machine");
    }
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_user_placeholders() {
        let t = Template::new("ws://127.0.0.1:8084/ws?username={user}", true).unwrap();
        assert_eq!(t.fill("u7"), "ws://127.0.0.1:8084/ws?username=u7");
        let c = Template::new("workflow:events:{user}", true).unwrap();
        assert_eq!(c.fill(&user_name("bench-", 3)), "workflow:events:bench-3");
        let nchan = Template::new("http://127.0.0.1:8090/pub/{user}?x={user}", true).unwrap();
        assert_eq!(nchan.fill("a"), "http://127.0.0.1:8090/pub/a?x=a");
        assert!(Template::new("ws://127.0.0.1/ws", true).is_err());
        assert!(Template::new("ws://127.0.0.1/ws", false).is_ok());
    }

    #[test]
    fn prefixes_need_no_escaping() {
        assert!(check_prefix("bench-u").is_ok());
        assert!(check_prefix("a.b_c").is_ok());
        assert!(check_prefix("").is_err());
        assert!(check_prefix("a b").is_err());
        assert!(check_prefix("a&b").is_err());
    }

    #[test]
    fn shards_split_connections() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!(s.connections(8).collect::<Vec<_>>(), vec![1, 4, 7]);
        let all: Shard = Shard::default();
        assert_eq!(all.connections(3).count(), 3);
        for bad in ["3/3", "1", "a/2", "0/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(user_of(7, 3), 1);
        assert_eq!(user_of(7, 0), 0);
    }

    #[test]
    fn source_addresses_are_loopback() {
        let a = source_addrs(3);
        assert_eq!(a.len(), 3);
        assert_eq!(a[2], Ipv4Addr::new(127, 0, 0, 3));
        assert!(source_addrs(0).is_empty());
    }

    #[test]
    fn targets_must_be_loopback() {
        let t = |u| loopback_target(u).map(|a| a.to_string());
        assert_eq!(
            t("ws://127.0.0.1:8084/ws?username={user}").unwrap(),
            "127.0.0.1:8084"
        );
        assert_eq!(t("http://localhost/pub/x").unwrap(), "127.0.0.1:80");
        assert_eq!(t("redis://127.0.0.1:6400/0").unwrap(), "127.0.0.1:6400");
        assert_eq!(t("redis://:pw@127.0.0.1").unwrap(), "127.0.0.1:6379");
        assert_eq!(t("ws://[::1]:9000/ws").unwrap(), "[::1]:9000");
        assert_eq!(t("ws://[::1]/ws").unwrap(), "[::1]:80");
        assert_eq!(t("ws://127.9.0.2:1/").unwrap(), "127.9.0.2:1");
        assert!(t("ws://10.0.0.1:8084/ws").is_err());
        assert!(t("http://example.com/").is_err());
        assert!(t("wss://127.0.0.1/").is_err());
        assert!(loopback_http("http://192.0.2.1/").is_err());
        assert!(t("127.0.0.1:80").is_err());
    }
}
