//! Shared by the engine's integration tests: run a plan in this process and return its totals.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use pacer_engine::{Deps, RunControl, RunOptions};
use pacer_limiter::Limiter;
use pacer_plan::{LoadOptions, load_str};
use pacer_stats::{Recorder, RequestStats};

/// Runs the plan `yaml` to its end with `limiter`; the totals over every request.
pub async fn run_plan(yaml: &str, limiter: Arc<dyn Limiter>) -> RequestStats {
    let plan = Arc::new(load_str(yaml, "plan.yaml", &LoadOptions::default()).unwrap());
    let recorder = Arc::new(Recorder::new(pacer_engine::layout(&plan)));
    pacer_engine::run(
        plan,
        Deps {
            limiter,
            tokens: None,
            recorder: recorder.clone(),
        },
        RunOptions::default(),
        RunControl::default(),
    )
    .await
    .unwrap();
    recorder.snapshot().total()
}
