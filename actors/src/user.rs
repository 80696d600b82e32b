//! Usernames: the tenancy key.
//!
//! A username names a Redis channel (`workflow:events:{username}`) and keys
//! in Redis, and people read it in logs and dashboards, so it must be
//! bounded and must not hide anything: two names that look the same must be
//! the same name. It is 1–[`MAX_USERNAME_BYTES`] bytes of UTF-8 without
//! control (Cc), format (Cf: zero-width characters, bidi controls, BOM),
//! separator (Zs, Zl, Zp) or White_Space characters; otherwise any
//! character, so `bob@example.com` and `zoë` are valid. Names are
//! case-sensitive and compared byte for byte (no normalisation): `alice`
//! and `Alice` are two users.
//!
//! Every place a username enters the daemon (the `X-User-ID` header, a
//! token's subject, the WebSocket `username`) checks it with
//! [`validate_username`].

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Longest accepted username, in bytes.
pub const MAX_USERNAME_BYTES: usize = 128;

/// Why a character may not appear in a username, if it may not.
fn forbidden(c: char) -> Option<&'static str> {
    match c.general_category() {
        GeneralCategory::Control => Some("a control character"),
        GeneralCategory::Format => Some("an invisible format character (zero-width or bidi)"),
        GeneralCategory::SpaceSeparator => Some("a space"),
        GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
            Some("a line or paragraph separator")
        }
        // White_Space beyond the categories above (tab, line feed, ...).
        _ if c.is_whitespace() => Some("whitespace"),
        _ => None,
    }
}

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
    if let Some((i, c, why)) = name
        .char_indices()
        .find_map(|(i, c)| forbidden(c).map(|why| (i, c, why)))
    {
        return Err(format!(
            "username contains {why} (U+{:04X}) at byte {i}",
            c as u32
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_seeds_names_and_letters_of_any_script() {
        for n in [
            "test-user",
            "alice",
            "Alice",
            "bob@example.com",
            "ünïcode",
            "zoë",
            "Ελένη",
            "山田",
            "user:with{braces}",
            "a_b.c+d",
        ] {
            assert!(validate_username(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn rejects_empty_and_long_names() {
        assert!(validate_username("").is_err());
        assert!(validate_username(&"x".repeat(MAX_USERNAME_BYTES)).is_ok());
        assert!(validate_username(&"x".repeat(MAX_USERNAME_BYTES + 1)).is_err());
        // The limit is in bytes, not characters: 64 two-byte letters fit,
        // 65 do not.
        assert!(validate_username(&"é".repeat(64)).is_ok());
        assert!(validate_username(&"é".repeat(65)).is_err());
    }

    #[test]
    fn rejects_invisible_control_separator_and_space_characters() {
        for (c, name) in [
            ('\u{0}', "NUL"),
            ('\n', "line feed"),
            ('\t', "tab"),
            ('\u{7f}', "DEL"),
            ('\u{85}', "next line"),
            (' ', "space"),
            ('\u{a0}', "no-break space"),
            ('\u{2003}', "em space"),
            ('\u{3000}', "ideographic space"),
            ('\u{200b}', "zero-width space"),
            ('\u{200c}', "zero-width non-joiner"),
            ('\u{200d}', "zero-width joiner"),
            ('\u{2060}', "word joiner"),
            ('\u{feff}', "BOM"),
            ('\u{ad}', "soft hyphen"),
            ('\u{200e}', "left-to-right mark"),
            ('\u{202e}', "right-to-left override"),
            ('\u{2066}', "left-to-right isolate"),
            ('\u{2028}', "line separator"),
            ('\u{2029}', "paragraph separator"),
            ('\u{e0041}', "tag latin capital A"),
        ] {
            for n in [
                format!("alice{c}"),
                format!("{c}alice"),
                format!("al{c}ice"),
            ] {
                let e = validate_username(&n).expect_err(name);
                assert!(e.contains(&format!("U+{:04X}", c as u32)), "{name}: {e}");
            }
            assert!(validate_username(&c.to_string()).is_err(), "{name} alone");
        }
    }
}
