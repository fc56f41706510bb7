//! The `pacer` command line. `main` is thin: everything is reachable from [`run_cli`] so tests
//! can drive a subcommand in-process.

/// `println!` for what a command prints on stdout, which does not panic when the reader has gone
/// (`pacer validate plans/*.yaml | head`): std's `println!` panics on a closed pipe (Rust ignores
/// SIGPIPE, so the write fails with EPIPE), and restoring SIGPIPE's default would let a hostile
/// server that closes a connection kill the process. A reader that went away wanted no more
/// output, so that write is dropped and the command goes on to its verdict; any other failure
/// (a full disk under `> file`) is said on stderr, not lost.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::exit::stdout_write(::std::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::exit::stdout_write(::std::format_args!("{}\n", ::std::format_args!($($arg)*)))
    };
}

/// [`outln!`] without the newline.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::exit::stdout_write(::std::format_args!($($arg)*))
    };
}

pub mod controller;
pub mod coordinate;
pub mod exit;
pub mod flags;
pub mod fleet;
pub mod forecast;
pub mod import;
pub mod interrupt;
pub mod k8s;
pub mod local;
pub mod metrics;
pub mod output;
pub mod progress;
pub mod report;
pub mod run;
pub mod validate;
pub mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use exit::Exit;

/// pacer: a load generator for rate-limited APIs.
///
/// Runs a test plan (YAML or JSON) against an HTTP API, pacing requests to the limits the
/// plan declares, and reports latency without coordinated omission, 429s by limit, and
/// thresholds pass/fail.
#[derive(Parser, Debug)]
#[command(name = "pacer", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace), or a
    /// tracing filter such as `pacer_engine=debug`. Also read from PACER_LOG.
    #[arg(long, global = true, env = "PACER_LOG", default_value = "warn")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a plan and print the summary. Exit code: 0 passed, 99 a threshold failed,
    /// 2 invalid plan or arguments, 1 any other failure.
    Run(Box<run::RunArgs>),
    /// Check a plan (or a LoadTest manifest) and list every problem with its field path.
    Validate(validate::ValidateArgs),
    /// Serve a mock API that enforces rate limits the way SaaS APIs do (for demos and tests).
    Mock(Box<pacer_mock::MockArgs>),
    /// Print the JSON Schema of the plan format (for editors and CI checks).
    Schema,
    /// Coordinate workers on several machines: split the plan, start them together, merge
    /// their results, evaluate thresholds on the fleet (docs/distributed.md).
    Controller(Box<controller::ControllerArgs>),
    /// Join a controller's test and run this worker's share of the plan.
    Worker(Box<worker::WorkerArgs>),
    /// Print the CustomResourceDefinitions (YAML: LoadTest, RateBudget) for `kubectl apply -f -`.
    Crd(k8s::CrdArgs),
    /// Run LoadTests on Kubernetes: the operator (the Helm chart's controller; docs/kubernetes.md).
    Operator(Box<k8s::OperatorArgs>),
    /// Create a LoadTest from a plan file (or a LoadTest manifest) on Kubernetes.
    Submit(Box<k8s::SubmitArgs>),
    /// Follow a LoadTest's status until it ends. Exit code: 0 passed, 99 a threshold failed,
    /// 1 failed or aborted.
    Watch(k8s::WatchArgs),
    /// Print a finished LoadTest's report (stored in a ConfigMap).
    Report(k8s::ReportCommand),
    /// Write a plan from a JMeter test plan (.jmx) or a HAR recording, listing what was not
    /// translated.
    Import(import::ImportArgs),
}

/// Parse `std::env::args`, run, and map the result to an exit code.
pub fn main_from_env() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                Exit::Invalid
            } else {
                Exit::Passed
            };
            let _ = e.print();
            return code.into();
        }
    };
    init_tracing(&cli.log);
    // One TLS crypto provider for the whole process (reqwest and kube must agree).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // One multi-thread runtime for the process, tokio's defaults on purpose: one worker thread
    // per core this process may run on (sched_getaffinity, so `taskset -c 1 pacer run` gets
    // one thread and no cross-thread hand-offs), `TOKIO_WORKER_THREADS` to override. Work
    // stealing lets a VU's iteration and its connection's task run on whichever worker is
    // free; the connection pool is one per run (per-origin idle stacks under a short lock)
    // rather than one per core, so a connection freed on one core serves a VU on the other and
    // a run never holds more connections than requests in flight. Measured in bench/cores.sh
    // (docs/benchmarks.md "Cores").
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Failure.into();
        }
    };
    rt.block_on(run_cli(cli)).into()
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a redirected stderr (CI logs, files) gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Run a parsed command line.
pub async fn run_cli(cli: Cli) -> Exit {
    match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::Validate(args) => validate::run(&args),
        Command::Controller(args) => controller::run(*args).await,
        Command::Worker(args) => worker::run(*args).await,
        Command::Crd(args) => k8s::crd(&args),
        Command::Operator(args) => k8s::operator(*args).await,
        Command::Submit(args) => k8s::submit(*args).await,
        Command::Watch(args) => k8s::watch(args).await,
        Command::Report(args) => k8s::report(args).await,
        Command::Import(args) => import::run(&args),
        Command::Mock(args) => match pacer_mock::run_cli(*args).await {
            Ok(()) => Exit::Passed,
            Err(e) => {
                crate::exit::print_error(&e);
                Exit::Failure
            }
        },
        Command::Schema => match serde_json::to_string_pretty(&pacer_plan::json_schema()) {
            Ok(s) => {
                crate::outln!("{s}");
                Exit::Passed
            }
            Err(e) => {
                crate::exit::print_error(&e);
                Exit::Failure
            }
        },
    }
}
