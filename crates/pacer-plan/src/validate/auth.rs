//! `auth`: each credential's name (unique; `none` is reserved) and the fields its type needs
//! (and only those), the token URL resolved against the target.

use std::collections::BTreeMap;

use super::{Checker, join_url};
use crate::HumanDuration;
use crate::model::{Auth, defaults};
use crate::spec::{AuthKind, AuthSpec};

/// The credentials, and each one's index by name (for the scenarios and requests that name one).
pub(super) fn credentials(
    c: &mut Checker,
    specs: &[AuthSpec],
    target: Option<&url::Url>,
) -> (Vec<Auth>, BTreeMap<String, usize>) {
    let mut auth = Vec::new();
    let mut names = BTreeMap::new();
    for (i, a) in specs.iter().enumerate() {
        let p = format!("auth[{i}]");
        c.name(&format!("{p}.name"), &a.name);
        if a.name == "none" {
            c.err(
                format!("{p}.name"),
                "`none` is reserved (it means: send no credential)",
            );
        }
        if names.insert(a.name.clone(), i).is_some() {
            c.err(
                format!("{p}.name"),
                format!("duplicate credential name {:?}", a.name),
            );
        }
        let token_url = match a.kind {
            AuthKind::OAuth2ClientCredentials => oauth2_fields(c, &p, a, target),
            AuthKind::Bearer => {
                bearer_fields(c, &p, a);
                None
            }
        };
        if let Some(t) = &a.token
            && t.chars().any(|ch| ch.is_control() || ch == ' ')
        {
            c.err(
                format!("{p}.token"),
                "contains spaces or control characters",
            );
        }
        auth.push(Auth {
            name: a.name.clone(),
            kind: a.kind,
            token_url,
            client_id: a.client_id.clone(),
            client_secret: a.client_secret.clone(),
            scope: a.scope.clone(),
            refresh_before: a
                .refresh_before
                .map_or(defaults::REFRESH_BEFORE, HumanDuration::get),
            token: a.token.clone(),
            share: a.share,
        });
    }
    (auth, names)
}

/// `oauth2-clientCredentials` needs `tokenUrl` (returned, resolved), `clientId` and
/// `clientSecret`, and no `token`.
fn oauth2_fields(
    c: &mut Checker,
    p: &str,
    a: &AuthSpec,
    target: Option<&url::Url>,
) -> Option<url::Url> {
    let mut token_url = None;
    match a.token_url.as_deref() {
        None => c.err(
            format!("{p}.tokenUrl"),
            "required for oauth2-clientCredentials",
        ),
        Some(u) => match join_url(target, u) {
            Ok(u) => token_url = Some(u),
            Err(e) => c.err(format!("{p}.tokenUrl"), e),
        },
    }
    for (field, v) in [
        ("clientId", &a.client_id),
        ("clientSecret", &a.client_secret),
    ] {
        if v.as_deref().is_none_or(str::is_empty) {
            c.err(
                format!("{p}.{field}"),
                "required for oauth2-clientCredentials (use ${env:NAME})",
            );
        }
    }
    if a.token.is_some() {
        c.err(format!("{p}.token"), "only for type bearer");
    }
    token_url
}

/// `bearer` needs `token`, and none of the OAuth2 fields.
fn bearer_fields(c: &mut Checker, p: &str, a: &AuthSpec) {
    if a.token.as_deref().is_none_or(str::is_empty) {
        c.err(
            format!("{p}.token"),
            "required for type bearer (use ${env:NAME})",
        );
    }
    for (field, set) in [
        ("tokenUrl", a.token_url.is_some()),
        ("clientId", a.client_id.is_some()),
        ("clientSecret", a.client_secret.is_some()),
        ("scope", a.scope.is_some()),
    ] {
        if set {
            c.err(
                format!("{p}.{field}"),
                "only for type oauth2-clientCredentials",
            );
        }
    }
}
