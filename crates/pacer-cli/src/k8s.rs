//! pacer on Kubernetes, from the command line: `pacer crd` (the LoadTest CRD), `pacer operator`
//! (the controller that runs LoadTests), `pacer submit` (a plan file -> a LoadTest), `pacer
//! watch` (live status until the verdict) and `pacer report` (the stored final report).
//! The logic is in `pacer_operator`; this is argument parsing and printing.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use pacer_operator::crd::{CredentialRef, CredentialSecretRef, LoadTest, LoadTestSpec, Phase};
use pacer_operator::reason::Reason;
use pacer_operator::{OperatorConfig, RedisSource};
use tokio_util::sync::CancellationToken;

use crate::exit::Exit;
use crate::flags::parse_duration;

#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// What worker pods dial to reach this controller (`host:port`): the controller's Service
    /// in a cluster (the chart sets it), or an address of this machine the pods can reach
    /// when the operator runs outside the cluster with a kubeconfig.
    #[arg(long, env = "PACER_ADVERTISE_ADDRESS", value_name = "HOST:PORT")]
    pub advertise_address: String,
    /// Where workers' gRPC streams arrive (one port for every test).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:7700")]
    pub grpc_listen: SocketAddr,
    /// `--tls-cert`/`--tls-key` (the listener's certificate, re-read when renewed) or
    /// `--insecure-plaintext`.
    #[command(flatten)]
    pub tls: crate::controller::ServerTlsArgs,
    /// The CA (PEM) that signed `--tls-cert`: each test's worker pods get it (through their
    /// session Secret) and verify the listener with it. Required with `--tls-cert`.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure_plaintext")]
    pub worker_ca: Option<PathBuf>,
    /// The name worker pods verify the listener's certificate for (default: the host of
    /// `--advertise-address`).
    #[arg(long, value_name = "NAME", conflicts_with = "insecure_plaintext")]
    pub worker_server_name: Option<String>,
    /// `/metrics`, `/healthz`, `/readyz`. Given twice, the last wins (the chart's
    /// `controller.extraArgs` can move it; port 0: any free port, logged).
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:9090",
        overrides_with = "http_listen"
    )]
    pub http_listen: SocketAddr,
    /// The pacer image of worker pods when a LoadTest names none.
    #[arg(long, env = "PACER_WORKER_IMAGE", value_name = "IMAGE", default_value = concat!("pacer:", env!("CARGO_PKG_VERSION")))]
    pub worker_image: String,
    /// Pull policy of that image (default: Kubernetes' own).
    #[arg(long, value_parser = ["Always", "IfNotPresent", "Never"])]
    pub worker_image_pull_policy: Option<String>,
    /// Worker pods on the node's network (`hostNetwork: true`), for clusters without a pod
    /// network (the chart's `hostNetwork`).
    #[arg(long)]
    pub worker_host_network: bool,
    /// Run the LoadTests of this namespace only (repeat for several; default: every namespace).
    #[arg(long = "namespace", short = 'n', value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
    /// How often a running test's status is written.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub status_interval: Duration,
    /// How long workers may take to start and connect when a LoadTest does not say.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub start_timeout: Duration,
    /// The most workers one LoadTest may ask for.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_workers: u32,
    /// The fleet's Redis for LoadTests that name none. It may hold a password (the chart
    /// passes its bundled Redis's through the environment): workers get it through their
    /// session Secret, and it is never printed.
    #[arg(
        long,
        env = "PACER_DEFAULT_REDIS_URL",
        hide_env_values = true,
        value_name = "URL",
        conflicts_with = "default_redis_secret"
    )]
    pub default_redis_url: Option<String>,
    /// The fleet's Redis for LoadTests that name none, from a Secret key holding the URL
    /// (`NAME:KEY`, read by the worker pods in their own namespace).
    #[arg(long, value_name = "NAME:KEY")]
    pub default_redis_secret: Option<String>,
    /// An image LoadTests may name in `spec.image` besides `--worker-image` (repeat; an entry
    /// ending in `*` allows every image starting with the rest; default: none).
    #[arg(long = "allowed-image", value_name = "IMAGE")]
    pub allowed_images: Vec<String>,
    /// A ServiceAccount LoadTests may name in `spec.workerTemplate.serviceAccountName`
    /// (repeat; default: none, and worker pods never mount a ServiceAccount token).
    #[arg(long = "allowed-service-account", value_name = "NAME")]
    pub allowed_service_accounts: Vec<String>,
    /// A Secret every worker pod pulls its image with (repeat; the chart passes its
    /// `imagePullSecrets`). It must exist in each namespace where LoadTests run.
    #[arg(long = "worker-image-pull-secret", value_name = "NAME")]
    pub worker_image_pull_secrets: Vec<String>,
    /// Lead through this Lease (coordination.k8s.io) before reconciling or listening for
    /// workers, so several replicas can run: one leads, the others wait, not Ready, and one
    /// takes over within seconds when it dies. Default: no election (a single replica).
    #[arg(long, value_name = "NAME")]
    pub leader_elect_lease: Option<String>,
    /// The Lease's namespace (the chart's: its release namespace).
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    pub leader_elect_namespace: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct SubmitArgs {
    /// A plan file (YAML or JSON), or a LoadTest manifest.
    pub plan: PathBuf,
    /// Worker pods (default: the plan's `workers`, else 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub workers: Option<u32>,
    /// Namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The LoadTest's name (default: the plan's name and a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    /// Give a plan credential from a Secret: `AUTH=SECRET` (keys clientId and clientSecret)
    /// or `AUTH=SECRET:token` (key token, for bearer). Repeatable.
    #[arg(long = "credential", value_name = "AUTH=SECRET")]
    pub credentials: Vec<String>,
    /// The worker image (default: the operator's).
    #[arg(long)]
    pub image: Option<String>,
    /// Then watch it until it ends; the exit code is the verdict (0, 99, 1).
    #[arg(long)]
    pub wait: bool,
    /// Put the plan in this ConfigMap (created or replaced, key `plan.yaml`) and make the
    /// LoadTest refer to it (`spec.planRef`) instead of holding it: for plans near the API
    /// server's 1.5 MiB object limit, or kept apart from the resource.
    #[arg(long, value_name = "NAME")]
    pub plan_configmap: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// The LoadTest's name.
    pub name: String,
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Seconds between lines.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub every: u64,
}

