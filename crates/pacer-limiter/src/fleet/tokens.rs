//! The shared token cache's Redis side: one key per credential holding the bearer token (it
//! expires when a refresh is due), a lock so one worker refreshes while the others wait, and
//! compare-and-delete so a 401 drops the token only if it is still the one that failed.
//!
//! The HTTP fetch stays with the engine (it owns the HTTP client): it calls [`TokenStore::get`],
//! and on a miss [`TokenStore::try_lock`], fetches, then [`TokenStore::put`] (which also
//! releases the lock and wakes the waiting workers). Token values never reach logs or errors.

use std::sync::Arc;
use std::time::Duration;

use super::{Event, Fleet, FleetError, scripts};
use crate::Token;

/// Redis primitives of the fleet's token cache. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TokenStore {
    fleet: Arc<Fleet>,
}

impl TokenStore {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self { fleet }
    }

    /// Say which credentials this worker shares, so the last worker of the test deletes their
    /// keys even if it never used them itself.
    pub fn register(&self, credential: &str) {
        self.keys(credential);
    }

    fn keys(&self, credential: &str) -> (String, String) {
        let k = self.fleet.keys();
        let (t, l) = (k.token(credential), k.lock(credential));
        self.fleet.track_key(t.clone());
        self.fleet.track_key(l.clone());
        (t, l)
    }

    /// The shared token and how long it stays valid before a refresh is due; `None` when
    /// there is none (never fetched, expired, or dropped after a 401).
    pub async fn get(&self, credential: &str) -> Result<Option<(Token, Duration)>, FleetError> {
        let (key, _) = self.keys(credential);
        let (value, pttl): (Option<String>, i64) = self
            .fleet
            .query("reading the shared token", 2, |c| {
                Box::pin(async move { redis::pipe().get(&key).pttl(&key).query_async(c).await })
            })
            .await?;
        // PTTL is -2 when the key vanished between the two commands, -1 without expiry (not
        // ours: keys are always written with one): both mean "no usable token".
        Ok(match value {
            Some(v) if pttl > 0 && !v.is_empty() => {
                Some((Token::new(v), Duration::from_millis(pttl as u64)))
            }
            _ => None,
        })
    }

    /// Try to become the refresher of `credential` for at most `ttl`.
    pub async fn try_lock(&self, credential: &str, ttl: Duration) -> Result<bool, FleetError> {
        let (_, lock) = self.keys(credential);
        let holder = self.fleet.worker_id().to_string();
        let ms = ttl.as_millis().max(1) as u64;
        let set: Option<String> = self
            .fleet
            .query("taking the token refresh lock", 1, |c| {
                Box::pin(async move {
                    redis::cmd("SET")
                        .arg(&lock)
                        .arg(&holder)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms)
                        .query_async(c)
                        .await
                })
            })
            .await?;
        Ok(set.is_some())
    }

    /// Release the lock if this worker still holds it (after a failed fetch).
    pub async fn unlock(&self, credential: &str) -> Result<(), FleetError> {
        let (_, lock) = self.keys(credential);
        let mut inv = scripts::COMPARE_AND_DELETE.key(lock);
        inv.arg(self.fleet.worker_id());
        self.fleet
            .script("releasing the token refresh lock", inv)
            .await?;
        Ok(())
    }

    /// Store a freshly fetched token for `ttl` (until its refresh is due), release the lock and
    /// wake the workers waiting for it.
    pub async fn put(
        &self,
        credential: &str,
        token: &Token,
        ttl: Duration,
    ) -> Result<(), FleetError> {
        let (key, lock) = self.keys(credential);
        let mut inv = scripts::TOKEN_PUT.key(key);
        inv.key(lock)
            .arg(token.expose())
            .arg(ttl.as_millis().max(1) as u64)
            .arg(self.fleet.worker_id())
            .arg(self.fleet.keys().events())
            .arg(credential);
        self.fleet.script("storing the shared token", inv).await?;
        Ok(())
    }

    /// A request failed with 401 using `failed`: drop the shared token if it is still that one.
    /// Returns whether it was dropped.
    pub async fn invalidate(&self, credential: &str, failed: &Token) -> Result<bool, FleetError> {
        let (key, _) = self.keys(credential);
        let mut inv = scripts::COMPARE_AND_DELETE.key(key);
        inv.arg(failed.expose());
        let v = self
            .fleet
            .script("dropping the rejected token", inv)
            .await?;
        Ok(scripts::parse_count("dropping the rejected token", &v)? == 1)
    }

    /// Resolves when another worker announces a new token for `credential`, or after `max`.
    pub async fn wait_for_token(&self, credential: &str, max: Duration) {
        let mut events = self.fleet.subscribe();
        let wanted = credential.to_string();
        let _ = tokio::time::timeout(max, async {
            loop {
                match events.recv().await {
                    Ok(Event::Token { credential }) if credential == wanted => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                }
            }
        })
        .await;
    }
}
