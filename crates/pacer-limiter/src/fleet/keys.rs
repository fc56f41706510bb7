//! Where a fleet's state lives in Redis. Every key of one fleet carries the same hash tag, so
//! they all sit in one Redis Cluster slot: the lease script grants across all the limits of a
//! request atomically and the last worker deletes every key in one script, which Cluster allows
//! only within one slot.
//!
//! A fleet is a test (`{pacer:<test>}`), or a named budget (`{pacer:budget:<name>}`) that the
//! processes of many tests share: then the limits, tokens, workers and events are the budget's,
//! so every process naming it paces from one GCRA per limit and one token per credential.
//!
//! ```text
//! <tag>:limit:<name>     one limit's GCRA state (TAT, pause, learned rate), PX = ahead + keep
//! <tag>:learn:<name>     HASH: an adaptive limit's learner (owner, turn, version, encoded
//!                        learner) and the fleet's answers not yet learned from, PX = keep
//! <tag>:def:<name>       a budget's record of a limit's definition and the test that declared
//!                        it first, PX = the budget's idle time, refreshed by every heartbeat
//! <tag>:workers          ZSET worker id -> last heartbeat (ms, Redis clock), PEXPIRE 45 s
//! <tag>:token:<cred>     the shared bearer token, PX = expires_in - refreshBefore
//! <tag>:lock:<cred>      SET NX PX: the one refresher of that token
//! <tag>:events           Pub/Sub channel: pauses and new tokens
//! <tag>:tests            a budget's registry: HASH test id -> its weight, backlog, granted
//!                        rate and last sighting ([`super::fair`]), PX = the budget's idle
//! <tag>:limit:<name>:test:<id>  a budget's test's share of a limit (its own GCRA TAT)
//! <tag>:granted          HASH limit -> slots granted (each process adds at most once a
//!                        second), PX = keep; read twice, it is the rate used (status.rs)
//! <tag>:last429          HASH limits, at_ms, retry_after_ms, process: the last 429 seen
//!                        (written at most once a second per process), PX = keep
//! ```
//!
//! `<cred>` is [`credential_id`]: a hash of the token URL, client id and scope, so different
//! clients or token URLs never share a token, and no secret is in a key.

use super::FleetError;

/// Longest test id: keys stay short and readable in `redis-cli`.
pub const MAX_TEST_ID_LEN: usize = 64;

/// The key names of one fleet.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    budget: Option<String>,
    test: String,
}

