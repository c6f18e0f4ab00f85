//! `kiln launch`: starts one process per local rank with torchrun's environment (RANK,
//! WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and watches them.
//! When one fails, the others are given a grace period to notice on their own (their ring
//! links break), then killed; the launch fails naming the first rank that failed.

use crate::{DistErrorKind, Error, Result};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// What `kiln launch` was asked to start.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// The executable each rank runs, and its arguments.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// How long the other ranks may take to stop by themselves after one failed.
    pub grace: Duration,
}

/// Starts the local ranks and waits for all of them.
pub fn launch(cfg: &LaunchConfig) -> Result<()> {
    let err = |msg: String| Error::dist(cfg.node_rank * cfg.nproc_per_node, DistErrorKind::WorkerFailed, msg);
    if cfg.nproc_per_node == 0 || cfg.nnodes == 0 || cfg.node_rank >= cfg.nnodes {
        return Err(err(format!(
            "launch: {} process(es) per node, {} node(s), node rank {}: need at least one of each and node rank < nodes",
            cfg.nproc_per_node, cfg.nnodes, cfg.node_rank
        )));
    }
    let world = cfg.nproc_per_node * cfg.nnodes;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for local in 0..cfg.nproc_per_node {
        let rank = cfg.node_rank * cfg.nproc_per_node + local;
        let child = Command::new(&cfg.program)
            .args(&cfg.args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", cfg.nproc_per_node.to_string())
            .env("MASTER_ADDR", &cfg.master_addr)
            .env("MASTER_PORT", cfg.master_port.to_string())
            .spawn();
        match child {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop_all(&mut children);
                return Err(err(format!("cannot start rank {rank} ({}): {e}", cfg.program.display())));
            }
        }
    }
    tracing::info!(world, local = cfg.nproc_per_node, node = cfg.node_rank, "launched");
    let mut failed: Option<(usize, String, Instant)> = None;
    loop {
        let mut running = 0;
        for (rank, child) in children.iter_mut() {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() && failed.is_none() => {
                    tracing::error!(rank = *rank, %status, "rank failed; stopping the others");
                    failed = Some((*rank, status.to_string(), Instant::now()));
                }
                Ok(Some(_)) => {}
                Ok(None) => running += 1,
                Err(e) => tracing::warn!(rank = *rank, "cannot poll: {e}"),
            }
        }
        if running == 0 {
            break;
        }
        if let Some((_, _, at)) = &failed {
            if at.elapsed() >= cfg.grace {
                stop_all(&mut children);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failed {
        Some((rank, status, _)) => Err(err(format!("rank {rank} failed ({status})"))),
        None => Ok(()),
    }
}

fn stop_all(children: &mut [(usize, Child)]) {
    for (rank, c) in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            tracing::warn!(rank = *rank, "killing");
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}
