//! Real OTLP profiles receivers for the tests: a gRPC server built from the generated
//! `ProfilesService` server of `opentelemetry-proto`, and an HTTP/protobuf endpoint (axum) at
//! `/v1development/profiles`, each in plain text or TLS. Each runs on its own tokio runtime and
//! keeps what it received.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::profiles::v1development::profiles_service_server::{
    ProfilesService, ProfilesServiceServer,
};
use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesPartialSuccess, ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use prost::Message as _;

/// One received export.
#[derive(Debug, Clone)]
pub struct Capture {
    pub request: ExportProfilesServiceRequest,
    /// The protobuf bytes (HTTP: the body after gunzip; gRPC: the decoded message re-encoded).
    pub bytes: Vec<u8>,
    /// Request headers (gRPC metadata), lowercase names.
    pub headers: Vec<(String, String)>,
    /// `content-encoding` (HTTP) or `grpc-encoding` (gRPC), if any.
    pub encoding: Option<String>,
}

type Store = Arc<Mutex<Vec<Capture>>>;

pub struct Receiver {
    pub addr: SocketAddr,
    store: Store,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Everything received so far.
    #[must_use]
    pub fn captures(&self) -> Vec<Capture> {
        self.store.lock().unwrap().clone()
    }

    /// Everything received so far, forgotten here (a long-running sink keeps nothing).
    #[must_use]
    pub fn take(&self) -> Vec<Capture> {
        std::mem::take(&mut *self.store.lock().unwrap())
    }

    /// Waits until `n` exports arrived or `timeout` passes; returns what arrived.
    #[must_use]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Capture> {
        let deadline = Instant::now() + timeout;
        while self.store.lock().unwrap().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.captures()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn bind(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> tokio::net::TcpListener {
    rt.block_on(tokio::net::TcpListener::bind(addr))
        .expect("bind the receiver")
}

struct GrpcService {
    store: Store,
    partial: bool,
}

#[tonic::async_trait]
impl ProfilesService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportProfilesServiceRequest>,
    ) -> Result<tonic::Response<ExportProfilesServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect::<Vec<_>>();
        let encoding = headers
            .iter()
            .find(|(k, _)| k == "grpc-encoding")
            .map(|(_, v)| v.clone());
        let request = request.into_inner();
        self.store.lock().unwrap().push(Capture {
            bytes: request.encode_to_vec(),
            request,
            headers,
            encoding,
        });
        Ok(tonic::Response::new(ExportProfilesServiceResponse {
            partial_success: self.partial.then(|| ExportProfilesPartialSuccess {
                rejected_profiles: 1,
                error_message: "test receiver rejects one profile".to_owned(),
            }),
        }))
    }
}

/// A gRPC receiver on `addr` (port 0: any free port). With `partial`, every response reports
/// one rejected profile.
#[must_use]
pub fn grpc(addr: SocketAddr, partial: bool) -> Receiver {
    grpc_server(addr, partial, tonic::transport::Server::builder())
}

/// A gRPC receiver that only speaks TLS, with the given PEM certificate chain and key.
#[must_use]
pub fn grpc_tls(addr: SocketAddr, cert_pem: &[u8], key_pem: &[u8]) -> Receiver {
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
    let server = tonic::transport::Server::builder()
        .tls_config(tls)
        .expect("a valid TLS configuration");
    grpc_server(addr, false, server)
}

/// Serves the profiles service with `server` (plain or TLS) on `addr`.
fn grpc_server(addr: SocketAddr, partial: bool, mut server: tonic::transport::Server) -> Receiver {
    let rt = runtime();
    let listener = bind(&rt, addr);
    let addr = listener.local_addr().unwrap();
    let store: Store = Arc::default();
    let service = ProfilesServiceServer::new(GrpcService {
        store: Arc::clone(&store),
        partial,
    })
    .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
    .max_decoding_message_size(64 * 1024 * 1024);
    rt.spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        if let Err(err) = server
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            eprintln!("test gRPC receiver stopped: {err}");
        }
    });
    Receiver {
        addr,
        store,
        runtime: Some(rt),
    }
}

/// An OTLP/HTTP receiver on `addr` at `/v1development/profiles`.
#[must_use]
pub fn http(addr: SocketAddr) -> Receiver {
    let rt = runtime();
    let listener = bind(&rt, addr);
    let addr = listener.local_addr().unwrap();
    serve_http(rt, listener, addr)
}

/// An OTLP/HTTP receiver that only speaks TLS (HTTPS), with the given PEM certificate chain and
/// key.
#[must_use]
pub fn http_tls(addr: SocketAddr, cert_pem: &[u8], key_pem: &[u8]) -> Receiver {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("a PEM certificate chain");
    let key = PrivateKeyDer::from_pem_slice(key_pem).expect("a PEM private key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("a valid certificate and key");
    let rt = runtime();
    let tcp = bind(&rt, addr);
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    serve_http(rt, listener, addr)
}

/// Accepts TCP connections and completes their TLS handshakes; a failed handshake (a client
/// that does not trust the certificate) drops that connection only.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // Handshakes are taken one at a time: a client that stalls is given up on.
            match tokio::time::timeout(Duration::from_secs(5), self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(err)) => {
                    eprintln!("test HTTPS receiver: handshake with {peer} failed: {err}");
                }
                Err(_) => eprintln!("test HTTPS receiver: handshake with {peer} timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Serves the HTTP routes on `listener` (plain or TLS, at `addr`) from `rt`.
fn serve_http<L>(rt: tokio::runtime::Runtime, listener: L, addr: SocketAddr) -> Receiver
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let store: Store = Arc::default();
    let handler_store = Arc::clone(&store);
    let app = axum::Router::new().route(
        "/v1development/profiles",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = Arc::clone(&handler_store);
            async move { http_export(&store, &headers, &body) }
        }),
    );
    rt.spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            eprintln!("test HTTP receiver stopped: {err}");
        }
    });
    Receiver {
        addr,
        store,
        runtime: Some(rt),
    }
}

fn http_export(store: &Store, headers: &HeaderMap, body: &[u8]) -> (StatusCode, Vec<u8>) {
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-protobuf") {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
    }
    let encoding = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = if encoding.as_deref() == Some("gzip") {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .is_err()
        {
            return (StatusCode::BAD_REQUEST, Vec::new());
        }
        out
    } else {
        body.to_vec()
    };
    let Ok(request) = ExportProfilesServiceRequest::decode(bytes.as_slice()) else {
        return (StatusCode::BAD_REQUEST, Vec::new());
    };
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    store.lock().unwrap().push(Capture {
        request,
        bytes,
        headers,
        encoding,
    });
    (
        StatusCode::OK,
        ExportProfilesServiceResponse::default().encode_to_vec(),
    )
}

/// A loopback address with a port nobody listens on (bound, then released).
#[must_use]
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
