//! Bearer tokens of the OAuth2 client-credentials grant: issuing random opaque tokens,
//! checking them on API requests, expiry and revocation (what `force401` uses).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;

/// Hard cap of remembered tokens; beyond it the oldest are forgotten (and answer 401), so a
/// client looping on `/oauth/token` without a rate limit cannot exhaust memory.
const MAX_TOKENS: usize = 200_000;

/// What the server knows about a token it issued.
#[derive(Debug, Clone)]
pub(crate) struct TokenInfo {
    /// `token#N`: names the token in stats and limit keys without revealing it.
    pub label: Arc<str>,
    pub client: Arc<str>,
    pub org: Arc<str>,
    pub expires_us: u64,
    pub revoked: bool,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenProblem {
    Unknown,
    Expired,
    Revoked,
}

#[derive(Debug, Default)]
pub(crate) struct TokenStore {
    tokens: HashMap<String, TokenInfo>,
    /// Issue order, which is also expiry order since the lifetime is fixed per server.
    order: VecDeque<(u64, String)>,
    seq: u64,
}

impl TokenStore {
    /// Issues a new random token valid until `expires_us`.
    pub(crate) fn issue(
        &mut self,
        client: &str,
        org: &str,
        now_us: u64,
        expires_us: u64,
    ) -> String {
        self.prune(now_us);
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        self.seq += 1;
        let info = TokenInfo {
            label: format!("token#{}", self.seq).into(),
            client: client.into(),
            org: org.into(),
            expires_us,
            revoked: false,
        };
        self.tokens.insert(token.clone(), info);
        self.order.push_back((expires_us, token.clone()));
        token
    }

    fn prune(&mut self, now_us: u64) {
        while let Some((exp, _)) = self.order.front() {
            if *exp > now_us && self.order.len() < MAX_TOKENS {
                break;
            }
            if let Some((_, t)) = self.order.pop_front() {
                self.tokens.remove(&t);
            }
        }
    }

    pub(crate) fn check(&self, token: &str, now_us: u64) -> Result<TokenInfo, TokenProblem> {
        let info = self.tokens.get(token).ok_or(TokenProblem::Unknown)?;
        if info.revoked {
            Err(TokenProblem::Revoked)
        } else if info.expires_us <= now_us {
            Err(TokenProblem::Expired)
        } else {
            Ok(info.clone())
        }
    }

    pub(crate) fn revoke(&mut self, token: &str) {
        if let Some(info) = self.tokens.get_mut(token) {
            info.revoked = true;
        }
    }

    /// Tokens neither expired nor revoked.
    pub(crate) fn live(&self, now_us: u64) -> u64 {
        self.tokens
            .values()
            .filter(|t| !t.revoked && t.expires_us > now_us)
            .count() as u64
    }
}

/// The bearer token of an `Authorization` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bearer<'a> {
    Missing,
    /// Not `Bearer <token>` (another scheme, non-ASCII bytes, empty token...).
    Malformed,
    Token(&'a str),
}

pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Bearer<'_> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Bearer::Missing;
    };
    let Ok(value) = value.to_str() else {
        return Bearer::Malformed;
    };
    let mut parts = value.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or_default();
    let token = parts.next().unwrap_or_default().trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Bearer::Malformed;
    }
    Bearer::Token(token)
}

/// Client credentials from HTTP Basic auth: `Ok(None)` when there is no Basic header,
/// `Err(())` when there is one that cannot be decoded.
pub(crate) fn basic_credentials(
    headers: &axum::http::HeaderMap,
) -> Result<Option<(String, String)>, ()> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ())?.trim();
    let (scheme, rest) = value.split_once(' ').ok_or(())?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(());
    }
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| ())?;
    let decoded = String::from_utf8(decoded).map_err(|_| ())?;
    let (id, secret) = decoded.split_once(':').ok_or(())?;
    Ok(Some((id.to_owned(), secret.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};

    fn with_auth(v: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        h
    }

    #[test]
    fn tokens_expire_and_are_revoked() {
        let mut s = TokenStore::default();
        let t = s.issue("c", "o", 0, 1000);
        assert_eq!(&*s.check(&t, 10).unwrap().label, "token#1");
        assert_eq!(s.check(&t, 1000).unwrap_err(), TokenProblem::Expired);
        assert_eq!(s.check("nope", 10).unwrap_err(), TokenProblem::Unknown);
        s.revoke(&t);
        assert_eq!(s.check(&t, 10).unwrap_err(), TokenProblem::Revoked);
        // Expired tokens are forgotten when the next one is issued.
        let t2 = s.issue("c", "o", 2000, 3000);
        assert_eq!(s.check(&t, 2000).unwrap_err(), TokenProblem::Unknown);
        assert_eq!(s.live(2000), 1);
        assert_ne!(t, t2);
    }

    #[test]
    fn parses_authorization_headers() {
        assert_eq!(bearer(&HeaderMap::new()), Bearer::Missing);
        assert_eq!(bearer(&with_auth(b"Bearer abc")), Bearer::Token("abc"));
        assert_eq!(bearer(&with_auth(b"bearer  abc ")), Bearer::Token("abc"));
        assert_eq!(bearer(&with_auth(b"Bearer")), Bearer::Malformed);
        assert_eq!(bearer(&with_auth(b"Basic abc")), Bearer::Malformed);
        assert_eq!(bearer(&with_auth(b"Bearer a b")), Bearer::Malformed);
        assert_eq!(bearer(&with_auth(b"Bearer \xff\xfe")), Bearer::Malformed);

        let ok = format!("Basic {}", STANDARD.encode("id:se:cret"));
        assert_eq!(
            basic_credentials(&with_auth(ok.as_bytes())),
            Ok(Some(("id".into(), "se:cret".into())))
        );
        assert_eq!(basic_credentials(&HeaderMap::new()), Ok(None));
        assert!(basic_credentials(&with_auth(b"Basic !!!")).is_err());
        assert!(basic_credentials(&with_auth(b"Basic")).is_err());
        let no_colon = format!("Basic {}", STANDARD.encode("idsecret"));
        assert!(basic_credentials(&with_auth(no_colon.as_bytes())).is_err());
    }
}
