//! Request admission: who is calling (client keys) and which scenario serves the request.
//! Each filter is a plain function of the request and the config snapshot, so the order of the
//! pipeline lives in one place (`server`) and each step is unit-testable on its own.

pub mod auth;
pub mod scenario;
