//! Client authentication by API key, compared in constant time.

use crate::config::{Client, Config, Secret};
use crate::error::GatewayError;
use subtle::ConstantTimeEq;

/// The bearer token of an `Authorization` header value, if it has one.
pub fn bearer(header: Option<&[u8]>) -> Option<&[u8]> {
    let value = header?;
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares without an early exit on the first differing byte. Only the length can leak, and
/// keys are not secret in their length.
pub fn key_matches(expected: &Secret, presented: &[u8]) -> bool {
    expected.expose().as_bytes().ct_eq(presented).into()
}

/// `Ok(None)` when the config has no `clients` (no authentication); the matching client
/// otherwise. Every configured key is compared, whatever matches first.
pub fn authenticate<'c>(
    config: &'c Config,
    authorization: Option<&[u8]>,
) -> Result<Option<&'c Client>, GatewayError> {
    let Some(clients) = &config.clients else {
        return Ok(None);
    };
    let token = bearer(authorization).ok_or(GatewayError::InvalidApiKey)?;
    let mut found = None;
    for client in clients {
        if let Some(key) = &client.api_key {
            if key_matches(key, token) && found.is_none() {
                found = Some(client);
            }
        }
    }
    found.map(Some).ok_or(GatewayError::InvalidApiKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer() {
        assert_eq!(bearer(Some(b"Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(bearer(Some(b"Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn compares_keys() {
        let k = Secret::new("secret-key".into());
        assert!(key_matches(&k, b"secret-key"));
        assert!(!key_matches(&k, b"secret-kez"));
        assert!(!key_matches(&k, b"secret"));
    }
}
