//! The daemon's REST API as the client uses it: one keep-alive connection
//! ([`crate::http::HttpConn`]), the caller's identity on every request,
//! path segments percent-encoded (a run id of `..` or a tag with `?` stays
//! one segment), and every non-2xx answer turned into the server's own
//! error code and message.

use hyper::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::error::{Error, Listener, Result};
use crate::http::{split_url, HttpConn};

/// Bytes of a non-JSON error body quoted in a message.
const QUOTED_BODY_CHARS: usize = 200;

/// Characters left as they are in a path segment: RFC 3986 unreserved,
/// plus `:` and `@` (result refs `sha256:...`, user names).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b':')
    .remove(b'@');

/// Who the caller is.
#[derive(Debug, Clone)]
pub enum Identity {
    /// `--auth header`: the user name, sent as `X-User-ID` / `?username=`.
    User(String),
    /// `--auth jwt`: a token, sent as `Authorization: Bearer` / `?token=`.
    Token(String),
}

impl Identity {
    /// The identity from `--token` / `--user`, checked so that it can be
    /// sent at all; a token wins when both are given.
    pub fn from_flags(user: Option<&str>, token: Option<&str>) -> Result<Self> {
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            if !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::usage(
                    "--token (FLOWCAST_TOKEN) must be printable ASCII without spaces",
                ));
            }
            return Ok(Self::Token(t.to_owned()));
        }
        match user {
            Some(u) => flowcast_actors::user::validate_username(u)
                .map(|()| Self::User(u.to_owned()))
                .map_err(|m| Error::usage(format!("--user (FLOWCAST_USER): {m}"))),
            None => Err(Error::usage(
                "who are you? pass --user NAME or set FLOWCAST_USER (daemon in header auth), \
                 or --token / FLOWCAST_TOKEN (jwt auth)",
            )),
        }
    }
}

/// A REST client of one daemon.
pub struct Api {
    /// The base URL as given, without a trailing `/` (for messages).
    base: String,
    /// The base URL's path, without a trailing `/` (a gateway prefix, or "").
    prefix: String,
    conn: HttpConn,
    header: (&'static str, String),
}

/// A path segment, percent-encoded; `.` and `..` are encoded too, so that
/// no client or proxy on the way collapses them.
pub fn segment(s: &str) -> String {
    if s == "." || s == ".." {
        return s.replace('.', "%2E");
    }
    utf8_percent_encode(s, SEGMENT).to_string()
}

impl Api {
    /// A client of the API at `base` (`http://host:port`, maybe with a path).
    pub fn new(base: &str, id: &Identity) -> Result<Self> {
        let base = base.trim_end_matches('/');
        let bad = |why: String| Error::usage(format!("--api {base:?}: {why}"));
        if base.starts_with("https://") {
            return Err(bad(
                "https is not supported; reach the daemon over http:// (it speaks no TLS), \
                 e.g. through an SSH tunnel"
                    .into(),
            ));
        }
        match url::Url::parse(base) {
            Ok(u) if u.scheme() == "http" && u.has_host() => {}
            Ok(_) => {
                return Err(bad(
                    "expected an http:// URL, such as http://127.0.0.1:8081".into(),
                ))
            }
            Err(e) => return Err(bad(format!("not a URL: {e}"))),
        }
        let (_, path) = split_url(base).map_err(|e| bad(format!("{e:#}")))?;
        if path.contains(['?', '#']) {
            return Err(bad("the API URL takes no query or fragment".into()));
        }
        let conn = HttpConn::new(base).map_err(|e| bad(format!("{e:#}")))?;
        let header = match id {
            Identity::User(u) => ("x-user-id", u.clone()),
            Identity::Token(t) => ("authorization", format!("Bearer {t}")),
        };
        Ok(Self {
            base: base.to_owned(),
            prefix: path.trim_end_matches('/').to_owned(),
            conn,
            header,
        })
    }

