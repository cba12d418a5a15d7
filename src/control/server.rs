//! The HTTP side of the control socket and of the metrics endpoint. Requests become
//! [`Command`]s for the daemon's loop, which owns all state; the kernel's figures are read on a
//! blocking thread so a status request never stalls the loop.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::api::{AdminAnswer, BackendRef, ErrorAnswer, Refusal, ReloadAnswer, WeightRequest};
use super::figures::{self, Figures};
use super::status::{self, Capture, Snapshot};
use crate::admin::AdminChange;
use crate::metrics::Metrics;

/// What the daemon's loop is asked to do.
pub enum Command {
    /// The daemon only captures its state; the document is made off its loop.
    Status(oneshot::Sender<Capture>),
    Admin {
        target: BackendRef,
        change: AdminChange,
        reply: oneshot::Sender<Result<AdminAnswer, Refusal>>,
    },
    Reload(oneshot::Sender<Result<ReloadAnswer, Refusal>>),
}

/// What the servers' tasks share.
pub struct Shared {
    pub commands: mpsc::UnboundedSender<Command>,
    pub figures: Figures,
    pub metrics: Arc<Metrics>,
}

/// The largest request body natlb reads (a request names a backend and a weight).
const BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "another process serves the control socket {0} (is natlb already running?); stop it, or \
         give this one another daemon.control_socket"
    )]
    InUse(PathBuf),
    #[error(
        "{0} exists and is not a socket; natlb will not remove it: move it away or choose another daemon.control_socket"
    )]
    NotASocket(PathBuf),
    #[error(
        "control_group \"{0}\" does not exist on this machine; create it (groupadd {0}) or remove control_group"
    )]
    NoGroup(String),
    #[error(
        "cannot give the control socket {path} to control_group: {err} (natlb needs CAP_CHOWN \
         for that, or to run with that group as its own: systemd's Group=)"
    )]
    Chown { path: PathBuf, err: std::io::Error },
    #[error("cannot {what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ServeError + 'a {
    move |err| ServeError::Io {
        what,
        path: path.to_path_buf(),
        err,
    }
}

/// Binds the control socket: mode 0600 (root only), or 0660 owned by `group`. A socket left by
/// a natlb that died is replaced; one a live process serves is not.
///
/// The mode is set by the umask at bind time, so there is no moment when the socket is open
/// to others. Call it before natlb starts threads (the umask is per process).
pub fn bind_control(path: &Path, group: Option<&str>) -> Result<UnixListener, ServeError> {
    let gid = match group {
        None => None,
        Some(g) => Some(
            nix::unistd::Group::from_name(g)
                .map_err(|e| ServeError::Io {
                    what: "look up the group of",
                    path: path.to_path_buf(),
                    err: e.into(),
                })?
                .ok_or_else(|| ServeError::NoGroup(g.to_string()))?
                .gid,
        ),
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io("remove the stale socket", path))?;
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_path_buf())),
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create the directory of", path))?;
    }
    let mask = if gid.is_some() { 0o117 } else { 0o177 };
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io("bind", path))?;
    if let Some(gid) = gid {
        let given = nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| ServeError::Chown {
                path: path.to_path_buf(),
                err: e.into(),
            })
            .and_then(|()| {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                    .map_err(io("set the mode of", path))
            });
        if let Err(e) = given {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    }
    Ok(listener)
}

/// A listening socket the servers accept connections from.
pub trait Accept {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// Serves the control API on the control socket.
pub async fn serve_control(listener: UnixListener, shared: Arc<Shared>) {
    serve("control socket", listener, shared, control).await
}

/// Serves `GET /metrics`.
pub async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>) {
    serve("metrics", listener, shared, metrics).await
}

/// Answers HTTP/1.1 on every connection `listener` accepts with `handler`, forever.
async fn serve<L, F, Fut>(what: &'static str, listener: L, shared: Arc<Shared>, handler: F)
where
    L: Accept,
    F: Fn(Request<Incoming>, Arc<Shared>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Answer, hyper::Error>> + Send + 'static,
{
    loop {
        let stream = match listener.accept_io().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                warn!("{what}: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handler(req, shared.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!("{what}: connection ended: {e}");
            }
        });
    }
}

type Answer = Response<Full<Bytes>>;

