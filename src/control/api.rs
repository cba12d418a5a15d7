//! The control API's messages: JSON bodies of HTTP/1.1 requests on the control socket.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /v1/status` | | [`Status`] |
//! | `POST /v1/drain` | [`BackendRef`] | [`AdminAnswer`] |
//! | `POST /v1/enable` | [`BackendRef`] | [`AdminAnswer`] |
//! | `POST /v1/weight` | [`WeightRequest`] | [`AdminAnswer`] |
//! | `POST /v1/reload` | | [`ReloadAnswer`] |
//!
//! Errors are an HTTP status (400 a malformed request, 404 an unknown service or backend, 409
//! a config that does not validate, 500 a change the kernel refused) with [`ErrorAnswer`].
//! The status document is stable: fields are only ever added, and `schema` changes when one
//! changes meaning.

use serde::{Deserialize, Serialize};

/// The version of the status document's shape.
pub const STATUS_SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub schema: u32,
    pub version: String,
    /// The nftables table natlb owns (family inet).
    pub table: String,
    /// When natlb made this document, RFC 3339 UTC.
    pub time: String,
    /// The kernel's conntrack table: entries now and its size; `null` if it cannot be read.
    pub conntrack: Option<ConntrackFill>,
    pub services: Vec<ServiceStatus>,
    /// What natlb could not read for this document (its fields are `null`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackFill {
    pub count: u64,
    pub max: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `198.51.100.10:80` or `[2001:db8::10]:80`.
    pub listen: String,
    pub protocol: String,
    pub scheduler: String,
    /// The size of the service's slot table now; 0 while no backend takes new connections.
    pub slots: u32,
    /// Sums of the backends' figures.
    pub connections: Option<u64>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: String,
    pub backup: bool,
    /// `up`, `down`, `unknown` (no probe has answered yet) or `unprobed` (`health.type = "none"`).
    pub health: String,
    pub last_probe: Option<ProbeResult>,
    /// `enabled` or `drained`.
    pub admin: String,
    /// The weight in the config.
    pub weight: u32,
    /// The weight `natlb weight` set, which replaces `weight`.
    pub admin_weight: Option<u32>,
    /// The weight installed now: 0 when the backend takes no new connections (down, drained,
    /// an idle backup); `least-conn` services' re-weighted value.
    pub effective_weight: u32,
    /// Slots of the service's table the backend holds, and their share of the table.
    pub slots: u32,
    pub share: f64,
    /// Live connections through the VIP to this backend (conntrack: TCP up to ESTABLISHED,
    /// UDP while conntrack keeps the flow).
    pub connections: Option<u64>,
    /// New connections sent to this backend by its slots, and their first packets' bytes:
    /// the slot map's element counters (the NAT chains see a connection's first packet only;
    /// connections of a sticky client's remembered backend are not counted). Monotonic while
    /// natlb runs.
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub ok: bool,
    /// What the probe saw ("HTTP 200", "connection refused", ...).
    pub detail: String,
    /// RFC 3339 UTC.
    pub time: String,
    pub latency_ms: f64,
}

/// Names a backend: a service's name and the backend's address (`10.0.1.11:8080`, or only
/// the IP address when one backend of the service has it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRef {
    pub service: String,
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightRequest {
    pub service: String,
    pub backend: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminAnswer {
    pub service: String,
    /// The backend's full address.
    pub backend: String,
    pub admin: String,
    /// The weight in force (the config's, or the one `natlb weight` set).
    pub weight: u32,
    /// Whether anything changed (false: it was so already).
    pub changed: bool,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAnswer {
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: String,
}

/// A failed request: the HTTP status and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal {
            status: 400,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Refusal {
        Refusal {
            status: 404,
            message: message.into(),
        }
    }

    pub fn conflict(message: impl Into<String>) -> Refusal {
        Refusal {
            status: 409,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Refusal {
        Refusal {
            status: 500,
            message: message.into(),
        }
    }
}

/// An RFC 3339 UTC time, to the millisecond.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
