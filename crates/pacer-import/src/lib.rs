//! `pacer import`: a JMeter test plan (`.jmx`) or a HAR recording (`.har`) to a pacer plan.
//!
//! Users of the user story start from a JMeter plan, not a blank file. The importer writes a
//! plan as YAML with comments, and a list of [`Note`]s: everything it could not translate, or
//! translated only approximately, is both a comment at the place it came from and a note, so
//! nothing is dropped silently. The plan it returns has been validated with
//! [`pacer_plan::load_str_without_data`] (references read with an empty environment: every
//! reference the importer writes has a fallback; data files are not read: a JMeter CSV Data
//! Set's file is read by `pacer run`, beside the plan, and the importer reads nothing but its
//! input), so a plan that imports is one `pacer run` accepts once its data files are there.
//!
//! The importer never invents plan features: what the plan format cannot say (transactions,
//! conditions), and what it says differently (a CSV Data Set's per-thread cursor, its `<EOF>`
//! after the last line), is a note, not a guess. A CSV Data Set becomes a `data:` source.

pub mod har;
pub mod jmeter;
mod jmx;
pub mod text;
pub mod yaml;

use std::fmt;

/// The largest `.jmx` read: real test plans are tens of KiB; 16 MiB keeps a mistaken
/// (or hostile) file from costing the tree's memory several times over.
pub const MAX_JMX_BYTES: usize = 16 << 20;
/// The most XML nodes (elements, attributes, text) a `.jmx` may have: a 16 MiB plan of
/// tiny elements stays under it; it bounds the tree roxmltree builds.
pub const MAX_JMX_NODES: u32 = 2_000_000;
/// The largest `.har` read: recordings with response bodies run to tens of MiB.
pub const MAX_HAR_BYTES: usize = 64 << 20;
/// The most requests an import writes: a plan longer than this is a recording to trim,
/// not a test to run as is.
pub const MAX_REQUESTS: usize = 1000;

/// The result of an import: the plan (YAML with comments) and what was not translated.
#[derive(Clone, Debug)]
pub struct Import {
    /// The plan, as YAML with comments; it validates.
    pub yaml: String,
    /// Everything left out or approximated, in document order.
    pub notes: Vec<Note>,
    /// The `file:` of each `data:` source the plan declares: read by `pacer run` (relative
    /// to the plan file), never by the import.
    pub data_files: Vec<String>,
}

/// Why an element is in the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum NoteKind {
    /// Left out: the plan does not do what this element did.
    Untranslated,
    /// Translated, but not exactly (e.g. a ramp-up on an iteration count).
    Approximated,
    /// Disabled in the source, so not imported.
    Disabled,
}

impl NoteKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Untranslated => "not translated",
            Self::Approximated => "approximated",
            Self::Disabled => "disabled",
        }
    }
}

/// One element the import left out or approximated.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Note {
    pub kind: NoteKind,
    /// Where it was: `Test Plan / Thread Group / Login` (JMeter), `entries[3]` (HAR).
    pub location: String,
    /// The element's type (`JSR223PostProcessor`, `CookieManager`, a header name ...).
    pub element: String,
    /// What was done instead, and why.
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} <{}> ({}): {}",
            self.location,
            self.element,
            self.kind.label(),
            self.message
        )
    }
}

/// Why an input could not be imported. Each names the element or field.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the file is {size} bytes, more than the {max} an import reads")]
    TooLarge { size: usize, max: usize },
    #[error("not well-formed XML: {source}")]
    Xml {
        #[source]
        source: roxmltree::Error,
    },
    #[error("not a JMeter test plan: the root element is <{root}>, expected <jmeterTestPlan>")]
    NotJmx { root: String },
    #[error("<{element}>: {message}")]
    Element { element: String, message: String },
    #[error("not a HAR file: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("{field}: {message}")]
    Har { field: String, message: String },
    #[error("nothing to import: {0}")]
    Empty(String),
    /// The plan written does not validate: a number of the source beyond the plan's bounds
    /// (docs/plan-format.md, "Bounds"), or a bug in the importer.
    #[error("the plan imported from it does not validate: {source}")]
    Plan {
        #[source]
        source: pacer_plan::PlanError,
    },
}

/// A name as the plan accepts it (request and scenario names: at most 128 characters,
/// without control characters, braces or commas), never empty.
pub(crate) fn plan_name(raw: &str, fallback: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| match c {
            '{' | '}' | ',' => ' ',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let cleaned = if cleaned.is_empty() {
        fallback.to_string()
    } else {
        cleaned
    };
    cleaned.chars().take(NAME_CHARS).collect()
}

/// Room for a ` (2)` suffix under the plan's 128 characters.
const NAME_CHARS: usize = 120;

/// `name`, or `name (2)`, `name (3)` ... so that it is not in `taken`; records it.
pub(crate) fn unique(name: String, taken: &mut std::collections::BTreeSet<String>) -> String {
    unique_by(name, taken, |name, n| format!("{name} ({n})"))
}

/// `name`, or `numbered(name, 2)`, `numbered(name, 3)` ... so that it is not in `taken`;
/// records it. One rule for every name the importer must not repeat; only the suffix's form
/// differs (a data source's name allows no space or parenthesis).
pub(crate) fn unique_by(
    name: String,
    taken: &mut std::collections::BTreeSet<String>,
    numbered: impl Fn(&str, u32) -> String,
) -> String {
    let mut candidate = name.clone();
    let mut n = 2u32;
    while taken.contains(&candidate) {
        candidate = numbered(&name, n);
        n = n.saturating_add(1);
    }
    taken.insert(candidate.clone());
    candidate
}

/// Headers whose recorded values are credentials: never copied into a plan. Each becomes a
/// `{{vars.NAME}}` filled from an environment variable (with an empty fallback, so the plan
/// validates without it).
pub(crate) fn secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || [
        "token", "secret", "api-key", "apikey", "password", "session",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// The plan variable and environment variable that stand for a secret header's value:
/// `Authorization` -> (`authorization`, `PACER_AUTHORIZATION`).
pub(crate) fn secret_names(header: &str) -> (String, String) {
    let var: String = header
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let env = format!("PACER_{}", var.to_ascii_uppercase());
    (var, env)
}

/// Validate the written plan as `pacer run` will read it, with an empty environment (every
/// reference the importer writes has a fallback), but without its data files: they are
/// wherever the plan goes, and the importer reads no file but its input.
pub(crate) fn validate(yaml: &str, source_name: &str) -> Result<(), ImportError> {
    let refs = pacer_plan::Refs::Local {
        env: &|_| None,
        base_dir: std::path::PathBuf::new(),
    };
    pacer_plan::load_str_without_data(yaml, source_name, &refs)
        .map(|_| ())
        .map_err(|source| ImportError::Plan { source })
}
