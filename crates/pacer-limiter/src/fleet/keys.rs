//! Where a test's fleet state lives in Redis. Every key of one test carries the same hash tag,
//! `{pacer:<test>}`, so they all sit in one Redis Cluster slot: the lease script grants across
//! all the limits of a request atomically and the last worker deletes every key in one script,
//! which Cluster allows only within one slot.
//!
//! ```text
//! {pacer:<test>}:limit:<name>    one limit's GCRA state (TAT, pause, AIMD factor), PX = ahead + keep
//! {pacer:<test>}:workers         ZSET worker id -> last heartbeat (ms, Redis clock), PEXPIRE 30 s
//! {pacer:<test>}:token:<cred>    the shared bearer token, PX = expires_in - refreshBefore
//! {pacer:<test>}:lock:<cred>     SET NX PX: the one refresher of that token
//! {pacer:<test>}:events          Pub/Sub channel: pauses and new tokens
//! ```

use super::FleetError;

/// Longest test id: keys stay short and readable in `redis-cli`.
pub const MAX_TEST_ID_LEN: usize = 64;

/// The key names of one test.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `test` is the fleet's test id: 1-64 characters among `A-Z a-z 0-9 . _ -`.
    pub fn new(test: &str) -> Result<Self, FleetError> {
        if test.is_empty()
            || test.len() > MAX_TEST_ID_LEN
            || !test
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(FleetError::Config(format!(
                "fleet id {test:?} must be 1-{MAX_TEST_ID_LEN} characters among A-Z a-z 0-9 . _ -"
            )));
        }
        Ok(Self {
            prefix: format!("{{pacer:{test}}}"),
        })
    }

    pub fn limit(&self, name: &str) -> String {
        format!("{}:limit:{name}", self.prefix)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new("t-1").unwrap();
        for key in [k.limit("per token"), k.workers(), k.token("g"), k.lock("g")] {
            assert!(key.starts_with("{pacer:t-1}:"), "{key}");
        }
        assert!(Keys::new("").is_err());
        assert!(Keys::new("a{b}").is_err());
        assert!(Keys::new(&"x".repeat(65)).is_err());
    }
}
