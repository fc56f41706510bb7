//! A container's environment as the kubelet computes it: `envFrom`, then `env` in order, values
//! with `$(VAR)` expanded from the variables before them; `valueFrom` from Secrets, ConfigMaps,
//! the pod's fields and the container's resources.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;

/// Why the environment could not be computed. `retry` when a referenced object or key may still
/// appear (the kubelet keeps the pod waiting, as `CreateContainerConfigError`).
#[derive(Debug, Clone)]
pub struct EnvError {
    pub message: String,
    pub retry: bool,
}

impl EnvError {
    fn missing(message: String) -> Self {
        Self {
            message,
            retry: true,
        }
    }

    fn invalid(message: String) -> Self {
        Self {
            message,
            retry: false,
        }
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an undefined reference is left
/// as it is, `$$` is a literal `$`.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The IP a pod of the process kubelet has: every process shares the host's loopback.
pub const POD_IP: &str = "127.0.0.1";

/// A `fieldRef.fieldPath` of `pod`.
pub fn field_ref(pod: &Pod, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations", meta.annotations.as_ref()) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => POD_IP.into(),
        other => return Err(format!("fieldRef {other:?} is not supported")),
    })
}

/// A `resourceFieldRef` of `container` (the quantity as written; `divisor` is not applied).
fn resource_ref(container: &Container, resource: &str) -> Result<String, String> {
    let res = container.resources.as_ref();
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("resourceFieldRef {resource:?} is not supported"))?;
    let map = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("resourceFieldRef {resource:?} is not supported")),
    };
    Ok(map
        .and_then(|m| m.get(name))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "0".into()))
}

async fn secret(
    client: &kube::Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<Option<Secret>, EnvError> {
    let found = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| EnvError::missing(format!("reading secret {ns}/{name}: {e}")))?;
    if found.is_none() && !optional {
        return Err(EnvError::missing(format!("secret {name:?} not found")));
    }
    Ok(found)
}

async fn config_map(
    client: &kube::Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<Option<ConfigMap>, EnvError> {
    let found = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| EnvError::missing(format!("reading configmap {ns}/{name}: {e}")))?;
    if found.is_none() && !optional {
        return Err(EnvError::missing(format!("configmap {name:?} not found")));
    }
    Ok(found)
}

fn secret_entries(s: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    out.extend(s.string_data.clone().unwrap_or_default());
    out
}

fn config_map_entries(c: &ConfigMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = c
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    out.extend(c.data.clone().unwrap_or_default());
    out
}

/// The environment of `container` in `pod`, in the order Kubernetes builds it (later wins).
pub async fn resolve(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    base: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, EnvError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut vars = base.clone();

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let entries = if let Some(r) = &from.secret_ref {
            secret(client, ns, &r.name, r.optional.unwrap_or(false))
                .await?
                .map(|s| secret_entries(&s))
        } else if let Some(r) = &from.config_map_ref {
            config_map(client, ns, &r.name, r.optional.unwrap_or(false))
                .await?
                .map(|c| config_map_entries(&c))
        } else {
            None
        };
        for (k, v) in entries.unwrap_or_default() {
            vars.insert(format!("{prefix}{k}"), v);
        }
    }

    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match secret(client, ns, &r.name, optional).await? {
                        Some(s) => match secret_entries(&s).remove(&r.key) {
                            Some(v) => Some(v),
                            None if optional => None,
                            None => {
                                return Err(EnvError::missing(format!(
                                    "key {:?} not found in secret {:?}",
                                    r.key, r.name
                                )));
                            }
                        },
                        None => None,
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match config_map(client, ns, &r.name, optional).await? {
                        Some(c) => match config_map_entries(&c).remove(&r.key) {
                            Some(v) => Some(v),
                            None if optional => None,
                            None => {
                                return Err(EnvError::missing(format!(
                                    "key {:?} not found in configmap {:?}",
                                    r.key, r.name
                                )));
                            }
                        },
                        None => None,
                    }
                } else if let Some(f) = &from.field_ref {
                    Some(field_ref(pod, &f.field_path).map_err(EnvError::invalid)?)
                } else if let Some(r) = &from.resource_field_ref {
                    Some(resource_ref(container, &r.resource).map_err(EnvError::invalid)?)
                } else {
                    return Err(EnvError::invalid(format!(
                        "env {:?}: valueFrom without a source the process kubelet supports",
                        var.name
                    )));
                }
            }
            (Some(v), None) => Some(expand(v, &vars)),
            (None, None) => Some(String::new()),
        };
        if let Some(v) = value {
            vars.insert(var.name.clone(), v);
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let v = vars(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &v), "1-two");
        assert_eq!(expand("$(MISSING)", &v), "$(MISSING)");
        assert_eq!(expand("$$(A)", &v), "$(A)");
        assert_eq!(expand("cost $5 $", &v), "cost $5 $");
        assert_eq!(expand("$(unterminated", &v), "$(unterminated");
    }

    #[test]
    fn field_refs_of_a_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p", "namespace": "n", "uid": "u",
                "annotations": { "batch.kubernetes.io/job-completion-index": "1" },
                "labels": { "app": "x" },
            },
            "spec": { "containers": [] },
        }))
        .unwrap_or_default();
        assert_eq!(field_ref(&pod, "metadata.name").as_deref(), Ok("p"));
        assert_eq!(field_ref(&pod, "metadata.namespace").as_deref(), Ok("n"));
        assert_eq!(field_ref(&pod, "status.podIP").as_deref(), Ok("127.0.0.1"));
        assert_eq!(
            field_ref(
                &pod,
                "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            )
            .as_deref(),
            Ok("1")
        );
        assert_eq!(
            field_ref(&pod, "metadata.labels['app']").as_deref(),
            Ok("x")
        );
        assert!(field_ref(&pod, "spec.nope").is_err());
    }
}
