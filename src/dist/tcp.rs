//! The ring over TCP, for CPU worker processes on one or several hosts. Each rank listens on
//! a port of its own (announced through the rendezvous), connects to the next rank and
//! accepts the previous one. A writer thread per link sends, so a rank never blocks in
//! `send` while its neighbour is itself sending (which would deadlock on full socket
//! buffers); receives happen on the caller's thread with a read timeout.
//!
//! Wire format of one message: tag (u64 LE), element count (u64 LE), the f32s (LE).
//! A new connection first sends `KILNRING`, the 16-byte session token, and its rank (u64 LE).

use super::rendezvous::{self, DistEnv};
use super::ring::{describe_tag, Link, RingComm};
use crate::{DistErrorKind, Error, Result};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{channel, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"KILNRING";

/// One rank's TCP link: a writer thread to the next rank, a read stream from the previous.
pub struct TcpLink {
    rank: usize,
    world: usize,
    writer: Option<(Sender<Vec<u8>>, JoinHandle<()>)>,
    reader: TcpStream,
    timeout: Duration,
    /// Staging for received bytes (big-endian hosts only).
    bytes: Vec<u8>,
}

/// The communicator of CPU processes joined by TCP.
pub type TcpComm = RingComm<TcpLink>;

impl TcpLink {
    fn next(&self) -> usize {
        (self.rank + 1) % self.world
    }
    fn prev(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    fn lost(&self, peer: usize, what: &str, e: std::io::Error) -> Error {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            Error::dist(
                self.rank,
                DistErrorKind::Timeout,
                format!("nothing from rank {peer} for {:.1} s during {what}", self.timeout.as_secs_f64()),
            )
        } else {
            Error::dist(self.rank, DistErrorKind::PeerLost, format!("rank {peer} has left during {what}: {e}"))
        }
    }
}

impl Link for TcpLink {
    fn send(&mut self, tag: u64, data: &[f32]) -> Result<()> {
        let mut msg = Vec::with_capacity(16 + 4 * data.len());
        msg.extend_from_slice(&tag.to_le_bytes());
        msg.extend_from_slice(&(data.len() as u64).to_le_bytes());
        wire::put(&mut msg, data);
        let next = self.next();
        let sent = self.writer.as_ref().map(|(tx, _)| tx.send(msg).is_ok()).unwrap_or(false);
        if sent {
            Ok(())
        } else {
            Err(Error::dist(
                self.rank,
                DistErrorKind::PeerLost,
                format!("rank {next} has left: the connection to it is closed"),
            ))
        }
    }

    fn recv(&mut self, tag: u64, out: &mut [f32]) -> Result<()> {
        let prev = self.prev();
        let what = describe_tag(tag);
        let mut head = [0u8; 16];
        if let Err(e) = self.reader.read_exact(&mut head) {
            return Err(self.lost(prev, &what, e));
        }
        let got_tag = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(head[8..].try_into().expect("8 bytes"));
        if got_tag != tag || len != out.len() as u64 {
            return Err(Error::dist(
                self.rank,
                DistErrorKind::Mismatch,
                format!(
                    "rank {prev} sent {len} elements of {} while this rank runs {what} with {} elements",
                    describe_tag(got_tag),
                    out.len()
                ),
            ));
        }
        if let Err(e) = wire::read_into(&mut self.reader, out, &mut self.bytes) {
            return Err(self.lost(prev, &what, e));
        }
        Ok(())
    }
}

impl Drop for TcpLink {
    fn drop(&mut self) {
        // Let the writer flush what is queued (the neighbour may still need it), then close.
        if let Some((tx, handle)) = self.writer.take() {
            drop(tx);
            let _ = handle.join();
        }
        let _ = self.reader.shutdown(std::net::Shutdown::Both);
    }
}

/// Joins the TCP ring described by `env` (rendezvous through rank 0, then a connection to
/// each neighbour). `config` must be equal on every rank (it is compared).
pub fn connect(env: &DistEnv, config: &serde_json::Value, timeout: Duration) -> Result<TcpComm> {
    connect_with_token(env, config, timeout).map(|(c, _)| c)
}

/// As [`connect`], also returning the session token rank 0 handed out.
pub fn connect_with_token(env: &DistEnv, config: &serde_json::Value, timeout: Duration) -> Result<(TcpComm, Vec<u8>)> {
    let rank = env.rank;
    let listener = TcpListener::bind(("0.0.0.0", 0))
        .map_err(|e| Error::dist(rank, DistErrorKind::Rendezvous, format!("cannot open a ring port: {e}")))?;
    let port = listener.local_addr().map_err(|e| Error::dist(rank, DistErrorKind::Rendezvous, e.to_string()))?.port();
    let rv = rendezvous::rendezvous(env, port, config, timeout, || Ok(rendezvous::random_token()))?;
    if env.world_size == 1 {
        return Ok((RingComm::new(0, 1, None, "tcp"), rv.token));
    }
    let link = ring_link(rank, env.world_size, &listener, &rv.peers, &rv.token, timeout)?;
    tracing::info!(rank, world = env.world_size, "joined the TCP ring");
    Ok((RingComm::new(rank, env.world_size, Some(link), "tcp"), rv.token))
}

fn ring_link(
    rank: usize,
    world: usize,
    listener: &TcpListener,
    peers: &[SocketAddr],
    token: &[u8],
    timeout: Duration,
) -> Result<TcpLink> {
    let err = |kind, msg: String| Error::dist(rank, kind, msg);
    let deadline = Instant::now() + timeout;
    let (next, prev) = ((rank + 1) % world, (rank + world - 1) % world);
    // Out to the next rank: its listener exists (it was bound before the rendezvous).
    let mut out = rendezvous::connect_retry(peers[next], deadline).map_err(|e| {
        err(DistErrorKind::Rendezvous, format!("cannot connect to rank {next} at {}: {e}", peers[next]))
    })?;
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(token);
    hello.extend_from_slice(&(rank as u64).to_le_bytes());
    out.write_all(&hello).map_err(|e| err(DistErrorKind::PeerLost, format!("rank {next}: {e}")))?;
    let _ = out.set_nodelay(true);
    // In from the previous rank; anything else knocking (a stale job, a port scanner) is ignored.
    listener.set_nonblocking(true).map_err(|e| err(DistErrorKind::Rendezvous, e.to_string()))?;
    let reader = loop {
        match listener.accept() {
            Ok((mut s, from)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(ms(10))));
                let mut got = vec![0u8; MAGIC.len() + token.len() + 8];
                if s.read_exact(&mut got).is_ok()
                    && &got[..8] == MAGIC
                    && &got[8..8 + token.len()] == token
                    && u64::from_le_bytes(got[8 + token.len()..].try_into().expect("8 bytes")) == prev as u64
                {
                    break s;
                }
                tracing::warn!(%from, "ignored a connection to the ring port that is not rank {prev} of this job");
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(err(
                        DistErrorKind::Timeout,
                        format!("rank {prev} did not connect within {:.0} s", timeout.as_secs_f64()),
                    ));
                }
                std::thread::sleep(ms(5));
            }
            Err(e) => return Err(err(DistErrorKind::Rendezvous, format!("accept: {e}"))),
        }
    };
    reader.set_read_timeout(Some(timeout)).map_err(|e| err(DistErrorKind::Rendezvous, e.to_string()))?;
    let _ = reader.set_nodelay(true);
    let _ = out.set_write_timeout(Some(timeout));
    let (tx, rx) = channel::<Vec<u8>>();
    let handle = std::thread::Builder::new()
        .name(format!("kiln-ring-tx-{rank}"))
        .spawn(move || {
            for msg in rx {
                if let Err(e) = out.write_all(&msg) {
                    tracing::debug!("ring writer to rank {next} stops: {e}");
                    break;
                }
            }
            let _ = out.shutdown(std::net::Shutdown::Write);
        })
        .map_err(|e| err(DistErrorKind::Rendezvous, format!("cannot start the writer thread: {e}")))?;
    Ok(TcpLink { rank, world, writer: Some((tx, handle)), reader, timeout, bytes: Vec::new() })
}

