//! Request admission: who is calling (client keys), which scenario serves the request, and what
//! it is expected to use (for client limits). Each filter is a plain function of the request and
//! the config snapshot, so the order of the pipeline lives in one place (the endpoint) and each
//! step is unit-testable on its own.

pub mod auth;
pub mod demand;
pub mod experiment;
pub mod scenario;
