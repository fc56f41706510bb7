//! pacer-limiter
