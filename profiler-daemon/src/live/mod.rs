//! The live page (`profiler run --ui-address 127.0.0.1:9741`): a flamegraph of the last minutes
//! in a browser, with no backend. Each closed window is kept as names (`history`, bounded in
//! age and stacks), aggregated on the server for each view (`query`), and served with the page
//! (`server`; the page's HTML, script and style are embedded in the binary).

pub mod history;
pub mod query;
pub mod server;

pub use history::{History, Window};
pub use server::{LiveServerError, LiveState};
