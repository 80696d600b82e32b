//! Usernames: the tenancy key.
//!
//! A username names a Redis channel (`workflow:events:{username}`) and keys
//! in Redis, so it must be printable and bounded. The seed's
//! `bob@example.com` is valid; empty names, control characters and names over
//! [`MAX_USERNAME_BYTES`] are not.

/// Longest accepted username, in bytes.
pub const MAX_USERNAME_BYTES: usize = 128;

/// Checks a username, returning a message that says what is wrong.
pub fn validate_username(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("username is empty".into());
    }
    if name.len() > MAX_USERNAME_BYTES {
        return Err(format!(
            "username is {} bytes long; the limit is {MAX_USERNAME_BYTES}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "username contains a forbidden character (U+{:04X})",
            c as u32
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_seeds_names() {
        for n in ["test-user", "alice", "bob@example.com", "ünïcode"] {
            assert!(validate_username(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_empty_control_and_long_names() {
        assert!(validate_username("").is_err());
        assert!(validate_username("a\nb").is_err());
        assert!(validate_username("a b").is_err());
        assert!(validate_username("a\u{7f}").is_err());
        assert!(validate_username(&"x".repeat(MAX_USERNAME_BYTES)).is_ok());
        assert!(validate_username(&"x".repeat(MAX_USERNAME_BYTES + 1)).is_err());
    }
}
