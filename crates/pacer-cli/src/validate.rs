//! `pacer validate`: check plan files and LoadTest manifests without running anything, and
//! list every problem with its field path. A manifest is checked as the operator will check it,
//! a plan as `pacer run` reads it, so a file that validates is one those accept.

use std::path::{Path, PathBuf};

use crate::exit::{self, Exit};

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Plan files (YAML or JSON) or LoadTest manifests.
    #[arg(required = true)]
    pub plans: Vec<PathBuf>,
}

/// `pacer validate`: every file checked, each line printed; the exit code is the worst.
pub fn run(args: &ValidateArgs) -> Exit {
    let mut worst = Exit::Passed;
    for p in &args.plans {
        match validate_one(p) {
            Ok(line) => println!("{}: ok: {line}", p.display()),
            Err((message, exit)) => {
                eprintln!("{message}");
                worst = exit;
            }
        }
    }
    worst
}

/// One file. A LoadTest manifest is checked as the operator will check it
/// (`pacer_operator::prepare`: its plan read as a LoadTest's, so no `${file:}` is read and
/// `${env:}` names only what the LoadTest provides); a plan as `pacer run` reads it.
fn validate_one(p: &Path) -> Result<String, (String, Exit)> {
    let plan_error = |e: pacer_plan::PlanError| (e.to_string(), exit::for_plan_error(&e));
    let text = std::fs::read_to_string(p).map_err(|source| {
        plan_error(pacer_plan::PlanError::Io {
            path: p.display().to_string(),
            source,
        })
    })?;
    let doc =
        pacer_plan::load::parse_document(&text, &p.display().to_string()).map_err(plan_error)?;
    if doc.get("kind").and_then(|k| k.as_str()) != Some("LoadTest") {
        return pacer_plan::load_file(p)
            .map(|plan| plan_line(&plan))
            .map_err(plan_error);
    }
    let lt: pacer_operator::crd::LoadTest = serde_json::from_value(doc).map_err(|e| {
        (
            format!("{}: not a LoadTest: {e}", p.display()),
            Exit::Invalid,
        )
    })?;
    match pacer_operator::prepare::prepare(&lt, &Default::default()) {
        Ok(prepared) => Ok(format!(
            "LoadTest {} ({} workers)",
            plan_line(&prepared.plan),
            prepared.workers
        )),
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
            Err((
                format!("{}: invalid LoadTest:\n{}", p.display(), list.join("\n")),
                Exit::Invalid,
            ))
        }
    }
}

/// What a valid plan will run, on one line: its name and scenarios, with the iterations of
/// those that have a fixed count: `Checkout [browse (200 iterations), pay]`.
fn plan_line(plan: &pacer_plan::Plan) -> String {
    let scenarios: Vec<String> = plan
        .scenarios
        .iter()
        .map(|s| match s.executor.planned_iterations() {
            Some(n) => format!("{} ({} iterations)", s.name, n),
            None => s.name.clone(),
        })
        .collect();
    format!("{} [{}]", plan.name, scenarios.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = "name: Checkout\ntarget: http://api\nscenarios:\n  - name: browse\n    executor: shared-iterations\n    vus: 2\n    iterations: 200\n    requests: [{name: q, path: /}]\n  - name: pay\n    executor: constant-vus\n    vus: 1\n    duration: 5s\n    requests: [{name: p, path: /pay}]\n";

    #[test]
    fn a_plan_line_names_the_scenarios_and_their_fixed_iterations() {
        let plan = pacer_plan::load_str(PLAN, "plan.yaml", &Default::default()).unwrap();
        assert_eq!(plan_line(&plan), "Checkout [browse (200 iterations), pay]");
    }
}
