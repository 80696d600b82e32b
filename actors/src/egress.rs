//! Where `http` nodes may connect: the egress address policy.
//!
//! http nodes are user code running inside the daemon, so without a policy
//! a workflow could call the daemon's own API as another user, a Redis or
//! admin port on the host, or the cloud metadata service. The rule is
//! "public addresses only": [`classify`] names the range of every address
//! that is not public (loopback, private, link-local, ...), and an IPv6
//! address that embeds an IPv4 one (IPv4-mapped, IPv4-compatible, NAT64,
//! 6to4, Teredo) is judged by the IPv4 address it carries, since that is
//! where its packets end up.
//!
//! The operator opens more with `--http-allow`: CIDRs (`10.0.0.0/8`,
//! `::1/128`), `ip:port`s (`127.0.0.1:9000`, `[::1]:9000`) and
//! `name:port`s (`svc.internal:8080`). A name entry allows that name on that
//! port whatever it resolves to: the operator vouches for the name.
//!
//! This module is pure: it judges addresses and never connects. The client
//! ([`crate::http_node`]) checks every address it is about to connect to,
//! on every redirect hop, so DNS rebinding cannot slip past the check.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

/// The flag that opens destinations, named in refusals.
pub const ALLOW_FLAG: &str = "--http-allow";

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(segments: [u16; 8], len: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), len)
}

/// IPv4 ranges that are not public, most specific first.
const V4_REFUSED: &[(Ipv4Net, &str)] = &[
    (v4(255, 255, 255, 255, 32), "broadcast"),
    (v4(0, 0, 0, 0, 32), "unspecified"),
    (v4(0, 0, 0, 0, 8), "\"this network\""),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(10, 0, 0, 0, 8), "private"),
    (v4(172, 16, 0, 0, 12), "private"),
    (v4(192, 168, 0, 0, 16), "private"),
    (v4(100, 64, 0, 0, 10), "shared address space (CGNAT)"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
];

/// IPv6 ranges that are not public and carry no IPv4 address.
const V6_REFUSED: &[(Ipv6Net, &str)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "local-use NAT64"),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only"),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique local"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local"),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// Why an address is refused: the range it is in, and for an IPv6 address
/// judged by an embedded IPv4 one, the form and that IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason {
    /// The range, e.g. `loopback`.
    pub range: &'static str,
    /// The IPv6 form and the IPv4 address it embeds, when judged by it.
    pub via: Option<(&'static str, Ipv4Addr)>,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Some((form, ip)) => write!(f, "{form} {ip}, {}", self.range),
            None => f.write_str(self.range),
        }
    }
}

/// The IPv4 address an IPv6 address delivers to, and the form it uses.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<(&'static str, Ipv4Addr)> {
    let s = ip.segments();
    let o = ip.octets();
    let low = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        // ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(("IPv4-mapped", low)),
        // ::ffff:0:a.b.c.d (IPv4-translated, RFC 2765)
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(("IPv4-translated", low)),
        // ::a.b.c.d; :: and ::1 are judged as themselves.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(("IPv4-compatible", low)),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(("NAT64", low)),
        [0x2002, _, _, ..] => Some(("6to4", Ipv4Addr::new(o[2], o[3], o[4], o[5]))),
        // Teredo carries the client's address inverted in the last 32 bits.
        [0x2001, 0, ..] => Some(("Teredo", Ipv4Addr::from(!u32::from(low)))),
        _ => None,
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4_REFUSED
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|&(_, range)| range)
}

/// Why `ip` is not a public address, or `None` if it is.
pub fn classify(ip: IpAddr) -> Option<Reason> {
    match ip {
        IpAddr::V4(ip) => classify_v4(ip).map(|range| Reason { range, via: None }),
        IpAddr::V6(ip) => {
            if let Some((form, inner)) = embedded_v4(ip) {
                return classify_v4(inner).map(|range| Reason {
                    range,
                    via: Some((form, inner)),
                });
            }
            V6_REFUSED
                .iter()
                .find(|(net, _)| net.contains(&ip))
                .map(|&(_, range)| Reason { range, via: None })
        }
    }
}