/// `pacer report`: print a finished LoadTest's stored report (not the report files of a
/// running test: [`crate::report::ReportOutputs`]).
#[derive(clap::Args, Debug, Clone)]
pub struct ReportCommand {
    /// The LoadTest's name.
    pub name: String,
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The JSON summary instead of the text.
    #[arg(long)]
    pub json: bool,
    /// Also write the self-contained HTML report to FILE, as `pacer run --report` does (from
    /// the run data the operator stored when the test ended).
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Also write the fleet's per-second series: `json=FILE` (JSON Lines) or `csv=FILE`; or the
    /// evidence ledger: `ledger=FILE`. Repeatable; as `pacer run --out`.
    #[arg(long = "out", value_name = "FORMAT=FILE", value_parser = crate::report::parse_out)]
    pub out: Vec<crate::report::SeriesOut>,
    /// With `--html`/`--out`: worker N's own report and series (0-based, as the worker table
    /// numbers them) instead of the fleet's.
    #[arg(long, value_name = "N")]
    pub worker: Option<usize>,
}

/// Which CustomResourceDefinition `pacer crd` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrdKind {
    LoadTest,
    RateBudget,
}

#[derive(clap::Args, Debug)]
pub struct CrdArgs {
    /// Print only this one (default: both, as one YAML stream).
    #[arg(long, value_enum)]
    pub kind: Option<CrdKind>,
}

/// `pacer crd`.
pub fn crd(args: &CrdArgs) -> Exit {
    let yaml = match args.kind {
        Some(CrdKind::LoadTest) => pacer_operator::crd::crd_yaml(),
        Some(CrdKind::RateBudget) => pacer_operator::ratebudget::crd_yaml(),
        None => pacer_operator::crd::crd_yaml().and_then(|lt| {
            pacer_operator::ratebudget::crd_yaml().map(|rb| format!("{lt}---\n{rb}"))
        }),
    };
    match yaml {
        Ok(y) => {
            crate::out!("{y}");
            Exit::Passed
        }
        Err(e) => {
            crate::exit::print_error(&e);
            Exit::Failure
        }
    }
}

fn failure(e: anyhow::Error) -> Exit {
    crate::exit::print_anyhow(&e);
    Exit::Failure
}