    /// Sends a request to `/api/v1/<segments>`; returns the status and the
    /// JSON answer (`null` when empty), or the server's error.
    pub async fn call(
        &mut self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut path = format!("{}/api/v1", self.prefix);
        for s in segments {
            path.push('/');
            path.push_str(&segment(s));
        }
        if !query.is_empty() {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in query {
                q.append_pair(k, v);
            }
            path.push('?');
            path.push_str(&q.finish());
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [(self.header.0, self.header.1.as_str())];
        let (status, bytes) = self
            .conn
            .request(method.clone(), &path, &headers, body.into())
            .await
            .map_err(|e| Error::Unreachable {
                listener: Listener::Api,
                url: self.base.clone(),
                detail: format!("{e:#}"),
            })?;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return match parsed {
                Some(v) => Ok((status.as_u16(), v)),
                None if bytes.iter().all(u8::is_ascii_whitespace) => {
                    Ok((status.as_u16(), Value::Null))
                }
                None => Err(Error::Protocol(format!(
                    "{method} {path} answered {status} with a body that is not JSON"
                ))),
            };
        }
        let err = parsed.as_ref().and_then(|v| v.get("error"));
        let text = |k: &str| err.and_then(|e| e.get(k)).and_then(Value::as_str);
        Err(match (text("code"), text("message")) {
            (Some(code), Some(message)) => Error::Api {
                status: status.as_u16(),
                code: super::output::clean(code).into_owned(),
                message: super::output::clean(message).into_owned(),
            },
            _ => Error::Api {
                status: status.as_u16(),
                code: format!("http_{}", status.as_u16()),
                message: format!(
                    "{method} {path}: {}",
                    super::output::cut(
                        &super::output::clean(&String::from_utf8_lossy(&bytes)),
                        QUOTED_BODY_CHARS
                    )
                ),
            },
        })
    }

    async fn get(&mut self, segments: &[&str], query: &[(&str, String)]) -> Result<Value> {
        Ok(self.call(Method::GET, segments, query, None).await?.1)
    }

    async fn post(&mut self, segments: &[&str], body: &Value) -> Result<Value> {
        Ok(self.call(Method::POST, segments, &[], Some(body)).await?.1)
    }

    /// `POST /runs`: starts a run; the 202 answer.
    pub async fn start_run(&mut self, tag: &str, inputs: &Value) -> Result<Value> {
        self.post(&["runs"], &json!({"tag": tag, "inputs": inputs}))
            .await
    }

    /// `GET /runs/{id}`.
    pub async fn run(&mut self, id: &str) -> Result<Value> {
        self.get(&["runs", id], &[]).await
    }

    /// `GET /runs/{id}/events`: the run's events in order.
    pub async fn run_events(&mut self, id: &str) -> Result<Vec<Value>> {
        let v = self.get(&["runs", id, "events"], &[]).await?;
        match v.get("events") {
            Some(Value::Array(a)) => Ok(a.clone()),
            _ => Err(Error::Protocol("the run's events are not a list".into())),
        }
    }

    /// `GET /runs?limit=N&cursor=C`: a page of runs, newest first, and the
    /// cursor of the next page (none on the last, or from a daemon that
    /// does not page).
    pub async fn runs_page(
        &mut self,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>)> {
        let mut q = vec![("limit", limit.to_string())];
        if let Some(c) = cursor {
            q.push(("cursor", c.to_owned()));
        }
        let v = self.get(&["runs"], &q).await?;
        let runs = match v.get("runs") {
            Some(Value::Array(a)) => a.clone(),
            _ => return Err(Error::Protocol("the run list has no \"runs\"".into())),
        };
        let next = v
            .get("next_cursor")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        Ok((runs, next))
    }

    /// `POST /runs/{id}/cancel`.
    pub async fn cancel(&mut self, id: &str) -> Result<Value> {
        self.call(Method::POST, &["runs", id, "cancel"], &[], None)
            .await
            .map(|(_, v)| v)
    }

