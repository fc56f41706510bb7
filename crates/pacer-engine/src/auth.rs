//! Bearer tokens: fixed tokens, and OAuth2 client-credentials tokens fetched once, cached,
//! refreshed `refreshBefore` ahead of expiry by a single task while the others wait, and
//! dropped on 401 only if still the token that failed (compare-and-swap).
//!
//! [`Tokens`] caches in this process; [`FleetTokens`] shares each `share: fleet` credential's
//! token with the whole fleet through Redis (one refresher under a lock, the others wait for
//! it). Both fetch through [`OAuthClient::fetch`].
//!
//! Token values and client secrets never reach logs or errors. The client id and secret go
//! only to the token URL itself (the token client follows no redirect), and its response is
//! read up to [`crate::http::TOKEN_RESPONSE_MAX_BYTES`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pacer_limiter::fleet::{FleetError, TokenStore};
use pacer_limiter::{Token, TokenError, TokenSource};
use pacer_plan::Plan;
use pacer_plan::spec::{AuthKind, Share};
use pacer_stats::Recorder;

struct Cached {
    token: Token,
    expires_at: Instant,
}

/// An OAuth2 client-credentials client: how to fetch a token for one credential.
pub(crate) struct OAuthClient {
    name: String,
    token_url: url::Url,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    refresh_before: Duration,
}

/// A token just fetched and how long the token endpoint said it lives.
pub(crate) struct Fetched {
    pub(crate) token: Token,
    pub(crate) lifetime: Duration,
    /// When the request for it was sent (its lifetime counts from there).
    pub(crate) requested_at: Instant,
}

struct OAuth {
    client: OAuthClient,
    current: parking_lot::RwLock<Option<Cached>>,
    /// One refresher at a time; the others wait here and then find the new token.
    refresh: tokio::sync::Mutex<()>,
}

impl OAuth {
    fn new(client: OAuthClient) -> Self {
        Self {
            client,
            current: parking_lot::RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }
}

enum Credential {
    Static(Token),
    OAuth(Box<OAuth>),
}

impl Credential {
    fn from_auth(a: &pacer_plan::Auth, plan: &Plan) -> Self {
        match a.kind {
            AuthKind::Bearer => Credential::Static(Token::new(a.token.clone().unwrap_or_default())),
            AuthKind::OAuth2ClientCredentials => {
                Credential::OAuth(Box::new(OAuth::new(OAuthClient::from_auth(a, plan))))
            }
        }
    }
}

/// The token source for a single process (the fleet-wide one shares tokens through Redis).
pub(crate) struct Tokens {
    creds: Vec<Credential>,
    client: reqwest::Client,
    recorder: Arc<Recorder>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<f64>,
}

/// Lifetime assumed when the token endpoint does not say (`expires_in` missing).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Attempts at a token fetch the endpoint answers 429 or 503 (the first and three retries):
/// a few, since every request of the credential waits meanwhile.
const TOKEN_FETCH_ATTEMPTS: u32 = 4;

/// The longest a token endpoint's Retry-After is waited (longer ones are clamped to it): a
/// fetch holds up every request of its credential.
const TOKEN_RETRY_AFTER_MAX: Duration = Duration::from_secs(30);

/// The wait between token fetch attempts when the endpoint's 429/503 names none (or a
/// malformed one).
const TOKEN_RETRY_AFTER_DEFAULT: Duration = Duration::from_secs(1);

impl Tokens {
    pub(crate) fn from_plan(plan: &Plan, client: reqwest::Client, recorder: Arc<Recorder>) -> Self {
        let creds = plan
            .auth
            .iter()
            .map(|a| Credential::from_auth(a, plan))
            .collect();
        Self {
            creds,
            client,
            recorder,
        }
    }
}

impl OAuthClient {
    fn from_auth(a: &pacer_plan::Auth, plan: &Plan) -> Self {
        Self {
            name: a.name.clone(),
            // validation guarantees these are present for this kind
            token_url: a.token_url.clone().unwrap_or_else(|| plan.target.clone()),
            client_id: a.client_id.clone().unwrap_or_default(),
            client_secret: a.client_secret.clone().unwrap_or_default(),
            scope: a.scope.clone(),
            refresh_before: a.refresh_before,
        }
    }

