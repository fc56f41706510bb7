//! Plan errors: every problem with the field it belongs to.

use std::fmt;

/// One problem at one field, e.g. `scenarios[1].rate: expected N/s ... got "fast"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with indices (`scenarios[1].requests[0].path`); empty for the whole document.
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read plan {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The document is not valid YAML/JSON.
    #[error("{source_name}: not valid YAML or JSON: {message}")]
    Syntax {
        source_name: String,
        message: String,
    },
    /// The document parsed but the plan is not valid; every problem found is listed.
    #[error("{source_name}: invalid plan:\n{}", list(.errors))]
    Invalid {
        source_name: String,
        errors: Vec<FieldError>,
    },
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  - {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl PlanError {
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            PlanError::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }
}
