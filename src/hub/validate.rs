//! Bounds on free text and identifiers that come from clients.

use crate::error::{ErrorCode, HubError, HubResult};

/// Trimmed text of 1 to `max_chars` characters with no control characters.
pub fn text(field: &str, value: &str, max_chars: usize) -> HubResult<String> {
    let value = value.trim();
    let chars = value.chars().count();
    if chars == 0 || chars > max_chars {
        return Err(HubError::new(
            ErrorCode::ValidationFailed,
            format!("`{field}` must be 1 to {max_chars} characters"),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(HubError::new(
            ErrorCode::ValidationFailed,
            format!("`{field}` must not contain control characters"),
        ));
    }
    Ok(value.to_string())
}

/// Free text that may span lines (a chat message): 1 to `max_chars` characters, no control
/// characters other than line breaks and tabs.
pub fn message(field: &str, value: &str, max_chars: usize) -> HubResult<String> {
    let chars = value.chars().count();
    if value.trim().is_empty() || chars > max_chars {
        return Err(HubError::new(
            ErrorCode::ValidationFailed,
            format!("`{field}` must be 1 to {max_chars} characters"),
        ));
    }
    if value.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err(HubError::new(
            ErrorCode::ValidationFailed,
            format!("`{field}` must not contain control characters"),
        ));
    }
    Ok(value.to_string())
}

/// An identifier: 1 to `max` bytes of ASCII letters, digits and `-_.:@`.
pub fn identifier(field: &str, value: &str, max: usize) -> HubResult<String> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b));
    if ok {
        Ok(value.to_string())
    } else {
        Err(HubError::new(
            ErrorCode::ValidationFailed,
            format!("`{field}` must be 1 to {max} characters of letters, digits and -_.:@"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_bounds() {
        assert_eq!(text("name", "  Ann  ", 10).unwrap(), "Ann");
        assert!(text("name", "   ", 10).is_err());
        assert!(text("name", &"é".repeat(11), 10).is_err());
        assert!(text("name", &"é".repeat(10), 10).is_ok());
        assert!(text("name", "a\u{0}b", 10).is_err());
    }

    #[test]
    fn message_bounds() {
        assert_eq!(message("body", "two\nlines", 20).unwrap(), "two\nlines");
        assert!(message("body", " \n ", 20).is_err());
        assert!(message("body", "bell\u{7}", 20).is_err());
        assert!(message("body", &"x".repeat(21), 20).is_err());
    }

    #[test]
    fn identifier_bounds() {
        assert!(identifier("subject", "dr.jones@example-1", 64).is_ok());
        assert!(identifier("subject", "", 64).is_err());
        assert!(identifier("subject", "a b", 64).is_err());
        assert!(identifier("subject", &"a".repeat(65), 64).is_err());
    }
}
