//! Who is calling: the username of a request.
//!
//! In `header` mode (the seed's model, for use behind a gateway) the
//! username is the `X-User-ID` header. It names the user's channel and keys,
//! so it is validated (see `flowcast_actors::user`).

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use flowcast_actors::user::validate_username;

use crate::error::ApiError;

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
    let mut values = req.headers().get_all(USER_HEADER);
    let Some(v) = values.next() else {
        return Err(ApiError::unauthorized(format!(
            "missing {USER_HEADER} header"
        )));
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
    Ok(User(name.to_owned()))
}
