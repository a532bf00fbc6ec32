//! One whole secure-sum round in one process, every party included, timed
//! per actor and per phase, with the machine's raw ChaCha keystream
//! throughput measured in the same run as the physical reference.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use shroud_crypto::graph::recommend_sparse;
use shroud_crypto::prg::{raw_chacha20_keystream, raw_keystream};
use shroud_crypto::sim::{plain_sum, Actor, Meter, Scenario};
use shroud_crypto::{GraphSpec, PartyId, Phase};

/// How many neighbours each party has.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Neighbours {
    All,
    Fixed(u32),
    /// Chosen from n, the dropout rate and the tolerated corruption rate.
    Auto,
}

/// When the dropouts go silent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DropPhase {
    At(Phase),
    /// Each dropout picks a phase at random.
    Random,
}

#[derive(Clone, Debug)]
pub struct SimArgs {
    pub parties: u32,
    pub len: usize,
    pub dropout: f64,
    pub drop_phase: DropPhase,
    pub neighbours: Neighbours,
    pub threshold: Option<usize>,
    pub corruption: f64,
    /// Parties that may collude with the coordinator.
    pub max_colluding: usize,
    pub bits: u8,
    pub active: bool,
    pub seed: u64,
    /// Threads the parties' work is spread over (the coordinator uses one).
    pub threads: usize,
}

#[derive(Debug, Serialize)]
pub struct SimReport {
    pub parties: u32,
    pub len: usize,
    /// Neighbours per party, not counting itself (`parties − 1` for `all`).
    pub neighbors: u32,
    pub graph: &'static str,
    pub threshold: usize,
    pub bits: u8,
    pub active: bool,
    pub seed: u64,
    pub threads: usize,
    pub dropout: f64,
    pub drop_phase: String,
    /// Parties that dropped out, in any phase.
    pub dropped: usize,
    pub dropped_parties: Vec<u32>,
    /// Parties whose input is in the sum.
    pub contributors: usize,
    /// Parties whose input is not in the sum (dropped before their masked
    /// input arrived).
    pub excluded: usize,
    /// The unmasked sum equals the plain sum of the contributors' inputs.
    pub exact: bool,
    /// Mean time per party over all its phases.
    pub client_ms_mean: f64,
    /// Mean time per party for the masked-input phase (opening shares,
    /// key agreement, keystream, masking).
    pub client_masking_ms_mean: f64,
    pub client_keystream_bytes_mean: f64,
    /// Time to generate `client_keystream_bytes_mean` at the raw rate.
    pub client_keystream_ms_ref: f64,
    pub client_masking_vs_keystream: f64,
    /// The coordinator's time over all phases.
    pub server_ms: f64,
    /// The coordinator's time in the unmasking phase (reconstruction, key
    /// agreement with dropouts' keys, mask regeneration).
    pub server_unmask_ms: f64,
    pub keystream_bytes_server: u64,
    /// Time to generate `keystream_bytes_server` at the raw rate.
    pub server_keystream_ms_ref: f64,
    pub server_unmask_vs_keystream: f64,
    /// Raw keystream of the mask PRG (ChaCha12), measured in the same run.
    pub raw_keystream_gb_per_s: f64,
    /// Raw ChaCha20 keystream (`rand_chacha`), for comparison.
    pub raw_chacha20_gb_per_s: f64,
    /// Mean per-party time in each phase, in ms.
    pub client_ms_by_phase: BTreeMap<&'static str, f64>,
    /// The coordinator's time in each phase, in ms.
    pub server_ms_by_phase: BTreeMap<&'static str, f64>,
    /// Wall time of the round, every party included, in this one process.
    pub wall_ms: f64,
}

#[derive(Default)]
struct Timings {
    by: BTreeMap<(bool, Phase), Duration>,
    per_party: BTreeMap<u32, Duration>,
}

/// Wall-clock time per actor and phase, summed over threads.
#[derive(Default)]
struct ClockMeter(Mutex<Timings>);

impl Meter for ClockMeter {
    fn measure<R>(&self, actor: Actor, phase: Phase, work: impl FnOnce() -> R) -> R {
        let start = Instant::now();
        let r = work();
        let d = start.elapsed();
        let mut t = self.0.lock().expect("meter lock");
        let is_party = matches!(actor, Actor::Party(_));
        *t.by.entry((is_party, phase)).or_default() += d;
        if let Actor::Party(p) = actor {
            *t.per_party.entry(p.0).or_default() += d;
        }
        r
    }
}

