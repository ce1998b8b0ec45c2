//! OTLP profiles export: encoding (`encode`), the bounded queue of requests (`queue`), the gRPC
//! and HTTP transports (`transport`) and the sending loop with retries (`sender`).

pub mod encode;
pub mod queue;
pub mod sender;
pub mod transport;

pub use encode::{EncodeOptions, encode};
pub use queue::RequestQueue;
pub use sender::{ExportStats, Observers, send_loop};
pub use transport::{Transport, TransportError};
