//! pacer-mock