impl Timings {
    fn total(&self, party: bool) -> Duration {
        self.by
            .iter()
            .filter(|((p, _), _)| *p == party)
            .map(|(_, d)| *d)
            .sum()
    }

    fn phase(&self, party: bool, phase: Phase) -> Duration {
        self.by.get(&(party, phase)).copied().unwrap_or_default()
    }
}

/// Raw keystream throughput of the mask PRG (ChaCha12) in GB/s (10^9
/// bytes): best of three passes over 64 MiB.
pub fn measure_raw_keystream() -> f64 {
    best_rate(raw_keystream)
}

/// The same for ChaCha20 (`rand_chacha`), for comparison.
pub fn measure_raw_chacha20() -> f64 {
    best_rate(raw_chacha20_keystream)
}

fn best_rate(generate: fn([u8; 32], &mut [u8])) -> f64 {
    let mut buf = vec![0u8; 64 << 20];
    let mut best = f64::MAX;
    for i in 0..3u8 {
        let start = Instant::now();
        generate([i; 32], &mut buf);
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(&buf);
    }
    buf.len() as f64 / best / 1e9
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Checks the arguments and resolves the graph and threshold.
pub fn resolve(args: &SimArgs) -> Result<Scenario, String> {
    let n = args.parties;
    if n < 2 {
        return Err(format!("--parties must be at least 2, got {n}"));
    }
    if !(8..=32).contains(&args.bits) {
        return Err(format!(
            "--bits must be between 8 and 32, got {}",
            args.bits
        ));
    }
    if args.len == 0 {
        return Err("--len must be at least 1".into());
    }
    if !(0.0..1.0).contains(&args.dropout) {
        return Err(format!("--dropout must be in [0, 1), got {}", args.dropout));
    }
    let c = args.max_colluding;
    // The smallest threshold the collusion bound allows (a majority at least).
    let lowest = |holders: usize| {
        if args.active {
            (holders + c) / 2 + 1
        } else {
            (holders / 2 + 1).max(c + 1)
        }
    };
    let (graph, default_t) = match args.neighbours {
        Neighbours::All => (GraphSpec::Complete, lowest(n as usize)),
        Neighbours::Fixed(k) => {
            if k == 0 || k >= n {
                return Err(format!(
                    "--neighbors must be between 1 and {} (parties − 1) or `all`, got {k}",
                    n - 1
                ));
            }
            let graph = if k == n - 1 {
                GraphSpec::Complete
            } else {
                GraphSpec::Regular { degree: k }
            };
            (graph, lowest(k as usize + 1))
        }
        Neighbours::Auto => {
            let p = recommend_sparse(n as usize, args.dropout.max(0.01), args.corruption, c, 40.0, 20.0)
                .filter(|p| p.degree < n - 1)
                .ok_or_else(|| {
                    format!(
                        "no sparse graph fits {n} parties at dropout {} and corruption {}; use --neighbors all",
                        args.dropout, args.corruption
                    )
                })?;
            (GraphSpec::Regular { degree: p.degree }, p.threshold)
        }
    };
    let holders = match graph {
        GraphSpec::Complete => n as usize,
        GraphSpec::Regular { degree } => degree as usize + 1,
    };
    let threshold = args.threshold.unwrap_or(default_t);
    if threshold > n as usize {
        return Err(format!("--threshold {threshold} is above --parties {n}"));
    }
    if threshold < 2 || threshold > holders {
        return Err(format!(
            "--threshold must be between 2 and {holders} (a party and its neighbours), got {threshold}"
        ));
    }
    shroud_crypto::config::check_collusion(threshold, holders, c, args.active)
        .map_err(|e| format!("--threshold {threshold} with --colluding {c}: {e}"))?;
    let dropped = (args.dropout * f64::from(n)).round() as usize;
    if n as usize - dropped < threshold {
        return Err(format!(
            "--dropout {} drops {dropped} of {n} parties, leaving fewer than --threshold {threshold}; \
             the round would abort",
            args.dropout
        ));
    }
    Ok(Scenario {
        parties: n,
        len: args.len,
        bits: args.bits,
        threshold,
        max_colluding: c,
        graph,
        active: args.active,
        seed: args.seed,
    })
}

pub fn run(args: &SimArgs) -> Result<SimReport, String> {
    let scenario = resolve(args)?;
    let n = scenario.parties;
    let raw = measure_raw_keystream();

    // Choose the dropouts and their phases from the seed.
    let mut rng = ChaCha20Rng::seed_from_u64(args.seed ^ 0x5eed_d40b);
    let mut ids: Vec<u32> = (0..n).collect();
    for i in (1..ids.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        ids.swap(i, j);
    }
    let count = (args.dropout * f64::from(n)).round() as usize;
    let mut dropped: Vec<(u32, Phase)> = ids[..count]
        .iter()
        .map(|&p| {
            let phase = match args.drop_phase {
                DropPhase::At(ph) => ph,
                DropPhase::Random => Phase::ALL[(rng.next_u32() % 5) as usize],
            };
            (p, phase)
        })
        .collect();
    dropped.sort();

    let inputs = scenario.inputs();
    let start = Instant::now();
    let mut sim = scenario
        .sim(&inputs, ClockMeter::default())
        .map_err(|e| e.to_string())?;
    for &(p, phase) in &dropped {
        sim.drop_party(PartyId(p), phase);
    }
    sim.set_threads(args.threads);
    let agg = sim.run().map_err(|e| e.to_string())?;
    let wall = start.elapsed();
    let exact = agg.sum == plain_sum(&inputs, &agg.contributors, scenario.bits);

    let meter = sim.meter.0.lock().expect("meter lock");
    let active_parties = meter.per_party.len().max(1) as f64;
    let keystream_party: u64 = (0..n)
        .filter_map(|i| sim.party(PartyId(i)))
        .map(|p| p.stats().keystream_bytes)
        .sum();
    let masked_parties = (0..n)
        .filter_map(|i| sim.party(PartyId(i)))
        .filter(|p| p.stats().keystream_bytes > 0)
        .count()
        .max(1) as f64;
    let client_ks_mean = keystream_party as f64 / masked_parties;
    let client_masking = ms(meter.phase(true, Phase::MaskedInput)) / masked_parties;
    let client_ks_ref = client_ks_mean / (raw * 1e9) * 1e3;
    let server_ks = sim.coordinator.stats().keystream_bytes;
    let server_ks_ref = server_ks as f64 / (raw * 1e9) * 1e3;
    let server_unmask = ms(meter.phase(false, Phase::Unmasking));
    let degree = match scenario.graph {
        GraphSpec::Complete => n - 1,
        GraphSpec::Regular { degree } => degree,
    };
    Ok(SimReport {
        parties: n,
        len: scenario.len,
        neighbors: degree,
        graph: match scenario.graph {
            GraphSpec::Complete => "complete",
            GraphSpec::Regular { .. } => "regular",
        },
        threshold: scenario.threshold,
        bits: scenario.bits,
        active: scenario.active,
        seed: scenario.seed,
        threads: args.threads,
        dropout: args.dropout,
        drop_phase: match args.drop_phase {
            DropPhase::At(p) => p.name().to_string(),
            DropPhase::Random => "random".into(),
        },
        dropped: dropped.len(),
        dropped_parties: dropped.iter().map(|(p, _)| *p).collect(),
        contributors: agg.contributors.len(),
        excluded: agg.dropped.len(),
        exact,
        client_ms_mean: ms(meter.total(true)) / active_parties,
        client_masking_ms_mean: client_masking,
        client_keystream_bytes_mean: client_ks_mean,
        client_keystream_ms_ref: client_ks_ref,
        client_masking_vs_keystream: client_masking / client_ks_ref,
        server_ms: ms(meter.total(false)),
        server_unmask_ms: server_unmask,
        keystream_bytes_server: server_ks,
        server_keystream_ms_ref: server_ks_ref,
        server_unmask_vs_keystream: if server_ks_ref > 0.0 {
            server_unmask / server_ks_ref
        } else {
            0.0
        },
        raw_keystream_gb_per_s: raw,
        raw_chacha20_gb_per_s: measure_raw_chacha20(),
        client_ms_by_phase: Phase::ALL
            .iter()
            .map(|&p| (p.name(), ms(meter.phase(true, p)) / active_parties))
            .collect(),
        server_ms_by_phase: Phase::ALL
            .iter()
            .map(|&p| (p.name(), ms(meter.phase(false, p))))
            .collect(),
        wall_ms: ms(wall),
    })
}
