//! The parts of `spec.workerTemplate` a platform team needs beyond resources and scheduling
//! basics (issue 20, locust-k8s-operator #149/#252/#300): pull Secrets, `envFrom`, volumes and
//! their mounts, topology spread, priority and runtime classes, and a stricter security
//! context, laid over the pod `resources::worker_job` builds.
//!
//! Everything here was checked by [`crate::policy`] first (no Secret outside the test's
//! credentials, no hostPath, nothing looser than the defaults); this file only renders. It
//! adds to what the pod already has (volumes another part of the operator mounts, the
//! operator's own pull Secrets) and never replaces a field the operator set, but for the
//! security contexts, where a template's explicit value is stricter by construction.

use k8s_openapi::api::core::v1::{
    Container, LocalObjectReference, PodSecurityContext, PodSpec, SecurityContext, Volume,
};

use crate::crd::{WorkerTemplate, WorkerVolume};

/// Lay `t` over the worker pod `pod`; `pull_secrets` are the operator's own
/// (`--worker-image-pull-secret`, the chart's `imagePullSecrets`), which come first.
pub fn apply(pod: &mut PodSpec, t: &WorkerTemplate, pull_secrets: &[String]) {
    let secrets = pod.image_pull_secrets.get_or_insert_with(Vec::new);
    for name in pull_secrets {
        push_unique(secrets, LocalObjectReference { name: name.clone() });
    }
    for s in &t.image_pull_secrets {
        push_unique(secrets, s.clone());
    }
    if secrets.is_empty() {
        pod.image_pull_secrets = None;
    }
    if !t.volumes.is_empty() {
        pod.volumes
            .get_or_insert_with(Vec::new)
            .extend(t.volumes.iter().map(volume));
    }
    if !t.topology_spread_constraints.is_empty() {
        pod.topology_spread_constraints = Some(t.topology_spread_constraints.clone());
    }
    if t.priority_class_name.is_some() {
        pod.priority_class_name = t.priority_class_name.clone();
    }
    if t.runtime_class_name.is_some() {
        pod.runtime_class_name = t.runtime_class_name.clone();
    }
    if let Some(psc) = &t.pod_security_context {
        let base = pod.security_context.take().unwrap_or_default();
        pod.security_context = Some(stricter_pod(base, psc));
    }
    if let Some(c) = pod.containers.first_mut() {
        container(c, t);
    }
}

fn push_unique(list: &mut Vec<LocalObjectReference>, s: LocalObjectReference) {
    if !list.iter().any(|x| x.name == s.name) {
        list.push(s);
    }
}

fn container(c: &mut Container, t: &WorkerTemplate) {
    if !t.env_from.is_empty() {
        c.env_from
            .get_or_insert_with(Vec::new)
            .extend(t.env_from.iter().cloned());
    }
    if !t.volume_mounts.is_empty() {
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .extend(t.volume_mounts.iter().cloned());
    }
    if let Some(sc) = &t.security_context {
        let base = c.security_context.take().unwrap_or_default();
        c.security_context = Some(stricter(base, sc));
    }
}

fn volume(v: &WorkerVolume) -> Volume {
    Volume {
        name: v.name.clone(),
        config_map: v.config_map.clone(),
        secret: v.secret.clone(),
        empty_dir: v.empty_dir.clone(),
        persistent_volume_claim: v.persistent_volume_claim.clone(),
        ..Volume::default()
    }
}

/// The operator's container security context with the template's fields laid over it (the
/// policy refused every looser one); added capabilities never pass, dropped ones add up.
fn stricter(mut base: SecurityContext, t: &SecurityContext) -> SecurityContext {
    let over = |b: &mut Option<bool>, t: Option<bool>| {
        if t.is_some() {
            *b = t;
        }
    };
    over(&mut base.privileged, t.privileged);
    over(
        &mut base.allow_privilege_escalation,
        t.allow_privilege_escalation,
    );
    over(
        &mut base.read_only_root_filesystem,
        t.read_only_root_filesystem,
    );
    over(&mut base.run_as_non_root, t.run_as_non_root);
    if t.run_as_user.is_some() {
        base.run_as_user = t.run_as_user;
    }
    if t.run_as_group.is_some() {
        base.run_as_group = t.run_as_group;
    }
    if t.seccomp_profile.is_some() {
        base.seccomp_profile = t.seccomp_profile.clone();
    }
    if t.app_armor_profile.is_some() {
        base.app_armor_profile = t.app_armor_profile.clone();
    }
    if t.proc_mount.is_some() {
        base.proc_mount = t.proc_mount.clone();
    }
    if let Some(drop) = t.capabilities.as_ref().and_then(|c| c.drop.as_ref()) {
        let caps = base.capabilities.get_or_insert_with(Default::default);
        let list = caps.drop.get_or_insert_with(Vec::new);
        for d in drop {
            if !list.contains(d) {
                list.push(d.clone());
            }
        }
    }
    base
}

/// The pod's security context by the rule of [`stricter`].
fn stricter_pod(mut base: PodSecurityContext, t: &PodSecurityContext) -> PodSecurityContext {
    if t.run_as_non_root.is_some() {
        base.run_as_non_root = t.run_as_non_root;
    }
    if t.run_as_user.is_some() {
        base.run_as_user = t.run_as_user;
    }
    if t.run_as_group.is_some() {
        base.run_as_group = t.run_as_group;
    }
    if t.fs_group.is_some() {
        base.fs_group = t.fs_group;
    }
    if t.fs_group_change_policy.is_some() {
        base.fs_group_change_policy = t.fs_group_change_policy.clone();
    }
    if t.supplemental_groups.is_some() {
        base.supplemental_groups = t.supplemental_groups.clone();
    }
    if t.seccomp_profile.is_some() {
        base.seccomp_profile = t.seccomp_profile.clone();
    }
    if t.app_armor_profile.is_some() {
        base.app_armor_profile = t.app_armor_profile.clone();
    }
    base
}
