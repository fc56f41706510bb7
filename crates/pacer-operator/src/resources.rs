//! The objects a LoadTest owns, built here and nowhere else: the session Secret, the Indexed Job
//! of workers, the report ConfigMap. Every one carries an owner reference to its LoadTest, so
//! deleting the LoadTest deletes them (Kubernetes' garbage collector).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, EnvVar, EnvVarSource, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::crd::LoadTest;
use crate::prepare::{Prepared, credential_envs, uid_slug};
use crate::{OperatorConfig, WorkerTrust};

/// Label on everything a LoadTest owns: its name.
pub const LABEL_LOADTEST: &str = "pacer.dev/loadtest";
/// Label on everything a LoadTest owns: its test id.
pub const LABEL_TEST_ID: &str = "pacer.dev/test-id";
/// The key of the session token in the session Secret.
pub const TOKEN_KEY: &str = "token";
/// The key of the listener's CA in the session Secret (with TLS): workers read it as
/// `PACER_CA_PEM` through `secretKeyRef`, like the token, so they need no volume and no read
/// of the operator's own Secret, which may live in another namespace.
pub const CA_KEY: &str = "ca.crt";
/// The key of the fleet's Redis URL in the session Secret (when it is given by URL).
pub const REDIS_URL_KEY: &str = "redis-url";
/// Keys of the report ConfigMap.
pub const REPORT_TEXT_KEY: &str = "summary.txt";
pub const REPORT_JSON_KEY: &str = "summary.json";

/// Names of a LoadTest's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The Indexed Job of workers: `<name>-workers`.
    pub job: String,
    /// The session Secret: `<name>-session-<uid>` (the uid's [`uid_slug`]: a Secret left
    /// over from an earlier LoadTest of the same name is never mistaken for this one's).
    pub secret: String,
    /// The report ConfigMap: `<name>-report`.
    pub report: String,
}

/// The first `max` characters of a name, without a trailing `-` or `.`: generated names stay
/// within 63 characters (Job names become label values), the test id within 64.
pub(crate) fn short(name: &str, max: usize) -> String {
    let s: String = name.chars().take(max).collect();
    s.trim_end_matches(['-', '.']).to_string()
}

pub fn names(lt: &LoadTest) -> Names {
    let name = lt.metadata.name.as_deref().unwrap_or("loadtest");
    let uid = uid_slug(lt);
    Names {
        job: format!("{}-workers", short(name, 55)),
        secret: format!("{}-session-{uid}", short(name, 45)),
        report: format!("{}-report", short(name, 240)),
    }
}

/// This LoadTest as the controlling owner of an object.
pub fn owner(lt: &LoadTest) -> Option<OwnerReference> {
    lt.controller_owner_ref(&())
}

/// Labels of everything a LoadTest owns.
pub fn labels(lt: &LoadTest, test_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "pacer".to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "pacer-operator".to_string(),
        ),
        (
            LABEL_LOADTEST.to_string(),
            short(lt.metadata.name.as_deref().unwrap_or_default(), 63),
        ),
        (LABEL_TEST_ID.to_string(), short(test_id, 63)),
    ])
}

fn meta(lt: &LoadTest, name: &str, test_id: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: lt.metadata.namespace.clone(),
        labels: Some(labels(lt, test_id)),
        owner_references: owner(lt).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The Secret holding the test's session token and, when the fleet's Redis is given by URL,
/// that URL (it may hold the Redis password): workers read both through `secretKeyRef`, so
/// neither is in the Job's spec, where anyone who may read Jobs would see it.
pub fn session_secret(lt: &LoadTest, p: &Prepared, token: &str, cfg: &OperatorConfig) -> Secret {
    let test_id = p.test_id.as_str();
    let mut data = BTreeMap::from([(TOKEN_KEY.to_string(), token.to_string())]);
    if let Some(RedisSource::Url(url)) = redis_for(lt, p, cfg) {
        data.insert(REDIS_URL_KEY.to_string(), url);
    }
    if let WorkerTrust::Tls { ca, .. } = &cfg.worker_trust {
        data.insert(CA_KEY.to_string(), ca.pem());
    }
    Secret {
        metadata: meta(lt, &names(lt).secret, test_id),
        type_: Some("Opaque".into()),
        string_data: Some(data),
        immutable: Some(true),
        ..Secret::default()
    }
}

/// The report ConfigMap.
pub fn report_config_map(lt: &LoadTest, test_id: &str, text: &str, json: &str) -> ConfigMap {
    let mut cm = ConfigMap {
        metadata: meta(lt, &names(lt).report, test_id),
        data: Some(BTreeMap::from([
            (REPORT_TEXT_KEY.to_string(), text.to_string()),
            (REPORT_JSON_KEY.to_string(), json.to_string()),
        ])),
        ..ConfigMap::default()
    };
    // Server-side apply needs the kind.
    cm.metadata.annotations = Some(BTreeMap::from([(
        "pacer.dev/test-id".to_string(),
        test_id.to_string(),
    )]));
    cm
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// Where a LoadTest's workers get the fleet's Redis from.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisSource {
    /// A URL, which may carry a password (the bundled Redis's): it reaches the workers through
    /// the session Secret and is never printed.
    Url(String),
    /// A Secret key holding the URL, in the LoadTest's namespace.
    Secret { name: String, key: String },
}

impl std::fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(url) => f.debug_tuple("Url").field(&redacted(url)).finish(),
            Self::Secret { name, key } => f
                .debug_struct("Secret")
                .field("name", name)
                .field("key", key)
                .finish(),
        }
    }
}

