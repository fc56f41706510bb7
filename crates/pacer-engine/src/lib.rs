//! pacer-engine
