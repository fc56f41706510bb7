//! Bearer tokens for one process: fixed tokens, and OAuth2 client-credentials tokens fetched
//! once, cached, refreshed `refreshBefore` ahead of expiry by a single task while the others
//! wait, and dropped on 401 only if still the token that failed (compare-and-swap).
//!
//! Token values and client secrets never reach logs or errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pacer_limiter::{Token, TokenError, TokenSource};
use pacer_plan::Plan;
use pacer_plan::spec::AuthKind;
use pacer_stats::Recorder;

struct Cached {
    token: Token,
    expires_at: Instant,
}

struct OAuth {
    name: String,
    token_url: url::Url,
    client_id: String,
    client_secret: String,
    scope: Option<String>,
    refresh_before: Duration,
    current: parking_lot::RwLock<Option<Cached>>,
    /// One refresher at a time; the others wait here and then find the new token.
    refresh: tokio::sync::Mutex<()>,
}

enum Credential {
    Static(Token),
    OAuth(Box<OAuth>),
}

/// The token source for a single process (the fleet-wide one shares tokens through Redis).
pub struct Tokens {
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

impl Tokens {
    pub fn from_plan(plan: &Plan, client: reqwest::Client, recorder: Arc<Recorder>) -> Self {
        let creds = plan
            .auth
            .iter()
            .map(|a| match a.kind {
                AuthKind::Bearer => {
                    Credential::Static(Token::new(a.token.clone().unwrap_or_default()))
                }
                AuthKind::OAuth2ClientCredentials => Credential::OAuth(Box::new(OAuth {
                    name: a.name.clone(),
                    // validation guarantees these are present for this kind
                    token_url: a.token_url.clone().unwrap_or_else(|| plan.target.clone()),
                    client_id: a.client_id.clone().unwrap_or_default(),
                    client_secret: a.client_secret.clone().unwrap_or_default(),
                    scope: a.scope.clone(),
                    refresh_before: a.refresh_before,
                    current: parking_lot::RwLock::new(None),
                    refresh: tokio::sync::Mutex::new(()),
                })),
            })
            .collect();
        Self {
            creds,
            client,
            recorder,
        }
    }

    async fn fetch(&self, o: &OAuth) -> Result<Cached, TokenError> {
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
            let resp = self
                .client
                .post(o.token_url.clone())
                .basic_auth(&o.client_id, Some(&o.client_secret))
                .form(&form)
                .send()
                .await
                .map_err(|e| {
                    fail(format!(
                        "request failed ({})",
                        crate::http::classify(&e).as_str()
                    ))
                })?;
            let status = resp.status().as_u16();
            // The token endpoint has limits of its own: honour its Retry-After a few times.
            if (status == 429 || status == 503) && attempt < 4 {
                let wait = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .map(|v| {
                        crate::retry::parse_retry_after(
                            v.as_bytes(),
                            std::time::SystemTime::now(),
                            Duration::from_secs(30),
                        )
                    })
                    .and_then(|r| match r {
                        crate::retry::RetryAfter::Wait { wait, .. } => Some(wait),
                        crate::retry::RetryAfter::Malformed => None,
                    })
                    .unwrap_or(Duration::from_secs(1));
                tokio::time::sleep(wait).await;
                continue;
            }
            let body = resp
                .bytes()
                .await
                .map_err(|_| fail(format!("HTTP {status}: body unreadable")))?;
            if !(200..300).contains(&status) {
                // Show the OAuth error code only: the body could echo credentials.
                let code = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| {
                        v.get("error")
                            .and_then(|e| e.as_str())
                            .map(|s| s.chars().take(64).collect::<String>())
                    });
                return Err(fail(match code {
                    Some(c) => format!("HTTP {status} ({c})"),
                    None => format!("HTTP {status}"),
                }));
            }
            let parsed: TokenResponse = serde_json::from_slice(&body)
                .map_err(|_| fail("response is not a JSON object with access_token".into()))?;
            if parsed.access_token.is_empty()
                || parsed
                    .access_token
                    .chars()
                    .any(|c| c.is_control() || c == ' ')
            {
                return Err(fail("access_token is empty or not a valid token".into()));
            }
            let lifetime = match parsed.expires_in {
                Some(s) if s.is_finite() && s > 0.0 => {
                    Duration::from_secs_f64(s.min(30.0 * 86400.0))
                }
                Some(_) => return Err(fail("expires_in is not a positive number".into())),
                None => DEFAULT_LIFETIME,
            };
            self.recorder.record_token_fetch(&o.name, started.elapsed());
            tracing::info!(credential = %o.name, lifetime_s = lifetime.as_secs(), "fetched a token");
            return Ok(Cached {
                token: Token::new(parsed.access_token),
                expires_at: started + lifetime,
            });
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
                if let Some(t) = fresh(&o.current.read(), o.refresh_before) {
                    return Ok(t);
                }
                let _one = o.refresh.lock().await;
                // Someone else may have refreshed while we waited.
                if let Some(t) = fresh(&o.current.read(), o.refresh_before) {
                    return Ok(t);
                }
                let c = self.fetch(o).await?;
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
