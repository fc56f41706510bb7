//! What a LoadTest may ask of its worker pods. Creating a LoadTest is creating pods with the
//! operator's rights, and the people allowed to create LoadTests are trusted less than the
//! operator's ServiceAccount, so the pod-shaped parts of a spec are checked here against the
//! operator's allow-lists before anything is created:
//!
//! - `spec.image`: only the operator's worker image or one of `--allowed-image` (an image with
//!   a shell or a debugger would run whatever the author likes next to the test's Secrets);
//! - `spec.workerTemplate.serviceAccountName`: only one of `--allowed-service-account` (none
//!   by default: a worker needs no Kubernetes API, and the operator never mounts a token);
//! - `spec.workerTemplate.env`: literal values only: `valueFrom` would hand the pods any
//!   Secret or ConfigMap of the namespace (credentials come through `spec.credentials`);
//! - `spec.workerTemplate.annotations`: none that weakens the pod's confinement (AppArmor,
//!   the old seccomp annotations);
//! - `spec.workerTemplate.labels`: none of the operator's own (`pacer.dev/`,
//!   `app.kubernetes.io/`), which NetworkPolicies and cleanup select on;
//! - `spec.workerTemplate.tolerations`: none that tolerates every taint or the control plane's
//!   (load generators do not belong next to the API server and etcd).
//!
//! The CRD's structural schema prunes every other pod field (volumes, hostPath, hostNetwork,
//! securityContext, extra containers): `resources::worker_job` sets those itself.

use pacer_plan::FieldError;

use crate::crd::LoadTest;

/// Annotation key prefixes that change how a container is confined.
const CONFINEMENT_ANNOTATIONS: &[&str] = &[
    "container.apparmor.security.beta.kubernetes.io/",
    "seccomp.security.alpha.kubernetes.io/",
    "container.seccomp.security.alpha.kubernetes.io/",
];

/// Taint key prefixes of the nodes that run the cluster itself.
const CONTROL_PLANE_TAINTS: &[&str] = &["node-role.kubernetes.io/"];

/// Label key prefixes the operator sets and selects on (NetworkPolicies, cleanup, the chart).
const RESERVED_LABEL_PREFIXES: &[&str] = &["pacer.dev/", "app.kubernetes.io/"];

/// Images or ServiceAccounts a LoadTest may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowList {
    /// Not checked: `pacer validate` of a manifest cannot know the cluster's lists.
    Unchecked,
    /// Only these. An entry ending in `*` allows every name starting with what comes before
    /// it (`registry.example/pacer:*`); `*` alone allows everything.
    Only(Vec<String>),
}

impl AllowList {
    pub fn allows(&self, name: &str) -> bool {
        match self {
            Self::Unchecked => true,
            Self::Only(entries) => entries.iter().any(|e| match e.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => e == name,
            }),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Unchecked => "anything".into(),
            Self::Only(e) if e.is_empty() => "none".into(),
            Self::Only(e) => e.join(", "),
        }
    }
}

/// The operator's rules for worker pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPolicy {
    /// `spec.image` (the operator's `--worker-image` is always allowed, and is the default).
    pub images: AllowList,
    /// `spec.workerTemplate.serviceAccountName`.
    pub service_accounts: AllowList,
}

impl Default for WorkerPolicy {
    /// What a LoadTest checked outside a cluster may name: any image and ServiceAccount (the
    /// rules that do not depend on the cluster still apply).
    fn default() -> Self {
        Self {
            images: AllowList::Unchecked,
            service_accounts: AllowList::Unchecked,
        }
    }
}

impl WorkerPolicy {
    /// An operator's policy: only `worker_image` and `images`, only `service_accounts`.
    pub fn operator(
        worker_image: &str,
        images: impl IntoIterator<Item = String>,
        service_accounts: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut allowed: Vec<String> = vec![worker_image.to_string()];
        allowed.extend(images);
        Self {
            images: AllowList::Only(allowed),
            service_accounts: AllowList::Only(service_accounts.into_iter().collect()),
        }
    }

    /// Every way `lt` breaks this policy, each naming its field.
    pub fn check(&self, lt: &LoadTest) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let spec = &lt.spec;
        if let Some(image) = &spec.image
            && !self.images.allows(image)
        {
            errors.push(FieldError::new(
                "spec.image",
                format!(
                    "{image:?} is not an allowed worker image (this operator allows: {}; its --allowed-image)",
                    self.images.describe()
                ),
            ));
        }
        let Some(t) = &spec.worker_template else {
            return errors;
        };
        if let Some(sa) = &t.service_account_name
            && !self.service_accounts.allows(sa)
        {
            errors.push(FieldError::new(
                "spec.workerTemplate.serviceAccountName",
                format!(
                    "{sa:?} is not an allowed ServiceAccount for worker pods (this operator allows: {}; its --allowed-service-account)",
                    self.service_accounts.describe()
                ),
            ));
        }
        for (i, e) in t.env.iter().enumerate() {
            if e.value_from.is_some() {
                errors.push(FieldError::new(
                    format!("spec.workerTemplate.env[{i}].valueFrom"),
                    "only literal values are allowed here: give Secrets with spec.credentials",
                ));
            }
        }
        for key in t.annotations.keys() {
            if CONFINEMENT_ANNOTATIONS.iter().any(|p| key.starts_with(p)) {
                errors.push(FieldError::new(
                    format!("spec.workerTemplate.annotations[{key:?}]"),
                    "annotations that change a container's AppArmor or seccomp profile are not allowed",
                ));
            }
        }
        for (i, tol) in t.tolerations.iter().enumerate() {
            let key = tol.key.as_deref().unwrap_or_default();
            if key.is_empty() && tol.operator.as_deref() == Some("Exists") {
                errors.push(FieldError::new(
                    format!("spec.workerTemplate.tolerations[{i}]"),
                    "a toleration of every taint is not allowed: name the taint's key",
                ));
            } else if CONTROL_PLANE_TAINTS.iter().any(|p| key.starts_with(p)) {
                errors.push(FieldError::new(
                    format!("spec.workerTemplate.tolerations[{i}].key"),
                    format!("{key:?}: worker pods may not tolerate the control plane's taints"),
                ));
            }
        }
        for key in t.labels.keys() {
            if RESERVED_LABEL_PREFIXES.iter().any(|p| key.starts_with(p)) {
                errors.push(FieldError::new(
                    format!("spec.workerTemplate.labels[{key:?}]"),
                    format!(
                        "labels starting with {} are set by the operator",
                        RESERVED_LABEL_PREFIXES.join(" or ")
                    ),
                ));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_ending_in_a_star_allows_a_prefix_and_nothing_else() {
        let l = AllowList::Only(vec!["reg.example/pacer:*".into(), "pacer:1.0".into()]);
        assert!(l.allows("reg.example/pacer:2.1"));
        assert!(l.allows("pacer:1.0"));
        assert!(!l.allows("pacer:1.0-debug"));
        assert!(!l.allows("reg.example/other:1"));
        assert!(!AllowList::Only(vec![]).allows("pacer:1.0"));
        assert!(AllowList::Only(vec!["*".into()]).allows("anything"));
    }
}
