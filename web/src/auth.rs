//! Who is calling: the username of a request.
//!
//! In `header` mode (the seed's model, for use behind a gateway) the
//! username is the `X-User-ID` header. In `jwt` mode it is the `sub` of an
//! HS256 token signed with the configured secret (`Authorization: Bearer`
//! on REST, `?token=` on the WebSocket). Either way it names the user's
//! channel and keys, so it is validated (see `flowcast_actors::user`).
//!
//! REST handlers take the caller as a [`User`] extractor; the streaming
//! endpoints (WebSocket, SSE) call [`stream_user`], which also refuses a
//! request whose `X-User-ID` and `username` disagree.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::header::HeaderMap;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest};
use flowcast_actors::user::validate_username;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

/// How callers are identified.
#[derive(Clone)]
pub enum Auth {
    /// Trust `X-User-ID` / `username` set by a gateway in front.
    Header,
    /// Verify HS256 tokens; the username is the token's subject.
    Jwt(Arc<JwtVerifier>),
}

/// Verifies HS256 tokens signed with one shared secret.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl JwtVerifier {
    /// A verifier for tokens signed with `secret`; `exp` is required.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The token's subject, checked as a username.
    pub fn username(&self, token: &str) -> Result<String, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
        validate_username(&data.claims.sub)
            .map_err(|m| ApiError::unauthorized(format!("token subject: {m}")))?;
        Ok(data.claims.sub)
    }
}

/// The user of a streaming request (the WebSocket `/ws`, SSE `/events`),
/// from its query's `token` and `username` and its headers. Both
/// transports call this, so one rule holds for both:
///
/// - `jwt` mode: the token's subject; a `username` that differs is a 403.
/// - `header` mode: `username`, validated. A request that also carries
///   `X-User-ID` (set by the gateway in front) must name the same user, or
///   it is refused with 403 before anything is streamed; without the
///   header (the seed's browser snippet) `username` alone is taken, and
///   without `username` the header is.
pub fn stream_user(
    auth: &Auth,
    headers: &HeaderMap,
    token: Option<&str>,
    username: Option<&str>,
) -> Result<String, ApiError> {
    let claimed = match auth {
        Auth::Jwt(v) => {
            let Some(token) = token else {
                return Err(ApiError::unauthorized("missing token query parameter"));
            };
            let sub = v.username(token)?;
            if username.is_some_and(|u| u != sub) {
                return Err(forbidden("username does not match the token's subject"));
            }
            return Ok(sub);
        }
        Auth::Header => header_user(headers)?,
    };
    let Some(username) = username else {
        return claimed.ok_or_else(|| {
            ApiError::bad_request(
                "missing_username",
                "the username query parameter is required",
            )
        });
    };
    validate_username(username)
        .map_err(|m| ApiError::bad_request("invalid_user", format!("username: {m}")))?;
    match claimed {
        Some(c) if c != username => Err(forbidden(format!(
            "username {username:?} does not match the {USER_HEADER} header"
        ))),
        _ => Ok(username.to_owned()),
    }
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The header carrying the username.
pub const USER_HEADER: &str = "X-User-ID";

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct User(pub String);

impl FromRequest for User {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(user_of(req))
    }
}

fn user_of(req: &HttpRequest) -> Result<User, ApiError> {
    let auth = req
        .app_data::<web::Data<AppState>>()
        .map(|st| st.auth.clone());
    if let Some(Auth::Jwt(v)) = auth {
        let token = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        return v.username(token.trim()).map(User);
    }
    match header_user(req.headers())? {
        Some(name) => Ok(User(name)),
        None => Err(ApiError::unauthorized(format!(
            "missing {USER_HEADER} header"
        ))),
    }
}

/// The user named by the `X-User-ID` header, validated; `None` without one.
pub fn header_user(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(USER_HEADER);
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        // Which one a gateway set is unknowable: never guess an identity.
        return Err(ApiError::bad_request(
            "invalid_user",
            format!("{USER_HEADER} is given more than once"),
        ));
    }
    let name = std::str::from_utf8(v.as_bytes()).map_err(|_| {
        ApiError::bad_request("invalid_user", format!("{USER_HEADER} is not UTF-8"))
    })?;
    validate_username(name)
        .map_err(|m| ApiError::bad_request("invalid_user", format!("{USER_HEADER}: {m}")))?;
    Ok(Some(name.to_owned()))
}
