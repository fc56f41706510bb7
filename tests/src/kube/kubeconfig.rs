//! Kubeconfig files (written as JSON, which every YAML reader accepts) and ServiceAccount tokens
//! from the TokenRequest API.

use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;

/// Who a kubeconfig authenticates as.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// A bearer token (the static admin token, a ServiceAccount token).
    Token(String),
    /// A client certificate and its key, in PEM.
    ClientCert { cert_pem: String, key_pem: String },
}

/// Write a kubeconfig for `server` (trusting `ca_pem`) with one context, `pacer-e2e`.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    credentials: &Credentials,
    namespace: Option<&str>,
) -> Result<()> {
    let user = match credentials {
        Credentials::Token(token) => serde_json::json!({ "token": token }),
        Credentials::ClientCert { cert_pem, key_pem } => serde_json::json!({
            "client-certificate-data": STANDARD.encode(cert_pem),
            "client-key-data": STANDARD.encode(key_pem),
        }),
    };
    let mut context = serde_json::json!({ "cluster": "pacer-e2e", "user": "pacer-e2e" });
    if let Some(ns) = namespace {
        context["namespace"] = ns.into();
    }
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "pacer-e2e", "cluster": {
            "server": server,
            "certificate-authority-data": STANDARD.encode(ca_pem),
        }}],
        "users": [{ "name": "pacer-e2e", "user": user }],
        "contexts": [{ "name": "pacer-e2e", "context": context }],
        "current-context": "pacer-e2e",
    });
    let text = serde_json::to_string_pretty(&config)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A token for the ServiceAccount `namespace/name` from the TokenRequest API, valid for
/// `seconds` (the apiserver's minimum is 600), bound to a pod (name, uid) when given: it then
/// stops working when the pod is deleted.
pub async fn service_account_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    seconds: i64,
    bound_pod: Option<(&str, &str)>,
) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(seconds),
            bound_object_ref: bound_pod.map(|(pod, uid)| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                uid: Some(uid.into()),
            }),
        },
        ..TokenRequest::default()
    };
    let answer = api
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for serviceaccount {namespace}/{name}"))?;
    answer
        .status
        .map(|s| s.token)
        .filter(|t| !t.is_empty())
        .with_context(|| format!("TokenRequest for {namespace}/{name} returned no token"))
}
