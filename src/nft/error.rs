//! Errors of the netlink layer: each says what natlb was doing and what the kernel said.

use std::fmt;

/// One error the kernel returned for one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    pub errno: i32,
    /// What the failing message was for ("add 812 elements to map slots4 ...").
    pub purpose: String,
    /// The kernel's extended ack message, when it gave one.
    pub detail: Option<String>,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (errno {})",
            self.purpose,
            std::io::Error::from_raw_os_error(self.errno),
            self.errno
        )?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        if self.errno == libc::EPERM {
            f.write_str(" (natlb needs CAP_NET_ADMIN in this network namespace: run it as root)")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "cannot open a netlink socket to nf_tables: {0} (natlb needs CAP_NET_ADMIN, usually root)"
    )]
    Open(std::io::Error),
    #[error("netlink I/O failed while {doing}: {source}")]
    Io {
        doing: String,
        source: std::io::Error,
    },
    #[error("the kernel rejected the batch ({} error(s)); nothing was changed:\n  {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Rejected(Vec<KernelError>),
    #[error("the kernel's reply could not be read: {0}")]
    Protocol(String),
}

impl NftError {
    pub fn io(doing: impl Into<String>, source: std::io::Error) -> NftError {
        NftError::Io {
            doing: doing.into(),
            source,
        }
    }
}
