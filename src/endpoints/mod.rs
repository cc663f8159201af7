//! The API listener's endpoints, one module each. An endpoint reads its request, runs the
//! filters, and answers — itself, from the cache, or through `forward`.

pub mod chat;
pub mod feedback;
pub mod messages;
pub mod models;
pub mod pipeline;
pub mod responses;
