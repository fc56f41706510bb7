//! pacer-stats
