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
//! - `spec.workerTemplate.envFrom`, `.volumes`: ConfigMaps, empty dirs and claims; a Secret
//!   only when it is one of the test's `credentials` (the rule of `env` above). hostPath and
//!   every other volume source are not in the CRD's schema ([`crate::crd::WorkerVolume`]);
//! - `spec.workerTemplate.volumeMounts`: only the template's volumes, no mount propagation;
//! - `spec.workerTemplate.securityContext`, `.podSecurityContext`: only stricter than the
//!   defaults `resources::worker_job` sets (no root, no privilege, no added capability, no
//!   unconfined seccomp or AppArmor, no SELinux options, no sysctls), see [`check_security`];
//! - `spec.workerTemplate.priorityClassName`: none of Kubernetes' own `system-` classes.
//!
//! The CRD's structural schema prunes every other pod field (hostNetwork, hostPID, extra
//! containers): `resources::worker_job` sets those itself.

use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};
use pacer_plan::FieldError;

use crate::crd::{LoadTest, WorkerTemplate};

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

/// The prefix of Kubernetes' own PriorityClasses (`system-cluster-critical`,
/// `system-node-critical`): a load generator preempting the cluster's own pods is not allowed.
const SYSTEM_PRIORITY_PREFIX: &str = "system-";

/// The seccomp and AppArmor profile types that confine no less than `RuntimeDefault`.
const CONFINED_PROFILES: &[&str] = &["RuntimeDefault", "Localhost"];

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
        let credential_secrets: Vec<&str> = spec
            .credentials
            .iter()
            .map(|c| c.secret_ref.name.as_str())
            .collect();
        check_pod_sources(t, &credential_secrets, &mut errors);
        if let Some(p) = &t.priority_class_name
            && p.starts_with(SYSTEM_PRIORITY_PREFIX)
        {
            errors.push(FieldError::new(
                "spec.workerTemplate.priorityClassName",
                format!("{p:?}: Kubernetes' own priority classes are not for worker pods"),
            ));
        }
        if let Some(sc) = &t.security_context {
            check_security(sc, &mut errors);
        }
        if let Some(psc) = &t.pod_security_context {
            check_pod_security(psc, &mut errors);
        }
        errors
    }
}

/// The Secret of a `secretRef` may only be a credential's.
fn secret_allowed(name: &str, credential_secrets: &[&str]) -> bool {
    credential_secrets.contains(&name)
}

/// `envFrom`, `volumes` and `volumeMounts`: ConfigMaps and the test's own Secrets only, every
/// mount of a declared volume.
fn check_pod_sources(
    t: &WorkerTemplate,
    credential_secrets: &[&str],
    errors: &mut Vec<FieldError>,
) {
    let not_a_credential = |name: &str| {
        format!(
            "Secret {name:?} is not one of the test's credentials (spec.credentials: {}): worker pods get no other Secret",
            if credential_secrets.is_empty() {
                "none".to_string()
            } else {
                credential_secrets.join(", ")
            }
        )
    };
    for (i, e) in t.env_from.iter().enumerate() {
        if let Some(s) = &e.secret_ref
            && !secret_allowed(&s.name, credential_secrets)
        {
            errors.push(FieldError::new(
                format!("spec.workerTemplate.envFrom[{i}].secretRef.name"),
                not_a_credential(&s.name),
            ));
        }
        if let Some(prefix) = &e.prefix
            && prefix.starts_with(pacer_plan::refs::RESERVED_ENV_PREFIX)
        {
            errors.push(FieldError::new(
                format!("spec.workerTemplate.envFrom[{i}].prefix"),
                "names starting with PACER_ are reserved for the operator",
            ));
        }
    }
    for (i, v) in t.volumes.iter().enumerate() {
        let sources = [
            v.config_map.is_some(),
            v.secret.is_some(),
            v.empty_dir.is_some(),
            v.persistent_volume_claim.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            errors.push(FieldError::new(
                format!("spec.workerTemplate.volumes[{i}]"),
                "give exactly one of configMap, secret, emptyDir, persistentVolumeClaim (hostPath and the other volume sources are not allowed)",
            ));
        }
        if let Some(s) = &v.secret {
            let name = s.secret_name.as_deref().unwrap_or_default();
            if !secret_allowed(name, credential_secrets) {
                errors.push(FieldError::new(
                    format!("spec.workerTemplate.volumes[{i}].secret.secretName"),
                    not_a_credential(name),
                ));
            }
        }
    }
    for (i, m) in t.volume_mounts.iter().enumerate() {
        if !t.volumes.iter().any(|v| v.name == m.name) {
            errors.push(FieldError::new(
                format!("spec.workerTemplate.volumeMounts[{i}].name"),
                format!("{:?} is not one of spec.workerTemplate.volumes", m.name),
            ));
        }
        if m.mount_propagation.as_deref().is_some_and(|p| p != "None") {
            errors.push(FieldError::new(
                format!("spec.workerTemplate.volumeMounts[{i}].mountPropagation"),
                "only None: propagation to or from the host is not allowed",
            ));
        }
    }
}

