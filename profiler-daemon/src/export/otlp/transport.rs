//! The two OTLP transports: gRPC (tonic, `ProfilesService/Export`) and HTTP/protobuf (POST to
//! `.../v1development/profiles`), with gzip, TLS (system roots or a given CA), custom headers and
//! a per-attempt timeout. Failures are classified as retryable or not, per the OTLP specification.

use std::str::FromStr as _;

use bytes::{BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesPartialSuccess, ExportProfilesServiceResponse,
};
use prost::Message as _;
use tonic::client::Grpc;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::queue::EncodedRequest;
use super::tls::{self, Roots};
use crate::config::otlp::{Compression, OtlpConfig, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read the CA file `{path}`: {source}")]
    Ca {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("OTLP endpoint `{endpoint}`: {message}")]
    Setup { endpoint: String, message: String },
}

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth another try later (unavailable, overloaded, timed out, connection refused).
    Retryable(String),
    /// The receiver refused the data; retrying would not help.
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Retryable(m) => write!(f, "{m} (will retry)"),
            SendError::Permanent(m) => write!(f, "{m} (not retryable)"),
        }
    }
}

#[allow(
    clippy::large_enum_variant,
    reason = "one value per daemon: the size difference between the variants does not matter"
)]
pub enum Transport {
    Grpc {
        endpoint: Endpoint,
        /// The endpoint as logs show it (credentials masked).
        shown: String,
        client: Grpc<Channel>,
        metadata: MetadataMap,
        gzip: bool,
    },
    Http {
        client: reqwest::Client,
        url: String,
        /// The endpoint as logs show it (credentials masked).
        shown: String,
        headers: reqwest::header::HeaderMap,
        gzip: bool,
    },
}