fn json(status: u16, body: &impl serde::Serialize) -> Answer {
    let mut text = serde_json::to_vec_pretty(body).expect("plain data serializes");
    text.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .expect("a valid response")
}

fn refused(r: Refusal) -> Answer {
    json(r.status, &ErrorAnswer { error: r.message })
}

fn daemon_gone() -> Refusal {
    Refusal::failed("natlb is stopping")
}

/// The status document with the kernel's figures, turned into an answer by `answer`: all of
/// it on a blocking thread, since at tens of thousands of services each step takes from
/// milliseconds to seconds. The daemon's loop only captures its state.
async fn status<R: Send + 'static>(
    shared: &Arc<Shared>,
    answer: impl FnOnce(&Snapshot, &Shared) -> R + Send + 'static,
) -> Result<R, Refusal> {
    let (tx, rx) = oneshot::channel();
    shared
        .commands
        .send(Command::Status(tx))
        .map_err(|_| daemon_gone())?;
    let capture = rx.await.map_err(|_| daemon_gone())?;
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut snap = status::snapshot(&capture, &shared.metrics.probe_log);
        drop(capture);
        figures::fill(&mut snap, &shared.figures);
        answer(&snap, &shared)
    })
    .await
    .map_err(|e| Refusal::failed(format!("making the status failed: {e}")))
}

async fn body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Refusal> {
    let bytes = Limited::new(req.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| Refusal::bad_request(format!("cannot read the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        Refusal::bad_request(format!("the request body is not what natlb expects: {e}"))
    })
}

async fn ask<T>(
    shared: &Arc<Shared>,
    command: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Command,
) -> Result<T, Refusal> {
    let (tx, rx) = oneshot::channel();
    shared
        .commands
        .send(command(tx))
        .map_err(|_| daemon_gone())?;
    rx.await.map_err(|_| daemon_gone())?
}

async fn control(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Answer, hyper::Error> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let admin = |target: BackendRef, change| {
        move |reply| Command::Admin {
            target,
            change,
            reply,
        }
    };
    let answer = match (&method, path.as_str()) {
        (&Method::GET, "/v1/status") => status(&shared, |s, _| json(200, &s.status)).await,
        (&Method::POST, "/v1/drain") => match body::<BackendRef>(req).await {
            Ok(t) => ask(&shared, admin(t, AdminChange::Drain))
                .await
                .map(|a| json(200, &a)),
            Err(e) => Err(e),
        },
        (&Method::POST, "/v1/enable") => match body::<BackendRef>(req).await {
            Ok(t) => ask(&shared, admin(t, AdminChange::Enable))
                .await
                .map(|a| json(200, &a)),
            Err(e) => Err(e),
        },
        (&Method::POST, "/v1/weight") => match body::<WeightRequest>(req).await {
            Ok(w) => {
                let target = BackendRef {
                    service: w.service,
                    backend: w.backend,
                };
                ask(&shared, admin(target, AdminChange::Weight(w.weight)))
                    .await
                    .map(|a| json(200, &a))
            }
            Err(e) => Err(e),
        },
        (&Method::POST, "/v1/reload") => ask(&shared, Command::Reload)
            .await
            .map(|a: ReloadAnswer| json(200, &a)),
        (_, "/v1/status" | "/v1/drain" | "/v1/enable" | "/v1/weight" | "/v1/reload") => {
            Err(Refusal {
                status: 405,
                message: format!(
                    "{method} is not allowed on {path}; GET /v1/status, POST the others"
                ),
            })
        }
        _ => Err(Refusal::not_found(format!(
            "no such request: {method} {path}; natlb answers GET /v1/status and POST /v1/drain, \
             /v1/enable, /v1/weight, /v1/reload"
        ))),
    };
    Ok(answer.unwrap_or_else(refused))
}

async fn metrics(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Answer, hyper::Error> {
    let text = |status: u16, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return Ok(text(
            404,
            "text/plain; charset=utf-8",
            "natlb serves its metrics at GET /metrics\n".into(),
        ));
    }
    let exposition = status(&shared, |snap, shared| shared.metrics.encode(&snap.status)).await;
    Ok(match exposition {
        Ok(body) => text(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        Err(e) => text(503, "text/plain; charset=utf-8", format!("{}\n", e.message)),
    })
}
