//! The TCP connect check, on reused sockets.
//!
//! A plain check costs a socket, a connect, an epoll registration and its removal, and a close
//! with a reset. At ten thousand probes a second, creating and destroying the socket and its
//! epoll entry was about a quarter of the engine's CPU. So a finished check does not close its
//! socket: `connect(AF_UNSPEC)` dissolves the connection (the kernel sends the reset that
//! closing with a zero linger sent, releases the local port, and leaves no TIME_WAIT), and the
//! socket waits in a small per-thread pool for the next check of the same family.
//!
//! The pool is per thread, so it needs no lock: natlb's probes all run on the engine's thread.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Idle sockets kept per address family. Checks finish in about a millisecond, so even ten
/// thousand a second keep only a few dozen in flight; the cap bounds the file descriptors a
/// burst of slow backends leaves behind.
const POOL_CAP: usize = 256;

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { v4: Vec::new(), v6: Vec::new() }) };
}

struct Pool {
    v4: Vec<std::net::TcpStream>,
    v6: Vec<std::net::TcpStream>,
}

impl Pool {
    fn of(&mut self, v6: bool) -> &mut Vec<std::net::TcpStream> {
        if v6 { &mut self.v6 } else { &mut self.v4 }
    }
}

/// Sockets made so far and sockets taken from the pool, for the tests and the benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub made: u64,
    pub reused: u64,
    /// Readiness wake-ups of connecting checks: about one per check, many more would mean
    /// a check spinning on stale readiness.
    pub wakeups: u64,
}

thread_local! {
    static STATS: RefCell<Stats> = const { RefCell::new(Stats { made: 0, reused: 0, wakeups: 0 }) };
}

/// This thread's counts.
pub fn stats() -> Stats {
    STATS.with(|s| *s.borrow())
}

/// A socket on loan from the pool. It is registered with the runtime only while a connect is
/// under way. Dropping it (the check finished, failed or was cancelled by its timeout)
/// deregisters it, dissolves the connection and gives the socket back.
struct Loan {
    socket: Option<Socket>,
    v6: bool,
}

enum Socket {
    Idle(std::net::TcpStream),
    Registered(TcpStream),
}

impl Loan {
    fn take(v6: bool) -> io::Result<Loan> {
        let pooled = POOL.with(|p| p.borrow_mut().of(v6).pop());
        let socket = match pooled {
            Some(socket) => {
                STATS.with(|s| s.borrow_mut().reused += 1);
                socket
            }
            None => {
                let family = if v6 {
                    AddressFamily::INET6
                } else {
                    AddressFamily::INET
                };
                let fd = rustix::net::socket_with(
                    family,
                    SocketType::STREAM,
                    SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
                    None,
                )?;
                STATS.with(|s| s.borrow_mut().made += 1);
                std::net::TcpStream::from(fd)
            }
        };
        Ok(Loan {
            socket: Some(Socket::Idle(socket)),
            v6,
        })
    }

    /// Starts connecting to `addr`. Ok(true) when the connect already finished.
    fn connect(&self, addr: &SocketAddr) -> io::Result<bool> {
        let Some(Socket::Idle(socket)) = &self.socket else {
            unreachable!("a loan connects once, before it is registered");
        };
        match rustix::net::connect(socket, addr) {
            Ok(()) => Ok(true),
            Err(Errno::INPROGRESS) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Registers the connecting socket with the runtime. Only now, after connect(): a socket
    /// that is not connecting (a new one, or one dissolved by the previous check) reads as
    /// hung up, and tokio keeps a "closed" readiness for good once it has seen one.
    fn register(&mut self) -> io::Result<&TcpStream> {
        let Some(Socket::Idle(socket)) = self.socket.take() else {
            unreachable!("a loan is registered once");
        };
        let stream = TcpStream::from_std(socket)?;
        let Socket::Registered(stream) = self.socket.insert(Socket::Registered(stream)) else {
            unreachable!()
        };
        Ok(stream)
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        let socket = match self.socket.take() {
            Some(Socket::Idle(socket)) => socket,
            Some(Socket::Registered(stream)) => match stream.into_std() {
                Ok(socket) => socket,
                Err(_) => return,
            },
            None => return,
        };
        // Dissolve the connection (a reset if it was established, an abort if it was still
        // connecting), then clear the error the kernel records for that, so the next check
        // starts clean. A socket that refuses either is closed instead.
        if rustix::net::connect_unspec(&socket).is_err()
            || rustix::net::sockopt::socket_error(&socket).is_err()
        {
            return;
        }
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            let idle = pool.of(self.v6);
            if idle.len() < POOL_CAP {
                idle.push(socket);
            }
        });
    }
}

