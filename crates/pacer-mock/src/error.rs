//! Errors of the mock server: bad configuration, a port that cannot be bound, a server that
//! stopped with an I/O error. Request-level problems never become a `MockError`: they are
//! answered with an HTTP status and a JSON body.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong when configuring or running the mock API.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid YAML for a mock configuration.
    #[error("invalid config file {path}: {message}")]
    ParseConfig { path: PathBuf, message: String },
    /// A configuration value (from the file or a flag) is out of range or inconsistent.
    /// `field` is the path of the offending field, e.g. `limits[0].window`.
    #[error("invalid config: {field}: {message}")]
    InvalidConfig { field: String, message: String },
    /// The `staticBody` file could not be read.
    #[error("invalid config: staticBody: cannot read {path}: {source}")]
    ReadStaticBody {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Any other I/O error of the server (reading the bound address, serving).
    #[error("mock server I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The effective configuration could not be rendered (for `--print-config`).
    #[error("cannot render config: {0}")]
    RenderConfig(String),
}

impl MockError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        MockError::InvalidConfig {
            field: field.into(),
            message: message.into(),
        }
    }
}