/// f32s on the wire: little-endian. On a little-endian host that is their memory, so they
/// are written and read with one copy (no per-element conversion, no staging buffer).
mod wire {
    use std::io::Read;

    /// Appends `data` to `msg`.
    pub fn put(msg: &mut Vec<u8>, data: &[f32]) {
        #[cfg(target_endian = "little")]
        {
            // SAFETY: f32 has no padding and any alignment suits u8: the bytes of the slice.
            let bytes = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) };
            msg.extend_from_slice(bytes);
        }
        #[cfg(not(target_endian = "little"))]
        for x in data {
            msg.extend_from_slice(&x.to_le_bytes());
        }
    }

    /// Fills `out` from `r` (`staging` is only used on big-endian hosts).
    pub fn read_into(r: &mut impl Read, out: &mut [f32], staging: &mut Vec<u8>) -> std::io::Result<()> {
        #[cfg(target_endian = "little")]
        {
            let _ = staging;
            // SAFETY: as in `put`; and every bit pattern is a valid f32, so writing arbitrary
            // bytes through this view cannot make an invalid value.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, std::mem::size_of_val(out)) };
            r.read_exact(bytes)
        }
        #[cfg(not(target_endian = "little"))]
        {
            staging.resize(out.len() * 4, 0);
            r.read_exact(staging)?;
            for (x, b) in out.iter_mut().zip(staging.chunks_exact(4)) {
                *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            Ok(())
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