/// A field of a security context that would make the worker looser than the default.
fn looser(errors: &mut Vec<FieldError>, field: &str, why: &str) {
    errors.push(FieldError::new(
        format!("spec.workerTemplate.{field}"),
        format!("{why}: a worker's security context may only be made stricter"),
    ));
}

/// A seccomp or AppArmor profile type that confines no less than the default.
fn confined(profile_type: &str) -> bool {
    CONFINED_PROFILES.contains(&profile_type)
}

/// The container's security context: what `resources::worker_job` sets (no privilege
/// escalation, read-only root, non-root, every capability dropped) may not be undone, and
/// nothing beyond it may be opened.
pub fn check_security(sc: &SecurityContext, errors: &mut Vec<FieldError>) {
    let f = "securityContext";
    if sc.privileged == Some(true) {
        looser(errors, &format!("{f}.privileged"), "a privileged container");
    }
    if sc.allow_privilege_escalation == Some(true) {
        looser(
            errors,
            &format!("{f}.allowPrivilegeEscalation"),
            "privilege escalation",
        );
    }
    if sc.read_only_root_filesystem == Some(false) {
        looser(
            errors,
            &format!("{f}.readOnlyRootFilesystem"),
            "a writable root filesystem",
        );
    }
    if sc.run_as_non_root == Some(false) {
        looser(errors, &format!("{f}.runAsNonRoot"), "running as root");
    }
    if sc.run_as_user == Some(0) {
        looser(errors, &format!("{f}.runAsUser"), "user 0 is root");
    }
    if sc.run_as_group == Some(0) {
        looser(errors, &format!("{f}.runAsGroup"), "group 0 is root's");
    }
    if let Some(caps) = &sc.capabilities
        && caps.add.as_ref().is_some_and(|a| !a.is_empty())
    {
        looser(
            errors,
            &format!("{f}.capabilities.add"),
            "added capabilities",
        );
    }
    if sc.proc_mount.as_deref().is_some_and(|p| p != "Default") {
        looser(errors, &format!("{f}.procMount"), "an unmasked /proc");
    }
    if sc.se_linux_options.is_some() {
        looser(
            errors,
            &format!("{f}.seLinuxOptions"),
            "SELinux options (a type may be unconfined)",
        );
    }
    if sc.windows_options.is_some() {
        looser(
            errors,
            &format!("{f}.windowsOptions"),
            "Windows options (host process)",
        );
    }
    if let Some(p) = &sc.seccomp_profile
        && !confined(&p.type_)
    {
        looser(
            errors,
            &format!("{f}.seccompProfile.type"),
            &format!("seccomp {:?}", p.type_),
        );
    }
    if let Some(p) = &sc.app_armor_profile
        && !confined(&p.type_)
    {
        looser(
            errors,
            &format!("{f}.appArmorProfile.type"),
            &format!("AppArmor {:?}", p.type_),
        );
    }
}

/// The pod's security context, by the rule of [`check_security`] (the pod runs as non-root
/// with the RuntimeDefault seccomp profile by default).
pub fn check_pod_security(psc: &PodSecurityContext, errors: &mut Vec<FieldError>) {
    let f = "podSecurityContext";
    if psc.run_as_non_root == Some(false) {
        looser(errors, &format!("{f}.runAsNonRoot"), "running as root");
    }
    if psc.run_as_user == Some(0) {
        looser(errors, &format!("{f}.runAsUser"), "user 0 is root");
    }
    if psc.run_as_group == Some(0) {
        looser(errors, &format!("{f}.runAsGroup"), "group 0 is root's");
    }
    if psc.fs_group == Some(0) {
        looser(errors, &format!("{f}.fsGroup"), "group 0 is root's");
    }
    if psc
        .supplemental_groups
        .as_ref()
        .is_some_and(|g| g.contains(&0))
    {
        looser(
            errors,
            &format!("{f}.supplementalGroups"),
            "group 0 is root's",
        );
    }
    if psc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        looser(errors, &format!("{f}.sysctls"), "kernel parameters");
    }
    if psc.se_linux_options.is_some() {
        looser(
            errors,
            &format!("{f}.seLinuxOptions"),
            "SELinux options (a type may be unconfined)",
        );
    }
    if psc.windows_options.is_some() {
        looser(
            errors,
            &format!("{f}.windowsOptions"),
            "Windows options (host process)",
        );
    }
    if let Some(p) = &psc.seccomp_profile
        && !confined(&p.type_)
    {
        looser(
            errors,
            &format!("{f}.seccompProfile.type"),
            &format!("seccomp {:?}", p.type_),
        );
    }
    if let Some(p) = &psc.app_armor_profile
        && !confined(&p.type_)
    {
        looser(
            errors,
            &format!("{f}.appArmorProfile.type"),
            &format!("AppArmor {:?}", p.type_),
        );
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
