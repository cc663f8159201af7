//! HTTPS upstreams: the gateway resolves the host name asynchronously, verifies the certificate
//! against the trusted roots with SNI, and sends the right `Host`.
//!
//! This binary holds one test because it points `SSL_CERT_FILE` (read by the gateway's rustls
//! connector when it starts) at a CA made for the test.

mod support;

use serde_json::json;
use std::sync::Arc;
use support::*;

fn test_pki(dir: &std::path::Path) -> Arc<rustls::ServerConfig> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_with_sni_host_and_certificate_verification() {
    let pki = tempfile::tempdir().unwrap();
    let tls = test_pki(pki.path());
    // SAFETY-free in practice: this test binary has a single test and sets the variable before
    // the gateway (the only reader) starts.
    std::env::set_var("SSL_CERT_FILE", pki.path().join("ca.pem"));
    let mock = MockOpenAi::start_tls(tls).await;
    let port = mock.addr.port();
    let yaml = format!(
        r#"
providers:
  secure: {{ type: openai, base_url: "https://localhost:{port}/v1", api_key: sk-tls }}
  wrong_name: {{ type: openai, base_url: "https://127.0.0.1:{port}/v1", api_key: sk-tls }}
scenarios:
  secure: {{ targets: [{{ provider: secure, model: m }}] }}
  wrong_name: {{ targets: [{{ provider: wrong_name, model: m }}] }}
"#
    );
    let gw = start_gateway(&yaml);
    for stream in [false, true] {
        let r = chat(&gw)
            .body(json!({"model": "secure", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await;
        assert_eq!(r.status, 200);
        let text = &r.text;
        if stream {
            assert_eq!(r.sse().last().map(String::as_str), Some("[DONE]"), "{text}");
        } else {
            assert!(text.contains("Hello from the mock upstream"), "{text}");
        }
    }
    let seen = mock.last();
    assert_eq!(
        seen.header("host").as_deref(),
        Some(format!("localhost:{port}").as_str())
    );
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some("Bearer sk-tls")
    );

    // The certificate is for `localhost`: connecting by IP must fail verification, not pass.
    let r = chat(&gw)
        .body(json!({"model": "wrong_name", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await;
    assert_eq!(r.status, 502);
    assert_eq!(
        mock.count(),
        2,
        "the unverified connection never delivered a request"
    );
}
