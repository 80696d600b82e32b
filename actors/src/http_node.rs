//! The HTTP client of `http` nodes, which only goes where the egress policy
//! lets it.
//!
//! An http node is user code, so its client cannot be a general-purpose one
//! that resolves names and follows redirects on its own: every address it
//! connects to must pass [`EgressPolicy::check`]. Each hop therefore
//! resolves the host itself, checks every address it got, and connects to
//! an address that passed, with hyper's HTTP/1 handshake over that very
//! socket: the address checked is the address connected to, so a name that
//! resolves to a public address for the check and to 127.0.0.1 for the
//! connection (DNS rebinding) gets nowhere. Redirects are followed here, one
//! hop at a time, each re-resolved and re-checked.
//!
//! One connection per hop, no pool: node calls are not hot enough for reuse
//! to matter, and a pool would keep sockets to user-chosen servers open.
//! The node's timeout covers all hops; response bodies are read up to the
//! output limit (`--max-output-bytes`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{self, Either};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use url::{Host, Position, Url};

use crate::egress::EgressPolicy;
use crate::node::NodeError;

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// Headers the client sets itself; a node's values for them are ignored.
const OWN_HEADERS: [HeaderName; 3] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

/// Headers that do not follow a redirect to another origin.
const CREDENTIAL_HEADERS: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::COOKIE,
    header::PROXY_AUTHORIZATION,
];

/// An http node's request, its filters already evaluated.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The URL (`http` only).
    pub url: &'a str,
    /// Request headers.
    pub headers: &'a HashMap<String, String>,
    /// The JSON body, if any.
    pub body: Option<&'a Value>,
}

/// The client of `http` nodes: the egress policy and the body limit. Cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct HttpClient {
    policy: Arc<EgressPolicy>,
    max_body_bytes: usize,
}

/// What one hop got back.
enum Answer {
    Redirect(StatusCode, Option<HeaderValue>),
    Failed(StatusCode),
    Body(Bytes),
}

impl HttpClient {
    /// A client bound by `policy` that reads response bodies up to `max_body_bytes`.
    pub fn new(policy: EgressPolicy, max_body_bytes: usize) -> Self {
        Self {
            policy: Arc::new(policy),
            max_body_bytes,
        }
    }

    /// Sends `req`, following redirects, all within `timeout`. The output
    /// is the JSON response, or its text when it is not JSON.
    pub async fn send(&self, req: Request<'_>, timeout: Duration) -> Result<Value, NodeError> {
        tokio::time::timeout(timeout, self.follow(req))
            .await
            .unwrap_or_else(|_| Err(NodeError::timeout(timeout)))
    }

    async fn follow(&self, req: Request<'_>) -> Result<Value, NodeError> {
        let mut method = Method::from_bytes(req.method.as_bytes())
            .map_err(|_| NodeError::fatal(format!("bad method {:?}", req.method)))?;
        let mut url = Url::parse(req.url)
            .map_err(|e| NodeError::fatal(format!("{method} {:?}: not a URL: {e}", req.url)))?;
        let mut headers = user_headers(req.headers)?;
        let mut body = match req.body {
            Some(v) => {
                if !headers.contains_key(header::CONTENT_TYPE) {
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
                // unwrap_or_default: a serde_json::Value always serialises.
                Some(Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
            }
            None => None,
        };
        if !headers.contains_key(header::USER_AGENT) {
            headers.insert(
                header::USER_AGENT,
                HeaderValue::from_static(concat!("flowcast/", env!("CARGO_PKG_VERSION"))),
            );
        }
        for _ in 0..=MAX_REDIRECTS {
            let (status, location) = match self.hop(&method, &url, &headers, &body).await? {
                Answer::Body(bytes) => {
                    return Ok(serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    }))
                }
                Answer::Failed(status) if status.is_server_error() => {
                    return Err(NodeError::retryable(format!(
                        "{method} {url} answered {status}"
                    )))
                }
                Answer::Failed(status) => {
                    return Err(NodeError::fatal(format!(
                        "{method} {url} answered {status}"
                    )))
                }
                Answer::Redirect(status, location) => (status, location),
            };
            let next = location
                .as_ref()
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| {
                    NodeError::fatal(format!(
                        "{method} {url} answered {status} without a usable Location"
                    ))
                })?;
            if let Some(m) = redirected_method(status, &method) {
                method = m;
                body = None;
                headers.remove(header::CONTENT_TYPE);
            }
            if next.origin() != url.origin() {
                for h in &CREDENTIAL_HEADERS {
                    headers.remove(h);
                }
            }
            url = next;
        }
        Err(NodeError::fatal(format!(
            "{} {}: more than {MAX_REDIRECTS} redirects",
            req.method, req.url
        )))
    }

    /// One request to one URL: resolve, check, connect, exchange.
    async fn hop(
        &self,
        method: &Method,
        url: &Url,
        headers: &HeaderMap,
        body: &Option<Bytes>,
    ) -> Result<Answer, NodeError> {
        if url.scheme() != "http" {
            return Err(NodeError::fatal(format!(
                "http node: scheme {:?} is not supported, only http: {url}",
                url.scheme()
            )));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let (host, addrs) = match url.host() {
            Some(Host::Ipv4(ip)) => (ip.to_string(), vec![SocketAddr::new(ip.into(), port)]),
            Some(Host::Ipv6(ip)) => (format!("[{ip}]"), vec![SocketAddr::new(ip.into(), port)]),
            Some(Host::Domain(name)) => {
                let addrs = tokio::net::lookup_host((name, port)).await.map_err(|e| {
                    NodeError::retryable(format!("{method} {url}: resolving {name}: {e}"))
                })?;
                (name.to_owned(), addrs.collect())
            }
            None => return Err(NodeError::fatal(format!("{method} {url}: no host"))),
        };
        let mut allowed = Vec::new();
        let mut refused = None;
        for addr in addrs {
            match self.policy.check(&host, addr) {
                Ok(()) => allowed.push(canonical(addr)),
                Err(r) => {
                    refused.get_or_insert(r);
                }
            }
        }
        if allowed.is_empty() {
            return Err(match refused {
                Some(r) => NodeError::fatal(format!("http node: {r}")),
                None => NodeError::retryable(format!("{method} {url}: {host} has no address")),
            });
        }
        let stream = connect(&allowed)
            .await
            .map_err(|e| NodeError::retryable(format!("{method} {url}: connecting: {e}")))?;
        let retryable = |e: hyper::Error| NodeError::retryable(format!("{method} {url}: {e}"));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(retryable)?;

        let mut request = hyper::Request::new(Full::new(body.clone().unwrap_or_default()));
        *request.method_mut() = method.clone();
        *request.uri_mut() = url[Position::BeforePath..Position::AfterQuery]
            .parse()
            .map_err(|e| NodeError::fatal(format!("{method} {url}: {e}")))?;
        *request.headers_mut() = headers.clone();
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let authority = HeaderValue::from_str(&authority)
            .map_err(|e| NodeError::fatal(format!("{method} {url}: {e}")))?;
        request.headers_mut().insert(header::HOST, authority);

        let limit = self.max_body_bytes;
        let too_big = || {
            NodeError::fatal(format!(
                "{method} {url}: the response body is over --max-output-bytes ({limit} bytes)"
            ))
        };
        let exchange = async {
            let resp = sender.send_request(request).await.map_err(retryable)?;
            let status = resp.status();
            if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(Answer::Redirect(
                    status,
                    resp.headers().get(header::LOCATION).cloned(),
                ));
            }
            if !status.is_success() {
                return Ok(Answer::Failed(status));
            }
            let declared = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(too_big());
            }
            let body = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        too_big()
                    } else {
                        NodeError::retryable(format!("{method} {url}: reading the body: {e}"))
                    }
                })?;
            Ok(Answer::Body(body.to_bytes()))
        };
        // The connection is driven here, not spawned: it ends with the
        // exchange (or the node's timeout), never outliving the node.
        let answer = match future::select(pin!(exchange), pin!(conn)).await {
            Either::Left((answer, _)) => answer,
            Either::Right((Ok(()), exchange)) => exchange.await,
            Either::Right((Err(e), _)) => Err(retryable(e)),
        };
        answer
    }
}

