//! A lab with natlb running in its gateway: shared by the end-to-end test files.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lab::{self, Lab, LabOptions, Process, ServerHandle, Signal};

pub const NATLB: &str = env!("CARGO_BIN_EXE_natlb");
pub const T: Duration = Duration::from_secs(2);

pub struct Gateway {
    // Field order is drop order: natlb and the servers go before their namespaces.
    pub natlb: Option<Process>,
    /// The TCP (port 8080) and UDP (port 5353) server of each backend, by backend index.
    pub servers: Vec<(Option<ServerHandle>, Option<ServerHandle>)>,
    pub config: PathBuf,
    pub lab: Lab,
}

impl Gateway {
    /// A lab with 3 backends, each serving TCP 8080 and UDP 5353 as "be{i}", and natlb
    /// running with the config `config(lab dir)`.
    pub fn new(config: impl Fn(&Path) -> String) -> Gateway {
        let mut g = Gateway::new_stopped(config);
        g.start();
        g
    }

    /// Like [`Gateway::new`], but natlb is not started yet: call [`Gateway::start`].
    pub fn new_stopped(config: impl Fn(&Path) -> String) -> Gateway {
        let lab = Lab::new(LabOptions { backends: 3 });
        let servers = (0..3)
            .map(|i| {
                (
                    Some(lab.start_tcp_server(i, 8080, &format!("be{i}"))),
                    Some(lab.start_udp_server(i, 5353, &format!("be{i}"))),
                )
            })
            .collect();
        let config = lab.write_file("natlb.toml", &config(lab.dir()));
        Gateway {
            natlb: None,
            servers,
            config,
            lab,
        }
    }

    /// Stops backend `i`'s TCP server: connections to it are refused.
    pub fn stop_tcp(&mut self, i: usize) {
        self.servers[i].0 = None;
    }

    pub fn start_tcp(&mut self, i: usize) {
        self.servers[i].0 = Some(self.lab.start_tcp_server(i, 8080, &format!("be{i}")));
    }

    /// Waits until natlb's log holds `needle` `count` times or more.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        lab::wait_until(timeout, Duration::from_millis(20), || {
            self.log().matches(needle).count() >= count
        })
    }

    /// Starts `natlb run` and waits until it says it runs.
    pub fn start(&mut self) {
        let p = self.lab.spawn_in(
            self.lab.gateway_ns(),
            &[NATLB, "run", "-c", self.config.to_str().unwrap()],
        );
        let up = lab::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            p.stderr_text().contains("natlb is running")
        });
        assert!(up, "natlb did not start:\n{}", p.stderr_text());
        self.natlb = Some(p);
    }

    pub fn log(&self) -> String {
        self.natlb.as_ref().unwrap().stderr_text()
    }

    /// `nft list table inet natlb`, with counter values blanked: traffic changes those.
    pub fn table(&self) -> String {
        let listing = self.lab.exec_ok(
            self.lab.gateway_ns(),
            &["nft", "list", "table", "inet", "natlb"],
        );
        blank_counters(&listing)
    }

    /// Rewrites the config, sends SIGHUP and waits for the log line that ends the reload.
    pub fn reload(&self, text: &str, expect: &str) {
        let before = self.log().matches(expect).count();
        std::fs::write(&self.config, text).unwrap();
        self.natlb.as_ref().unwrap().signal(Signal::SIGHUP);
        let done = lab::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            self.log().matches(expect).count() > before
        });
        assert!(done, "no {expect:?} after SIGHUP:\n{}", self.log());
    }

    /// Opens `n` new TCP connections to `vip` and counts the answers per backend id.
    pub fn tcp_shares(&self, vip: &str, n: usize) -> HashMap<String, usize> {
        let vip: SocketAddr = vip.parse().unwrap();
        self.lab.in_client(|| {
            let mut counts = HashMap::new();
            for _ in 0..n {
                let line =
                    lab::tcp_request(vip, T).unwrap_or_else(|e| panic!("TCP to {vip} failed: {e}"));
                let (id, _) = lab::parse_reply(&line).unwrap();
                *counts.entry(id).or_insert(0) += 1;
            }
            counts
        })
    }

    /// `n` client source addresses, 198.51.100.100 and up, added to the client namespace.
    pub fn clients(&self, n: u8) -> Vec<IpAddr> {
        (0..n)
            .map(|i| {
                let ip = Ipv4Addr::new(198, 51, 100, 100 + i);
                self.lab.add_client_address(&format!("{ip}/24"));
                IpAddr::V4(ip)
            })
            .collect()
    }

    /// Which backend each client reaches at `vip`, over `tries` new connections each; panics
    /// (with `context()` in the message) if one client's connections disagree.
    pub fn backend_per_client(
        &self,
        vip: &str,
        clients: &[IpAddr],
        tries: usize,
        context: impl Fn() -> String,
    ) -> BTreeMap<IpAddr, String> {
        let vip: SocketAddr = vip.parse().unwrap();
        clients
            .iter()
            .map(|&src| {
                let ids: Vec<String> = (0..tries)
                    .map(|_| {
                        let line = self
                            .lab
                            .tcp_request_from(src, vip, T)
                            .unwrap_or_else(|e| panic!("TCP from {src}: {e}"));
                        lab::parse_reply(&line).unwrap().0
                    })
                    .collect();
                assert!(
                    ids.iter().all(|id| *id == ids[0]),
                    "client {src} reached {ids:?}\n{}",
                    context()
                );
                (src, ids[0].clone())
            })
            .collect()
    }

    /// The source address the backend saw for one connection to `vip`.
    pub fn peer_seen(&self, vip: &str) -> IpAddr {
        let line = self.lab.tcp_request(vip.parse().unwrap(), T).unwrap();
        lab::parse_reply(&line).unwrap().1.ip()
    }
}

pub fn blank_counters(listing: &str) -> String {
    let mut out = Vec::new();
    let mut words = listing.split(' ').peekable();
    while let Some(w) = words.next() {
        out.push(w.to_string());
        if (w == "packets" || w == "bytes")
            && let Some(n) = words.next()
        {
            let digits = n.trim_end_matches(|c: char| !c.is_ascii_digit()).len();
            out.push(format!("N{}", &n[digits..]));
        }
    }
    out.join(" ")
}

/// Asserts two listings are equal, printing only the lines that differ.
pub fn assert_same_table(a: &str, b: &str) {
    if a != b {
        let only_a: Vec<_> = a.lines().filter(|l| !b.contains(l)).collect();
        let only_b: Vec<_> = b.lines().filter(|l| !a.contains(l)).collect();
        panic!("tables differ\nonly before: {only_a:#?}\nonly after: {only_b:#?}");
    }
}

pub fn share(counts: &HashMap<String, usize>, id: &str) -> f64 {
    let total: usize = counts.values().sum();
    *counts.get(id).unwrap_or(&0) as f64 / total as f64
}

/// A minimal HTTP server in a backend namespace answering every request with the status in
/// `status` (changeable while it runs). Stops when dropped.
pub struct HttpServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    pub fn start(
        ns: &str,
        port: u16,
        status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    ) -> HttpServer {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, flag) = (ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            lab::enter_netns(&ns);
            let l = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind http");
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                        let mut buf = [0u8; 2048];
                        let _ = c.read(&mut buf);
                        let code = status.load(Ordering::Relaxed);
                        let _ = write!(
                            c,
                            "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        ready_rx.recv().expect("http server started");
        HttpServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
