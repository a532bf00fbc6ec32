//! `shroud bench service`: a load test of the networked service. The
//! coordinator runs as its own process (`shroud serve` over TLS on
//! loopback) so that its peak memory can be read alone; every party is a
//! tokio task in this process with its own connection. Parties send a
//! model update of `--len` coordinates through secure aggregation each
//! round without noise (noise is a party-side cost, measured by `shroud
//! bench encoding`); the reference is raw mask-PRG (ChaCha12) keystream throughput,
//! measured in the same run, for the mask bytes a round needs.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use shroud_crypto::IdentityKey;

use crate::data::Dataset;
use crate::job::{demo_identity_seed, demo_public_key_hex};
use crate::localnet::{free_port, ServeProcess};
use crate::net::api::JobStatus;
use crate::net::auth::Signer;
use crate::net::client::Client;
use crate::party::{self, PartyConfig};
use crate::policy::Policy;
use crate::sampling::standard_normal;
use crate::secagg_sim::measure_raw_keystream;

#[derive(Serialize)]
struct ServiceBench {
    parties: usize,
    coordinates: usize,
    bits: u8,
    neighbours: String,
    rounds: u32,
    /// Wall time of each round, from the previous round's end (the first
    /// from the job's start); includes the parties' local computation.
    round_seconds: Vec<f64>,
    mean_round_seconds: f64,
    /// Peak resident memory of the coordinator process (VmHWM).
    coordinator_peak_mib: f64,
    /// Its resident memory once started, before any job.
    coordinator_idle_mib: f64,
    raw_keystream_gb_per_s: f64,
    /// Mask keystream a round needs (all parties' pairwise and self masks,
    /// and the coordinator's self-mask removal), in bytes.
    keystream_bytes_per_round: u64,
    /// That keystream's generation time at the measured rate on one core.
    keystream_seconds_per_round: f64,
    round_vs_keystream: f64,
    cores: usize,
}

