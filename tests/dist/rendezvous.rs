//! torchrun / Slurm environments, and the rendezvous between threads and between processes.

use super::free_port;
use kiln::dist::rendezvous::{first_slurm_host, rendezvous, DistEnv};
use kiln::{DistErrorKind, Error};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_of(pairs: &[(&str, &str)]) -> kiln::Result<Option<DistEnv>> {
    let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    DistEnv::from_vars(|k| m.get(k).cloned())
}

#[test]
fn torchrun_and_slurm_environments() {
    assert_eq!(env_of(&[]).unwrap(), None);
    let e = env_of(&[
        ("RANK", "3"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "10.0.0.5"),
        ("MASTER_PORT", "1234"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(
        (e.rank, e.world_size, e.local_rank, e.master_addr.as_str(), e.master_port),
        (3, 8, 1, "10.0.0.5", 1234)
    );
    // torchrun's variables win over Slurm's; without them Slurm's are used.
    let e =
        env_of(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("SLURM_PROCID", "5"), ("SLURM_NTASKS", "9")]).unwrap().unwrap();
    assert_eq!((e.rank, e.world_size, e.master_port), (1, 2, 29500));
    let e = env_of(&[
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "8"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_JOB_NODELIST", "gpu[007-010,012],login1"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!((e.rank, e.world_size, e.local_rank, e.master_addr.as_str()), (5, 8, 1, "gpu007"));
    // Clear errors for what cannot work.
    for bad in [
        vec![("RANK", "2"), ("WORLD_SIZE", "2")],
        vec![("RANK", "x"), ("WORLD_SIZE", "2")],
        vec![("RANK", "0")],
        vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "99999")],
        vec![("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")],
    ] {
        let err = env_of(&bad).unwrap_err();
        assert!(matches!(err, Error::Dist { kind: DistErrorKind::Rendezvous, .. }), "{bad:?}: {err}");
    }
}

#[test]
fn slurm_node_lists() {
    assert_eq!(first_slurm_host("node1").unwrap(), "node1");
    assert_eq!(first_slurm_host("node1,node2").unwrap(), "node1");
    assert_eq!(first_slurm_host("gpu[03-04]").unwrap(), "gpu03");
    assert_eq!(first_slurm_host("gpu[3,5-7]-ib").unwrap(), "gpu3-ib");
    assert_eq!(first_slurm_host("a[1-2],b[3-4]").unwrap(), "a1");
    assert!(first_slurm_host("gpu[03-04").is_err());
    assert!(first_slurm_host("").is_err());
}

fn env(rank: usize, n: usize, port: u16) -> DistEnv {
    DistEnv { rank, world_size: n, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port }
}

#[test]
fn rendezvous_hands_rank_zeros_token_to_all() {
    let port = free_port();
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|r| {
                s.spawn(move || {
                    rendezvous(
                        &env(r, 4, port),
                        40000 + r as u16,
                        &serde_json::json!({"lr": 0.1}),
                        Duration::from_secs(20),
                        || Ok(vec![7, 8, 9]),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    for (r, rv) in results.iter().enumerate() {
        assert_eq!(rv.token, vec![7, 8, 9], "rank {r}");
        let ports: Vec<u16> = rv.peers.iter().map(|p| p.port()).collect();
        assert_eq!(ports, vec![40000, 40001, 40002, 40003], "rank {r}");
    }
}

#[test]
fn rendezvous_refuses_different_configs_and_names_the_field() {
    let port = free_port();
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                s.spawn(move || {
                    let cfg = serde_json::json!({"lr": if r == 0 { 0.1 } else { 0.2 }, "model": "mlp"});
                    rendezvous(&env(r, 2, port), 1, &cfg, Duration::from_secs(20), || Ok(vec![1]))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, res) in results.into_iter().enumerate() {
        let e = res.unwrap_err().to_string();
        assert!(e.contains("lr: 0.1 (rank 0) vs 0.2") && !e.contains("model"), "rank {r}: {e}");
    }
}

#[test]
fn rendezvous_refuses_another_kiln_version() {
    let port = free_port();
    let master = std::thread::spawn(move || {
        rendezvous(&env(0, 2, port), 1, &serde_json::json!({}), Duration::from_secs(20), || Ok(vec![1]))
    });
    // A hand-made hello from a "different build".
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("rank 0 never listened: {e}"),
        }
    };
    writeln!(s, r#"{{"kiln":"0.0.1-old","rank":1,"world_size":2,"config":{{}},"port":5}}"#).unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    assert!(reply.contains("runs Kiln 0.0.1-old"), "{reply}");
    let err = master.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::Dist { kind: DistErrorKind::Mismatch, .. }), "{err}");
}

#[test]
fn rendezvous_reports_a_port_in_use() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err =
        rendezvous(&env(0, 2, port), 1, &serde_json::json!({}), Duration::from_secs(2), || Ok(vec![1])).unwrap_err();
    assert!(err.to_string().contains(&format!("MASTER_PORT {port}")) && err.to_string().contains("in use"), "{err}");
}

/// Starts `kiln dist-check` as rank `rank` of `world` on `port`.
fn dist_check(rank: usize, world: usize, port: u16, timeout_s: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["dist-check", "--len", "1000", "--timeout", timeout_s])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn separate_processes_meet_and_agree() {
    let port = free_port();
    let children: Vec<_> = (0..3).map(|r| dist_check(r, 3, port, "30")).collect();
    let outs: Vec<serde_json::Value> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            serde_json::from_slice(&o.stdout).unwrap()
        })
        .collect();
    for (r, o) in outs.iter().enumerate() {
        assert_eq!(o["rank"], r);
        assert_eq!(o["wrong_elements"], 0);
        assert_eq!(o["token"], outs[0]["token"], "rank {r} got another token");
        assert_eq!(o["token"].as_str().unwrap().len(), 32);
    }
}

#[test]
fn a_missing_process_is_reported_clearly() {
    let port = free_port();
    let start = Instant::now();
    // Rank 2 of 3 never starts.
    let children: Vec<_> = (0..2).map(|r| dist_check(r, 3, port, "3")).collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
    let err0 = String::from_utf8_lossy(&outs[0].stderr);
    let err1 = String::from_utf8_lossy(&outs[1].stderr);
    assert!(!outs[0].status.success() && err0.contains("rank(s) [2] of 3 never joined"), "rank 0: {err0}");
    assert!(!outs[1].status.success() && err1.contains("never joined"), "rank 1: {err1}");
}
