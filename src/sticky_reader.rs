//! Reads the sticky map on a thread of its own, with its own netlink socket.
//!
//! A read costs the kernel time that grows faster than the map (a set dump restarts its walk
//! for every message: about 11 ms at 10k entries, 375 ms at 100k), and the daemon's loop must
//! not wait for it longer than it chooses to: a withdrawal waits a short budget for the read, to
//! delete the withdrawn backend's entries in its own batch, and commits without them when the
//! read takes longer. The answer then arrives on its own and the daemon deletes what it finds.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::nft::{KernelEntry, Nft};
use crate::render::ruleset::SetSpec;

/// A read of one sticky map.
struct Request {
    seq: u64,
    table: String,
    spec: SetSpec,
}

/// What a read found. It answers every request up to `seq`: requests that queued while the
/// thread was reading are served by one read.
#[derive(Debug)]
pub struct Answer {
    pub seq: u64,
    pub entries: Result<Vec<KernelEntry>, String>,
    /// How long the read took.
    pub took: Duration,
}

pub struct Reader {
    requests: mpsc::Sender<Request>,
    answers: mpsc::Receiver<Answer>,
    asked: u64,
}

impl Reader {
    /// Starts the thread; each answer is also signalled on `wake`, so an async loop can wait
    /// for answers nobody waits for.
    pub fn start(wake: tokio::sync::mpsc::UnboundedSender<()>) -> std::io::Result<Reader> {
        let (requests, rx) = mpsc::channel::<Request>();
        let (tx, answers) = mpsc::channel();
        std::thread::Builder::new()
            .name("natlb-sticky".into())
            .spawn(move || serve(rx, tx, wake))?;
        Ok(Reader {
            requests,
            answers,
            asked: 0,
        })
    }

    /// Asks for a read of `spec` in table `table`; returns the request's number.
    pub fn ask(&mut self, table: &str, spec: &SetSpec) -> u64 {
        self.asked += 1;
        // The thread only stops when this sender is dropped.
        let _ = self.requests.send(Request {
            seq: self.asked,
            table: table.to_string(),
            spec: spec.clone(),
        });
        self.asked
    }

    /// The answers ready now; with `wait`, first waits up to its budget for the answer to its
    /// request number (or a later one).
    pub fn answers(&mut self, wait: Option<(u64, Duration)>) -> Vec<Answer> {
        let mut out: Vec<Answer> = self.answers.try_iter().collect();
        if let Some((seq, budget)) = wait {
            let deadline = Instant::now() + budget;
            while !out.iter().any(|a| a.seq >= seq) {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.answers.recv_timeout(left) {
                    Ok(a) => out.push(a),
                    Err(_) => break,
                }
            }
        }
        out
    }
}

fn serve(
    requests: mpsc::Receiver<Request>,
    answers: mpsc::Sender<Answer>,
    wake: tokio::sync::mpsc::UnboundedSender<()>,
) {
    let mut nft = Nft::open().map_err(|e| e.to_string());
    while let Ok(mut req) = requests.recv() {
        // Later requests supersede queued ones: one read answers them all.
        while let Ok(later) = requests.try_recv() {
            req = later;
        }
        let started = Instant::now();
        let entries = match &mut nft {
            Ok(nft) => nft
                .dynamic_entries(&req.table, &req.spec)
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("cannot open a netlink socket: {e}")),
        };
        let answer = Answer {
            seq: req.seq,
            entries,
            took: started.elapsed(),
        };
        if answers.send(answer).is_err() {
            return;
        }
        let _ = wake.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without root (or with no such table) the read fails; the answer still comes, numbered.
    #[test]
    fn every_request_gets_an_answer_and_queued_ones_share_it() {
        let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel();
        let mut r = Reader::start(wake).unwrap();
        let spec = crate::render::layout::sets()
            .into_iter()
            .find(|s| s.dynamic.is_some())
            .unwrap();
        let first = r.ask("natlb_no_such_table", &spec);
        let got = r.answers(Some((first, Duration::from_secs(10))));
        assert!(got.iter().any(|a| a.seq == first), "{got:?}");
        // The wake follows the answer: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        while woken.try_recv().is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(Instant::now() < deadline, "no wake-up for the answer");
        let seqs: Vec<u64> = (0..5)
            .map(|_| r.ask("natlb_no_such_table", &spec))
            .collect();
        let last = *seqs.last().unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !got.iter().any(|a: &Answer| a.seq == last) && Instant::now() < deadline {
            got.extend(r.answers(Some((last, Duration::from_millis(100)))));
        }
        assert!(got.iter().any(|a| a.seq == last), "{got:?}");
        assert!(got.len() <= seqs.len());
    }
}