fn vm_kib(pid: u32, key: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The policy: a softmax model whose update has exactly `len` coordinates,
/// no rotation (no padding), no DP, every party two records.
fn bench_policy(n: usize, len: usize, bits: u8, neighbours: &str) -> Result<String> {
    const CLASSES: usize = 10;
    if len < 2 * CLASSES || len % CLASSES != 0 {
        bail!(
            "--len must be a multiple of {CLASSES}, at least {}",
            2 * CLASSES
        );
    }
    let inputs = len / CLASSES - 1;
    // A majority of each neighbourhood, as active mode requires.
    let holders = neighbours.parse::<usize>().map_or(n, |k| (k + 1).min(n));
    let threshold = holders / 2 + 1;
    let mut t = format!(
        "[consortium]\nid = \"bench\"\nthreshold = {threshold}\nmax_colluding = 0\nactive = true\n\
         neighbors = {neighbours}\nphase_timeout_secs = 600\n\n"
    );
    for i in 0..n {
        t += &format!(
            "[[party]]\nid = {i}\nname = \"p{i}\"\nidentity_key = \"{}\"\nrecords = 2\n\n",
            demo_public_key_hex(i as u32)
        );
    }
    t += &format!(
        "[privacy]\nunit = \"none\"\nepsilon = 1.0\ndelta = 1e-5\naccountant = \"zcdp\"\nclip_norm = 1.0\n\
         noise_multiplier = 1.0\nrounds = 50\nsampling_rate = 1.0\n\n\
         [encoding]\nbits = {bits}\nrotation = \"none\"\n\n\
         [strategy]\nname = \"fedavg\"\nmodel = \"softmax\"\ninputs = {inputs}\nhidden = []\nclasses = {CLASSES}\n\
         learning_rate = 0.1\nmomentum = 0.0\n\n\
         [audit]\nattacks = [\"loss\"]\nmax_auc = 0.6\nconfidence = 0.95\ncanaries = 0\n"
    );
    Ok(t)
}

pub fn service(parties: usize, len: usize, rounds: u32, neighbors: &str, json: bool) -> Result<()> {
    if parties < 3 {
        bail!("--parties must be at least 3");
    }
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let neighbours = match neighbors {
        "all" => "\"all\"".to_string(),
        k => k
            .parse::<u32>()
            .map(|k| k.to_string())
            .map_err(|_| anyhow::anyhow!("--neighbors must be a number or `all`, got `{k}`"))?,
    };
    let bits = 20;
    let dir = std::env::temp_dir().join(format!("shroud-bench-service-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let text = bench_policy(parties, len, bits, &neighbours)?;
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, &text)?;
    let policy = Policy::parse(&policy_path, &text)?;
    let (cert, key) =
        crate::net::tls::self_signed(&["127.0.0.1".into()]).map_err(anyhow::Error::msg)?;
    std::fs::write(dir.join("server.crt"), cert)?;
    crate::keyfile::write_secret(&dir.join("server.key"), key.as_bytes())
        .map_err(anyhow::Error::msg)?;
    let op_public =
        crate::keyfile::generate(&dir.join("operator.key")).map_err(anyhow::Error::msg)?;
    crate::keyfile::write_public(&dir.join("operator.pub"), &op_public)
        .map_err(anyhow::Error::msg)?;
    let port = free_port()?;
    let child = ServeProcess::start(&std::env::current_exe()?, &dir, port, &["--allow-no-dp"])
        .context("cannot start the coordinator")?;
    let pid = child.child.id();
    let raw = measure_raw_keystream();
    let url = format!("https://127.0.0.1:{port}");
    let tls =
        crate::net::tls::client_config(&dir.join("server.crt")).map_err(anyhow::Error::msg)?;
    let op_seed = crate::keyfile::load(&dir.join("operator.key")).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (times, idle) = rt.block_on(async {
        let mut op = Client::new(
            &url,
            Some(tls.clone()),
            IdentityKey::from_seed(&op_seed),
            Signer::Operator,
            Duration::from_secs(30),
        )?;
        // Wait for the coordinator to answer.
        let _: Vec<JobStatus> = op.json("/v1/jobs", "").await?;
        let idle = vm_kib(pid, "VmRSS:").unwrap_or(f64::NAN);
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let dim = policy.strategy.inputs;
        let tasks: Vec<_> = (0..parties)
            .map(|i| {
                let data = Dataset {
                    features: (0..2)
                        .map(|_| (0..dim).map(|_| standard_normal(&mut rng)).collect())
                        .collect(),
                    labels: (0..2).map(|_| (rng.next_u32() % 10) as usize).collect(),
                    classes: 10,
                    feature_names: (0..dim).map(|j| format!("x{j}")).collect(),
                };
                tokio::spawn(party::run(PartyConfig {
                    policy: policy.clone(),
                    id: i as u32,
                    identity_seed: demo_identity_seed(i as u32),
                    data,
                    coordinator: url.clone(),
                    tls: Some(tls.clone()),
                    job: Some("load".into()),
                    once: true,
                    patience: Duration::from_secs(120),
                    dropout: 0.0,
                    dropout_seed: 0,
                    randomness: crate::job::session::InputRandomness::Os,
                    journal: None,
                    tap: None,
                }))
            })
            .collect();
        let start = Instant::now();
        let mut s: JobStatus = op
            .post_json(
                "/v1/jobs",
                "load",
                &serde_json::json!({"job": "load", "rounds": rounds}),
            )
            .await?;
        let mut times = Vec::new();
        while times.len() < rounds as usize {
            s = op
                .json(
                    &format!("/v1/jobs/load?after={}&wait_ms=10000", s.version),
                    "load",
                )
                .await?;
            let done = s
                .history
                .iter()
                .filter(|r| r.round <= rounds && r.state != "running")
                .count();
            while times.len() < done {
                times.push(start.elapsed().as_secs_f64());
            }
            if !(s.state == "running" || s.state == "auditing") {
                break;
            }
        }
        if let Some(r) = s.history.iter().find(|r| r.state == "aborted") {
            bail!(
                "round {} aborted: {}",
                r.round,
                r.reason.clone().unwrap_or_default()
            );
        }
        let _ = op
            .post_json::<JobStatus>("/v1/jobs/load/abort", "load", &serde_json::json!({}))
            .await;
        for t in tasks {
            t.abort();
        }
        anyhow::Ok((times, idle))
    })?;
    let peak = vm_kib(pid, "VmHWM:").context("cannot read the coordinator's memory from /proc")?;
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    if times.len() < rounds as usize {
        bail!("only {} of {rounds} rounds finished", times.len());
    }
    let round_seconds: Vec<f64> = times
        .iter()
        .enumerate()
        .map(|(i, t)| t - if i == 0 { 0.0 } else { times[i - 1] })
        .collect();
    let mean = round_seconds.iter().sum::<f64>() / round_seconds.len() as f64;
    let k = match neighbours.parse::<u64>() {
        Ok(k) => k.min(parties as u64 - 1),
        Err(_) => parties as u64 - 1,
    };
    // Each party: k pairwise masks and its self mask; the coordinator: every
    // survivor's self mask.
    let stream = len as u64 * 4;
    let ks_bytes = parties as u64 * (k + 1) * stream + parties as u64 * stream;
    let ks_secs = ks_bytes as f64 / (raw * 1e9);
    let report = ServiceBench {
        parties,
        coordinates: len,
        bits,
        neighbours: if k == parties as u64 - 1 {
            format!("all ({k})")
        } else {
            k.to_string()
        },
        rounds,
        mean_round_seconds: mean,
        round_seconds,
        coordinator_peak_mib: peak / 1024.0,
        coordinator_idle_mib: idle / 1024.0,
        raw_keystream_gb_per_s: raw,
        keystream_bytes_per_round: ks_bytes,
        keystream_seconds_per_round: ks_secs,
        round_vs_keystream: mean / ks_secs,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} parties over HTTPS on loopback (coordinator in its own process), {} coordinates of {} bits, neighbours {}",
        report.parties, report.coordinates, report.bits, report.neighbours
    );
    for (i, s) in report.round_seconds.iter().enumerate() {
        println!("round {:>2}                  {s:>8.2} s", i + 1);
    }
    println!(
        "mean per round            {:>8.2} s",
        report.mean_round_seconds
    );
    println!(
        "coordinator memory        {:>8.1} MiB peak ({:.1} MiB idle)",
        report.coordinator_peak_mib, report.coordinator_idle_mib
    );
    println!(
        "raw ChaCha12 keystream    {:>8.2} GB/s (one core, this run)",
        report.raw_keystream_gb_per_s
    );
    println!(
        "mask keystream per round  {:>8.2} GB = {:.2} s at that rate; a round takes {:.2}x that ({} cores shared by all parties and the coordinator)",
        report.keystream_bytes_per_round as f64 / 1e9,
        report.keystream_seconds_per_round,
        report.round_vs_keystream,
        report.cores
    );
    Ok(())
}