    /// `POST /runs/{id}/nodes/{node}/approve|reject` with `{"comment"}`.
    pub async fn decide(
        &mut self,
        id: &str,
        node: &str,
        approve: bool,
        comment: Option<&str>,
    ) -> Result<Value> {
        let verb = if approve { "approve" } else { "reject" };
        let body = match comment {
            Some(c) => json!({ "comment": c }),
            None => json!({}),
        };
        self.post(&["runs", id, "nodes", node, verb], &body).await
    }

    /// `POST /runs/{id}/signals/{name}` with the payload as the body.
    pub async fn signal(&mut self, id: &str, name: &str, payload: &Value) -> Result<Value> {
        self.post(&["runs", id, "signals", name], payload).await
    }

    /// `GET /results/{ref}`: a node's output.
    pub async fn result(&mut self, r: &str) -> Result<Value> {
        self.get(&["results", r], &[]).await
    }

    /// `GET /workflows`: entries as objects with at least `tag` (a daemon
    /// that lists bare tags gets them wrapped).
    pub async fn workflows(&mut self) -> Result<Vec<Value>> {
        let v = self.get(&["workflows"], &[]).await?;
        let Some(Value::Array(list)) = v.get("workflows") else {
            return Err(Error::Protocol(
                "the workflow list has no \"workflows\"".into(),
            ));
        };
        Ok(list
            .iter()
            .map(|w| match w {
                Value::String(tag) => json!({ "tag": tag }),
                other => other.clone(),
            })
            .collect())
    }

    /// `GET /workflows/{tag}`.
    pub async fn workflow(&mut self, tag: &str) -> Result<Value> {
        self.get(&["workflows", tag], &[]).await
    }

    /// `PUT /workflows/{tag}`: the answer, and whether it was new (201).
    pub async fn put_workflow(&mut self, tag: &str, wf: &Value) -> Result<(bool, Value)> {
        let (status, v) = self
            .call(Method::PUT, &["workflows", tag], &[], Some(wf))
            .await?;
        Ok((status == 201, v))
    }

    /// `DELETE /workflows/{tag}`.
    pub async fn delete_workflow(&mut self, tag: &str) -> Result<()> {
        self.call(Method::DELETE, &["workflows", tag], &[], None)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_stay_segments() {
        assert_eq!(segment("flight-search"), "flight-search");
        assert_eq!(segment("sha256:ab"), "sha256:ab");
        assert_eq!(segment("a/b?c#d e"), "a%2Fb%3Fc%23d%20e");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("."), "%2E");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn identity_is_checked_before_it_is_sent() {
        assert!(matches!(
            Identity::from_flags(Some("bob@example.com"), None),
            Ok(Identity::User(u)) if u == "bob@example.com"
        ));
        assert!(matches!(
            Identity::from_flags(Some("bob"), Some("t.k.n")),
            Ok(Identity::Token(_))
        ));
        for bad in ["", "a\nb", "a b", &"x".repeat(200)] {
            assert!(Identity::from_flags(Some(bad), None).is_err(), "{bad:?}");
        }
        assert!(Identity::from_flags(None, Some("a b")).is_err());
        assert!(Identity::from_flags(None, None).is_err());
    }

    #[test]
    fn api_urls_are_checked() {
        let id = Identity::User("u".into());
        assert!(Api::new("https://x", &id).is_err());
        assert!(Api::new("ftp://x", &id).is_err());
        assert!(Api::new("http://x/?q", &id).is_err());
        assert!(Api::new("http://[::1", &id).is_err());
        assert!(Api::new("http://", &id).is_err());
        let a = Api::new("http://gw:80/flowcast/", &id).unwrap();
        assert_eq!(a.prefix, "/flowcast");
        assert_eq!(Api::new("http://h:1", &id).unwrap().prefix, "");
    }
}
