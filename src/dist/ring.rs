//! Ring all-reduce: the buffer is cut into `world_size` chunks; in `N-1` reduce-scatter steps
//! each rank passes one chunk to the next rank and adds the chunk it receives, after which
//! rank `r` holds the complete sum of chunk `r+1`; `N-1` all-gather steps then pass the
//! complete chunks round the ring. Each rank sends and receives `2(N-1)/N` of the buffer,
//! whatever `N` is, which is why NCCL and Gloo use it for large buffers.
//!
//! Every chunk is summed in one fixed order on one rank and then copied, so all ranks end
//! with the same bits (data-parallel replicas must not drift apart).

use super::{Communicator, ReduceOp};
use crate::{DistErrorKind, Error, Result};
use std::ops::Range;

/// A rank's two connections in the ring: out to the next rank, in from the previous one.
pub trait Link: Send {
    /// Queues `data` for the next rank, tagged with `tag`. Must not wait for the next rank
    /// to receive (every rank sends before it receives).
    fn send(&mut self, tag: u64, data: &[f32]) -> Result<()>;
    /// Receives the previous rank's next message into `out`, which it must fill exactly;
    /// a different tag or length is a `Mismatch` error.
    fn recv(&mut self, tag: u64, out: &mut [f32]) -> Result<()>;
}

/// Chunk `i` of `n` of a buffer of `len` elements: sizes differ by at most one, and with
/// `len < n` some chunks are empty (they are still sent, so every rank runs the same steps).
pub fn chunk(i: usize, n: usize, len: usize) -> Range<usize> {
    (i * len / n)..((i + 1) * len / n)
}

/// Elements per message: a chunk travels as segments of at most this many (256 KiB), so
/// that a rank adds and forwards one segment while the next is on the wire.
pub const SEGMENT: usize = 1 << 16;

/// The segments of a chunk, in order; an empty chunk is one empty segment (every rank sends
/// and receives the same messages whatever the lengths).
pub fn segments(c: Range<usize>) -> impl Iterator<Item = Range<usize>> {
    let count = c.len().div_ceil(SEGMENT).max(1);
    (0..count).map(move |k| (c.start + k * SEGMENT).min(c.end)..(c.start + (k + 1) * SEGMENT).min(c.end))
}

/// Which collective a message belongs to, so a rank that runs a different one than its
/// neighbour is reported instead of mixing buffers.
#[derive(Clone, Copy)]
enum Kind {
    AllReduce = 1,
    Broadcast = 2,
}

/// The tag of a message: the collective's sequence number and kind.
fn tag(seq: u64, kind: Kind) -> u64 {
    (seq << 2) | kind as u64
}

/// Describes a tag for error messages.
pub(crate) fn describe_tag(tag: u64) -> String {
    let kind = match tag & 3 {
        1 => "all_reduce",
        2 => "broadcast",
        _ => "unknown",
    };
    format!("collective #{} ({kind})", tag >> 2)
}

/// A communicator that runs the ring algorithm over a [`Link`].
pub struct RingComm<L: Link> {
    rank: usize,
    world: usize,
    /// `None` for a world of one: nothing to talk to.
    link: Option<L>,
    backend: &'static str,
    seq: u64,
    scratch: Vec<f32>,
}

impl<L: Link> RingComm<L> {
    pub fn new(rank: usize, world: usize, link: Option<L>, backend: &'static str) -> Self {
        RingComm { rank, world, link, backend, seq: 0, scratch: Vec::new() }
    }

    fn link(&mut self) -> Result<&mut L> {
        let rank = self.rank;
        self.link.as_mut().ok_or_else(|| Error::dist(rank, DistErrorKind::Mismatch, "ring has no link"))
    }
}

impl<L: Link> Communicator for RingComm<L> {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn backend(&self) -> &'static str {
        self.backend
    }

    fn all_reduce(&mut self, buf: &mut [f32], op: ReduceOp) -> Result<()> {
        let n = self.world;
        if n > 1 {
            self.seq += 1;
            let t = tag(self.seq, Kind::AllReduce);
            let (r, len) = (self.rank, buf.len());
            let mut scratch = std::mem::take(&mut self.scratch);
            let result = (|| -> Result<()> {
                let link = self.link()?;
                // 2(N-1) steps: reduce-scatter (step s sends chunk r-s and adds chunk r-s-1 in),
                // after which rank r holds the full sum of chunk r+1, then all-gather (step s
                // passes complete chunk r+1-s on and takes chunk r-s). The chunk received at
                // one step is the chunk sent at the next, so each segment goes out again as
                // soon as it is in: receiving, adding and sending overlap (a pipeline), and
                // the link never waits for a whole chunk.
                let steps = 2 * (n - 1);
                let recv_chunk = |step: usize| {
                    let i = if step < n - 1 { r + 2 * n - step - 1 } else { r + 2 * n - (step - (n - 1)) };
                    chunk(i % n, n, len)
                };
                for seg in segments(chunk(r, n, len)) {
                    link.send(t, &buf[seg])?;
                }
                for step in 0..steps {
                    for seg in segments(recv_chunk(step)) {
                        if step < n - 1 {
                            scratch.resize(seg.len(), 0.0);
                            link.recv(t, &mut scratch)?;
                            for (d, x) in buf[seg.clone()].iter_mut().zip(&scratch) {
                                *d += *x;
                            }
                        } else {
                            link.recv(t, &mut buf[seg.clone()])?;
                        }
                        if step + 1 < steps {
                            link.send(t, &buf[seg])?;
                        }
                    }
                }
                Ok(())
            })();
            self.scratch = scratch;
            result?;
        }
        if op == ReduceOp::Mean && n > 1 {
            let inv = 1.0 / n as f32;
            buf.iter_mut().for_each(|x| *x *= inv);
        }
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()> {
        let n = self.world;
        if root >= n {
            return Err(Error::dist(self.rank, DistErrorKind::Mismatch, format!("broadcast root {root} of {n} ranks")));
        }
        if n == 1 {
            return Ok(());
        }
        self.seq += 1;
        let t = tag(self.seq, Kind::Broadcast);
        let (r, next) = (self.rank, (self.rank + 1) % n);
        let link = self.link()?;
        // Down the ring from the root; the rank before the root ends the chain.
        if r != root {
            link.recv(t, buf)?;
        }
        if next != root {
            link.send(t, buf)?;
        }
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        // An all-reduce cannot finish on any rank before every rank has sent its part.
        let mut one = [0.0f32];
        self.all_reduce(&mut one, ReduceOp::Sum)
    }
}
