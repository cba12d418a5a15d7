//! The control socket: the operator's way into the running daemon (`natlb status`, `drain`,
//! `enable`, `weight`, `reload`), as JSON over HTTP/1.1 on a unix socket, so that
//! `curl --unix-socket /run/natlb/control.sock http://natlb/v1/status` works too. The same
//! server code answers Prometheus at `daemon.metrics`.
//!
//! - `api`: the messages (the stable, documented JSON).
//! - `status`: the status document from the daemon's state (pure).
//! - `figures`: the kernel's figures added to it (conntrack, slot counters).
//! - `server`, `client`: the two ends of the socket.

pub mod api;
pub mod client;
pub mod figures;
pub mod server;
pub mod status;
