//! Inline images (`data:` URLs) are uploaded to Dify first; the generate call then refers to
//! the uploaded file.

use crate::config::Provider;
use crate::error::{sanitize, GatewayError};
use crate::upstream::Upstream;
use bytes::Bytes;
use serde_json::Value;
use std::time::Duration;

/// How long an image upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn upload(
    upstream: &Upstream,
    provider: &Provider,
    user: &str,
    mime: &str,
    data: &[u8],
) -> Result<String, GatewayError> {
    let mime: String = mime
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "/+.-".contains(*c))
        .collect();
    let ext = mime
        .rsplit('/')
        .next()
        .filter(|e| !e.is_empty())
        .unwrap_or("bin");
    let boundary = format!("ai-gateway-{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::with_capacity(data.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\ncontent-disposition: form-data; name=\"user\"\r\n\r\n{user}\r\n\
             --{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"image.{ext}\"\r\n\
             content-type: {mime}\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let path = format!("{}/files/upload", provider.url.base_path);
    let content_type = format!("multipart/form-data; boundary={boundary}");
    let (status, answer) = upstream
        .simple_call(
            &provider.url,
            super::auth(provider),
            &provider.timeouts,
            &path,
            &content_type,
            Bytes::from(body),
            UPLOAD_TIMEOUT,
        )
        .await
        .map_err(|e| {
            GatewayError::UpstreamError(format!(
                "dify provider {}: image upload failed: {}",
                provider.name,
                sanitize(&e)
            ))
        })?;
    if !(200..300).contains(&status) {
        return Err(super::errors::map_body(&provider.name, status, &answer));
    }
    let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    v["id"].as_str().map(str::to_owned).ok_or_else(|| {
        GatewayError::UpstreamError(format!(
            "dify provider {}: upload answer has no file id",
            provider.name
        ))
    })
}
