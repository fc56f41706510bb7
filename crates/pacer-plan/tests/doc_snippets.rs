//! Every plan snippet in the docs validates, so the docs cannot drift from the loader.
//!
//! Each ```yaml block of README.md and docs/*.md is read as a user would use it: a whole plan or
//! LoadTest manifest as it is, and a fragment (`requests:`, `auth:`, `limits:`, `retry:`,
//! `thresholds:`, `http:`, `data:`, `scenarios:` without the plan's `name` and `target`) placed
//! into a small plan that has what the fragment refers to, its files read beside examples/ (as
//! examples/data/). An outline whose values are `[...]` or `{...}` is only parsed, and so is a
//! fragment of a LoadTest's spec (`spec:` without `kind`, `workerTemplate:`): those fields are
//! the operator's, checked by its CRD and crates/pacer-operator's tests. docs/mock.md's blocks
//! are the mock's configuration, not plans, and are checked by the mock's own tests.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `(file, first line, text)` of every ```yaml block.
fn yaml_blocks() -> Vec<(String, usize, String)> {
    let root = workspace();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter(|p| p.file_name().is_some_and(|n| n != "mock.md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut blocks = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a doc");
        let name = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let mut current: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            match &mut current {
                None if line.trim_start() == "```yaml" => current = Some((i + 2, String::new())),
                Some(_) if line.trim_start().starts_with("```") => {
                    if let Some((first, body)) = current.take() {
                        blocks.push((name.clone(), first, body));
                    }
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => {}
            }
        }
    }
    blocks
}

/// A plan with what fragments refer to: a request named `query`, an auth named `genesys`, a
/// variable `pageSize`.
fn base_plan() -> Value {
    json!({
        "name": "doc-snippet",
        "target": "http://127.0.0.1:8080",
        "duration": "1s",
        "variables": { "pageSize": 25 },
        "auth": [{ "name": "genesys", "type": "bearer", "token": "stand-in" }],
        "scenarios": [{
            "name": "s",
            "executor": "constant-vus",
            "vus": 1,
            "requests": [{ "name": "query", "path": "/" }],
        }],
    })
}

/// Stand-ins for `${env:NAME}`: a URL where one is expected, text elsewhere.
fn env(name: &str) -> Option<String> {
    Some(if name.contains("TARGET") || name.contains("URL") {
        "http://127.0.0.1:8080".into()
    } else {
        "stand-in".into()
    })
}

fn as_plan(doc: Value) -> Value {
    let Value::Object(map) = &doc else {
        return doc;
    };
    if map.contains_key("kind") || (map.contains_key("name") && map.contains_key("target")) {
        return doc;
    }
    let mut plan = base_plan();
    for (k, v) in map {
        if k == "requests" {
            plan["scenarios"][0]["requests"] = v.clone();
        } else {
            plan[k] = v.clone();
        }
    }
    plan
}

/// A fragment of a LoadTest's spec rather than of a plan: `spec:` without `kind`, or a field
/// only a LoadTest's spec has.
fn is_spec_fragment(doc: &Value) -> bool {
    const SPEC_ONLY: [&str; 3] = ["workerTemplate", "planRef", "credentials"];
    let Value::Object(map) = doc else {
        return false;
    };
    (map.contains_key("spec") && !map.contains_key("kind"))
        || SPEC_ONLY.iter().any(|k| map.contains_key(*k))
}

#[test]
fn every_plan_snippet_in_the_docs_validates() {
    let opts = pacer_plan::refs::Refs::Local {
        env: &env,
        base_dir: workspace().join("examples"),
    };
    let mut checked = 0;
    let mut failures = Vec::new();
    for (file, line, text) in yaml_blocks() {
        let at = format!("{file}:{line}");
        let doc = match pacer_plan::load::parse_document(&text, &at) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("{at}: not YAML: {e}"));
                continue;
            }
        };
        if text.contains("[...]") || text.contains("{...}") {
            continue; // an outline
        }
        if is_spec_fragment(&doc) {
            continue; // the operator's fields
        }
        if let Err(e) = pacer_plan::load_value(as_plan(doc), &at, &opts) {
            failures.push(e.to_string()); // names `at`
        }
        checked += 1;
    }
    assert!(
        failures.is_empty(),
        "doc snippets that do not validate:\n{}",
        failures.join("\n")
    );
    assert!(
        checked >= 6,
        "only {checked} snippets checked: did the docs move?"
    );
}
