//! A keep-alive HTTP/1.1 client connection (hyper), shared by the bench's
//! REST calls and HTTP publishing and by the command-line client: one
//! request at a time per connection, reconnecting once when the server
//! closed it. Plain `http://` only: the daemon speaks no TLS, and a TLS
//! stack would be the binary's largest dependency for nothing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 connection to a server.
pub struct HttpConn {
    /// `host:port` to connect to (a name is resolved at each connect).
    target: String,
    host: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// Splits `http://host:port/path?q` into its authority and path.
pub fn split_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?} is not an http:// URL"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((host.to_owned(), path.to_owned()))
}

impl HttpConn {
    /// A connection to the server of `url` (opened on first use).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let (host, _) = split_url(url)?;
        let has_port = match host.rfind(']') {
            Some(i) => host[i..].contains(':'),
            None => host.contains(':'),
        };
        let target = if has_port {
            host.clone()
        } else {
            format!("{host}:80")
        };
        Ok(Self {
            target,
            host,
            sender: None,
        })
    }

    /// A connection to the server of `url` at an address already resolved
    /// (and checked) by the caller.
    pub fn at(addr: SocketAddr, url: &str) -> anyhow::Result<Self> {
        let (host, _) = split_url(url)?;
        Ok(Self {
            target: addr.to_string(),
            host,
            sender: None,
        })
    }

    async fn open(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let tcp = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(&self.target))
            .await
            .map_err(|_| anyhow::anyhow!("no connection within {REQUEST_TIMEOUT:?}"))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| format!("cannot connect to {}", self.target))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends a request with a JSON (or text) body and reads the whole
    /// answer. `headers` are extra headers.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        for attempt in 0..2 {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                self.sender = Some(self.open().await?);
            }
            let Some(sender) = self.sender.as_mut() else {
                continue;
            };
            let mut req = Request::builder()
                .method(method.clone())
                .uri(path)
                .header("host", &self.host)
                .header("content-type", "application/json");
            for (k, v) in headers {
                // from_bytes: UTF-8 user names are sent as they are.
                req = req.header(*k, hyper::header::HeaderValue::from_bytes(v.as_bytes())?);
            }
            let req = req.body(Full::new(body.clone()))?;
            let sent = tokio::time::timeout(REQUEST_TIMEOUT, async {
                sender.ready().await?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            })
            .await;
            match sent {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) if attempt == 0 && (e.is_closed() || e.is_incomplete_message()) => {
                    // The server closed an idle keep-alive connection: reopen once.
                    self.sender = None;
                }
                Ok(Err(e)) => {
                    self.sender = None;
                    return Err(e.into());
                }
                Err(_) => {
                    self.sender = None;
                    bail!("{method} {path}: no answer in {REQUEST_TIMEOUT:?}");
                }
            }
        }
        bail!("{method} {path}: connection closed twice")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8090/pub/u1?x=1").unwrap(),
            ("127.0.0.1:8090".to_owned(), "/pub/u1?x=1".to_owned())
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost".to_owned(), "/".to_owned())
        );
        assert!(split_url("ws://127.0.0.1/").is_err());
        assert_eq!(
            HttpConn::new("http://localhost").unwrap().target,
            "localhost:80"
        );
        assert_eq!(
            HttpConn::new("http://[::1]:81/x").unwrap().target,
            "[::1]:81"
        );
        assert_eq!(HttpConn::new("http://[::1]").unwrap().target, "[::1]:80");
    }
}
