//! Provider emulators for ModelRoute's tests and `make run`.

pub mod emulators;
