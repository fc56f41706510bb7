//! What a worker's session token is checked against: the token itself (a controller that made
//! it or was given it), or only its SHA-256 (a controller rebuilt after a restart from what
//! was written down, since the token itself is kept in a place it may not read: the Kubernetes
//! operator keeps the hash on the LoadTest's status and never reads the session Secret). Both
//! compare in constant time, and neither shows a token in `Debug`.

use std::fmt;

use subtle::ConstantTimeEq;

/// Bytes of a SHA-256 digest.
pub const SHA256_BYTES: usize = 32;

/// What a Hello's `session_token` must match.
#[derive(Clone, PartialEq, Eq)]
pub enum SessionKey {
    /// The token: a Hello must carry exactly these bytes.
    Token(String),
    /// The token's SHA-256: a Hello's token is hashed and the digests compared. The token is
    /// a random secret of at least [`pacer_proto::MIN_SESSION_TOKEN_BYTES`], so its digest
    /// tells nobody the token (a preimage of SHA-256 is out of reach).
    Sha256([u8; SHA256_BYTES]),
}

/// A written-down digest that is not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{field}: {len} characters: a SHA-256 in hex has 64")]
    Length { field: &'static str, len: usize },
    #[error("{field}: not hexadecimal (0-9, a-f)")]
    NotHex { field: &'static str },
}

impl SessionKey {
    /// Whether `given` (a Hello's token) is this test's token, in constant time. (A length
    /// mismatch against a [`SessionKey::Token`] returns at once: the length of a generated
    /// token is no secret; a digest has one length.)
    pub fn accepts(&self, given: &str) -> bool {
        match self {
            SessionKey::Token(token) => bool::from(given.as_bytes().ct_eq(token.as_bytes())),
            SessionKey::Sha256(digest) => bool::from(sha256(given).ct_eq(digest)),
        }
    }

    /// The token, when this key is one (the controller that made it tells its workers).
    pub fn token(&self) -> Option<&str> {
        match self {
            SessionKey::Token(t) => Some(t),
            SessionKey::Sha256(_) => None,
        }
    }

    /// The digest to write down for a later [`SessionKey::from_sha256_hex`]: lowercase hex.
    pub fn sha256_hex(&self) -> String {
        match self {
            SessionKey::Token(t) => sha256_hex(t.as_bytes()),
            SessionKey::Sha256(d) => hex(d),
        }
    }

    /// A key from a digest written by [`SessionKey::sha256_hex`]; `field` names where it was
    /// read in an error.
    pub fn from_sha256_hex(field: &'static str, hex: &str) -> Result<Self, KeyError> {
        if hex.len() != SHA256_BYTES * 2 {
            return Err(KeyError::Length {
                field,
                len: hex.chars().count(),
            });
        }
        // Checked first: `from_str_radix` alone would take a `+`.
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::NotHex { field });
        }
        let mut digest = [0u8; SHA256_BYTES];
        for (i, byte) in digest.iter_mut().enumerate() {
            let pair = hex
                .get(i * 2..i * 2 + 2)
                .ok_or(KeyError::NotHex { field })?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| KeyError::NotHex { field })?;
        }
        Ok(SessionKey::Sha256(digest))
    }

    /// How many bytes the token has, when this key is one (a digest's token is at least as
    /// long as a token had to be when it was made).
    pub(crate) fn token_len(&self) -> Option<usize> {
        self.token().map(str::len)
    }
}

impl From<String> for SessionKey {
    fn from(token: String) -> Self {
        SessionKey::Token(token)
    }
}

impl From<&str> for SessionKey {
    fn from(token: &str) -> Self {
        SessionKey::Token(token.to_string())
    }
}

/// Never the token; a digest is no secret, but it is shortened all the same.
impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionKey::Token(_) => f.write_str("SessionKey::Token(<redacted>)"),
            SessionKey::Sha256(_) => {
                let hex = self.sha256_hex();
                write!(f, "SessionKey::Sha256({}…)", &hex[..8])
            }
        }
    }
}

/// SHA-256 of `text` (aws-lc-rs, the project's one crypto provider).
fn sha256(text: &str) -> [u8; SHA256_BYTES] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let mut out = [0u8; SHA256_BYTES];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 of `bytes` in lowercase hex (what is written down: a token's, a plan's).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_digest_accepts_its_token_only() {
        let hex = SessionKey::from(TOKEN).sha256_hex();
        // SHA-256 of the ASCII token (sha256sum agrees).
        assert_eq!(hex.len(), 64);
        let key = SessionKey::from_sha256_hex("status.sessionTokenSha256", &hex).expect("hex");
        assert!(key.accepts(TOKEN));
        assert!(!key.accepts("0123456789abcdef0123456789abcdeX"));
        assert!(!key.accepts(""));
        assert!(!key.accepts(&hex), "the digest is not the token");
        assert_eq!(key.sha256_hex(), hex);
        assert_eq!(key.token(), None);
    }

    #[test]
    fn a_known_digest() {
        assert_eq!(
            SessionKey::from("abc").sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_token_accepts_itself_only() {
        let key = SessionKey::from(TOKEN);
        assert!(key.accepts(TOKEN));
        assert!(!key.accepts("0123456789abcdef0123456789abcde"));
        assert_eq!(key.token(), Some(TOKEN));
    }

    #[test]
    fn a_bad_digest_is_refused_naming_the_field() {
        let f = "status.sessionTokenSha256";
        assert_eq!(
            SessionKey::from_sha256_hex(f, "abc"),
            Err(KeyError::Length { field: f, len: 3 })
        );
        let not_hex = "g".repeat(64);
        assert!(SessionKey::from_sha256_hex(f, &"+f".repeat(32)).is_err());
        assert_eq!(
            SessionKey::from_sha256_hex(f, &not_hex),
            Err(KeyError::NotHex { field: f })
        );
        // Multi-byte characters never split a byte pair into a panic.
        let wide = "é".repeat(32);
        assert!(SessionKey::from_sha256_hex(f, &wide).is_err());
        assert!(
            KeyError::NotHex { field: f }
                .to_string()
                .starts_with("status.sessionTokenSha256: ")
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let text = format!("{:?}", SessionKey::from(TOKEN));
        assert!(!text.contains(TOKEN), "{text}");
    }
}