/// One `--http-allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// Every address in a CIDR, any port (a bare IPv4 address is a one-address net).
    Net(IpNet),
    /// One address on one port.
    Addr(SocketAddr),
    /// A host name on one port, whatever it resolves to.
    Name {
        /// Lowercase, without a trailing dot.
        host: String,
        /// The port.
        port: u16,
    },
}

/// A `--http-allow` entry that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{entry:?}: {why}")]
pub struct AllowEntryError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl FromStr for AllowEntry {
    type Err = AllowEntryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let e = s.trim();
        let bad = |why| AllowEntryError {
            entry: s.to_owned(),
            why,
        };
        if e.is_empty() {
            return Err(bad("empty entry (a stray comma?)"));
        }
        if e.contains('/') {
            return e
                .parse::<IpNet>()
                .map(|n| Self::Net(n.trunc()))
                .map_err(|_| bad("not a CIDR such as 10.0.0.0/8 or fc00::/7"));
        }
        if let Ok(addr) = e.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(bad("port 0 is not a port"));
            }
            return Ok(Self::Addr(addr));
        }
        if let Ok(ip) = e.parse::<Ipv4Addr>() {
            return Ok(Self::Net(IpNet::from(IpAddr::V4(ip))));
        }
        if e.parse::<Ipv6Addr>().is_ok() {
            // `::1:9000` is an address, not ::1 on port 9000: make it explicit.
            return Err(bad(
                "write an IPv6 address as a CIDR (::1/128) or with a port ([::1]:9000)",
            ));
        }
        let Some((host, port)) = e.rsplit_once(':') else {
            return Err(bad(
                "not a CIDR (10.0.0.0/8), address (127.0.0.1) or host:port (svc.internal:8080)",
            ));
        };
        if host.contains(':') || host.starts_with('[') {
            return Err(bad("an IPv6 address with a port is written [::1]:9000"));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        };
        let host = normalize_host(host);
        if !is_host_name(&host) {
            return Err(bad("not an IP address or a host name"));
        }
        Ok(Self::Name { host, port })
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Letters, digits, `-` and `_` in dot-separated labels of 1 to 63 bytes,
/// the last one not all digits (`127.1` is an address to resolvers).
fn is_host_name(host: &str) -> bool {
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    host.len() <= 253
        && host.split('.').all(label_ok)
        && !host
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// A destination the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub struct Refused {
    /// The host as the URL names it.
    pub host: String,
    /// The address it resolved to.
    pub addr: SocketAddr,
    /// Why that address is refused.
    pub reason: Reason,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let literal = self
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip == self.addr.ip());
        if !literal {
            write!(f, "{} at ", self.host)?;
        }
        write!(
            f,
            "{} ({}) is not allowed; open it with {ALLOW_FLAG}",
            self.addr, self.reason
        )
    }
}

/// The egress policy: public addresses, plus what `--http-allow` opens.
/// The default opens nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<AllowEntry>,
}

impl FromStr for EgressPolicy {
    type Err = AllowEntryError;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        Self::parse(list)
    }
}

impl EgressPolicy {
    /// Public addresses plus `allow`.
    pub fn new(allow: Vec<AllowEntry>) -> Self {
        Self { allow }
    }

    /// Parses a comma-separated `--http-allow` list; empty entries (an
    /// empty variable, a trailing comma) add nothing.
    pub fn parse(list: &str) -> Result<Self, AllowEntryError> {
        list.split(',')
            .filter(|e| !e.trim().is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Self::new)
    }

    /// The entries opened beyond public addresses.
    pub fn allowed(&self) -> &[AllowEntry] {
        &self.allow
    }

    /// May a request for `host` (as the URL names it: a name, or an IP
    /// literal) connect to `addr`, one of the addresses `host` resolved to?
    pub fn check(&self, host: &str, addr: SocketAddr) -> Result<(), Refused> {
        let Some(reason) = classify(addr.ip()) else {
            return Ok(());
        };
        if self.opens(host, addr) {
            return Ok(());
        }
        Err(Refused {
            host: host.to_owned(),
            addr,
            reason,
        })
    }