/// Connects to `addr` and disconnects at once. Ok when the backend accepted the connection.
pub async fn connect_check(addr: SocketAddr) -> io::Result<()> {
    let mut loan = Loan::take(addr.is_ipv6())?;
    if loan.connect(&addr)? {
        return Ok(());
    }
    let stream = loan.register()?;
    loop {
        stream.writable().await?;
        STATS.with(|s| s.borrow_mut().wakeups += 1);
        // SO_ERROR first: it is what a failed connect leaves, and reading it clears it.
        if let Err(e) = rustix::net::sockopt::socket_error(stream)? {
            return Err(e.into());
        }
        // Writable without an error means connected; ask the kernel rather than trust the
        // event, and wait again (WouldBlock clears the readiness) if it is not.
        let connected = stream.try_io(Interest::WRITABLE, || {
            match rustix::net::getpeername(stream) {
                Ok(_) => Ok(()),
                Err(Errno::NOTCONN) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(e.into()),
            }
        });
        match connected {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A refused connect, an accepted one, then more of both: each check must see its own
    /// outcome even though every one after the first runs on the first one's socket.
    #[tokio::test]
    async fn reused_sockets_report_each_outcome() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            loop {
                let _ = listener.accept().await;
            }
        });
        // A port nobody listens on: bind one, note it, close it.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let before = stats();
        for round in 0..20 {
            let refused = connect_check(closed).await;
            assert_eq!(
                refused.as_ref().map_err(|e| e.kind()),
                Err(io::ErrorKind::ConnectionRefused),
                "round {round}: {refused:?}"
            );
            connect_check(open)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        let after = stats();
        assert_eq!(after.made - before.made, 1, "one socket serves every check");
        assert_eq!(after.reused - before.reused, 39);
        accept.abort();
    }

    /// A connect that takes its time, right after a refused one on the same socket, must wait
    /// quietly: the refusal's readiness must not make the next check spin. The slow connect is
    /// a SYN to a listener whose accept queue is full, which the kernel drops.
    #[tokio::test]
    async fn a_slow_connect_after_a_refusal_waits_without_spinning() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = socket.listen(0).unwrap();
        let addr = full.local_addr().unwrap();
        // A backlog of 0 queues one connection; connect until a connect stops completing.
        let mut held = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await {
                Ok(conn) => held.push(conn.unwrap()),
                Err(_) => break,
            }
            assert!(held.len() < 8, "the accept queue never filled");
        }
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(connect_check(closed).await.is_err());
        let before = stats();
        let slow = tokio::time::timeout(Duration::from_millis(300), connect_check(addr)).await;
        assert!(
            slow.is_err(),
            "the connect to a full queue finished: {slow:?}"
        );
        let after = stats();
        assert_eq!(
            after.reused - before.reused,
            1,
            "the refused check's socket was reused"
        );
        assert!(
            after.wakeups - before.wakeups <= 2,
            "{} wake-ups while waiting for a SYN-ACK that never came",
            after.wakeups - before.wakeups
        );
        drop((full, held));
    }

    /// A check cancelled while connecting (the probe's timeout) gives back a socket that works.
    #[tokio::test]
    async fn a_cancelled_check_leaves_a_usable_socket() {
        // 192.0.2.1 (TEST-NET-1) is never routed anywhere that answers: the connect hangs or
        // fails at once when there is no route. Either way the next check must work.
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            connect_check("192.0.2.1:9".parse().unwrap()),
        )
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        connect_check(open).await.unwrap();
        accept.await.unwrap().unwrap();
    }
}