/// The node's headers, minus those the client sets itself.
fn user_headers(given: &HashMap<String, String>) -> Result<HeaderMap, NodeError> {
    let mut headers = HeaderMap::new();
    for (k, v) in given {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| NodeError::fatal(format!("bad header name {k:?}")))?;
        if OWN_HEADERS.contains(&name) {
            continue;
        }
        let value = HeaderValue::from_str(v)
            .map_err(|_| NodeError::fatal(format!("bad value for header {k:?}")))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The method after a redirect, when it changes (and the body is dropped):
/// 303 turns anything but HEAD into GET, 301 and 302 turn POST-like
/// requests into GET; 307 and 308 keep method and body.
fn redirected_method(status: StatusCode, method: &Method) -> Option<Method> {
    let keeps = method == Method::GET || method == Method::HEAD;
    match status.as_u16() {
        301..=303 if !keeps => Some(Method::GET),
        _ => None,
    }
}

/// An IPv4-mapped address is connected to as the IPv4 address it is (and
/// was judged as), whatever the socket's dual-stack settings.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Connects to the first of `addrs` that answers.
async fn connect(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = None;
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(std::io::Error::new(e.kind(), format!("{addr}: {e}"))),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_change_the_method_as_browsers_do() {
        let post = Method::POST;
        let cases = [
            (301, Method::GET, None),
            (302, Method::GET, None),
            (303, Method::GET, None),
            (303, Method::HEAD, None),
            (301, post.clone(), Some(Method::GET)),
            (302, post.clone(), Some(Method::GET)),
            (303, post.clone(), Some(Method::GET)),
            (303, Method::PUT, Some(Method::GET)),
            (307, post.clone(), None),
            (308, Method::PUT, None),
        ];
        for (code, method, want) in cases {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(redirected_method(status, &method), want, "{code} {method}");
        }
    }

    #[test]
    fn own_headers_are_dropped_and_bad_ones_refused() {
        let given = HashMap::from([
            ("Host".to_owned(), "127.0.0.1".to_owned()),
            ("content-length".to_owned(), "9".to_owned()),
            ("X-Token".to_owned(), "t".to_owned()),
        ]);
        let h = user_headers(&given).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-token"], "t");
        let bad = HashMap::from([("bad name".to_owned(), "v".to_owned())]);
        assert!(!user_headers(&bad).unwrap_err().retryable);
        let bad = HashMap::from([("x".to_owned(), "a\nb".to_owned())]);
        assert!(!user_headers(&bad).unwrap_err().retryable);
    }

    #[test]
    fn mapped_addresses_connect_as_ipv4() {
        let a: SocketAddr = "[::ffff:8.8.8.8]:80".parse().unwrap();
        assert_eq!(canonical(a), "8.8.8.8:80".parse().unwrap());
        let b: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        assert_eq!(canonical(b), b);
    }
}
