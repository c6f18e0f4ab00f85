//! Two "hosts": network namespaces joined by a veth pair, one `kiln launch` in each, training
//! over the TCP transport. Needs root and iproute2; without them the test skips with a
//! reason, unless KILN_REQUIRE_NETNS=1 (set by .ci/run, which runs as root) makes that a
//! failure.

use super::tempdir::TempDir;
use kiln::io::checkpoint;
use kiln::Device;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn ip(args: &[&str]) -> Result<Output, String> {
    let o = Command::new("ip").args(args).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
    if o.status.success() {
        Ok(o)
    } else {
        Err(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
    }
}

/// Two namespaces with 10.77.N.1 and 10.77.N.2 on a veth pair; removed on drop.
struct Hosts {
    names: [String; 2],
    addrs: [String; 2],
}

impl Hosts {
    fn create() -> Result<Hosts, String> {
        let id = std::process::id();
        let names = [format!("kiln-a-{id}"), format!("kiln-b-{id}")];
        let subnet = id % 250 + 1;
        let addrs = [format!("10.77.{subnet}.1"), format!("10.77.{subnet}.2")];
        let hosts = Hosts { names: names.clone(), addrs: addrs.clone() };
        let (va, vb) = (format!("kva{}", id % 100_000), format!("kvb{}", id % 100_000));
        ip(&["netns", "add", &names[0]])?;
        ip(&["netns", "add", &names[1]])?;
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        for (ns, dev, addr) in [(&names[0], &va, &addrs[0]), (&names[1], &vb, &addrs[1])] {
            ip(&["link", "set", dev, "netns", ns])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace also deletes the veth end inside it.
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
    }
}

fn skip_or_fail(why: String) {
    if std::env::var("KILN_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
        panic!("two-host test required (KILN_REQUIRE_NETNS=1) but cannot run: {why}");
    }
    eprintln!("skipping the two-host test: {why}");
}

fn params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let ck = checkpoint::load(dir, Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    ck.model_state.iter().map(|(n, t)| (n.clone(), t.to_vec::<f32>().unwrap())).collect()
}

#[test]
fn two_hosts_train_over_tcp_like_one_process() {
    let hosts = match Hosts::create() {
        Ok(h) => h,
        Err(why) => return skip_or_fail(why),
    };
    let dir = TempDir::new("two-hosts");
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let train = ["train", "--quiet", "--epochs", "1", "--max-steps", "12", "--seed", "4", "--save-every-rank", "--out"];
    let children: Vec<Output> = (0..2)
        .map(|node| {
            let out = dir.0.join(format!("host{node}"));
            Command::new("ip")
                .args(["netns", "exec", &hosts.names[node], kiln, "launch", "--nproc-per-node", "1", "--nnodes", "2"])
                .args([
                    "--node-rank",
                    &node.to_string(),
                    "--master-addr",
                    &hosts.addrs[0],
                    "--master-port",
                    "29555",
                    "--",
                ])
                .args(train)
                .arg(&out)
                .args(["--dist-timeout", "60"])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (node, o) in children.iter().enumerate() {
        assert!(o.status.success(), "host {node}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // The same job in one process (outside the namespaces), with the same global batch.
    let single = Command::new(kiln).args(train).arg(dir.0.join("single")).env("RUST_LOG", "warn").output().unwrap();
    assert!(single.status.success(), "{}", String::from_utf8_lossy(&single.stderr));

    let (a, b, one) =
        (params(&dir.0.join("host0")), params(&dir.0.join("host1/rank-1")), params(&dir.0.join("single")));
    assert_eq!(a.len(), one.len());
    for (((na, va), (nb, vb)), (no, vo)) in a.iter().zip(&b).zip(&one) {
        assert!(na == nb && na == no);
        assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{na}: hosts differ");
        let diff = va.iter().zip(vo).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 1e-5, "{na}: max |two hosts - one process| = {diff}");
    }
}
