//! Probes: one check of one backend, bounded by a timeout. Each returns whether the backend
//! passed and a short detail for the log ("connection refused", "HTTP 503", ...).
//!
//! Probes are ordinary sockets of the daemon, so they leave from the gateway's own address
//! toward the backend's real address: they never go through a VIP.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout};

use crate::model::HealthKind;

/// The most of an HTTP answer a probe reads: enough for any status line and headers.
const HTTP_READ_LIMIT: usize = 16 * 1024;
/// The most of a reply or of a command's output kept for the log.
const DETAIL_LIMIT: usize = 120;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub detail: String,
    pub latency: Duration,
}

/// What one probe checks.
#[derive(Debug, Clone)]
pub struct Target {
    pub service: String,
    /// The backend's address with the health port, if one is set.
    pub addr: SocketAddr,
}

/// Runs one probe of `target` as `kind` says, for at most `limit`.
pub async fn probe(kind: &HealthKind, target: &Target, limit: Duration) -> Outcome {
    let started = Instant::now();
    let result = timeout(limit, check(kind, target)).await;
    let latency = started.elapsed();
    let (ok, detail) = match result {
        Ok(Ok(detail)) => (true, detail),
        Ok(Err(detail)) => (false, detail),
        Err(_) => (false, format!("no answer within {limit:?}")),
    };
    Outcome {
        ok,
        detail,
        latency,
    }
}

fn short(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    let mut end = line.len().min(DETAIL_LIMIT);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}

async fn check(kind: &HealthKind, t: &Target) -> Result<String, String> {
    match kind {
        HealthKind::None => Ok("no probe".into()),
        HealthKind::Tcp => {
            super::tcp_connect::connect_check(t.addr)
                .await
                .map_err(|e| format!("TCP connect to {}: {e}", t.addr))?;
            Ok(format!("TCP connect to {} accepted", t.addr))
        }
        HealthKind::Http {
            path,
            host,
            expect_status,
        } => http(t.addr, path, host.as_deref(), expect_status).await,
        HealthKind::Udp { payload } => udp(t.addr, payload).await,
        HealthKind::Exec { command } => exec(command, t).await,
    }
}

/// Closes a probe connection with a reset instead of a FIN: the gateway keeps no TIME_WAIT
/// socket and conntrack drops the entry after its short CLOSE timeout (10 s) instead of
/// TIME_WAIT's 120 s. At ten thousand probes a second that is the difference between 100k and
/// 1.2M conntrack entries spent on probes. HAProxy closes its checks the same way.
fn close_with_reset(conn: TcpStream) {
    // tokio deprecates SO_LINGER because a non-zero linger blocks in close(); a zero linger
    // never blocks: close() sends the reset and returns.
    #[allow(deprecated)]
    let _ = conn.set_linger(Some(Duration::ZERO));
    drop(conn);
}

async fn http(
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
    expect: &[(u16, u16)],
) -> Result<String, String> {
    let mut conn = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("HTTP connect to {addr}: {e}"))?;
    let host = host.map_or_else(|| addr.to_string(), str::to_string);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: natlb-health\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("HTTP request to {addr}: {e}"))?;
    // Read until the status line is complete; the body is never needed.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.contains(&b'\n') && buf.len() < HTTP_READ_LIMIT {
        let n = conn
            .read(&mut chunk)
            .await
            .map_err(|e| format!("HTTP answer from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    close_with_reset(conn);
    let text = String::from_utf8_lossy(&buf);
    let status_line = short(&text);
    let code = status_line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer from {addr}: {status_line:?}"))?;
    if expect.iter().any(|&(lo, hi)| (lo..=hi).contains(&code)) {
        Ok(format!("GET {path}: {status_line}"))
    } else {
        Err(format!("GET {path}: {status_line}"))
    }
}

async fn udp(addr: SocketAddr, payload: &[u8]) -> Result<String, String> {
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("UDP socket: {e}"))?;
    // A connected socket receives the ICMP unreachable as ECONNREFUSED.
    sock.connect(addr)
        .await
        .map_err(|e| format!("UDP to {addr}: {e}"))?;
    sock.send(payload)
        .await
        .map_err(|e| format!("UDP send to {addr}: {e}"))?;
    let mut buf = [0u8; 1500];
    match sock.recv(&mut buf).await {
        Ok(n) => Ok(format!("UDP reply of {n} bytes from {addr}")),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(format!("UDP to {addr}: port unreachable"))
        }
        Err(e) => Err(format!("UDP from {addr}: {e}")),
    }
}