    fn opens(&self, host: &str, addr: SocketAddr) -> bool {
        let ip = addr.ip();
        // An embedded IPv4 address is the address its packets reach, so an
        // entry opening that IPv4 address opens its IPv6 forms too.
        let inner = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(|(_, v4)| IpAddr::V4(v4)),
            IpAddr::V4(_) => None,
        };
        let host = normalize_host(host);
        self.allow.iter().any(|entry| match entry {
            AllowEntry::Net(net) => net.contains(&ip) || inner.is_some_and(|i| net.contains(&i)),
            AllowEntry::Addr(a) => {
                a.port() == addr.port() && (a.ip() == ip || inner == Some(a.ip()))
            }
            AllowEntry::Name { host: h, port } => *port == addr.port() && *h == host,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(s: &str) -> Option<&'static str> {
        classify(ip(s)).map(|r| r.range)
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_ranges_are_refused() {
        for (addr, want) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared address space (CGNAT)"),
            ("100.127.255.254", "shared address space (CGNAT)"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "\"this network\""),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.0.8", "IETF protocol assignments"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
        ] {
            assert_eq!(range(addr), Some(want), "{addr}");
        }
    }

    #[test]
    fn public_v4_passes() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "192.0.1.1",
            "223.255.255.255",
        ] {
            assert_eq!(classify(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn v6_ranges_are_refused() {
        for (addr, want) in [
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("100::1", "discard-only"),
        ] {
            assert_eq!(range(addr), Some(want), "{addr}");
        }
        for addr in ["2606:4700:4700::1111", "2a00:1450::1", "fbff::1", "ff::1"] {
            assert_eq!(classify(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn v6_forms_embedding_v4_are_judged_by_the_v4_address() {
        let lo = Ipv4Addr::LOCALHOST;
        for (addr, form, inner, want) in [
            ("::ffff:127.0.0.1", "IPv4-mapped", lo, "loopback"),
            (
                "::ffff:169.254.169.254",
                "IPv4-mapped",
                Ipv4Addr::new(169, 254, 169, 254),
                "link-local",
            ),
            (
                "::ffff:0:10.0.0.1",
                "IPv4-translated",
                Ipv4Addr::new(10, 0, 0, 1),
                "private",
            ),
            ("::127.0.0.1", "IPv4-compatible", lo, "loopback"),
            (
                "::0.0.0.2",
                "IPv4-compatible",
                Ipv4Addr::new(0, 0, 0, 2),
                "\"this network\"",
            ),
            ("64:ff9b::127.0.0.1", "NAT64", lo, "loopback"),
            (
                "64:ff9b::192.168.0.1",
                "NAT64",
                Ipv4Addr::new(192, 168, 0, 1),
                "private",
            ),
            ("2002:7f00:1::", "6to4", lo, "loopback"),
            (
                "2002:a9fe:a9fe:1::5",
                "6to4",
                Ipv4Addr::new(169, 254, 169, 254),
                "link-local",
            ),
            (
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                "Teredo",
                lo,
                "loopback",
            ),
        ] {
            assert_eq!(
                classify(ip(addr)),
                Some(Reason {
                    range: want,
                    via: Some((form, inner))
                }),
                "{addr}"
            );
        }
        for addr in [
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert_eq!(classify(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn default_policy_refuses_with_a_message_naming_address_reason_and_flag() {
        let p = EgressPolicy::default();
        let e = p.check("127.0.0.1", sa("127.0.0.1:8081")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "127.0.0.1:8081 (loopback) is not allowed; open it with --http-allow"
        );
        let e = p.check("localhost", sa("127.0.0.1:8081")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "localhost at 127.0.0.1:8081 (loopback) is not allowed; open it with --http-allow"
        );
        let e = p
            .check("[::ffff:7f00:1]", sa("[::ffff:127.0.0.1]:80"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "[::ffff:127.0.0.1]:80 (IPv4-mapped 127.0.0.1, loopback) is not allowed; open it with --http-allow"
        );
        assert!(p.check("example.com", sa("93.184.215.14:80")).is_ok());
    }

    #[test]
    fn cidr_entries_open_v4_and_v6_ranges() {
        let p = EgressPolicy::parse("10.0.0.0/8, 127.0.0.1/32,::1/128, fd00::/8").unwrap();
        assert!(p.check("10.9.8.7", sa("10.9.8.7:5432")).is_ok());
        assert!(p.check("127.0.0.1", sa("127.0.0.1:1")).is_ok());
        assert!(p.check("::1", sa("[::1]:80")).is_ok());
        assert!(p.check("fd00::5", sa("[fd00::5]:80")).is_ok());
        // The IPv6 forms of an opened IPv4 address are opened too.
        assert!(p.check("x", sa("[::ffff:127.0.0.1]:80")).is_ok());
        assert!(p.check("x", sa("[::ffff:10.0.0.1]:80")).is_ok());
        // Ranges stay closed outside the entries.
        assert!(p.check("127.0.0.2", sa("127.0.0.2:80")).is_err());
        assert!(p.check("192.168.0.1", sa("192.168.0.1:80")).is_err());
        assert!(p.check("fe80::1", sa("[fe80::1]:80")).is_err());
        assert!(p.check("fc00::1", sa("[fc00::1]:80")).is_err());
    }

    #[test]
    fn address_port_entries_open_one_port() {
        let p = EgressPolicy::parse("127.0.0.1:9000,[::1]:9001").unwrap();
        assert!(p.check("127.0.0.1", sa("127.0.0.1:9000")).is_ok());
        assert!(p.check("127.0.0.1", sa("127.0.0.1:9001")).is_err());
        assert!(p.check("localhost", sa("127.0.0.1:9000")).is_ok());
        assert!(p.check("::1", sa("[::1]:9001")).is_ok());
        assert!(p.check("::1", sa("[::1]:9000")).is_err());
        assert!(p.check("127.0.0.2", sa("127.0.0.2:9000")).is_err());
    }

    #[test]
    fn name_port_entries_open_a_name_on_one_port_whatever_it_resolves_to() {
        let p = EgressPolicy::parse("Svc.Internal.:8080").unwrap();
        assert_eq!(
            p.allowed(),
            [AllowEntry::Name {
                host: "svc.internal".into(),
                port: 8080
            }]
        );
        assert!(p.check("svc.internal", sa("10.1.2.3:8080")).is_ok());
        assert!(p.check("SVC.internal.", sa("[fd00::1]:8080")).is_ok());
        assert!(p.check("svc.internal", sa("10.1.2.3:8081")).is_err());
        assert!(p.check("other.internal", sa("10.1.2.3:8080")).is_err());
        assert!(p.check("10.1.2.3", sa("10.1.2.3:8080")).is_err());
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "fc00::/129",
            "svc.internal",
            "svc.internal:0",
            "svc.internal:99999",
            "svc.internal:http",
            "::1:9000",
            "::1",
            "fe80::1:80",
            "[::1]:0",
            "127.0.0.1:0",
            "bad_host!:80",
            "127.1:80",
            "a..b:80",
            "",
            " ",
        ] {
            let e = bad.parse::<AllowEntry>().unwrap_err();
            assert_eq!(e.entry, bad);
            assert!(e.to_string().starts_with(&format!("{bad:?}: ")), "{e}");
        }
        let e = EgressPolicy::parse("10.0.0.0/8,nope,127.0.0.1/32").unwrap_err();
        assert_eq!(e.entry, "nope");
        assert_eq!(
            EgressPolicy::parse(" 10.0.0.0/8,, ::1/128,").map(|p| p.allowed().len()),
            Ok(2)
        );
    }

    #[test]
    fn good_entries_parse() {
        assert_eq!(
            "10.1.2.3/8".parse::<AllowEntry>(),
            Ok(AllowEntry::Net("10.0.0.0/8".parse().unwrap()))
        );
        assert_eq!(
            " 127.0.0.1 ".parse::<AllowEntry>(),
            Ok(AllowEntry::Net("127.0.0.1/32".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:9000".parse::<AllowEntry>(),
            Ok(AllowEntry::Addr(sa("[::1]:9000")))
        );
        assert_eq!(
            "svc-1.internal:8080".parse::<AllowEntry>(),
            Ok(AllowEntry::Name {
                host: "svc-1.internal".into(),
                port: 8080
            })
        );
        assert_eq!(EgressPolicy::parse(""), Ok(EgressPolicy::default()));
        assert_eq!(EgressPolicy::parse(" "), Ok(EgressPolicy::default()));
    }
}