/// A Redis URL with its user and password left out: what may be logged.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => "<redis URL>".into(),
    }
}

/// Where this LoadTest's workers find the fleet's Redis: its own `spec.redis`, else the
/// operator's default, else none.
pub fn redis_source(lt: &LoadTest, cfg: &OperatorConfig) -> Option<RedisSource> {
    match &lt.spec.redis {
        Some(r) => match (&r.url, &r.secret_ref) {
            (Some(url), _) => Some(RedisSource::Url(url.clone())),
            (None, Some(s)) => Some(RedisSource::Secret {
                name: s.name.clone(),
                key: s.key.clone(),
            }),
            (None, None) => None,
        },
        None => cfg.default_redis.clone(),
    }
}

/// Where a prepared LoadTest's workers find Redis: its RateBudget's, else [`redis_source`].
pub fn redis_for(lt: &LoadTest, p: &Prepared, cfg: &OperatorConfig) -> Option<RedisSource> {
    match &p.budget {
        Some(b) => Some(b.redis.clone()),
        None => redis_source(lt, cfg),
    }
}

/// The Indexed Job running the workers: one pod per worker index (`JOB_COMPLETION_INDEX`),
/// each running `pacer worker --connect <controller> --index <i>`.
pub fn worker_job(lt: &LoadTest, p: &Prepared, cfg: &OperatorConfig) -> Job {
    let names = names(lt);
    let spec = &lt.spec;
    let template = spec.worker_template.clone().unwrap_or_default();
    let mut pod_labels = template.labels.clone();
    pod_labels.extend(labels(lt, &p.test_id));
    pod_labels.insert(
        "app.kubernetes.io/component".to_string(),
        "worker".to_string(),
    );

    let mut envs = vec![
        secret_env(
            "PACER_SESSION_TOKEN",
            &names.secret,
            crate::resources::TOKEN_KEY,
        ),
        env("PACER_TEST_ID", &p.test_id),
        field_env("PACER_WORKER_NAME", "metadata.name"),
        env("PACER_LOG", "info"),
    ];
    let redis = redis_for(lt, p, cfg);
    match &redis {
        Some(RedisSource::Url(_)) => {
            envs.push(secret_env("PACER_REDIS_URL", &names.secret, REDIS_URL_KEY))
        }
        Some(RedisSource::Secret { name, key }) => {
            envs.push(secret_env("PACER_REDIS_URL", name, key))
        }
        None => {}
    }
    if redis.is_some() {
        envs.push(env("PACER_FLEET", &p.test_id));
    }
    let mut trust_args: Vec<String> = Vec::new();
    match &cfg.worker_trust {
        WorkerTrust::Tls { server_name, .. } => {
            envs.push(secret_env("PACER_CA_PEM", &names.secret, CA_KEY));
            if let Some(name) = server_name {
                trust_args.extend(["--server-name".to_string(), name.clone()]);
            }
        }
        WorkerTrust::InsecurePlaintext => trust_args.push("--insecure-plaintext".into()),
    }
    if let Some(idle) = p.budget.as_ref().and_then(|b| b.idle) {
        envs.push(env("PACER_BUDGET_IDLE", &format!("{}ms", idle.as_millis())));
    }
    let budget_credentials = p.budget.iter().flat_map(|b| b.credentials.iter());
    for c in spec.credentials.iter().chain(budget_credentials) {
        for (var, key) in credential_envs(c) {
            envs.push(secret_env(&var, &c.secret_ref.name, &key));
        }
    }
    envs.extend(
        template
            .env
            .iter()
            .filter(|e| !e.name.starts_with("PACER_"))
            .cloned(),
    );

    let connect_for = format!("{}s", p.start_timeout.as_secs().max(5));
    let container = Container {
        name: "worker".into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| cfg.worker_image.clone()),
        ),
        image_pull_policy: spec
            .image_pull_policy
            .map(|p| p.as_str().to_string())
            .or_else(|| cfg.image_pull_policy.clone()),
        args: Some(
            vec![
                "worker".into(),
                "--connect".into(),
                cfg.advertise_address.clone(),
                "--test-id".into(),
                p.test_id.clone(),
                "--index".into(),
                "$(JOB_COMPLETION_INDEX)".into(),
                "--name".into(),
                "$(PACER_WORKER_NAME)".into(),
                "--connect-for".into(),
                connect_for,
                "--lost-after".into(),
                format!("{}ms", p.lost_after.as_millis()),
                "--resolve-plan-env".into(),
            ]
            .into_iter()
            .chain(trust_args)
            .collect(),
        ),
        env: Some(envs),
        resources: Some(template.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let workers = i32::try_from(p.workers).unwrap_or(i32::MAX);
    // Workers end by themselves; this bounds pods that never do (waiting, plan, margin).
    let deadline = p.start_timeout + p.plan.max_duration() + std::time::Duration::from_secs(300);
    let mut job = Job {
        metadata: meta(lt, &names.job, &p.test_id),
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(workers),
            parallelism: Some(workers),
            // A worker that fails is restarted in place (restartPolicy OnFailure) a few times
            // before the start; after the start the controller decides (onWorkerLoss).
            backoff_limit: Some(workers.saturating_mul(2).min(50)),
            active_deadline_seconds: Some(i64::try_from(deadline.as_secs()).unwrap_or(i64::MAX)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!template.annotations.is_empty())
                        .then(|| template.annotations.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("OnFailure".into()),
                    service_account_name: template.service_account_name.clone(),
                    automount_service_account_token: Some(false),
                    node_selector: (!template.node_selector.is_empty())
                        .then(|| template.node_selector.clone()),
                    tolerations: (!template.tolerations.is_empty())
                        .then(|| template.tolerations.clone()),
                    affinity: template.affinity.clone(),
                    enable_service_links: Some(false),
                    host_network: cfg.worker_host_network.then_some(true),
                    // a host-network pod keeps the cluster's DNS only with this policy
                    dns_policy: cfg
                        .worker_host_network
                        .then(|| "ClusterFirstWithHostNet".into()),
                    termination_grace_period_seconds: Some(45),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    };
    if let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        crate::pod_template::apply(pod, &template, &cfg.worker_image_pull_secrets);
    }
    job
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("250m".into())),
            ("memory".to_string(), Quantity("128Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("512Mi".into()),
        )])),
        claims: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use serde_json::json;

    use super::*;

    fn job_args(spec_extra: serde_json::Value) -> Vec<String> {
        let mut spec = json!({"plan": {
            "name": "t", "target": "http://api.example",
            "scenarios": [{"name": "s", "executor": "constant-vus", "vus": 1, "duration": "1s",
                           "requests": [{"name": "r", "path": "/"}]}]
        }});
        spec.as_object_mut()
            .unwrap()
            .extend(spec_extra.as_object().unwrap().clone());
        let lt: LoadTest = serde_json::from_value(json!({
            "apiVersion": "pacer.dev/v1alpha1", "kind": "LoadTest",
            "metadata": {"name": "t", "namespace": "ns", "uid": "1234abcd-0000"},
            "spec": spec
        }))
        .unwrap();
        let cfg = OperatorConfig::new("pacer.pacer-system.svc:7700", "pacer:test");
        let p = crate::prepare::prepare(&lt, &cfg.defaults).unwrap();
        let job = worker_job(&lt, &p, &cfg);
        let pod = job.spec.unwrap().template.spec.unwrap();
        pod.containers[0].args.clone().unwrap()
    }

    fn lost_after_arg(args: &[String]) -> &str {
        let i = args.iter().position(|a| a == "--lost-after").unwrap();
        &args[i + 1]
    }

    /// The workers stop their load after `spec.lostAfter` without a controller (30 s unless
    /// the LoadTest says).
    #[test]
    fn the_workers_get_the_loadtests_lost_after() {
        assert_eq!(lost_after_arg(&job_args(json!({}))), "30000ms");
        let args = job_args(json!({"lostAfter": "45s"}));
        assert_eq!(lost_after_arg(&args), "45000ms");
    }
}
