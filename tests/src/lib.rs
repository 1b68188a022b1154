//! Provider emulators for ModelRoute's tests and `make run`, and what the load
//! generators share.

pub mod bench;
pub mod emulators;
