//! The floor for the bench harness (`bench/run.sh`): pingora's HTTP/1 server doing no work at all.
//! It reads each request and answers with the same fixed `chat.completion` bytes as
//! `bench_mock`, on one worker thread like the gateway's bench config. No pingora-based server
//! (the gateway included) can answer faster than this, so its row shows how much of a cache
//! hit's time is the gateway's own work and how much is the server framework.
//!
//! Usage: `bench_floor <port>`

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::listening::Service;
use std::sync::Arc;

const ANSWER: &[u8] = br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}"#;

struct Floor;

#[async_trait]
impl HttpServerApp for Floor {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        while session.read_request_body().await.ok()?.is_some() {}
        let mut header = ResponseHeader::build(200, Some(2)).ok()?;
        header
            .insert_header("content-type", "application/json")
            .ok()?;
        header
            .insert_header("content-length", ANSWER.len().to_string())
            .ok()?;
        session.write_response_header(Box::new(header)).await.ok()?;
        session
            .write_response_body(Bytes::from_static(ANSWER), true)
            .await
            .ok()?;
        let settings = HttpPersistentSettings::for_session(&session);
        let reusable = session.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
    }
}

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(18084);
    let conf = ServerConf {
        threads: 1,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = Service::new("bench floor".to_owned(), Floor);
    service.add_tcp(&format!("127.0.0.1:{port}"));
    server.add_service(service);
    server.run_forever();
}
