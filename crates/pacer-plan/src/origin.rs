//! Where a request may go, decided in one place for the validator (literal paths) and the
//! engine (rendered paths, on every request).
//!
//! A plan's requests go to its `target`. A rendered `path` is either a path on the target
//! (`/x`: one leading slash, no control characters, no backslash) or an absolute http(s) URL;
//! an absolute URL to another origin (scheme, host, port) is sent only when its host is named
//! in `http.allowHosts`, and then without credentials: the plan's bearer/OAuth tokens and its
//! `http.headers` credentials go to the target's origin alone. This is what keeps a hostile
//! server's `Location: http://evil/` (extracted into `{{vars.location}}`) from collecting the
//! test's token.

use std::fmt;

/// At most this many `http.allowHosts` entries: a plan names the few hosts it really calls
/// besides its target; a longer list is a mistake (or a wildcard spelled out).
pub const MAX_ALLOW_HOSTS: usize = 64;

/// A host a plan allows requests to besides its target (`http.allowHosts`): `host` on any
/// port, or `host:port` on that port only, for http and https alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    host: url::Host<String>,
    port: Option<u16>,
}

impl AllowedHost {
    /// Parse one `http.allowHosts` entry (`host`, `host:port`, `[v6]`, `[v6]:port`). The
    /// reason says what is wrong, without the field (the validator names it).
    pub fn parse(entry: &str) -> Result<Self, String> {
        let e = entry.trim();
        if e.is_empty() {
            return Err("must not be empty".into());
        }
        if e.contains("://") {
            return Err("give host[:port], without a scheme".into());
        }
        if e.contains('*') {
            return Err("wildcards are not supported: name each host".into());
        }
        if e.chars()
            .any(|c| c.is_control() || c.is_whitespace() || "/?#@\\".contains(c))
        {
            return Err(
                "give host[:port] only (no path, user, spaces or control characters)".into(),
            );
        }
        let (host, port) = if let Some(rest) = e.strip_prefix('[') {
            let Some((v6, after)) = rest.split_once(']') else {
                return Err("an IPv6 address needs its closing `]`".into());
            };
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("expected `:port` after `]`")?),
            };
            (format!("[{v6}]"), port)
        } else {
            match e.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err("an IPv6 address goes in brackets: [::1]:8080".into());
                }
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (e.to_string(), None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
            },
        };
        let host = url::Host::parse(&host).map_err(|e| format!("not a host name ({e})"))?;
        Ok(Self { host, port })
    }

    /// Does this entry allow `url` (its host, and its port if the entry names one)?
    pub fn allows(&self, url: &url::Url) -> bool {
        url.host().is_some_and(|h| h.to_owned() == self.host)
            && self
                .port
                .is_none_or(|p| url.port_or_known_default() == Some(p))
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// Where an accepted request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The target's origin: credentials are attached.
    Target,
    /// A host of `http.allowHosts`: sent without credentials.
    AllowedHost,
}

impl Destination {
    /// Credentials (the bearer/OAuth token, `http.headers` credentials) go with the request.
    pub fn gets_credentials(self) -> bool {
        self == Destination::Target
    }
}

/// Why a rendered path is not sent. The messages never contain the rendered value (it may
/// carry a secret): only the origin it pointed at, or what is wrong with its shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An absolute (or `//host` scheme-relative) URL to an origin that is neither the target's
    /// nor in `http.allowHosts`.
    #[error("goes to {origin}, which is neither the target's origin nor in http.allowHosts")]
    OffOrigin { origin: String },
    /// Not a path on the target and not an http(s) URL.
    #[error("is not a path on the target: {0}")]
    NotAPath(&'static str),
}

/// Resolve a rendered `path` against the plan's `target`: the URL to request and whether it
/// goes to the target's origin or to an allowed host.
pub fn resolve(
    target: &url::Url,
    allow: &[AllowedHost],
    rendered: &str,
) -> Result<(url::Url, Destination), Refusal> {
    // Checked first: the URL parser silently drops tabs and newlines, and CR/LF in a request
    // line is how headers are smuggled.
    if rendered.chars().any(char::is_control) {
        return Err(Refusal::NotAPath(
            "it contains control characters (CR, LF, ...)",
        ));
    }
    let url = if let Some(rest) = rendered.strip_prefix('/') {
        if rest.starts_with('/') || rest.starts_with('\\') {
            // `//host/x` means another host (RFC 3986 network-path reference).
            let origin = url::Url::parse(&format!("{}:{rendered}", target.scheme()))
                .map(|u| origin_of(&u))
                .unwrap_or_else(|_| "another host (`//...`)".into());
            return Err(Refusal::OffOrigin { origin });
        }
        if rendered.contains('\\') {
            return Err(Refusal::NotAPath("it contains a backslash"));
        }
        let base = target.as_str().trim_end_matches('/');
        url::Url::parse(&format!("{base}{rendered}"))
            .map_err(|_| Refusal::NotAPath("it does not make a valid URL on the target"))?
    } else {
        match url::Url::parse(rendered) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                if !u.username().is_empty() || u.password().is_some() {
                    return Err(Refusal::NotAPath("a URL must not carry user:password@"));
                }
                u
            }
            _ => {
                return Err(Refusal::NotAPath(
                    "it must start with `/` or be an http:// or https:// URL",
                ));
            }
        }
    };
    if url.origin() == target.origin() {
        Ok((url, Destination::Target))
    } else if allow.iter().any(|a| a.allows(&url)) {
        Ok((url, Destination::AllowedHost))
    } else {
        Err(Refusal::OffOrigin {
            origin: origin_of(&url),
        })
    }
}