/// `pacer operator`.
pub async fn operator(args: OperatorArgs) -> Exit {
    operator_inner(args).await.unwrap_or_else(failure)
}

async fn operator_inner(args: OperatorArgs) -> anyhow::Result<Exit> {
    let client = Client::try_default()
        .await
        .context("cannot reach Kubernetes (in-cluster config or kubeconfig)")?;
    let mut cfg = OperatorConfig::new(args.advertise_address.clone(), args.worker_image.clone());
    cfg.image_pull_policy = args.worker_image_pull_policy.clone();
    cfg.worker_image_pull_secrets = args.worker_image_pull_secrets.clone();
    cfg.worker_host_network = args.worker_host_network;
    cfg.namespaces = args.namespaces.clone();
    cfg.status_interval = args.status_interval.max(Duration::from_millis(200));
    cfg.defaults.start_timeout = args.start_timeout;
    cfg.defaults.max_workers = args.max_workers.max(1);
    cfg.defaults.worker_policy = pacer_operator::policy::WorkerPolicy::operator(
        &args.worker_image,
        args.allowed_images.clone(),
        args.allowed_service_accounts.clone(),
    );
    cfg.instance = std::env::var("POD_NAME").ok();
    cfg.leader_election = match &args.leader_elect_lease {
        None => None,
        Some(lease) => {
            let Some(namespace) = args.leader_elect_namespace.clone() else {
                bail!(
                    "--leader-elect-lease: give the Lease's namespace (--leader-elect-namespace or POD_NAMESPACE)"
                );
            };
            // The pod's name: unique among replicas, the same after a restart in place.
            let identity = cfg
                .instance
                .clone()
                .unwrap_or_else(|| format!("pacer-operator-{}", std::process::id()));
            let mut settings =
                pacer_operator::leader::LeaseSettings::new(namespace, lease.clone(), identity);
            // Its pod carries its role (the chart's Service selects the leader).
            settings.pod = cfg.instance.clone();
            Some(settings)
        }
    };
    cfg.default_redis = match (&args.default_redis_url, &args.default_redis_secret) {
        (Some(url), _) => Some(RedisSource::Url(url.clone())),
        (None, Some(s)) => {
            let Some((name, key)) = s.split_once(':') else {
                bail!("--default-redis-secret: give NAME:KEY, got {s:?}");
            };
            Some(RedisSource::Secret {
                name: name.into(),
                key: key.into(),
            })
        }
        (None, None) => None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_termination().await;
            tracing::warn!(
                "stopping: running tests go on, and the next leader (or this one, restarted) resumes them"
            );
            shutdown.cancel();
        }
    });
    let transport = args.tls.transport()?;
    cfg.worker_trust = worker_trust(&args, &transport)?;
    let listen = pacer_operator::Listen {
        grpc: args.grpc_listen,
        http: args.http_listen,
        transport,
    };
    pacer_operator::serve(client, cfg, listen, shutdown).await?;
    Ok(Exit::Passed)
}

/// What worker pods trust: with TLS, the CA of `--worker-ca` (checked to hold certificates).
fn worker_trust(
    args: &OperatorArgs,
    transport: &pacer_controller::listener::Transport,
) -> anyhow::Result<pacer_operator::WorkerTrust> {
    use pacer_controller::listener::Transport;
    Ok(match transport {
        Transport::Tls(_) => {
            let Some(ca) = &args.worker_ca else {
                bail!(
                    "--worker-ca FILE: required with --tls-cert (the CA worker pods verify the listener's certificate with)"
                );
            };
            pacer_operator::WorkerTrust::Tls {
                ca: pacer_operator::WorkerCa::from_file(ca.clone())?,
                server_name: args.worker_server_name.clone(),
            }
        }
        Transport::InsecurePlaintext => pacer_operator::WorkerTrust::InsecurePlaintext,
    })
}

async fn wait_for_termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn client_and_namespace(ns: &Option<String>) -> anyhow::Result<(Client, String)> {
    let client = Client::try_default()
        .await
        .context("cannot reach Kubernetes (kubeconfig)")?;
    let ns = ns
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    Ok((client, ns))
}

/// A DNS-1123 name from a plan name.
fn dns_name(s: &str) -> String {
    let mut out: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    let out: String = out.trim_matches('-').chars().take(40).collect();
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "loadtest".into()
    } else {
        out
    }
}