impl Transport {
    /// Builds the client; connects lazily, so a collector that is down at start is not an error.
    pub fn new(config: &OtlpConfig) -> Result<Self, TransportError> {
        let setup = |message: String| TransportError::Setup {
            endpoint: config.endpoint_for_logs(),
            message,
        };
        let ca = match &config.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|source| TransportError::Ca {
                path: path.display().to_string(),
                source,
            })?),
            None => None,
        };
        match config.protocol {
            Protocol::Grpc => {
                let mut endpoint = Endpoint::from_str(&config.endpoint)
                    .map_err(|e| setup(e.to_string()))?
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout);
                if config.endpoint.starts_with("https://") {
                    let mut tls = match tls::roots() {
                        Roots::System => ClientTlsConfig::new().with_native_roots(),
                        Roots::Bundled => ClientTlsConfig::new().with_webpki_roots(),
                    };
                    if let Some(pem) = &ca {
                        tls = tls.ca_certificate(Certificate::from_pem(pem));
                    }
                    endpoint = endpoint.tls_config(tls).map_err(|e| setup(e.to_string()))?;
                }
                let gzip = config.compression == Compression::Gzip;
                let client = grpc_client(&endpoint, gzip);
                let mut metadata = MetadataMap::new();
                for (k, v) in &config.headers {
                    let key = MetadataKey::from_bytes(k.as_bytes())
                        .map_err(|_| setup(format!("invalid header name `{k}`")))?;
                    let value = MetadataValue::try_from(v.as_str())
                        .map_err(|_| setup(format!("invalid value for header `{k}`")))?;
                    metadata.insert(key, value);
                }
                Ok(Self::Grpc {
                    endpoint,
                    shown: config.endpoint_for_logs(),
                    client,
                    metadata,
                    gzip,
                })
            }
            Protocol::HttpProtobuf => {
                let mut builder = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .connect_timeout(config.timeout);
                if config.endpoint.starts_with("https://") {
                    let system = tls::roots() == Roots::System;
                    builder = builder
                        .tls_built_in_native_certs(system)
                        .tls_built_in_webpki_certs(!system);
                }
                if let Some(pem) = &ca {
                    let cert = reqwest::Certificate::from_pem(pem)
                        .map_err(|e| setup(format!("CA file: {e}")))?;
                    builder = builder.add_root_certificate(cert);
                }
                let client = builder.build().map_err(|e| setup(e.to_string()))?;
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &config.headers {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| setup(format!("invalid header name `{k}`")))?;
                    let mut value = reqwest::header::HeaderValue::from_str(v)
                        .map_err(|_| setup(format!("invalid value for header `{k}`")))?;
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                Ok(Self::Http {
                    client,
                    url: config.endpoint.clone(),
                    shown: config.endpoint_for_logs(),
                    headers,
                    gzip: config.compression == Compression::Gzip,
                })
            }
        }
    }

    /// One attempt. Returns the receiver's partial success, if it reported one.
    pub async fn send(
        &mut self,
        request: &EncodedRequest,
    ) -> Result<Option<ExportProfilesPartialSuccess>, SendError> {
        match self {
            Transport::Grpc {
                endpoint,
                shown,
                client,
                metadata,
                gzip,
            } => {
                let mut req = tonic::Request::new(request.body.clone());
                *req.metadata_mut() = metadata.clone();
                match export(client, req).await {
                    Ok(response) => Ok(response.into_inner().partial_success),
                    Err(status) => {
                        let err = classify_grpc(&status, metadata, shown);
                        if matches!(err, SendError::Retryable(_)) {
                            // A fresh channel per retry: a lazy channel whose first connection
                            // failed does not reliably reconnect by itself.
                            *client = grpc_client(endpoint, *gzip);
                        }
                        Err(err)
                    }
                }
            }
            Transport::Http {
                client,
                url,
                shown,
                headers,
                gzip,
            } => {
                let mut body = request.body.clone();
                let mut builder = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
                if *gzip {
                    body = gzip_bytes(&body)
                        .map_err(|e| SendError::Permanent(format!("gzip failed: {e}")))?
                        .into();
                    builder = builder.header(reqwest::header::CONTENT_ENCODING, "gzip");
                }
                let mut response = builder.body(body).send().await.map_err(|e| {
                    // Connection refused, DNS, TLS handshake, timeout: the receiver may come back.
                    // The URL is left out: it may carry credentials (`shown` masks them).
                    let e = e.without_url();
                    SendError::Retryable(format!(
                        "{}HTTP request failed: {}",
                        step_prefix(&e, shown),
                        error_chain(&e)
                    ))
                })?;
                let status = response.status();
                let bytes = read_capped(&mut response).await;
                if status.is_success() {
                    let decoded = ExportProfilesServiceResponse::decode(bytes.as_slice()).ok();
                    return Ok(decoded.and_then(|r| r.partial_success));
                }
                let message = format!("HTTP {status}: {}", echoed(&bytes, headers));
                Err(match status.as_u16() {
                    429 | 502 | 503 | 504 => SendError::Retryable(message),
                    _ => SendError::Permanent(message),
                })
            }
        }
    }
}

/// The most of a collector's answer that is read: a partial success or an error text is small,
/// and a hostile or broken collector must not fill the daemon's memory.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The response body, up to `MAX_RESPONSE_BYTES` (the rest is not read).
async fn read_capped(response: &mut reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_RESPONSE_BYTES - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_RESPONSE_BYTES {
            break;
        }
    }
    out
}

/// What a collector said, fit for a log line: at most 300 characters, control characters and
/// NULs replaced, and any of our header values it echoes back (credentials) masked.
fn echoed(bytes: &[u8], headers: &reqwest::header::HeaderMap) -> String {
    let secrets: Vec<String> = headers
        .values()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| v.len() >= 4)
        .map(str::to_owned)
        .collect();
    sanitize(&String::from_utf8_lossy(bytes), &secrets)
}