    /// The credential's name in the plan.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The id its shared token has in Redis: the token URL, client id and scope, hashed (never
    /// the secret), so the same client shares one token across every test of a budget while
    /// different clients or token URLs never share one.
    pub(crate) fn shared_key(&self) -> String {
        pacer_limiter::fleet::keys::credential_id(
            self.token_url.as_str(),
            &self.client_id,
            self.scope.as_deref(),
        )
    }

    /// Fetch a token from the token endpoint (its own 429/503 are retried up to 3 times with
    /// their Retry-After). Records the fetch. Errors show the HTTP status and OAuth error code
    /// only.
    pub(crate) async fn fetch(
        &self,
        client: &reqwest::Client,
        recorder: &Recorder,
    ) -> Result<Fetched, TokenError> {
        let o = self;
        let fail = |reason: String| TokenError::Fetch {
            credential: o.name.clone(),
            reason,
        };
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(s) = &o.scope {
            form.push(("scope", s));
        }
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = client
                .post(o.token_url.clone())
                .basic_auth(&o.client_id, Some(&o.client_secret))
                .form(&form)
                .send()
                .await
                .map_err(|e| {
                    fail(format!(
                        "request failed ({})",
                        crate::http::classify_reqwest(&e).as_str()
                    ))
                })?;
            let status = resp.status().as_u16();
            // The token endpoint has limits of its own: honour its Retry-After a few times.
            if (status == 429 || status == 503) && attempt < TOKEN_FETCH_ATTEMPTS {
                let wait = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .map(|v| {
                        crate::retry::parse_retry_after(
                            v.as_bytes(),
                            std::time::SystemTime::now(),
                            TOKEN_RETRY_AFTER_MAX,
                        )
                    })
                    .and_then(crate::retry::RetryAfter::wait)
                    .unwrap_or(TOKEN_RETRY_AFTER_DEFAULT);
                tokio::time::sleep(wait).await;
                continue;
            }
            let body = read_capped(resp, crate::http::TOKEN_RESPONSE_MAX_BYTES)
                .await
                .map_err(|e| {
                    fail(match e {
                        CappedRead::TooLarge => format!(
                            "HTTP {status}: response larger than {} bytes",
                            crate::http::TOKEN_RESPONSE_MAX_BYTES
                        ),
                        CappedRead::Unreadable => format!("HTTP {status}: body unreadable"),
                    })
                })?;
            let (token, lifetime) = token_from_answer(status, &body).map_err(fail)?;
            recorder.record_token_fetch(&o.name, started.elapsed());
            tracing::info!(credential = %o.name, lifetime_s = lifetime.as_secs(), "fetched a token");
            return Ok(Fetched {
                token: Token::new(token),
                lifetime,
                requested_at: started,
            });
        }
    }
}

/// The longest token lifetime believed: a longer `expires_in` is clamped to it, so a token is
/// fetched again at least this often.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// The most characters of a token endpoint's OAuth `error` code shown: enough for any
/// registered code, too few for the body to smuggle much into the log.
const ERROR_CODE_MAX_CHARS: usize = 64;

/// Read a token endpoint's answer: the access token and its lifetime, or why not. The reason
/// shows the HTTP status and OAuth error code only: the body could echo credentials.
fn token_from_answer(status: u16, body: &[u8]) -> Result<(String, Duration), String> {
    if !(200..300).contains(&status) {
        let code = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                v.get("error")
                    .and_then(|e| e.as_str())
                    .map(|s| s.chars().take(ERROR_CODE_MAX_CHARS).collect::<String>())
            });
        return Err(match code {
            Some(c) => format!("HTTP {status} ({c})"),
            None => format!("HTTP {status}"),
        });
    }
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| "response is not a JSON object with access_token".to_string())?;
    if parsed.access_token.is_empty()
        || parsed
            .access_token
            .chars()
            .any(|c| c.is_control() || c == ' ')
    {
        return Err("access_token is empty or not a valid token".into());
    }
    let lifetime = match parsed.expires_in {
        Some(s) if s.is_finite() && s > 0.0 => {
            Duration::from_secs_f64(s.min(MAX_LIFETIME.as_secs_f64()))
        }
        Some(_) => return Err("expires_in is not a positive number".into()),
        None => DEFAULT_LIFETIME,
    };
    Ok((parsed.access_token, lifetime))
}

/// Why a capped body could not be read.
enum CappedRead {
    TooLarge,
    Unreadable,
}