async fn exec(command: &[String], t: &Target) -> Result<String, String> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "exec probe without a command".to_string())?;
    let child = tokio::process::Command::new(program)
        .args(args)
        .env("NATLB_SERVICE", &t.service)
        .env("NATLB_BACKEND_IP", t.addr.ip().to_string())
        .env("NATLB_BACKEND_PORT", t.addr.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // At the timeout the probe's future is dropped, and with it the child: killed.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    let said = if out.stdout.is_empty() {
        short(&String::from_utf8_lossy(&out.stderr))
    } else {
        short(&String::from_utf8_lossy(&out.stdout))
    };
    let detail = format!(
        "{program} exited with {}{}",
        out.status,
        if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        }
    );
    if out.status.success() {
        Ok(detail)
    } else {
        Err(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn target(addr: SocketAddr) -> Target {
        Target {
            service: "web".into(),
            addr,
        }
    }

    async fn http_server(answer: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.starts_with("GET /health HTTP/1.1\r\n"), "{req}");
                assert!(req.contains("\r\nHost: "), "{req}");
                let _ = c.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    fn http_kind(expect: Vec<(u16, u16)>) -> HealthKind {
        HealthKind::Http {
            path: "/health".into(),
            host: None,
            expect_status: expect,
        }
    }

    #[tokio::test]
    async fn http_status_decides() {
        let ok = http_server("HTTP/1.1 204 No Content\r\n\r\n").await;
        let bad =
            http_server("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").await;
        let t = Duration::from_secs(2);
        let o = probe(&http_kind(vec![(200, 399)]), &target(ok), t).await;
        assert!(o.ok, "{o:?}");
        let o = probe(&http_kind(vec![(200, 399)]), &target(bad), t).await;
        assert!(!o.ok && o.detail.contains("503"), "{o:?}");
        let o = probe(&http_kind(vec![(503, 503)]), &target(bad), t).await;
        assert!(o.ok, "expect_status 503: {o:?}");
    }

    #[tokio::test]
    async fn tcp_refused_and_accepted() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = l.local_addr().unwrap();
        let o = probe(&HealthKind::Tcp, &target(open), Duration::from_secs(2)).await;
        assert!(o.ok, "{o:?}");
        // Closed with a reset: no TIME_WAIT socket is left behind on the prober's side.
        let (conn, _) = l.accept().await.unwrap();
        drop(conn);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ss = std::process::Command::new("ss")
            .args([
                "-tanH",
                "state",
                "time-wait",
                &format!("( dport = :{} )", open.port()),
            ])
            .output()
            .expect("ss (iproute2)");
        assert_eq!(
            String::from_utf8_lossy(&ss.stdout).trim(),
            "",
            "TIME_WAIT left"
        );
        drop(l);
        let o = probe(&HealthKind::Tcp, &target(open), Duration::from_secs(2)).await;
        assert!(!o.ok && o.detail.contains("refused"), "{o:?}");
    }

    #[tokio::test]
    async fn udp_reply_unreachable_and_silence() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((n, peer)) = server.recv_from(&mut buf).await {
                if &buf[..n] == b"ping" {
                    let _ = server.send_to(b"pong", peer).await;
                }
            }
        });
        let t = Duration::from_millis(500);
        let o = probe(
            &HealthKind::Udp {
                payload: b"ping".to_vec(),
            },
            &target(addr),
            t,
        )
        .await;
        assert!(o.ok, "{o:?}");
        let o = probe(
            &HealthKind::Udp {
                payload: b"other".to_vec(),
            },
            &target(addr),
            t,
        )
        .await;
        assert!(!o.ok && o.detail.contains("no answer"), "{o:?}");
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let o = probe(
            &HealthKind::Udp {
                payload: b"ping".to_vec(),
            },
            &target(closed_addr),
            t,
        )
        .await;
        assert!(!o.ok && o.detail.contains("unreachable"), "{o:?}");
    }

    #[tokio::test]
    async fn exec_exit_status_env_and_timeout() {
        let sh = |script: &str| HealthKind::Exec {
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        };
        let t = target("192.0.2.7:8080".parse().unwrap());
        let o = probe(&sh("test \"$NATLB_BACKEND_IP:$NATLB_BACKEND_PORT $NATLB_SERVICE\" = '192.0.2.7:8080 web' && echo fine"), &t, Duration::from_secs(5)).await;
        assert!(o.ok && o.detail.contains("fine"), "{o:?}");
        let o = probe(&sh("echo broken >&2; exit 3"), &t, Duration::from_secs(5)).await;
        assert!(!o.ok && o.detail.contains("broken"), "{o:?}");
        let started = std::time::Instant::now();
        let o = probe(&sh("sleep 30"), &t, Duration::from_millis(200)).await;
        assert!(!o.ok && o.detail.contains("no answer"), "{o:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the command was not killed"
        );
    }
}
