//! The CLI's side of the control socket: one HTTP/1.1 request per call.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::ErrorAnswer;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no control socket at {0}: is natlb running, and is this its socket? (natlb finds it \
         in the config given with -c, default /etc/natlb/natlb.toml, or take --socket PATH)"
    )]
    NoSocket(PathBuf),
    #[error(
        "permission denied on the control socket {0}: run as root, or as a member of the \
         config's daemon.control_group"
    )]
    Denied(PathBuf),
    #[error("nothing answers on the control socket {0}: natlb is not running (a stale socket)")]
    Refused(PathBuf),
    #[error("cannot talk to natlb on {path}: {err}")]
    Io { path: PathBuf, err: String },
    /// natlb answered with an error.
    #[error("{message}")]
    Answer { status: u16, message: String },
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, None::<&()>)
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        self.call("POST", path, body)
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(|b| serde_json::to_vec(b).expect("plain data serializes"))
            .unwrap_or_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| self.io(e))?;
        let (status, bytes) = rt.block_on(self.exchange(method, path, body))?;
        if (200..300).contains(&status) {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Io {
                path: self.socket.clone(),
                err: format!("natlb's answer is not what this natlb expects: {e}"),
            })
        } else {
            let message = serde_json::from_slice::<ErrorAnswer>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            Err(ClientError::Answer { status, message })
        }
    }

    fn io(&self, e: impl ToString) -> ClientError {
        ClientError::Io {
            path: self.socket.clone(),
            err: e.to_string(),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ClientError::NoSocket(self.socket.clone()),
                std::io::ErrorKind::PermissionDenied => ClientError::Denied(self.socket.clone()),
                std::io::ErrorKind::ConnectionRefused => ClientError::Refused(self.socket.clone()),
                _ => self.io(e),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.io(e))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "natlb")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        let resp = sender.send_request(req).await.map_err(|e| self.io(e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.io(e))?
            .to_bytes();
        Ok((status, bytes))
    }
}
