//! Who shares with whom. The complete graph gives SecAgg (Bonawitz et al.
//! 2017); a sparse k-regular graph gives SecAgg+ (Bell et al. 2020), in which
//! each party masks with and shares secrets among only its `k` neighbours.
//!
//! The sparse graph is a Harary graph on a random permutation of the roster,
//! drawn from a public per-round seed, so every party and the coordinator
//! derive the same graph and no one chooses their neighbours.

use std::collections::BTreeMap;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::ids::PartyId;

/// The requested neighbour structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphSpec {
    /// Every party is every other party's neighbour.
    Complete,
    /// Each party has exactly `degree` neighbours (not counting itself).
    Regular { degree: u32 },
}

/// The graph of one round, over the roster.
#[derive(Clone, Debug)]
pub struct NeighbourGraph {
    parties: Vec<PartyId>,
    /// Position of each party on the ring (sparse graphs only).
    position: BTreeMap<PartyId, usize>,
    /// Parties in ring order (sparse graphs only).
    ring: Vec<PartyId>,
    degree: usize,
    complete: bool,
}

impl NeighbourGraph {
    /// `parties` must be sorted and distinct (the roster's order).
    pub fn new(parties: &[PartyId], spec: GraphSpec, seed: [u8; 32]) -> Result<Self, String> {
        let n = parties.len();
        if n < 2 {
            return Err(format!("a round needs at least 2 parties, got {n}"));
        }
        if parties.windows(2).any(|w| w[0] >= w[1]) {
            return Err("party ids must be sorted and distinct".into());
        }
        let degree = match spec {
            GraphSpec::Complete => n - 1,
            GraphSpec::Regular { degree } => degree as usize,
        };
        if degree == 0 || degree > n - 1 {
            return Err(format!(
                "neighbours per party must be between 1 and {} (parties − 1), got {degree}",
                n - 1
            ));
        }
        if degree % 2 == 1 && n % 2 == 1 && degree != n - 1 {
            return Err(format!(
                "an odd number of neighbours ({degree}) needs an even number of parties (got {n}); \
                 choose an even neighbour count"
            ));
        }
        let complete = degree == n - 1;
        let (ring, position) = if complete {
            (Vec::new(), BTreeMap::new())
        } else {
            let mut ring = parties.to_vec();
            let mut rng = ChaCha20Rng::from_seed(seed);
            // Fisher–Yates with rejection sampling: no modulo bias.
            for i in (1..n).rev() {
                let j = uniform_below(&mut rng, (i + 1) as u64) as usize;
                ring.swap(i, j);
            }
            let position = ring.iter().enumerate().map(|(i, &p)| (p, i)).collect();
            (ring, position)
        };
        Ok(NeighbourGraph {
            parties: parties.to_vec(),
            position,
            ring,
            degree,
            complete,
        })
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    pub fn degree(&self) -> usize {
        self.degree
    }

    pub fn parties(&self) -> &[PartyId] {
        &self.parties
    }

    pub fn contains(&self, p: PartyId) -> bool {
        self.parties.binary_search(&p).is_ok()
    }

    /// Whether `u` and `v` are distinct neighbours.
    pub fn adjacent(&self, u: PartyId, v: PartyId) -> bool {
        if u == v || !self.contains(u) || !self.contains(v) {
            return false;
        }
        if self.complete {
            return true;
        }
        let n = self.ring.len();
        let (pu, pv) = (self.position[&u], self.position[&v]);
        let d = pu.abs_diff(pv);
        let d = d.min(n - d);
        d <= self.degree / 2 || (self.degree % 2 == 1 && d == n / 2)
    }

    /// The neighbours of `u`, sorted, not including `u`.
    pub fn neighbours(&self, u: PartyId) -> Vec<PartyId> {
        if !self.contains(u) {
            return Vec::new();
        }
        if self.complete {
            return self.parties.iter().copied().filter(|&v| v != u).collect();
        }
        let n = self.ring.len();
        let pu = self.position[&u];
        let half = self.degree / 2;
        let mut out = Vec::with_capacity(self.degree);
        for off in 1..=half {
            out.push(self.ring[(pu + off) % n]);
            out.push(self.ring[(pu + n - off) % n]);
        }
        if self.degree % 2 == 1 {
            out.push(self.ring[(pu + n / 2) % n]);
        }
        out.sort_unstable();
        out
    }
}

fn uniform_below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % bound;
        }
    }
}

/// SecAgg+ parameters for `n` parties, in the manner of Bell et al. 2020:
/// the smallest even degree `k` and a threshold `t` such that, in every one of
/// the `n` neighbourhoods (the party and its `k` neighbours), by a union bound
/// (1) a coordinator lying about dropouts cannot reach both of a party's
/// secrets: `2t > (k + 1) + c` for the hard cap `c = max_colluding`, and
/// the number of corrupt holders reaches `2t − (k + 1)` with probability
/// at most 2^-σ at the given corruption rate (which also keeps it below
/// `t`); and (2) at least `t` holders survive except with probability 2^-η.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparseParams {
    pub degree: u32,
    pub threshold: usize,
}

pub fn recommend_sparse(
    n: usize,
    dropout_rate: f64,
    corruption_rate: f64,
    max_colluding: usize,
    sigma: f64,
    eta: f64,
) -> Option<SparseParams> {
    if n < 3 || !(0.0..1.0).contains(&dropout_rate) || !(0.0..1.0).contains(&corruption_rate) {
        return None;
    }
    let union = (n as f64).log2();
    let mut k = 2;
    while k < n {
        let holders = k + 1;
        let lowest = (holders + max_colluding) / 2 + 1;
        for t in lowest..=holders {
            if crate::config::check_collusion(t, holders, max_colluding, true).is_err() {
                continue;
            }
            let leak = binomial_tail_at_least(holders, corruption_rate, 2 * t - holders);
            let fail = binomial_tail_at_least(holders, dropout_rate, holders - t + 1);
            if leak.log2() + union <= -sigma && fail.log2() + union <= -eta {
                return Some(SparseParams {
                    degree: k as u32,
                    threshold: t,
                });
            }
        }
        k += 2;
    }
    None
}

/// P[Bin(n, p) ≥ k], summed in log space.
fn binomial_tail_at_least(n: usize, p: f64, k: usize) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if p == 0.0 {
        return 0.0;
    }
    let mut total = 0.0;
    for i in k..=n {
        let log_term = ln_choose(n, i) + i as f64 * p.ln() + (n - i) as f64 * (1.0 - p).ln();
        total += log_term.exp();
    }
    total
}

fn ln_choose(n: usize, k: usize) -> f64 {
    (1..=k)
        .map(|i| (((n - k + i) as f64) / i as f64).ln())
        .sum()
}
