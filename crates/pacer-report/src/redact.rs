//! The plan as shown in reports: [`pacer_plan::Plan::source`] (the plan as written, with its
//! `${env:..}` references unresolved), with anything that looks like a credential removed
//! just in case a secret was written into the plan literally.

use serde_json::Value;

/// What replaces a redacted value.
pub const REDACTED: &str = "<redacted>";

/// Keys (compared lowercase, without `-` and `_`) whose values are always redacted.
const SECRET_KEYS: [&str; 12] = [
    "clientsecret",
    "secret",
    "token",
    "accesstoken",
    "refreshtoken",
    "password",
    "passwd",
    "authorization",
    "proxyauthorization",
    "apikey",
    "xapikey",
    "cookie",
];

/// Key endings that mark a secret (`dbPassword`, `githubToken`, `signingSecret`); `tokenUrl`
/// does not end with one.
const SECRET_SUFFIXES: [&str; 4] = ["secret", "password", "token", "apikey"];

/// Is a value under this key a secret?
pub fn is_secret_key(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    SECRET_KEYS.contains(&k.as_str()) || SECRET_SUFFIXES.iter().any(|s| k.ends_with(s))
}

/// A copy of `source` with every value under a secret key (any depth, whatever its type)
/// replaced by [`REDACTED`], and the password of any `scheme://user:password@host` URL in a
/// string replaced too.
pub fn redact(source: &Value) -> Value {
    match source {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if is_secret_key(k) && !v.is_null() {
                        Value::String(REDACTED.into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(s) => Value::String(redact_url_password(s)),
        other => other.clone(),
    }
}

/// `https://user:pw@host/x` -> `https://user:<redacted>@host/x`, for every URL in `text`.
fn redact_url_password(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', ' ', '"']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push(':');
                        out.push_str(REDACTED);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

/// The redacted source as indented JSON, for the report's plan listing.
pub fn redacted_listing(source: &Value) -> String {
    serde_json::to_string_pretty(&redact(source)).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_under_known_keys_are_redacted_at_any_depth() {
        let src = json!({
            "target": "${env:TARGET}",
            "auth": [{
                "name": "a", "type": "oauth2-clientCredentials",
                "tokenUrl": "/oauth/token", "clientId": "id",
                "clientSecret": "${env:SECRET}"
            }, {"name": "b", "type": "bearer", "token": "literal-token"}],
            "http": {"headers": {"Authorization": "Bearer xyz", "X-Api-Key": "k", "X-Other": "fine"}},
            "variables": {"db_password": 42, "nested": {"Proxy-Authorization": ["x"]}}
        });
        let r = redact(&src);
        assert_eq!(r["auth"][0]["clientSecret"], REDACTED);
        assert_eq!(r["auth"][0]["tokenUrl"], "/oauth/token");
        assert_eq!(r["auth"][0]["clientId"], "id");
        assert_eq!(r["auth"][1]["token"], REDACTED);
        assert_eq!(r["http"]["headers"]["Authorization"], REDACTED);
        assert_eq!(r["http"]["headers"]["X-Api-Key"], REDACTED);
        assert_eq!(r["http"]["headers"]["X-Other"], "fine");
        assert_eq!(r["variables"]["db_password"], REDACTED);
        assert_eq!(r["variables"]["nested"]["Proxy-Authorization"], REDACTED);
        assert_eq!(r["target"], "${env:TARGET}");
        let text = redacted_listing(&src);
        for secret in ["literal-token", "Bearer xyz", "${env:SECRET}"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url_password("http://u:p@h:1/x?y=1 and https://h2/z"),
            "http://u:<redacted>@h:1/x?y=1 and https://h2/z"
        );
        assert_eq!(redact_url_password("http://user@h/"), "http://user@h/");
        assert_eq!(redact_url_password("no url"), "no url");
        assert_eq!(redact_url_password("weird://"), "weird://");
    }
}