fn sanitize(text: &str, secrets: &[String]) -> String {
    let mut text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    for secret in secrets {
        text = text.replace(secret.as_str(), "***");
    }
    let text = text.trim();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The gRPC method the OTLP profiles service exports on.
const EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export";

/// One `Export` call with a request already encoded (what the generated client's `export` does
/// with a message).
async fn export(
    client: &mut Grpc<Channel>,
    request: tonic::Request<Bytes>,
) -> Result<tonic::Response<ExportProfilesServiceResponse>, tonic::Status> {
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("service was not ready: {e}")))?;
    client
        .unary(
            request,
            http::uri::PathAndQuery::from_static(EXPORT_PATH),
            EncodedCodec,
        )
        .await
}

/// A gRPC codec that writes a request's bytes as they are and decodes the collector's answer.
#[derive(Debug, Clone, Copy)]
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ExportProfilesServiceResponse;
    type Encoder = EncodedCodec;
    type Decoder = EncodedCodec;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        EncodedCodec
    }
}

impl Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = ExportProfilesServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        ExportProfilesServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable answer: {e}")))
    }
}

fn grpc_client(endpoint: &Endpoint, gzip: bool) -> Grpc<Channel> {
    let client = Grpc::new(endpoint.connect_lazy())
        .max_encoding_message_size(64 * 1024 * 1024)
        .max_decoding_message_size(MAX_RESPONSE_BYTES);
    if gzip {
        client.send_compressed(CompressionEncoding::Gzip)
    } else {
        client
    }
}

/// Retryable gRPC codes per the OTLP specification (`RESOURCE_EXHAUSTED` included: receivers use
/// it for back-pressure).
fn classify_grpc(status: &tonic::Status, metadata: &MetadataMap, shown: &str) -> SendError {
    use tonic::Code;
    let secrets: Vec<String> = metadata
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(_, v) => v.to_str().ok(),
            tonic::metadata::KeyAndValueRef::Binary(..) => None,
        })
        .filter(|v| v.len() >= 4)
        .map(str::to_owned)
        .collect();
    let mut message = format!(
        "{}gRPC {:?}: {}",
        step_prefix(status, shown),
        status.code(),
        sanitize(status.message(), &secrets)
    );
    append_causes(&mut message, std::error::Error::source(status), &secrets);
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss
        | Code::ResourceExhausted => SendError::Retryable(message),
        _ => SendError::Permanent(message),
    }
}

fn gzip_bytes(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data)?;
    encoder.finish()
}

/// `TLS failed with https://host:4317: ` when the step of the connection that failed is known.
fn step_prefix(err: &(dyn std::error::Error + 'static), shown: &str) -> String {
    tls::failed_step(err).map_or_else(String::new, |step| format!("{step} failed with {shown}: "))
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    append_causes(&mut text, err.source(), &[]);
    text
}

/// Appends `cause` and its sources to `text`, each unless `text` says it already (the
/// transports' errors repeat their causes' messages).
fn append_causes(text: &mut String, cause: Option<&dyn std::error::Error>, secrets: &[String]) {
    let mut next = cause;
    while let Some(e) = next {
        let part = sanitize(&e.to_string(), secrets);
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = e.source();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_are_classified_per_the_specification() {
        let retry = |code| {
            matches!(
                classify_grpc(&tonic::Status::new(code, "x"), &MetadataMap::new(), "e"),
                SendError::Retryable(_)
            )
        };
        assert!(retry(tonic::Code::Unavailable));
        assert!(retry(tonic::Code::ResourceExhausted));
        assert!(retry(tonic::Code::DeadlineExceeded));
        assert!(!retry(tonic::Code::InvalidArgument));
        assert!(!retry(tonic::Code::Unauthenticated));
        assert!(!retry(tonic::Code::Unimplemented));
    }

    #[test]
    fn echoed_text_is_bounded_clean_and_masks_our_secrets() {
        let secrets = vec!["Bearer s3cret".to_owned()];
        let text = sanitize("bad token: Bearer s3cret\0\n\x1b[31m", &secrets);
        assert_eq!(text, "bad token: ***   [31m");
        let long = "x".repeat(1000);
        assert_eq!(sanitize(&long, &[]).len(), 303);
    }
}
