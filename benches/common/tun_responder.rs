//! Remote TCP backends without remote hosts: a TUN device in the gateway's namespace carries a
//! whole address range, and one thread of the benchmark answers every SYN that comes out of it
//! with a SYN-ACK (or, for a blocked address, a reset), as a listening host would.
//!
//! Why not backends in another namespace: the kernel's work for the backends' side (SYN queue,
//! accept, child sockets, waking the server) then runs in the prober's context and is charged
//! to it, and steering it to another CPU with RPS costs an inter-processor interrupt per packet,
//! which in a virtual machine costs more than the work it moves. Through a TUN device the
//! gateway does exactly what it does with a real network: it sends the SYN, handles the SYN-ACK
//! (in the context of the thread that writes it, here), answers with its ACK and then the
//! probe's reset. Only SYNs are answered; ACKs and resets are read and dropped. The thread
//! polls the device on a short sleep instead of waiting on it, so that no transmit has to wake
//! it (see the loop).

use std::collections::HashSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// How long the responder sleeps when the TUN device has nothing to read.
const POLL_PAUSE: Duration = Duration::from_micros(500);

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

pub struct Responder {
    stop: Arc<AtomicBool>,
    syns: Arc<AtomicU64>,
    blocked: Arc<Mutex<HashSet<Ipv4Addr>>>,
    pub tid: i32,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    /// Creates TUN device `name` with `local` and `peer` (a point-to-point pair) in the network
    /// namespace at `ns_path`, and answers SYNs to `port` on its own thread (pinned to `cpu`).
    /// The caller routes the backends' range to the device.
    pub fn start(
        ns_path: &str,
        name: &str,
        local: Ipv4Addr,
        peer: Ipv4Addr,
        port: u16,
        cpu: Option<usize>,
    ) -> Result<Responder, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let syns = Arc::new(AtomicU64::new(0));
        let blocked = Arc::new(Mutex::new(HashSet::new()));
        let (tx, rx) = mpsc::channel();
        let (stop2, syns2, blocked2) = (stop.clone(), syns.clone(), blocked.clone());
        let (path, name) = (ns_path.to_string(), name.to_string());
        let thread = std::thread::spawn(move || {
            let setup = || -> Result<tun::Device, String> {
                let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
                if let Some(cpu) = cpu {
                    super::pin_to(cpu)?;
                }
                let mut config = tun::Configuration::default();
                config
                    .tun_name(&name)
                    .address(local)
                    .destination(peer)
                    .netmask(Ipv4Addr::new(255, 255, 255, 255))
                    .up();
                let dev = tun::create(&config).map_err(|e| format!("TUN {name}: {e}"))?;
                dev.set_nonblock()
                    .map_err(|e| format!("TUN {name}: nonblocking: {e}"))?;
                Ok(dev)
            };
            let dev = match setup() {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(nix::unistd::gettid().as_raw()));
            let mut buf = [0u8; 2048];
            let mut out = [0u8; 40];
            while !stop2.load(Ordering::Relaxed) {
                // Read what is there, then sleep: a thread that waits in poll() or read() is
                // woken by every packet the gateway sends, and that wake-up (an interrupt to
                // another CPU, costly in a VM) is charged to the sender, natlb; a NIC's
                // transmit wakes no one. Sleeping adds at most POLL_PAUSE to each answer.
                let n = match dev.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(POLL_PAUSE);
                        continue;
                    }
                    Err(_) => continue,
                };
                let is_blocked = |ip: Ipv4Addr| blocked2.lock().is_ok_and(|b| b.contains(&ip));
                if let Some(len) = answer(&buf[..n], port, is_blocked, &mut out) {
                    syns2.fetch_add(1, Ordering::Relaxed);
                    let _ = dev.send(&out[..len]);
                }
            }
        });
        match rx.recv() {
            Ok(Ok(tid)) => Ok(Responder {
                stop,
                syns,
                blocked,
                tid,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("the responder thread died".into()),
        }
    }

    /// SYNs answered so far (with a SYN-ACK or a reset).
    pub fn answered(&self) -> u64 {
        self.syns.load(Ordering::Relaxed)
    }

    /// A blocked address answers SYNs with a reset: "connection refused".
    pub fn set_blocked(&self, ip: Ipv4Addr, blocked: bool) {
        if let Ok(mut b) = self.blocked.lock() {
            if blocked {
                b.insert(ip);
            } else {
                b.remove(&ip);
            }
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to an IPv4 TCP SYN to `port` in `pkt`: a SYN-ACK, or a reset if `blocked(dst)`,
/// written to `out`; its length. Anything else gets no answer.
fn answer(
    pkt: &[u8],
    port: u16,
    blocked: impl Fn(Ipv4Addr) -> bool,
    out: &mut [u8; 40],
) -> Option<usize> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[9] != 6 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let tcp = pkt.get(ihl..ihl + 20)?;
    if tcp[13] & (SYN | ACK | RST) != SYN || u16::from_be_bytes([tcp[2], tcp[3]]) != port {
        return None;
    }
    let src: [u8; 4] = pkt[12..16].try_into().ok()?;
    let dst: [u8; 4] = pkt[16..20].try_into().ok()?;
    let their_seq = u32::from_be_bytes(tcp[4..8].try_into().ok()?);
    let refuse = blocked(Ipv4Addr::from(dst));

    // IPv4 header: version 4, 20 bytes, total 40, don't fragment, TTL 64, TCP.
    out.fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&40u16.to_be_bytes());
    out[6] = 0x40;
    out[8] = 64;
    out[9] = 6;
    out[12..16].copy_from_slice(&dst);
    out[16..20].copy_from_slice(&src);
    let ip_sum = checksum(0, &out[..20]);
    out[10..12].copy_from_slice(&ip_sum.to_be_bytes());

    // TCP header: ports swapped, our ISN (any value will do), ack = their ISN + 1.
    let t = &mut out[20..40];
    t[0..2].copy_from_slice(&tcp[2..4]);
    t[2..4].copy_from_slice(&tcp[0..2]);
    let our_seq: u32 = if refuse { 0 } else { 0x6e61_746c };
    t[4..8].copy_from_slice(&our_seq.to_be_bytes());
    t[8..12].copy_from_slice(&their_seq.wrapping_add(1).to_be_bytes());
    t[12] = 5 << 4;
    t[13] = if refuse { RST | ACK } else { SYN | ACK };
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    // Pseudo-header: source, destination, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&dst);
    pseudo[4..8].copy_from_slice(&src);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let sum = checksum(sum_words(0, &pseudo), t);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    Some(40)
}

fn sum_words(mut acc: u32, data: &[u8]) -> u32 {
    for w in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    acc
}

/// The Internet checksum of `data`, starting from the partial sum `acc`.
fn checksum(acc: u32, data: &[u8]) -> u16 {
    let mut s = sum_words(acc, data);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}
