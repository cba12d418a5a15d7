//! Health: probes, their hysteresis, and the engine that runs them. The daemon turns the
//! engine's reports into element deltas (see `render::service_elements`).

pub mod board;
pub mod engine;
pub mod probe;
pub mod probe_log;
pub mod state;
pub mod store;
pub mod tcp_connect;

pub use board::Board;
pub use engine::{BackendKey, Engine, Report};
pub use probe_log::{LastProbe, ProbeLog};
pub use state::State;
