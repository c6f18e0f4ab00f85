//! Ranks as worker threads of one process, linked by channels: `kiln train --workers N`, and
//! the transport the data-parallel tests prove the algorithm on.

use super::ring::{describe_tag, Link, RingComm};
use super::Communicator;
use crate::{DistErrorKind, Error, Result};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

type Msg = (u64, Vec<f32>);

/// Channel link between neighbouring worker threads.
pub struct ChannelLink {
    rank: usize,
    world: usize,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    timeout: Duration,
}

impl Link for ChannelLink {
    fn send(&mut self, tag: u64, data: &[f32]) -> Result<()> {
        self.tx.send((tag, data.to_vec())).map_err(|_| {
            let next = (self.rank + 1) % self.world;
            Error::dist(
                self.rank,
                DistErrorKind::PeerLost,
                format!("rank {next} has left (its worker ended or failed)"),
            )
        })
    }

    fn recv(&mut self, tag: u64, out: &mut [f32]) -> Result<()> {
        let prev = (self.rank + self.world - 1) % self.world;
        let (got_tag, data) = self.rx.recv_timeout(self.timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => Error::dist(
                self.rank,
                DistErrorKind::Timeout,
                format!(
                    "nothing from rank {prev} for {:.1} s during {}",
                    self.timeout.as_secs_f64(),
                    describe_tag(tag)
                ),
            ),
            RecvTimeoutError::Disconnected => Error::dist(
                self.rank,
                DistErrorKind::PeerLost,
                format!("rank {prev} has left (its worker ended or failed) during {}", describe_tag(tag)),
            ),
        })?;
        if got_tag != tag || data.len() != out.len() {
            return Err(Error::dist(
                self.rank,
                DistErrorKind::Mismatch,
                format!(
                    "rank {prev} sent {} elements of {} while this rank runs {} with {} elements",
                    data.len(),
                    describe_tag(got_tag),
                    describe_tag(tag),
                    out.len()
                ),
            ));
        }
        out.copy_from_slice(&data);
        Ok(())
    }
}

/// The communicator of in-process worker threads.
pub type ThreadComm = RingComm<ChannelLink>;

/// `n` communicators forming one ring, one for each worker thread (rank `i` gets element
/// `i`). A receive waits at most `timeout`.
pub fn thread_group(n: usize, timeout: Duration) -> Vec<ThreadComm> {
    let n = n.max(1);
    if n == 1 {
        return vec![RingComm::new(0, 1, None, "threads")];
    }
    // Channel i carries rank i's messages to rank i+1, so rank r sends on channel r and
    // receives on channel r-1: rotate the receivers right by one.
    let (txs, mut rxs): (Vec<Sender<Msg>>, Vec<Receiver<Msg>>) = (0..n).map(|_| channel()).unzip();
    rxs.rotate_right(1);
    txs.into_iter()
        .zip(rxs)
        .enumerate()
        .map(|(r, (tx, rx))| RingComm::new(r, n, Some(ChannelLink { rank: r, world: n, tx, rx, timeout }), "threads"))
        .collect()
}

/// Runs `work(rank, communicator)` on `n` worker threads and returns their results in rank
/// order. If any worker fails (an error or a panic), the error returned is the first
/// worker's own failure, not the "peer has left" echoes it caused on the others (those are
/// logged).
pub fn run_workers<T, F>(n: usize, timeout: Duration, work: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(usize, Box<dyn Communicator>) -> Result<T> + Sync,
{
    let comms = thread_group(n, timeout);
    let results: Vec<Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                let work = &work;
                std::thread::Builder::new()
                    .name(format!("kiln-worker-{rank}"))
                    .spawn_scoped(s, move || work(rank, Box::new(comm)))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| match h {
                Err(e) => Err(Error::dist(rank, DistErrorKind::WorkerFailed, format!("could not start: {e}"))),
                Ok(h) => h.join().unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown payload".into());
                    Err(Error::dist(rank, DistErrorKind::WorkerFailed, format!("worker panicked: {msg}")))
                }),
            })
            .collect()
    });
    first_cause(results)
}

/// All results, or the most telling error: a worker's own failure before the echoes.
pub(crate) fn first_cause<T>(results: Vec<Result<T>>) -> Result<Vec<T>> {
    let (oks, errs): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    let mut errors: Vec<Error> = errs.into_iter().filter_map(|r| r.err()).collect();
    if errors.is_empty() {
        return Ok(oks.into_iter().filter_map(|r| r.ok()).collect());
    }
    let is_echo = |e: &Error| matches!(e, Error::Dist { kind: DistErrorKind::PeerLost, .. });
    let pos = errors.iter().position(|e| !is_echo(e)).unwrap_or(0);
    for (i, e) in errors.iter().enumerate() {
        if i != pos {
            tracing::warn!("worker error (after the first): {e}");
        }
    }
    Err(errors.swap_remove(pos))
}
