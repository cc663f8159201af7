//! Waiting on the upstream while watching the client and the shutdown deadline: every read of
//! an answer goes through [`next`], so a client that leaves is noticed while the upstream is
//! still thinking, not only on the next write.

use crate::downstream::RequestCtx;
use crate::upstream::Conn;
use bytes::Bytes;
use pingora::protocols::http::ServerSession as Session;
use std::time::Instant;
use tokio::time::timeout_at;

/// Resolves when the client has gone away (or sent something it should not have). A protocol
/// that cannot tell (`Ok(None)`) never resolves, so the answer is not cut short.
pub async fn client_gone(session: &mut Session) {
    loop {
        match session.read_body_or_idle(true).await {
            Ok(Some(_)) => continue,
            Ok(None) => std::future::pending::<()>().await,
            Err(_) => return,
        }
    }
}

pub enum Step {
    Chunk(Bytes),
    Eof,
    Failed(String),
    TimedOut,
    ClientGone,
    /// The shutdown grace deadline passed.
    Draining,
}

/// Waits for the next upstream piece until `until`, watching for the client leaving.
pub async fn next(
    ctx: &mut RequestCtx,
    session: &mut Session,
    up: &mut Conn,
    until: Instant,
) -> Step {
    let t0 = Instant::now();
    let step = tokio::select! {
        r = timeout_at(until.into(), up.read_body_bytes()) => match r {
            Ok(Ok(Some(c))) => Step::Chunk(c),
            Ok(Ok(None)) => Step::Eof,
            Ok(Err(e)) => Step::Failed(e),
            Err(_) => Step::TimedOut,
        },
        _ = client_gone(session) => Step::ClientGone,
        _ = crate::lifecycle::deadline_passed(&mut ctx.drain) => Step::Draining,
    };
    ctx.upstream_wait += t0.elapsed();
    step
}