/// Read `resp`'s body, failing as soon as it (or its `Content-Length`) passes `max` bytes: a
/// token endpoint cannot make the run hold an endless answer.
async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, CappedRead> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(CappedRead::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|_| CappedRead::Unreadable)? {
        if body.len() + chunk.len() > max {
            return Err(CappedRead::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl From<Fetched> for Cached {
    fn from(f: Fetched) -> Self {
        Cached {
            token: f.token,
            expires_at: f.requested_at + f.lifetime,
        }
    }
}

fn fresh(c: &Option<Cached>, margin: Duration) -> Option<Token> {
    c.as_ref()
        .filter(|c| c.expires_at > Instant::now() + margin)
        .map(|c| c.token.clone())
}

#[async_trait]
impl TokenSource for Tokens {
    async fn token(&self, credential: usize) -> Result<Token, TokenError> {
        match self.creds.get(credential) {
            None => Err(TokenError::Unknown(credential)),
            Some(Credential::Static(t)) => Ok(t.clone()),
            Some(Credential::OAuth(o)) => {
                let margin = o.client.refresh_before;
                if let Some(t) = fresh(&o.current.read(), margin) {
                    return Ok(t);
                }
                let _one = o.refresh.lock().await;
                // Someone else may have refreshed while we waited.
                if let Some(t) = fresh(&o.current.read(), margin) {
                    return Ok(t);
                }
                let c = Cached::from(o.client.fetch(&self.client, &self.recorder).await?);
                let t = c.token.clone();
                *o.current.write() = Some(c);
                Ok(t)
            }
        }
    }

    fn invalidate(&self, credential: usize, failed: &Token) {
        if let Some(Credential::OAuth(o)) = self.creds.get(credential) {
            let mut cur = o.current.write();
            if cur.as_ref().is_some_and(|c| &c.token == failed) {
                *cur = None;
            }
        }
    }
}

/// The `share: fleet` OAuth2 credentials of a plan, fetched by a controller that hands their
/// tokens to its workers over the session (`pacer_limiter::served`, no Redis): the same client
/// and fetch as every token here, with the fetches recorded in `recorder` (the controller
/// merges it into the fleet's results, so the summary counts these fetches).
pub(crate) struct ServedFetcher {
    creds: Vec<(usize, OAuthClient)>,
    client: reqwest::Client,
    pub(crate) recorder: Arc<Recorder>,
}

impl ServedFetcher {
    /// `None` when the plan has no `share: fleet` OAuth2 credential.
    pub(crate) fn from_plan(plan: &Plan, client: reqwest::Client) -> Option<Self> {
        let creds: Vec<(usize, OAuthClient)> = plan
            .auth
            .iter()
            .enumerate()
            .filter(|(_, a)| a.kind == AuthKind::OAuth2ClientCredentials && a.share == Share::Fleet)
            .map(|(i, a)| (i, OAuthClient::from_auth(a, plan)))
            .collect();
        (!creds.is_empty()).then(|| Self {
            creds,
            client,
            recorder: Arc::new(Recorder::new(pacer_stats::Layout::of(plan))),
        })
    }
}

#[async_trait]
impl pacer_limiter::served::TokenFetcher for ServedFetcher {
    fn served(&self) -> Vec<(usize, Duration)> {
        self.creds
            .iter()
            .map(|(i, c)| (*i, c.refresh_before))
            .collect()
    }

    async fn fetch(&self, credential: usize) -> Result<pacer_limiter::served::Fetched, TokenError> {
        let (_, c) = self
            .creds
            .iter()
            .find(|(i, _)| *i == credential)
            .ok_or(TokenError::Unknown(credential))?;
        let f = c.fetch(&self.client, &self.recorder).await?;
        // Its lifetime counts from when it was asked for, as the cache's does.
        let lifetime = f.lifetime.saturating_sub(f.requested_at.elapsed());
        Ok(pacer_limiter::served::Fetched {
            token: f.token,
            lifetime,
        })
    }
}

/// How long a worker waits for the fleet's refresher of a token before giving up.
pub(crate) const FLEET_TOKEN_WAIT: Duration = Duration::from_secs(30);
/// The refresher's lock expires after this (longer than a fetch with its retries takes), so a
/// refresher that died is replaced.
const FLEET_TOKEN_LOCK: Duration = Duration::from_secs(30);
/// While waiting for the refresher, look at Redis at least this often (besides Pub/Sub).
const FLEET_TOKEN_POLL: Duration = Duration::from_millis(250);

/// A `share: fleet` OAuth2 credential of a fleet worker.
struct SharedCred {
    /// Its token's id in Redis ([`OAuthClient::shared_key`]).
    key: String,
    client: OAuthClient,
    current: parking_lot::RwLock<Option<Cached>>,
    /// One task per worker talks to Redis for this credential; the others wait here.
    refresh: tokio::sync::Mutex<()>,
    /// The last token a 401 rejected: if Redis still holds it, it is dropped before use.
    rejected: parking_lot::Mutex<Option<Token>>,
}

/// Tokens for a fleet worker: each `share: fleet` OAuth2 credential has one token for the
/// whole fleet, kept in Redis until its refresh is due. One worker refreshes it under a lock
/// while the others wait for it (Pub/Sub, bounded by [`FLEET_TOKEN_WAIT`]); a 401 drops it
/// from Redis only if it is still the token that failed, so all the workers seeing the same
/// 401 cause one refresh. Other credentials behave as in [`Tokens`]. If Redis cannot be
/// reached, a worker that needs a new token fetches its own (and says so in the log).
pub(crate) struct FleetTokens {
    local: Tokens,
    shared: Vec<Option<SharedCred>>,
    store: TokenStore,
    client: reqwest::Client,
    recorder: Arc<Recorder>,
}

impl FleetTokens {
    pub(crate) fn from_plan(
        plan: &Plan,
        client: reqwest::Client,
        recorder: Arc<Recorder>,
        store: TokenStore,
    ) -> Self {
        let shared = plan
            .auth
            .iter()
            .map(|a| {
                (a.kind == AuthKind::OAuth2ClientCredentials && a.share == Share::Fleet).then(
                    || {
                        let client = OAuthClient::from_auth(a, plan);
                        let key = client.shared_key();
                        store.register(&key);
                        SharedCred {
                            key,
                            client,
                            current: parking_lot::RwLock::new(None),
                            refresh: tokio::sync::Mutex::new(()),
                            rejected: parking_lot::Mutex::new(None),
                        }
                    },
                )
            })
            .collect();
        Self {
            local: Tokens::from_plan(plan, client.clone(), recorder.clone()),
            shared,
            store,
            client,
            recorder,
        }
    }

    async fn shared_token(&self, c: &SharedCred) -> Result<Token, TokenError> {
        let margin = c.client.refresh_before;
        if let Some(t) = fresh(&c.current.read(), margin) {
            return Ok(t);
        }
        let _one = c.refresh.lock().await;
        if let Some(t) = fresh(&c.current.read(), margin) {
            return Ok(t);
        }
        let name = c.client.name();
        let deadline = Instant::now() + FLEET_TOKEN_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(TokenError::Fetch {
                    credential: name.to_string(),
                    reason: format!(
                        "no token from the fleet's refresher within {} s",
                        FLEET_TOKEN_WAIT.as_secs()
                    ),
                });
            }
            match self.store.get(&c.key).await {
                Ok(Some((t, valid))) => {
                    if c.rejected.lock().as_ref() == Some(&t) {
                        // The token a 401 rejected is still shared: drop it, then refresh.
                        if let Err(e) = self.store.invalidate(&c.key, &t).await {
                            return self.fetch_alone(c, &e).await;
                        }
                        continue;
                    }
                    *c.current.write() = Some(Cached {
                        token: t.clone(),
                        expires_at: Instant::now() + valid + margin,
                    });
                    return Ok(t);
                }
                Ok(None) => match self.store.try_lock(&c.key, FLEET_TOKEN_LOCK).await {
                    Ok(true) => {
                        // The refresher before us may have stored its token and released the
                        // lock between our read and our lock: look once more before fetching.
                        match self.store.get(&c.key).await {
                            Ok(Some((t, _))) if c.rejected.lock().as_ref() != Some(&t) => {
                                let _ = self.store.unlock(&c.key).await;
                                continue;
                            }
                            Ok(_) => return self.refresh(c).await,
                            Err(e) => return self.fetch_alone(c, &e).await,
                        }
                    }
                    Ok(false) => {
                        self.store
                            .wait_for_token(&c.key, FLEET_TOKEN_POLL.min(left))
                            .await
                    }
                    Err(e) => return self.fetch_alone(c, &e).await,
                },
                Err(e) => return self.fetch_alone(c, &e).await,
            }
        }
    }

    /// This worker holds the lock: fetch, share until the refresh is due, release the lock.
    async fn refresh(&self, c: &SharedCred) -> Result<Token, TokenError> {
        let name = c.client.name();
        let f = match c.client.fetch(&self.client, &self.recorder).await {
            Ok(f) => f,
            Err(e) => {
                if let Err(re) = self.store.unlock(&c.key).await {
                    tracing::debug!(credential = %name, error = %re, "cannot release the token lock");
                }
                return Err(e);
            }
        };
        let margin = c.client.refresh_before;
        // Shared until its refresh is due, and at least half its life (short-lived tokens).
        let shared_for = f
            .lifetime
            .saturating_sub(margin)
            .max(f.lifetime / 2)
            .saturating_sub(f.requested_at.elapsed())
            .max(Duration::from_millis(1));
        if let Err(e) = self.store.put(&c.key, &f.token, shared_for).await {
            tracing::warn!(credential = %name, error = %e, "cannot share the new token through Redis: this worker uses it alone");
        }
        *c.current.write() = Some(Cached {
            token: f.token.clone(),
            expires_at: Instant::now() + shared_for + margin,
        });
        Ok(f.token)
    }

    /// Redis is unreachable: keep the test's credentials working with a token of our own.
    async fn fetch_alone(&self, c: &SharedCred, err: &FleetError) -> Result<Token, TokenError> {
        tracing::warn!(credential = %c.client.name(), error = %err, "the fleet's token cache is unreachable: this worker fetches its own token");
        let cached = Cached::from(c.client.fetch(&self.client, &self.recorder).await?);
        let t = cached.token.clone();
        *c.current.write() = Some(cached);
        Ok(t)
    }
}

#[async_trait]
impl TokenSource for FleetTokens {
    async fn token(&self, credential: usize) -> Result<Token, TokenError> {
        match self.shared.get(credential) {
            None => Err(TokenError::Unknown(credential)),
            Some(Some(c)) => self.shared_token(c).await,
            Some(None) => self.local.token(credential).await,
        }
    }

    fn invalidate(&self, credential: usize, failed: &Token) {
        match self.shared.get(credential) {
            Some(Some(c)) => {
                let mut cur = c.current.write();
                if cur.as_ref().is_some_and(|x| &x.token == failed) {
                    *cur = None;
                }
                *c.rejected.lock() = Some(failed.clone());
            }
            Some(None) => self.local.invalidate(credential, failed),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_answer_gives_the_token_and_its_lifetime() {
        let ok = |body: &str| token_from_answer(200, body.as_bytes());
        assert_eq!(
            ok(r#"{"access_token":"abc","expires_in":60}"#),
            Ok(("abc".into(), Duration::from_secs(60)))
        );
        assert_eq!(
            ok(r#"{"access_token":"abc"}"#),
            Ok(("abc".into(), DEFAULT_LIFETIME))
        );
        assert_eq!(
            ok(r#"{"access_token":"abc","expires_in":1e300}"#),
            Ok(("abc".into(), MAX_LIFETIME))
        );
    }

    #[test]
    fn a_refused_or_odd_answer_says_why_without_its_body() {
        assert_eq!(
            token_from_answer(401, br#"{"error":"invalid_client","secret":"s3cr3t"}"#),
            Err("HTTP 401 (invalid_client)".into())
        );
        assert_eq!(
            token_from_answer(500, b"client_secret=s3cr3t"),
            Err("HTTP 500".into())
        );
        let long = format!(r#"{{"error":"{}"}}"#, "x".repeat(500));
        let why = token_from_answer(400, long.as_bytes()).unwrap_err();
        assert_eq!(why.len(), "HTTP 400 ()".len() + ERROR_CODE_MAX_CHARS);
        for (body, why) in [
            (
                "not json",
                "response is not a JSON object with access_token",
            ),
            (
                r#"{"token":"abc"}"#,
                "response is not a JSON object with access_token",
            ),
            (
                r#"{"access_token":""}"#,
                "access_token is empty or not a valid token",
            ),
            (
                r#"{"access_token":"a b"}"#,
                "access_token is empty or not a valid token",
            ),
            (
                r#"{"access_token":"a\nb"}"#,
                "access_token is empty or not a valid token",
            ),
            (
                r#"{"access_token":"abc","expires_in":0}"#,
                "expires_in is not a positive number",
            ),
            (
                r#"{"access_token":"abc","expires_in":-5}"#,
                "expires_in is not a positive number",
            ),
        ] {
            assert_eq!(
                token_from_answer(200, body.as_bytes()),
                Err(why.into()),
                "{body}"
            );
        }
    }
}