/// The LoadTest `pacer submit` creates from a file.
pub fn loadtest_from_file(args: &SubmitArgs, text: &str) -> anyhow::Result<LoadTest> {
    let source = args.plan.display().to_string();
    let doc = pacer_plan::load::parse_document(text, &source)?;
    let mut lt: LoadTest = if doc.get("kind").and_then(|k| k.as_str()) == Some("LoadTest") {
        serde_json::from_value(doc).with_context(|| format!("{source}: not a LoadTest"))?
    } else {
        let plan_name = doc
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("loadtest")
            .to_string();
        let mut lt = LoadTest::new(
            "",
            LoadTestSpec {
                plan: doc,
                ..LoadTestSpec::default()
            },
        );
        lt.metadata.name = None;
        lt.metadata.generate_name = Some(format!("{}-", dns_name(&plan_name)));
        lt
    };
    if let Some(name) = &args.name {
        lt.metadata.name = Some(name.clone());
        lt.metadata.generate_name = None;
    }
    if lt.metadata.name.is_none() && lt.metadata.generate_name.is_none() {
        lt.metadata.generate_name = Some("loadtest-".into());
    }
    if let Some(w) = args.workers {
        lt.spec.workers = Some(w);
    }
    if let Some(i) = &args.image {
        lt.spec.image = Some(i.clone());
    }
    for c in &args.credentials {
        let Some((auth, secret)) = c.split_once('=') else {
            bail!("--credential: give AUTH=SECRET, got {c:?}");
        };
        let (secret, bearer) = match secret.strip_suffix(":token") {
            Some(s) => (s, true),
            None => (secret, false),
        };
        let secret_ref = if bearer {
            CredentialSecretRef {
                name: secret.into(),
                client_id_key: None,
                client_secret_key: None,
                token_key: Some("token".into()),
            }
        } else {
            CredentialSecretRef {
                name: secret.into(),
                client_id_key: Some("clientId".into()),
                client_secret_key: Some("clientSecret".into()),
                token_key: None,
            }
        };
        lt.spec.credentials.retain(|x| x.name != auth);
        lt.spec.credentials.push(CredentialRef {
            name: auth.into(),
            secret_ref,
        });
    }
    Ok(lt)
}

/// `pacer submit`.
pub async fn submit(args: SubmitArgs) -> Exit {
    let text = match std::fs::read_to_string(&args.plan) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", args.plan.display());
            return Exit::Invalid;
        }
    };
    let lt = match loadtest_from_file(&args, &text) {
        Ok(lt) => lt,
        Err(e) => {
            crate::exit::print_anyhow(&e);
            return Exit::Invalid;
        }
    };
    // A plan file's test data: its local files packed into ConfigMaps the LoadTest names.
    let (lt, data_cms) = match pack_data(&args, lt) {
        Ok(x) => x,
        Err(e) => {
            crate::exit::print_anyhow(&e);
            return Exit::Invalid;
        }
    };
    // The operator's own checks, before anything reaches the cluster.
    let prepared = pacer_operator::prepare::prepare(&lt, &Default::default()).and_then(|mut p| {
        let found = data_cms
            .iter()
            .map(|cm| {
                (
                    cm.metadata.name.clone().unwrap_or_default(),
                    Some(cm.clone()),
                )
            })
            .collect();
        let plan = std::sync::Arc::make_mut(&mut p.plan);
        if !lt.spec.data.is_empty() && data_cms.is_empty() {
            // A manifest naming ConfigMaps of the cluster: the operator reads them.
            return Ok(p);
        }
        pacer_operator::test_data::attach(plan, &lt.spec, &found)?;
        Ok(p)
    });
    match prepared {
        Ok(prepared) => {
            // What it will ask of its limits, as `pacer validate` says it (on stderr: stdout
            // is the created resource's name).
            let latency = pacer_plan::forecast::DEFAULT_LATENCY;
            for line in crate::forecast::lines(&prepared.plan, prepared.workers, latency) {
                eprintln!("{line}");
            }
        }
        Err(errors) => {
            eprintln!("{}: invalid LoadTest:", args.plan.display());
            for e in errors {
                eprintln!("  - {e}");
            }
            return Exit::Invalid;
        }
    }
    let (lt, plan_cm) = match &args.plan_configmap {
        Some(name) => match plan_apart(lt, name) {
            Ok(x) => x,
            Err(e) => return failure(e),
        },
        None => (lt, None),
    };
    let created = async {
        let (client, ns) = client_and_namespace(&args.namespace).await?;
        if let Some(cm) = &plan_cm {
            let holds = format!("the plan (key {})", pacer_operator::crd::DEFAULT_PLAN_KEY);
            apply_config_map(&client, &ns, cm, &holds).await?;
        }
        for cm in &data_cms {
            apply_config_map(&client, &ns, cm, "test data").await?;
        }
        let api: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
        let created = api
            .create(&PostParams::default(), &lt)
            .await
            .context("creating the LoadTest")?;
        anyhow::Ok((client, ns, created.name_any()))
    }
    .await;
    let (client, ns, name) = match created {
        Ok(x) => x,
        Err(e) => return failure(e),
    };
    crate::outln!("loadtest.pacer.dev/{name} created in namespace {ns}");
    if !args.wait {
        eprintln!("watch it with: pacer watch {name} -n {ns}");
        return Exit::Passed;
    }
    watch_loop(client, &ns, &name, Duration::from_secs(2))
        .await
        .unwrap_or_else(failure)
}

