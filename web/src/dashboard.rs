//! The dashboard: a single page served at `/` of the API listener, with its
//! assets (`web/dashboard/`: plain HTML, CSS and ES modules, no build step)
//! compiled into the binary, so it needs no network and no CDN.
//!
//! The page talks to the REST API of the origin it came from and follows
//! events over SSE on the fan-out listener, another origin (another port,
//! perhaps another host). It learns that URL from `/ui/config.json`: the
//! operator's `--events-url`, else this request's host at the fan-out
//! listener's port. The Content-Security-Policy allows scripts, styles and
//! connections to exactly these origins and nothing else: the page loads
//! nothing from outside, and injected markup could not phone home.
//! Identity is never a cookie: the page keeps the username or token in
//! session storage and sends it as `X-User-ID` / `Authorization: Bearer`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::auth::Auth;
use crate::state::AppState;

/// Where browsers reach the fan-out listener's `/events`.
#[derive(Debug, Clone, Default)]
pub struct DashboardConfig {
    /// Set by the operator (`--events-url`): used as is.
    pub events_url: Option<String>,
    /// Else: the fan-out listener's port on the host the page was loaded
    /// from (`None`: this process has no fan-out listener).
    pub events_port: Option<u16>,
}

/// An asset: path under `/ui/`, content type, bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// An asset of `web/dashboard/`, compiled in.
macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_str!(concat!("../dashboard/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = &[
    asset!("app.js", JS),
    asset!("dom.js", JS),
    asset!("api.js", JS),
    asset!("graph.js", JS),
    asset!("runs.js", JS),
    asset!("run.js", JS),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

const INDEX: &str = include_str!("../dashboard/index.html");

/// Registers `/`, `/ui/config.json` and `/ui/{asset}`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/ui/config.json", web::get().to(config))
        .route("/ui/{name}", web::get().to(asset));
}

/// The host part of a `Host` value, if it is a plain name or address (a
/// value that could smuggle anything into a header or a URL is refused).
fn host_only(host: &str) -> Option<&str> {
    let h = if let Some(v6) = host.strip_prefix('[') {
        let end = v6.find(']')?;
        &host[..end + 2]
    } else {
        host.split(':').next()?
    };
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    ok.then_some(h)
}

/// The events URL for a page loaded through `req`.
fn events_url(cfg: &DashboardConfig, req: &HttpRequest) -> Option<String> {
    if let Some(u) = &cfg.events_url {
        return Some(u.clone());
    }
    let port = cfg.events_port?;
    let info = req.connection_info();
    let host = host_only(info.host())?;
    Some(format!("http://{host}:{port}/events"))
}

/// `scheme://authority` of a URL, for the CSP (None if it is not http(s)).
fn origin_of(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = &url[..scheme.len() + 3 + end];
    origin
        .chars()
        .all(|c| c.is_ascii_graphic() && c != ';' && c != ',')
        .then_some(origin)
}

fn with_security_headers(mut resp: HttpResponse, connect: Option<&str>) -> HttpResponse {
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'{}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        connect.map(|c| format!(" {c}")).unwrap_or_default()
    );
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // A token in the page's URL must not leak through Referer.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

async fn index(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    let events = events_url(&st.dashboard, &req);
    let resp = HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(INDEX);
    with_security_headers(resp, events.as_deref().and_then(origin_of))
}

async fn config(req: HttpRequest, st: web::Data<AppState>) -> HttpResponse {
    let auth = match st.auth {
        Auth::Header => "header",
        Auth::Jwt(_) => "jwt",
    };
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "auth": auth,
            "events_url": events_url(&st.dashboard, &req),
        }))
}

async fn asset(name: web::Path<String>) -> Result<HttpResponse, crate::ApiError> {
    let Some(a) = ASSETS.iter().find(|a| a.name == name.as_str()) else {
        return Err(crate::ApiError::not_found(format!(
            "no dashboard asset {:?}",
            name.as_str()
        )));
    };
    Ok(with_security_headers(
        HttpResponse::Ok()
            .content_type(a.content_type)
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(a.body),
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_plain_names_or_addresses() {
        assert_eq!(host_only("127.0.0.1:8081"), Some("127.0.0.1"));
        assert_eq!(host_only("localhost"), Some("localhost"));
        assert_eq!(host_only("[::1]:8081"), Some("[::1]"));
        assert_eq!(host_only("evil.com;x=y"), None);
        assert_eq!(host_only("a b"), None);
        assert_eq!(host_only(""), None);
        assert_eq!(host_only("[::1"), None);
    }

    #[test]
    fn origins_of_urls() {
        assert_eq!(
            origin_of("https://ev.example.com/events"),
            Some("https://ev.example.com")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8084/events?x"),
            Some("http://127.0.0.1:8084")
        );
        assert_eq!(origin_of("javascript:alert(1)"), None);
        assert_eq!(origin_of("http://a;b/"), None);
    }
}
