//! `POST /oauth/token`: the OAuth2 client-credentials grant (RFC 6749 §4.4), with client
//! authentication by HTTP Basic or form fields, and its own per-client rate limit.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{CACHE_CONTROL, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::json;

use crate::api::{hold_for_stall, json_response, too_many_requests};
use crate::limits::{Decision, Identity, duration_us};
use crate::state::Shared;
use crate::stats::worker_header;
use crate::tokens::basic_credentials;

/// Token requests are tiny; anything bigger is not one.
const MAX_TOKEN_BODY: usize = 64 * 1024;
const ROUTE: &str = "POST /oauth/token";

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let arrival = shared.now_us();
    let (parts, body) = req.into_parts();
    let worker = worker_header(&parts.headers);
    let response = match axum::body::to_bytes(body, MAX_TOKEN_BODY).await {
        Ok(body) => grant(&shared, &parts.headers, &body, arrival),
        Err(_) => {
            shared.recorder.lock().tokens.invalid_request += 1;
            oauth_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "body too large",
            )
        }
    };
    hold_for_stall(&shared).await;
    let status = response.status().as_u16();
    shared
        .recorder
        .lock()
        .record(ROUTE, status, arrival, &worker, false);
    response
}

fn grant(shared: &Shared, headers: &axum::http::HeaderMap, body: &[u8], now: u64) -> Response {
    let mut grant_type = None;
    let mut form_id = None;
    let mut form_secret = None;
    for (k, v) in url::form_urlencoded::parse(body) {
        match &*k {
            "grant_type" => grant_type = Some(v.into_owned()),
            "client_id" => form_id = Some(v.into_owned()),
            "client_secret" => form_secret = Some(v.into_owned()),
            _ => {}
        }
    }
    let creds = match basic_credentials(headers) {
        Ok(Some(c)) => Some(c),
        Ok(None) => form_id.zip(form_secret),
        Err(()) => None,
    };
    let client = creds.and_then(|(id, secret)| {
        shared
            .clients
            .get(&id)
            .filter(|c| c.secret == secret)
            .cloned()
    });
    let Some(client) = client else {
        shared.recorder.lock().tokens.invalid_client += 1;
        let mut r = oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"pacer-mock\""),
        );
        return r;
    };
    match grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            shared.recorder.lock().tokens.invalid_request += 1;
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported",
            );
        }
        None => {
            shared.recorder.lock().tokens.invalid_request += 1;
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing",
            );
        }
    }

    let id = Identity {
        token: "-",
        client: &client.id,
        org: &client.org,
    };
    let decision = shared
        .token_limit
        .lock()
        .check("POST", "/oauth/token", &id, now);
    if let Decision::Rejected {
        limit,
        key,
        retry_after_secs,
        ..
    } = decision
    {
        shared.recorder.lock().tokens.rate_limited += 1;
        let header = shared.faults.lock().retry_after(retry_after_secs);
        return too_many_requests(&limit, &key, retry_after_secs, header);
    }

    let lifetime = shared.config.token_lifetime;
    let token = shared.tokens.lock().issue(
        &client.id,
        &client.org,
        now,
        now.saturating_add(duration_us(lifetime)),
    );
    shared.recorder.lock().token_issued(&client.id);
    tracing::debug!(client = %client.id, "token issued");
    // expires_in is whole seconds: round up so a sub-second lifetime is not reported as 0.
    let expires_in = lifetime.as_millis().div_ceil(1000) as u64;
    let mut r = json_response(
        StatusCode::OK,
        &json!({"access_token": token, "token_type": "bearer", "expires_in": expires_in}),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
    )
}