/// The LoadTest with its plan moved into the ConfigMap `name` (key
/// [`pacer_operator::crd::DEFAULT_PLAN_KEY`]), which it refers to by `spec.planRef`.
fn plan_apart(mut lt: LoadTest, name: &str) -> anyhow::Result<(LoadTest, Option<ConfigMap>)> {
    let key = pacer_operator::crd::DEFAULT_PLAN_KEY;
    let text = serde_json::to_string_pretty(&lt.spec.plan).context("writing the plan")?;
    let max = pacer_operator::planref::MAX_PLAN_BYTES;
    if text.len() > max {
        bail!(
            "--plan-configmap: the plan is {} bytes as JSON; a ConfigMap holds at most {max}",
            text.len()
        );
    }
    let cm = pacer_operator::planref::plan_config_map(name, None, key, &text);
    lt.spec.plan = serde_json::Value::Null;
    lt.spec.plan_ref = Some(pacer_operator::crd::PlanRef {
        name: name.to_string(),
        key: key.to_string(),
    });
    Ok((lt, Some(cm)))
}

/// The most bytes a ConfigMap holds (the API server's limit on its data), less room for its
/// name, labels and key.
const MAX_CONFIGMAP_TEXT: usize = 1024 * 1024 - 4096;

/// A plan file's `data:` sources read from the plan's directory, each into a ConfigMap
/// `<name>-data-<source>` (key `<source>.csv` or `.jsonl`) that `spec.data` names, so the
/// operator reads them in the cluster. A LoadTest manifest is left as written (its
/// `spec.data` names ConfigMaps of the cluster already).
fn pack_data(args: &SubmitArgs, mut lt: LoadTest) -> anyhow::Result<(LoadTest, Vec<ConfigMap>)> {
    let Some(sources) = lt
        .spec
        .plan
        .get("data")
        .and_then(|d| d.as_object())
        .cloned()
    else {
        return Ok((lt, Vec::new()));
    };
    if !lt.spec.data.is_empty() {
        return Ok((lt, Vec::new()));
    }
    let base_dir = args.plan.parent().map(PathBuf::from).unwrap_or_default();
    let prefix = dns_name(
        args.name
            .as_deref()
            .or_else(|| lt.spec.plan.get("name").and_then(|n| n.as_str()))
            .unwrap_or("loadtest"),
    );
    let mut cms = Vec::new();
    for (name, source) in sources {
        let spec: pacer_plan::data::DataSpec = serde_json::from_value(source)
            .with_context(|| format!("{}: data.{name}", args.plan.display()))?;
        let format = spec
            .format
            .or_else(|| pacer_plan::data::DataFormat::of_file(&spec.file))
            .with_context(|| format!("data.{name}.format: neither .csv nor .jsonl"))?;
        let text = pacer_plan::data::read_file(&base_dir, &spec.file)
            .map_err(|e| anyhow::anyhow!("data.{name}.file: {e}"))?;
        if text.len() > MAX_CONFIGMAP_TEXT {
            bail!(
                "data.{name}.file: {} bytes, more than a ConfigMap holds ({MAX_CONFIGMAP_TEXT}): give the LoadTest fewer rows",
                text.len()
            );
        }
        let ext = match format {
            pacer_plan::data::DataFormat::Csv => "csv",
            pacer_plan::data::DataFormat::Jsonl => "jsonl",
        };
        let cm_name = format!("{prefix}-data-{}", dns_name(&name));
        let key = format!("{name}.{ext}");
        cms.push(pacer_operator::test_data::data_config_map(
            &cm_name, &key, &text,
        ));
        lt.spec.data.insert(
            name,
            pacer_operator::crd::DataRef {
                config_map: cm_name,
                key,
            },
        );
    }
    Ok((lt, cms))
}