/// `scheme://host:port` of a URL (no path, query or user: safe to show).
fn origin_of(url: &url::Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> url::Url {
        url::Url::parse("http://127.0.0.1:8080/api").unwrap()
    }

    #[test]
    fn a_path_stays_on_the_target_and_gets_credentials() {
        let (u, d) = resolve(&target(), &[], "/x?y=1").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:8080/api/x?y=1");
        assert!(d.gets_credentials());
        let (_, d) = resolve(&target(), &[], "http://127.0.0.1:8080/other").unwrap();
        assert_eq!(d, Destination::Target);
    }

    #[test]
    fn other_origins_are_refused_unless_allowed_and_then_get_no_credentials() {
        for p in [
            "//evil:1/x",
            "/\\evil/x",
            "http://evil/x",
            "https://127.0.0.1:8080/x",
            "http://127.0.0.1:8081/x",
        ] {
            assert!(
                matches!(resolve(&target(), &[], p), Err(Refusal::OffOrigin { .. })),
                "{p}"
            );
        }
        let allow = [AllowedHost::parse("evil").unwrap()];
        let (_, d) = resolve(&target(), &allow, "http://evil:9/x").unwrap();
        assert_eq!(d, Destination::AllowedHost);
        assert!(!d.gets_credentials());
        // `//host` stays refused: a path is a path.
        assert!(resolve(&target(), &allow, "//evil/x").is_err());
        let allow = [AllowedHost::parse("evil:8443").unwrap()];
        assert!(resolve(&target(), &allow, "https://evil:8443/x").is_ok());
        assert!(resolve(&target(), &allow, "https://evil/x").is_err());
    }

    #[test]
    fn malformed_paths_are_refused_without_echoing_them() {
        for p in [
            "/x\r\nHost: evil",
            "/x\tsecret",
            "x",
            "",
            "ftp://h/x",
            "http://u:p@127.0.0.1:8080/",
        ] {
            match resolve(&target(), &[], p) {
                Err(e @ Refusal::NotAPath(_)) => {
                    assert!(!e.to_string().contains("secret"), "{e}");
                }
                other => panic!("{p:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn allow_host_entries_parse_or_say_why() {
        assert_eq!(
            AllowedHost::parse("API.example.com").unwrap().to_string(),
            "api.example.com"
        );
        assert_eq!(
            AllowedHost::parse("[::1]:8080").unwrap().to_string(),
            "[::1]:8080"
        );
        assert_eq!(
            AllowedHost::parse("10.0.0.1:80").unwrap().to_string(),
            "10.0.0.1:80"
        );
        for bad in [
            "",
            "http://h",
            "*.example.com",
            "h/x",
            "u@h",
            "h:0",
            "h:99999",
            "h:x",
            "::1",
            "[::1",
            "h k",
        ] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad:?}");
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_rendered_path_stays_on_the_target_or_an_allowed_host_or_is_refused(
                rendered in prop_oneof![
                    "[ -~]{0,40}",
                    "(/|//|/\\\\|http://|https://|HTTP://)[a-z0-9.:@/\\\\?#%\\[\\]\r\n\t-]{0,30}",
                    any::<String>(),
                ],
            ) {
                let target = url::Url::parse("http://127.0.0.1:8080/api").unwrap();
                let allow = [AllowedHost::parse("allowed.example:9").unwrap()];
                match resolve(&target, &allow, &rendered) {
                    Ok((u, Destination::Target)) => prop_assert_eq!(u.origin(), target.origin()),
                    Ok((u, Destination::AllowedHost)) => {
                        prop_assert_eq!(u.host_str(), Some("allowed.example"));
                        prop_assert_eq!(u.port_or_known_default(), Some(9));
                    }
                    // Only the origin is shown: never a path, query, fragment or user.
                    Err(Refusal::OffOrigin { origin }) => prop_assert!(
                        !origin.contains(['?', '#', '@']),
                        "{}",
                        origin
                    ),
                    // A fixed reason.
                    Err(Refusal::NotAPath(_)) => {}
                }
                if rendered.starts_with("//") || rendered.chars().any(char::is_control) {
                    prop_assert!(resolve(&target, &allow, &rendered).is_err());
                }
            }

            #[test]
            fn any_allow_hosts_entry_parses_or_says_why_without_panicking(entry in "[ -~]{0,40}") {
                if let Ok(a) = AllowedHost::parse(&entry) {
                    // What it shows parses back to the same entry.
                    prop_assert_eq!(AllowedHost::parse(&a.to_string()), Ok(a));
                }
            }
        }
    }
}
