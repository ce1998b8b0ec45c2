//! OTLP profiles export: encoding (`encode`, with its `dictionary` and the converted-size
//! `budget`), the bounded queue of requests (`queue`), the gRPC
//! and HTTP transports (`transport`) and the sending loop with retries (`sender`).

mod budget;
mod dictionary;
pub mod encode;
pub mod probe;
pub mod queue;
pub mod sender;
mod tls;
pub mod transport;

pub use encode::{EncodeOptions, Labels, encode, service_name};
pub use queue::{EncodedRequest, RequestQueue};
pub use sender::{ExportStats, Observers, send_loop};
pub use transport::{Transport, TransportError};