/// Create or replace a ConfigMap `pacer submit` writes (server-side apply), saying what it
/// `holds` (the plan, test data).
async fn apply_config_map(
    client: &Client,
    ns: &str,
    cm: &ConfigMap,
    holds: &str,
) -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    let name = cm.metadata.name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(cm)?;
    if let Some(o) = body.as_object_mut() {
        o.insert("apiVersion".into(), "v1".into());
        o.insert("kind".into(), "ConfigMap".into());
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.patch(
        &name,
        &PatchParams::apply("pacer-submit").force(),
        &Patch::Apply(&body),
    )
    .await
    .with_context(|| format!("writing the ConfigMap {ns}/{name} ({holds})"))?;
    eprintln!("configmap/{name} holds {holds}");
    Ok(())
}

/// `pacer watch`.
pub async fn watch(args: WatchArgs) -> Exit {
    let r = async {
        let (client, ns) = client_and_namespace(&args.namespace).await?;
        watch_loop(client, &ns, &args.name, Duration::from_secs(args.every)).await
    }
    .await;
    r.unwrap_or_else(failure)
}

/// The exit code of an ended LoadTest: 0 passed, 99 a threshold failed, 1 anything else.
pub fn verdict(lt: &LoadTest) -> Exit {
    let Some(s) = &lt.status else {
        return Exit::Failure;
    };
    match s.phase {
        Some(Phase::Succeeded) => Exit::Passed,
        Some(Phase::Failed) if s.complete_reason() == Some(Reason::ThresholdsFailed) => {
            Exit::ThresholdFailed
        }
        _ => Exit::Failure,
    }
}

/// The lines `pacer watch` prints for a status.
pub fn status_lines(lt: &LoadTest) -> Vec<String> {
    let Some(s) = &lt.status else {
        return vec!["Pending: the operator has not picked it up yet".into()];
    };
    let phase = s.phase.map_or("Pending", Phase::as_str);
    let mut line = phase.to_string();
    if let Some(p) = &s.progress {
        line.push_str(&format!(
            " {:>5.1}% {:.0}s/{:.0}s",
            p.percent, p.elapsed_seconds, p.planned_seconds
        ));
    }
    if let Some(w) = &s.workers {
        line.push_str(&format!("  workers {}", w.ready));
        if w.lost > 0 {
            line.push_str(&format!(" ({} lost)", w.lost));
        }
    }
    if s.requests.is_some() {
        line.push_str(&format!(
            "  reqs {}  {:.1}/s  p95 {}  errors {}  429s {}",
            s.requests.unwrap_or(0),
            s.rps.unwrap_or(0.0),
            s.latency
                .as_ref()
                .and_then(|l| l.p95.clone())
                .unwrap_or_else(|| "-".into()),
            s.errors.unwrap_or(0),
            s.throttled.unwrap_or(0)
        ));
    }
    let mut lines = vec![line];
    if let Some(m) = &s.message
        && !matches!(s.phase, Some(Phase::Running))
    {
        lines.push(format!("  {m}"));
    }
    for w in &s.worker_health {
        lines.push(format!(
            "    worker {:>3}  {:<10} reqs {:>8}  {:>7.1}/s  errors {:>6}  429s {:>6}{}",
            w.index,
            w.state,
            w.requests,
            w.rps,
            w.errors,
            w.throttled,
            w.reason
                .as_ref()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default()
        ));
    }
    if s.phase.is_some_and(Phase::is_terminal) {
        for t in &s.thresholds {
            lines.push(format!(
                "  {} {} {}{}",
                if t.passed { "✓" } else { "✗" },
                t.metric,
                t.expression,
                t.observed
                    .map(|v| format!(" (observed {v})"))
                    .unwrap_or_default()
            ));
        }
    }
    lines
}

