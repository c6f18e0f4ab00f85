//! How ranks find each other, as torchrun and Slurm set them up.
//!
//! The environment names the rank, the world size and rank 0's address: torchrun's RANK,
//! WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, or, when those are absent, Slurm's
//! SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and the first host of SLURM_JOB_NODELIST (so
//! `srun kiln train` works as it is). Rank 0 listens on MASTER_PORT; every other rank sends
//! it one line of JSON (Kiln version, rank, world size, the run's config, its ring port);
//! rank 0 checks them all against its own and answers each with the session token (for
//! NCCL: the unique id) and every rank's ring address, or with the reason it refuses.
//! Every wait has a deadline.

use crate::{DistErrorKind, Error, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// torchrun's default port.
pub const DEFAULT_PORT: u16 = 29500;

/// One rank's place in a multi-process job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl DistEnv {
    /// The job described by this process's environment, `None` when it was not started as
    /// part of one (no RANK/WORLD_SIZE and no Slurm task variables).
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`DistEnv::from_env`], reading variables through `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let num = |k: &str| -> Result<Option<usize>> {
            match get(k) {
                None => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| bad(format!("{k}={v:?} is not a number"))),
            }
        };
        let port = || -> Result<u16> {
            match get("MASTER_PORT") {
                None => Ok(DEFAULT_PORT),
                Some(v) => v.trim().parse::<u16>().map_err(|_| bad(format!("MASTER_PORT={v:?} is not a port number"))),
            }
        };
        let env = if let (Some(rank), Some(world)) = (num("RANK")?, num("WORLD_SIZE")?) {
            DistEnv {
                rank,
                world_size: world,
                local_rank: num("LOCAL_RANK")?.unwrap_or(0),
                master_addr: get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port: port()?,
            }
        } else if let (Some(rank), Some(world)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
            let master_addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None => {
                    let list = get("SLURM_JOB_NODELIST")
                        .or_else(|| get("SLURM_NODELIST"))
                        .ok_or_else(|| bad("Slurm task without SLURM_JOB_NODELIST (or MASTER_ADDR)".into()))?;
                    first_slurm_host(&list)?
                }
            };
            DistEnv {
                rank,
                world_size: world,
                local_rank: num("SLURM_LOCALID")?.unwrap_or(0),
                master_addr,
                master_port: port()?,
            }
        } else if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            return Err(bad("RANK and WORLD_SIZE must be set together".into()));
        } else {
            return Ok(None);
        };
        if env.world_size == 0 || env.rank >= env.world_size {
            return Err(bad(format!("rank {} is outside a world of size {}", env.rank, env.world_size)));
        }
        Ok(Some(env))
    }
}

fn bad(msg: String) -> Error {
    Error::dist(0, DistErrorKind::Rendezvous, format!("bad environment: {msg}"))
}

/// The first host of a Slurm node list such as `gpu[003-010,012],login1`: `gpu003`.
pub fn first_slurm_host(list: &str) -> Result<String> {
    let list = list.trim();
    let first_item_end = {
        // The first comma outside brackets ends the first item.
        let mut depth = 0i32;
        list.char_indices().find(|&(_, c)| {
            depth += (c == '[') as i32 - (c == ']') as i32;
            c == ',' && depth == 0
        })
    }
    .map(|(i, _)| i)
    .unwrap_or(list.len());
    let item = &list[..first_item_end];
    let host = match item.find('[') {
        None => item.to_string(),
        Some(open) => {
            let close = item.find(']').ok_or_else(|| bad(format!("SLURM_JOB_NODELIST {list:?}: unclosed '['")))?;
            let first = item[open + 1..close].split([',', '-']).next().unwrap_or("");
            format!("{}{}{}", &item[..open], first, &item[close + 1..])
        }
    };
    if host.is_empty() {
        return Err(bad(format!("SLURM_JOB_NODELIST {list:?} names no host")));
    }
    Ok(host)
}

/// What rank 0 handed out.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// Rank 0's token: a session id for the TCP ring, NCCL's unique id for NCCL.
    pub token: Vec<u8>,
    /// Every rank's ring address, by rank.
    pub peers: Vec<SocketAddr>,
}

#[derive(Serialize, Deserialize)]
struct Hello {
    kiln: String,
    rank: usize,
    world_size: usize,
    config: serde_json::Value,
    port: u16,
}

#[derive(Serialize, Deserialize)]
struct Reply {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    token: String,
    #[serde(default)]
    peers: Vec<SocketAddr>,
}

/// A 16-byte random session token (the TCP ring's handshake checks it).
pub fn random_token() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let mut out = Vec::with_capacity(16);
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
        );
        h.write_u32(std::process::id());
        out.extend_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// Meets the other ranks through rank 0. `ring_port` is this rank's listening port,
/// `config` must be equal on every rank, and rank 0 calls `make_token` for the token.
pub fn rendezvous(
    env: &DistEnv,
    ring_port: u16,
    config: &serde_json::Value,
    timeout: Duration,
    make_token: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Rendezvous> {
    let deadline = Instant::now() + timeout;
    let hello = Hello {
        kiln: env!("CARGO_PKG_VERSION").to_string(),
        rank: env.rank,
        world_size: env.world_size,
        config: config.clone(),
        port: ring_port,
    };
    if env.rank == 0 {
        serve(env, hello, deadline, timeout, make_token)
    } else {
        join(env, hello, deadline, timeout)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn master_socket(env: &DistEnv, rank: usize) -> Result<SocketAddr> {
    (env.master_addr.as_str(), env.master_port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| {
            a.find(|a| a.is_ipv4())
                .or_else(|| (env.master_addr.as_str(), env.master_port).to_socket_addrs().ok()?.next())
        })
        .ok_or_else(|| {
            Error::dist(
                rank,
                DistErrorKind::Rendezvous,
                format!("MASTER_ADDR {:?} does not resolve to an address", env.master_addr),
            )
        })
}

/// Connects, retrying until `deadline` (the listener may not be up yet).
pub(crate) fn connect_retry(addr: SocketAddr, deadline: Instant) -> std::io::Result<TcpStream> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.clamp(Duration::from_millis(10), Duration::from_secs(5))) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Rank 0: accept the others, check them, answer.
fn serve(
    env: &DistEnv,
    own: Hello,
    deadline: Instant,
    timeout: Duration,
    make_token: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<Rendezvous> {
    let err = |kind, msg: String| Error::dist(0, kind, msg);
    let n = env.world_size;
    let listener = TcpListener::bind(("0.0.0.0", env.master_port)).map_err(|e| {
        let why = if e.kind() == ErrorKind::AddrInUse {
            "is in use (another job, or a previous run still closing?); choose another MASTER_PORT".to_string()
        } else {
            e.to_string()
        };
        err(DistErrorKind::Rendezvous, format!("cannot listen on MASTER_PORT {}: {why}", env.master_port))
    })?;
    // Rank 0's ring address: the address the other ranks reached it at (MASTER_ADDR may be a
    // name that resolves to a loopback address on rank 0's own host).
    let mut own_ip: IpAddr = master_socket(env, 0)?.ip();
    let mut peers: Vec<Option<SocketAddr>> = vec![None; n];
    peers[0] = Some(SocketAddr::new(own_ip, own.port));
    let mut conns: Vec<(usize, TcpStream)> = Vec::new();
    listener.set_nonblocking(true).map_err(|e| err(DistErrorKind::Rendezvous, e.to_string()))?;
    // Answers every connected rank with `msg` and returns the error.
    let refuse = |conns: &mut Vec<(usize, TcpStream)>, kind, msg: String| -> Error {
        let line = serde_json::to_string(&Reply { error: Some(msg.clone()), token: String::new(), peers: vec![] })
            .unwrap_or_default();
        for (_, c) in conns.iter_mut() {
            let _ = writeln!(c, "{line}");
        }
        err(kind, msg)
    };
    while conns.len() < n - 1 {
        match listener.accept() {
            Ok((stream, from)) => {
                let _ = stream.set_nonblocking(false);
                // A stranger that never speaks must not hold up the rendezvous for long.
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = stream.set_read_timeout(Some(left.clamp(ms(100), Duration::from_secs(10))));
                if conns.is_empty() {
                    if let Ok(local) = stream.local_addr() {
                        own_ip = local.ip();
                        peers[0] = Some(SocketAddr::new(own_ip, own.port));
                    }
                }
                let mut line = String::new();
                let mut reader =
                    BufReader::new(stream.try_clone().map_err(|e| err(DistErrorKind::Rendezvous, e.to_string()))?);
                let hello: Hello = match reader.read_line(&mut line).ok().and_then(|_| serde_json::from_str(&line).ok())
                {
                    Some(h) => h,
                    None => {
                        tracing::warn!(%from, "ignored a connection to MASTER_PORT that did not speak Kiln's rendezvous");
                        continue;
                    }
                };
                conns.push((hello.rank, stream));
                if let Some(msg) = check(&own, &hello, &peers) {
                    return Err(refuse(&mut conns, DistErrorKind::Mismatch, msg));
                }
                peers[hello.rank] = Some(SocketAddr::new(from.ip(), hello.port));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (0..n).filter(|&r| peers[r].is_none()).collect();
                    return Err(refuse(
                        &mut conns,
                        DistErrorKind::Rendezvous,
                        format!(
                            "rank(s) {missing:?} of {n} never joined within {:.0} s (rank 0 listens on port {})",
                            timeout.as_secs_f64(),
                            env.master_port
                        ),
                    ));
                }
                std::thread::sleep(ms(5));
            }
            Err(e) => return Err(refuse(&mut conns, DistErrorKind::Rendezvous, format!("accept: {e}"))),
        }
    }
    let token = match make_token() {
        Ok(t) => t,
        Err(e) => {
            return Err(refuse(&mut conns, DistErrorKind::Rendezvous, format!("rank 0 could not make the token: {e}")))
        }
    };
    let peers: Vec<SocketAddr> = peers.into_iter().map(|p| p.expect("every rank joined")).collect();
    let line = serde_json::to_string(&Reply { error: None, token: hex(&token), peers: peers.clone() })
        .map_err(|e| err(DistErrorKind::Rendezvous, e.to_string()))?;
    for (rank, c) in conns.iter_mut() {
        writeln!(c, "{line}")
            .map_err(|e| err(DistErrorKind::PeerLost, format!("rank {rank} left during rendezvous: {e}")))?;
    }
    Ok(Rendezvous { token, peers })
}

/// Why rank 0 refuses `h`, if it does.
fn check(own: &Hello, h: &Hello, peers: &[Option<SocketAddr>]) -> Option<String> {
    if h.kiln != own.kiln {
        return Some(format!("rank {} runs Kiln {} but rank 0 runs Kiln {}", h.rank, h.kiln, own.kiln));
    }
    if h.world_size != own.world_size {
        return Some(format!(
            "rank {} was told WORLD_SIZE={} but rank 0 WORLD_SIZE={}",
            h.rank, h.world_size, own.world_size
        ));
    }
    if h.rank == 0 || h.rank >= own.world_size || peers[h.rank].is_some() {
        return Some(format!("two processes claim rank {} (check RANK / --node-rank)", h.rank));
    }
    if h.config != own.config {
        return Some(format!(
            "rank {}'s configuration differs from rank 0's: {}",
            h.rank,
            config_diff(&own.config, &h.config)
        ));
    }
    None
}

/// The top-level keys on which two JSON configs differ, as `key: a vs b`.
fn config_diff(a: &serde_json::Value, b: &serde_json::Value) -> String {
    match (a.as_object(), b.as_object()) {
        (Some(a), Some(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            let diffs: Vec<String> = keys
                .into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| {
                    let show =
                        |v: Option<&serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "(absent)".into());
                    format!("{k}: {} (rank 0) vs {}", show(a.get(k)), show(b.get(k)))
                })
                .collect();
            diffs.join(", ")
        }
        _ => format!("{a} vs {b}"),
    }
}

/// Rank > 0: say hello to rank 0 and wait for its answer.
fn join(env: &DistEnv, own: Hello, deadline: Instant, timeout: Duration) -> Result<Rendezvous> {
    let rank = env.rank;
    let err = |kind, msg: String| Error::dist(rank, kind, msg);
    let addr = master_socket(env, rank)?;
    let mut stream = connect_retry(addr, deadline).map_err(|e| {
        err(
            DistErrorKind::Rendezvous,
            format!(
                "could not reach rank 0 at {addr} (MASTER_ADDR:MASTER_PORT) within {:.0} s: {e}",
                timeout.as_secs_f64()
            ),
        )
    })?;
    let line = serde_json::to_string(&own).map_err(|e| err(DistErrorKind::Rendezvous, e.to_string()))?;
    writeln!(stream, "{line}").map_err(|e| err(DistErrorKind::PeerLost, format!("rank 0 at {addr}: {e}")))?;
    let _ = stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(ms(100))));
    let mut reply = String::new();
    match BufReader::new(stream).read_line(&mut reply) {
        Ok(0) => return Err(err(DistErrorKind::PeerLost, "rank 0 closed the rendezvous without an answer".into())),
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            return Err(err(
                DistErrorKind::Timeout,
                format!(
                    "rank 0 did not complete the rendezvous within {:.0} s (are all ranks started?)",
                    timeout.as_secs_f64()
                ),
            ))
        }
        Err(e) => return Err(err(DistErrorKind::PeerLost, format!("rank 0: {e}"))),
    }
    let reply: Reply = serde_json::from_str(&reply)
        .map_err(|e| err(DistErrorKind::Rendezvous, format!("rank 0 answered something unreadable: {e}")))?;
    if let Some(msg) = reply.error {
        return Err(err(DistErrorKind::Rendezvous, format!("rank 0 refused the rendezvous: {msg}")));
    }
    let token = unhex(&reply.token).ok_or_else(|| err(DistErrorKind::Rendezvous, "rank 0 sent a bad token".into()))?;
    if reply.peers.len() != env.world_size {
        return Err(err(
            DistErrorKind::Mismatch,
            format!("rank 0 sent {} addresses for {} ranks", reply.peers.len(), env.world_size),
        ));
    }
    Ok(Rendezvous { token, peers: reply.peers })
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