fn check_id(what: &str, id: &str) -> Result<(), FleetError> {
    if id.is_empty()
        || id.len() > MAX_TEST_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(FleetError::Config(format!(
            "{what} {id:?} must be 1-{MAX_TEST_ID_LEN} characters among A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

impl Keys {
    /// `test` is the fleet's test id, `budget` the budget it shares (each 1-64 characters
    /// among `A-Z a-z 0-9 . _ -`). With a budget every key lives under the budget's name.
    pub fn new(test: &str, budget: Option<&str>) -> Result<Self, FleetError> {
        check_id("fleet id", test)?;
        let prefix = match budget {
            Some(b) => {
                check_id("budget", b)?;
                format!("{{pacer:budget:{b}}}")
            }
            None => format!("{{pacer:{test}}}"),
        };
        Ok(Self {
            prefix,
            budget: budget.map(str::to_string),
            test: test.to_string(),
        })
    }

    /// The keys of budget `budget`, for a reader that is no test of it (the RateBudget's
    /// status): the registry and the limits, never a test's own keys.
    pub fn of_budget(budget: &str) -> Result<Self, FleetError> {
        Self::new("reader", Some(budget))
    }

    /// The budget these keys belong to, if any.
    pub fn budget(&self) -> Option<&str> {
        self.budget.as_deref()
    }

    pub fn limit(&self, name: &str) -> String {
        format!("{}:limit:{name}", self.prefix)
    }

    /// An adaptive limit's learner and counters (`lua/learn.lua`).
    pub fn learner(&self, name: &str) -> String {
        format!("{}:learn:{name}", self.prefix)
    }

    pub fn definition(&self, name: &str) -> String {
        format!("{}:def:{name}", self.prefix)
    }

    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    pub fn token(&self, credential: &str) -> String {
        format!("{}:token:{credential}", self.prefix)
    }

    pub fn lock(&self, credential: &str) -> String {
        format!("{}:lock:{credential}", self.prefix)
    }

    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// A budget's registry of the tests using it (HASH test id -> record).
    pub fn tests(&self) -> String {
        format!("{}:tests", self.prefix)
    }

    /// This test's share of a budget's limit `name`: its own GCRA state at its share's rate.
    pub fn share(&self, name: &str) -> String {
        format!("{}:limit:{name}:test:{}", self.prefix, self.test)
    }

    /// The test id these keys were made for.
    pub fn test(&self) -> &str {
        &self.test
    }

    pub fn granted(&self) -> String {
        format!("{}:granted", self.prefix)
    }

    pub fn last429(&self) -> String {
        format!("{}:last429", self.prefix)
    }

    /// What the server's rate-limit headers last said of limit `name` (`super::server`).
    pub fn server(&self, name: &str) -> String {
        format!("{}:server:{name}", self.prefix)
    }
}

/// The id of a shared token in Redis: 32 hex digits of a 128-bit FNV-1a hash of the token URL,
/// client id and scope. Not for secrecy (none of them is a secret, and the client secret is
/// never part of it): for telling credentials apart, so two clients, two token URLs or two
/// scopes never share a token, while the same client in any test of a budget does.
pub fn credential_id(token_url: &str, client_id: &str, scope: Option<&str>) -> String {
    // FNV-1a, 128 bits (offset basis and prime from the FNV specification).
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    // Each part is length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    for part in [token_url, client_id, scope.unwrap_or("")] {
        for b in (part.len() as u64)
            .to_le_bytes()
            .iter()
            .chain(part.as_bytes())
        {
            h ^= u128::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h ^= u128::from(scope.is_some());
    h = h.wrapping_mul(PRIME);
    format!("{h:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new("t-1", None).unwrap();
        for key in [
            k.limit("per token"),
            k.learner("per token"),
            k.workers(),
            k.token("g"),
            k.lock("g"),
        ] {
            assert!(key.starts_with("{pacer:t-1}:"), "{key}");
        }
        assert!(Keys::new("", None).is_err());
        assert!(Keys::new("a{b}", None).is_err());
        assert!(Keys::new(&"x".repeat(65), None).is_err());
    }

    #[test]
    fn a_budget_keys_everything_under_its_name() {
        let k = Keys::new("t-1", Some("acme-prod")).unwrap();
        for key in [
            k.limit("org"),
            k.definition("org"),
            k.workers(),
            k.token("g"),
            k.lock("g"),
            k.events(),
            k.granted(),
            k.last429(),
            k.tests(),
            k.share("org"),
        ] {
            assert!(key.starts_with("{pacer:budget:acme-prod}:"), "{key}");
        }
        assert_eq!(k.budget(), Some("acme-prod"));
        assert_eq!(
            k.share("org"),
            "{pacer:budget:acme-prod}:limit:org:test:t-1"
        );
        let e = Keys::new("t-1", Some("acme prod")).unwrap_err().to_string();
        assert!(e.contains("budget \"acme prod\""), "{e}");
    }

    #[test]
    fn credential_ids_tell_clients_urls_and_scopes_apart() {
        let a = credential_id("http://127.0.0.1:1/oauth/token", "client", None);
        assert_eq!(a.len(), 32);
        assert_eq!(
            a,
            credential_id("http://127.0.0.1:1/oauth/token", "client", None)
        );
        for other in [
            credential_id("http://127.0.0.1:2/oauth/token", "client", None),
            credential_id("http://127.0.0.1:1/oauth/token", "client2", None),
            credential_id("http://127.0.0.1:1/oauth/token", "client", Some("")),
            credential_id("http://127.0.0.1:1/oauth/token", "client", Some("read")),
            credential_id("http://127.0.0.1:1/oauth/tokenc", "lient", None),
        ] {
            assert_ne!(a, other);
        }
    }
}