async fn watch_loop(client: Client, ns: &str, name: &str, every: Duration) -> anyhow::Result<Exit> {
    let api: Api<LoadTest> = Api::namespaced(client, ns);
    let mut last: Vec<String> = Vec::new();
    loop {
        let lt = api
            .get(name)
            .await
            .with_context(|| format!("reading LoadTest {ns}/{name}"))?;
        let lines = status_lines(&lt);
        if lines != last {
            for l in &lines {
                crate::outln!("{l}");
            }
            last = lines;
        }
        if lt.phase().is_some_and(Phase::is_terminal) {
            if let Some(r) = lt.status.as_ref().and_then(|s| s.report.as_ref()) {
                eprintln!(
                    "report: pacer report {name} -n {ns}   (ConfigMap {})",
                    r.config_map
                );
            }
            return Ok(verdict(&lt));
        }
        tokio::time::sleep(every).await;
    }
}

/// `pacer report NAME --html FILE --out FORMAT=FILE`: the stored run data rendered by the
/// code path of `pacer run --report` ([`crate::report::write_files`]).
async fn write_report_files(
    cms: &Api<ConfigMap>,
    args: &ReportCommand,
    test_id: &str,
) -> anyhow::Result<()> {
    let data = pacer_operator::run_data::load(cms, &args.name, test_id).await?;
    let data = match args.worker {
        Some(index) => data.worker(index)?,
        None => data,
    };
    let summary = data.summary()?;
    let workers = data.worker_rows();
    crate::report::write_files(
        args.html.as_deref(),
        &args.out,
        &crate::report::ReportData {
            plan_source: Some(&data.plan_source),
            snapshot: &data.snapshot,
            summary: &summary,
            series: &data.series.fleet,
            workers: &workers,
            started_unix_ms: data.series.started_unix_ms,
            abort_reason: data.abort_reason.as_deref(),
        },
    )
}

