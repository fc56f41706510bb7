//! The pacer plan model: the types a user writes (YAML/JSON, also the `LoadTest` spec), parsing,
//! validation with field paths, rates, durations, templates and the thresholds syntax.
//!
//! No I/O beyond reading the plan file and `${file:..}` references; no async.

pub mod bounds;
pub mod budget;
pub mod data;
pub mod duration;
pub mod error;
pub mod forecast;
pub mod load;
pub mod model;
pub mod origin;
pub mod ramp;
pub mod rate;
pub mod refs;
pub mod reserve;
pub mod shape;
pub mod shard;
pub mod spec;
pub mod template;
pub mod threshold;
pub mod validate;

pub use duration::HumanDuration;
pub use error::{FieldError, PlanError};
pub use load::{load_file, load_str, load_str_without_data, load_value};
pub use model::*;
pub use rate::Rate;
pub use refs::Refs;
pub use reserve::Reserve;
pub use shape::{LimitShape, Pacing};
pub use shard::Shard;
pub use template::{Part, Template};
pub use threshold::{Metric, Threshold};

/// The JSON Schema of a plan (for editors, and the `LoadTest` CRD).
pub fn json_schema() -> schemars::Schema {
    schemars::schema_for!(spec::PlanSpec)
}