/// `pacer report`.
pub async fn report(args: ReportCommand) -> Exit {
    let r = async {
        let (client, ns) = client_and_namespace(&args.namespace).await?;
        let api: Api<LoadTest> = Api::namespaced(client.clone(), &ns);
        let lt = api
            .get(&args.name)
            .await
            .with_context(|| format!("reading LoadTest {ns}/{}", args.name))?;
        let Some(r) = lt.status.as_ref().and_then(|s| s.report.clone()) else {
            bail!(
                "LoadTest {ns}/{} has no report yet (phase {})",
                args.name,
                lt.phase().map_or("Pending", Phase::as_str)
            );
        };
        let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
        if args.html.is_some() || !args.out.is_empty() {
            let test_id = lt
                .status
                .as_ref()
                .and_then(|s| s.test_id.clone())
                .unwrap_or_default();
            write_report_files(&cms, &args, &test_id)
                .await
                .with_context(|| format!("the report files of LoadTest {ns}/{}", args.name))?;
        }
        let cm = cms
            .get(&r.config_map)
            .await
            .with_context(|| format!("reading ConfigMap {ns}/{}", r.config_map))?;
        let key = if args.json { &r.json_key } else { &r.text_key };
        let Some(text) = cm.data.as_ref().and_then(|d| d.get(key)) else {
            bail!("ConfigMap {ns}/{} has no key {key}", r.config_map);
        };
        crate::out!("{text}");
        if !text.ends_with('\n') {
            crate::outln!();
        }
        Ok(verdict(&lt))
    }
    .await;
    r.unwrap_or_else(failure)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> SubmitArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct A {
            #[command(flatten)]
            s: SubmitArgs,
        }
        let mut argv = vec!["submit", "plan.yaml"];
        argv.extend_from_slice(extra);
        A::parse_from(argv).s
    }

    const PLAN: &str = "name: User Story\ntarget: http://api\nscenarios:\n  - name: s\n    executor: constant-vus\n    vus: 2\n    duration: 5s\n    requests: [{name: q, path: /}]\n";

    /// `pacer submit` of a plan with test data: the file beside the plan goes into a
    /// ConfigMap that `spec.data` names, and the operator's check of the columns passes.
    #[test]
    fn a_plans_data_files_are_packed_into_configmaps() {
        let dir = std::env::temp_dir().join(format!("pacer-submit-data-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("data/users.csv"), "id,email\n1,a@x\n").unwrap();
        let plan = format!("{PLAN}data:\n  users: {{ file: data/users.csv, mode: unique }}\n")
            .replace("path: /", "path: \"/u/{{data.users.email}}\"");
        let mut a = args(&[]);
        a.plan = dir.join("plan.yaml");
        let lt = loadtest_from_file(&a, &plan).unwrap();
        let (lt, cms) = pack_data(&a, lt).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let r = &lt.spec.data["users"];
        assert_eq!(
            (r.config_map.as_str(), r.key.as_str()),
            ("user-story-data-users", "users.csv")
        );
        assert_eq!(cms.len(), 1);
        assert_eq!(
            cms[0].data.as_ref().unwrap()["users.csv"],
            "id,email\n1,a@x\n"
        );
        let mut p = pacer_operator::prepare::prepare(&lt, &Default::default()).unwrap();
        let found = [("user-story-data-users".to_string(), Some(cms[0].clone()))].into();
        pacer_operator::test_data::attach(std::sync::Arc::make_mut(&mut p.plan), &lt.spec, &found)
            .unwrap();
    }

    #[test]
    fn a_plan_becomes_a_loadtest() {
        let lt = loadtest_from_file(
            &args(&["--workers", "3", "--credential", "genesys=api-credentials"]),
            PLAN,
        )
        .unwrap();
        assert_eq!(lt.metadata.generate_name.as_deref(), Some("user-story-"));
        assert_eq!(lt.spec.workers, Some(3));
        assert_eq!(lt.spec.credentials[0].secret_ref.name, "api-credentials");
        assert_eq!(lt.spec.plan["name"], "User Story");
        let named = loadtest_from_file(&args(&["--name", "t1"]), PLAN).unwrap();
        assert_eq!(named.metadata.name.as_deref(), Some("t1"));
        assert!(named.metadata.generate_name.is_none());
    }

    #[test]
    fn a_plan_apart_goes_into_a_configmap_the_loadtest_refers_to() {
        let lt = loadtest_from_file(&args(&["--plan-configmap", "plans"]), PLAN).unwrap();
        let (apart, cm) = plan_apart(lt.clone(), "plans").unwrap();
        let cm = cm.unwrap();
        assert!(apart.spec.plan.is_null());
        assert_eq!(apart.spec.plan_ref.as_ref().unwrap().name, "plans");
        // The operator reads it back into the same plan.
        let inlined = pacer_operator::planref::inline(&apart, Some(&cm)).unwrap();
        assert_eq!(inlined.spec.plan, lt.spec.plan);
    }

    fn ended(phase: &str, reason: &str) -> LoadTest {
        let mut lt = loadtest_from_file(&args(&["--name", "t"]), PLAN).unwrap();
        lt.status = Some(
            serde_json::from_value(serde_json::json!({
                "phase": phase,
                "workers": {"desired": 2, "connected": 2, "lost": 0, "ready": "2/2"},
                "requests": 10, "rps": 2.5, "latency": {"p95": "12.0ms"}, "errors": 1, "throttled": 0,
                "conditions": [{"type": "Complete", "status": "True", "reason": reason, "message": "",
                    "lastTransitionTime": "2020-01-01T00:00:00Z"}],
                "workerHealth": [{"index": 0, "state": "ok", "requests": 5, "rps": 1.2, "errors": 1, "throttled": 0}],
                "thresholds": [{"metric": "http_req_failed", "expression": "rate<0.01", "passed": false, "observed": 0.1}]
            }))
            .unwrap(),
        );
        lt
    }

    #[test]
    fn the_verdict_is_the_exit_code() {
        assert_eq!(verdict(&ended("Succeeded", "Succeeded")), Exit::Passed);
        assert_eq!(
            verdict(&ended("Failed", "ThresholdsFailed")),
            Exit::ThresholdFailed
        );
        assert_eq!(verdict(&ended("Failed", "WorkersMissing")), Exit::Failure);
        assert_eq!(verdict(&ended("Aborted", "Aborted")), Exit::Failure);
        let lines = status_lines(&ended("Failed", "ThresholdsFailed"));
        assert!(lines[0].starts_with("Failed"), "{lines:?}");
        assert!(lines[0].contains("workers 2/2"), "{lines:?}");
        assert!(lines[0].contains("p95 12.0ms"), "{lines:?}");
        assert!(
            lines.iter().any(|l| l.contains("worker   0  ok")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("✗ http_req_failed rate<0.01")),
            "{lines:?}"
        );
    }
}
