//! Party subsets of controlled heterogeneity, after Ray & Esterle's ModelNet
//! benchmark (arXiv 2506.00476): from any labelled set, the per-class
//! centroids are clustered by seeded k-means, and each party's label set is
//! drawn
//!
//! - **R** (random): `k` classes uniformly at random;
//! - **D** (diverse): `k` classes from `k` different clusters, dealt so that
//!   every class is held by some party when `parties · k ≥ classes` and no
//!   cluster has more classes than there are parties (a party takes at
//!   most one class of a cluster);
//! - **S** (similar): `k` classes from one base cluster and the clusters
//!   nearest to it.
//!
//! The records of each class are then dealt without overlap among the
//! parties that hold the class; a class no party holds is left out (the
//! statistics' `coverage` says how much). Everything follows from the seed.
//!
//! [`PartitionStats`] gives what the paper reports per benchmark. The label
//! sets (and so the client graph) reveal which classes each party holds:
//! they are a benchmark artefact, never something a coordinator receives.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::data::{shuffled, Dataset, Partition, PartitionError};

pub use crate::data::LabelSets;

/// Indices of each party's records of `d`: any [`Partition`], ModelNet
/// label sets included.
pub fn partition_dataset(
    d: &Dataset,
    parties: usize,
    how: &Partition,
    seed: u64,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    match *how {
        Partition::ModelNet { sets, k, clusters } => {
            let clusters = if clusters == 0 {
                let root = (d.classes as f64).sqrt().ceil() as usize;
                let least = if sets == LabelSets::Diverse { k } else { 1 };
                root.max(least).min(d.classes)
            } else {
                clusters
            };
            Ok(partition(d, parties, sets, k, clusters, seed)?.records)
        }
        _ => crate::data::partition(&d.labels, d.classes, parties, how, seed),
    }
}

/// Per-class mean feature vectors (a class without records gets zeros).
pub fn class_centroids(d: &Dataset) -> Vec<Vec<f64>> {
    let dim = d.dim();
    let mut sums = vec![vec![0.0; dim]; d.classes];
    let mut counts = vec![0usize; d.classes];
    for (x, &y) in d.features.iter().zip(&d.labels) {
        sums[y].iter_mut().zip(x).for_each(|(s, v)| *s += v);
        counts[y] += 1;
    }
    for (s, &n) in sums.iter_mut().zip(&counts) {
        if n > 0 {
            s.iter_mut().for_each(|v| *v /= n as f64);
        }
    }
    sums
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f64>()
        .sqrt()
}

/// Seeded k-means (k-means++ start, Lloyd's iterations) of `points` into
/// `k` clusters: each point's cluster, every cluster non-empty.
pub fn kmeans(points: &[Vec<f64>], k: usize, seed: u64) -> Vec<usize> {
    let n = points.len();
    assert!(k >= 1 && k <= n, "k-means needs 1 ≤ k ≤ points");
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x6b6d_6561_6e73);
    let mut centres = vec![points[(rng.next_u64() % n as u64) as usize].clone()];
    while centres.len() < k {
        let d2: Vec<f64> = points
            .iter()
            .map(|p| {
                centres
                    .iter()
                    .map(|c| distance(p, c).powi(2))
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut u = crate::sampling::uniform_open(&mut rng) * total;
            d2.iter()
                .position(|&w| {
                    u -= w;
                    u <= 0.0
                })
                .unwrap_or(n - 1)
        } else {
            centres.len()
        };
        centres.push(points[pick].clone());
    }
    let mut assign = vec![0usize; n];
    for _ in 0..100 {
        let next: Vec<usize> = points
            .iter()
            .map(|p| {
                (0..k)
                    .min_by(|&a, &b| distance(p, &centres[a]).total_cmp(&distance(p, &centres[b])))
                    .expect("k ≥ 1")
            })
            .collect();
        let settled = next == assign;
        assign = next;
        // An emptied cluster takes the point farthest from its centre.
        for c in 0..k {
            if !assign.contains(&c) {
                let far = (0..n)
                    .max_by(|&a, &b| {
                        distance(&points[a], &centres[assign[a]])
                            .total_cmp(&distance(&points[b], &centres[assign[b]]))
                    })
                    .expect("points");
                assign[far] = c;
            }
        }
        for (c, centre) in centres.iter_mut().enumerate() {
            let members: Vec<&Vec<f64>> = (0..n)
                .filter(|&i| assign[i] == c)
                .map(|i| &points[i])
                .collect();
            for (j, v) in centre.iter_mut().enumerate() {
                *v = members.iter().map(|m| m[j]).sum::<f64>() / members.len() as f64;
            }
        }
        if settled {
            break;
        }
    }
    assign
}

/// The draw of one benchmark: each party's classes and records.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelNetPartition {
    /// Cluster of each class.
    pub clusters: Vec<usize>,
    /// Each party's classes, ascending.
    pub label_sets: Vec<Vec<usize>>,
    /// Each party's records (indices into the data set).
    pub records: Vec<Vec<usize>>,
}

/// Draws label sets `how` (`k` classes each, `clusters` clusters of the
/// class centroids) for `parties` parties and deals `d`'s records.
pub fn partition(
    d: &Dataset,
    parties: usize,
    how: LabelSets,
    k: usize,
    clusters: usize,
    seed: u64,
) -> Result<ModelNetPartition, PartitionError> {
    let c = d.classes;
    if parties == 0 {
        return Err(PartitionError("needs at least one party".into()));
    }
    if k == 0 || k > c {
        return Err(PartitionError(format!(
            "classes per party must be from 1 to {c}, got {k}"
        )));
    }
    if clusters == 0 || clusters > c {
        return Err(PartitionError(format!(
            "clusters must be from 1 to the {c} classes, got {clusters}"
        )));
    }
    if how == LabelSets::Diverse && k > clusters {
        return Err(PartitionError(format!(
            "D takes each of a party's {k} classes from a different cluster: needs at least \
             {k} clusters, got {clusters}"
        )));
    }
    let centroids = class_centroids(d);
    let cluster_of = kmeans(&centroids, clusters, seed);
    let members: Vec<Vec<usize>> = (0..clusters)
        .map(|g| (0..c).filter(|&y| cluster_of[y] == g).collect())
        .collect();
    if how == LabelSets::Diverse {
        // D promises every class a holder: the slots must suffice, and a
        // party takes at most one class of a cluster.
        let largest = members.iter().map(Vec::len).max().unwrap_or(0);
        if parties * k < c || largest > parties {
            return Err(PartitionError(format!(
                "D cannot give every class a holder: {parties} parties × {k} classes for {c} \
                 classes, and the largest of the {clusters} clusters of class centroids has \
                 {largest} classes for {parties} parties (each takes at most one per cluster); \
                 use more parties, classes per party or clusters"
            )));
        }
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x6d6f_6465_6c6e_6574);
    let label_sets: Vec<Vec<usize>> = match how {
        LabelSets::Random => (0..parties)
            .map(|_| {
                let mut s: Vec<usize> = shuffled(c, &mut rng).into_iter().take(k).collect();
                s.sort_unstable();
                s
            })
            .collect(),
        LabelSets::Diverse => {
            // Cover first: every class once, clusters laid end to end
            // (largest first, classes shuffled) and dealt round-robin over
            // the parties in a shuffled order. A cluster of at most
            // `parties` classes is a run shorter than a lap, so no party
            // takes two classes of one cluster, and with parties · k ≥
            // classes no party takes more than k.
            let mut order: Vec<usize> = shuffled(clusters, &mut rng);
            order.sort_by_key(|&g| std::cmp::Reverse(members[g].len()));
            let laps: Vec<usize> = order
                .iter()
                .flat_map(|&g| {
                    let o = shuffled(members[g].len(), &mut rng);
                    o.into_iter().map(|i| members[g][i]).collect::<Vec<_>>()
                })
                .collect();
            let seats = shuffled(parties, &mut rng);
            let mut sets = vec![Vec::new(); parties];
            let mut held = vec![0usize; c];
            for (j, &y) in laps.iter().enumerate() {
                let p = seats[j % parties];
                let taken = |s: &Vec<usize>| s.iter().any(|&x| cluster_of[x] == cluster_of[y]);
                if sets[p].len() < k && !taken(&sets[p]) {
                    sets[p].push(y);
                    held[y] += 1;
                }
            }
            // Then fill each party up to k from clusters it has none of,
            // the least-held class of the least-held such cluster first.
            let tie: Vec<usize> = shuffled(c, &mut rng);
            for set in sets.iter_mut() {
                while set.len() < k {
                    let y = (0..c)
                        .filter(|&y| set.iter().all(|&x| cluster_of[x] != cluster_of[y]))
                        .min_by_key(|&y| (held[y], tie[y]))
                        .expect("k ≤ clusters leaves a cluster to draw from");
                    set.push(y);
                    held[y] += 1;
                }
                set.sort_unstable();
            }
            sets
        }
        LabelSets::Similar => {
            let centre = |g: usize| -> Vec<f64> {
                let dim = centroids[0].len();
                (0..dim)
                    .map(|j| {
                        members[g].iter().map(|&y| centroids[y][j]).sum::<f64>()
                            / members[g].len() as f64
                    })
                    .collect()
            };
            let centres: Vec<Vec<f64>> = (0..clusters).map(centre).collect();
            (0..parties)
                .map(|_| {
                    let base = (rng.next_u64() % clusters as u64) as usize;
                    let mut near: Vec<usize> = (0..clusters).collect();
                    near.sort_by(|&a, &b| {
                        distance(&centres[base], &centres[a])
                            .total_cmp(&distance(&centres[base], &centres[b]))
                            .then(a.cmp(&b))
                    });
                    // The base cluster's classes, then the nearest clusters',
                    // each cluster's in a random order, until k.
                    let mut s: Vec<usize> = near
                        .iter()
                        .flat_map(|&g| {
                            let order = shuffled(members[g].len(), &mut rng);
                            order.into_iter().map(|i| members[g][i]).collect::<Vec<_>>()
                        })
                        .take(k)
                        .collect();
                    s.sort_unstable();
                    s
                })
                .collect()
        }
    };
    // Each class's records, shuffled, dealt round-robin over its holders.
    let mut records = vec![Vec::new(); parties];
    for y in 0..c {
        let holders: Vec<usize> = (0..parties)
            .filter(|&p| label_sets[p].contains(&y))
            .collect();
        let of_class: Vec<usize> = (0..d.len()).filter(|&i| d.labels[i] == y).collect();
        if holders.is_empty() {
            continue;
        }
        let order = shuffled(of_class.len(), &mut rng);
        for (j, i) in order.into_iter().enumerate() {
            records[holders[j % holders.len()]].push(of_class[i]);
        }
    }
    records.iter_mut().for_each(|r| r.sort_unstable());
    if let Some(p) = records.iter().position(Vec::is_empty) {
        return Err(PartitionError(format!(
            "party {p} received no records (its classes have too few)"
        )));
    }
    Ok(ModelNetPartition {
        clusters: cluster_of,
        label_sets,
        records,
    })
}

/// What a benchmark's party subsets look like.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartitionStats {
    pub parties: usize,
    pub classes: usize,
    /// Records each party holds.
    pub sizes: Vec<usize>,
    /// Each party's classes (those it holds at least one record of).
    pub label_sets: Vec<Vec<usize>>,
    /// Parties holding each class.
    pub class_occurrence: Vec<usize>,
    /// Share of the classes some party holds.
    pub coverage: f64,
    /// Mean over party pairs of |Lᵢ ∩ Lⱼ| / |Lᵢ ∪ Lⱼ|.
    pub mean_jaccard: f64,
    /// The client graph: Jaccard overlap of every pair of parties (0 on
    /// the diagonal).
    pub pairwise_overlap: Vec<Vec<f64>>,
    /// Mean over parties of the mean distance between the centroids of its
    /// classes, over the mean distance between all class centroids: about
    /// 1 for random label sets, above for diverse, below for similar (0 for
    /// a party with one class).
    pub diversity: f64,
}

/// The statistics of `records` (each party's indices into `d`).
pub fn stats(d: &Dataset, records: &[Vec<usize>]) -> PartitionStats {
    let c = d.classes;
    let label_sets: Vec<Vec<usize>> = records
        .iter()
        .map(|r| {
            let mut s: Vec<usize> = r.iter().map(|&i| d.labels[i]).collect();
            s.sort_unstable();
            s.dedup();
            s
        })
        .collect();
    let n = label_sets.len();
    let class_occurrence: Vec<usize> = (0..c)
        .map(|y| label_sets.iter().filter(|s| s.contains(&y)).count())
        .collect();
    let jaccard = |a: &[usize], b: &[usize]| {
        let inter = a.iter().filter(|y| b.contains(y)).count() as f64;
        let union = (a.len() + b.len()) as f64 - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    };
    let mut pairwise_overlap = vec![vec![0.0; n]; n];
    let mut sum = 0.0;
    for i in 0..n {
        for j in i + 1..n {
            let v = jaccard(&label_sets[i], &label_sets[j]);
            pairwise_overlap[i][j] = v;
            pairwise_overlap[j][i] = v;
            sum += v;
        }
    }
    let pairs = n * n.saturating_sub(1) / 2;
    let centroids = class_centroids(d);
    let mean_distance = |set: &[usize]| -> f64 {
        let mut s = 0.0;
        let mut m = 0;
        for (a, &x) in set.iter().enumerate() {
            for &y in &set[a + 1..] {
                s += distance(&centroids[x], &centroids[y]);
                m += 1;
            }
        }
        if m > 0 {
            s / m as f64
        } else {
            0.0
        }
    };
    let all: Vec<usize> = (0..c).collect();
    let reference = mean_distance(&all);
    let diversity = if reference > 0.0 && n > 0 {
        label_sets.iter().map(|s| mean_distance(s)).sum::<f64>() / n as f64 / reference
    } else {
        0.0
    };
    PartitionStats {
        parties: n,
        classes: c,
        sizes: records.iter().map(Vec::len).collect(),
        class_occurrence: class_occurrence.clone(),
        coverage: class_occurrence.iter().filter(|&&k| k > 0).count() as f64 / c.max(1) as f64,
        mean_jaccard: if pairs > 0 { sum / pairs as f64 } else { 0.0 },
        pairwise_overlap,
        diversity,
        label_sets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six classes whose centroids sit in three tight pairs far apart:
    /// classes {0, 1} near (0, 0), {2, 3} near (10, 0), {4, 5} near (0, 10);
    /// `per_class` records each.
    fn pairs_of_classes(per_class: usize) -> Dataset {
        let centre = [
            (0.0, 0.0),
            (0.5, 0.0),
            (10.0, 0.0),
            (10.5, 0.0),
            (0.0, 10.0),
            (0.5, 10.0),
        ];
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for (y, &(cx, cy)) in centre.iter().enumerate() {
            for i in 0..per_class {
                let jitter = (i as f64 - (per_class as f64 - 1.0) / 2.0) * 0.01;
                features.push(vec![cx + jitter, cy - jitter]);
                labels.push(y);
            }
        }
        Dataset {
            features,
            labels,
            classes: 6,
            feature_names: vec!["x".into(), "y".into()],
        }
    }

    #[test]
    fn kmeans_finds_the_three_pairs() {
        let d = pairs_of_classes(4);
        let c = kmeans(&class_centroids(&d), 3, 7);
        assert_eq!(c[0], c[1]);
        assert_eq!(c[2], c[3]);
        assert_eq!(c[4], c[5]);
        assert!(c[0] != c[2] && c[2] != c[4] && c[0] != c[4], "{c:?}");
    }

    #[test]
    fn every_partitioner_is_reproducible_and_deals_each_held_record_once() {
        let d = pairs_of_classes(12);
        for how in [LabelSets::Random, LabelSets::Diverse, LabelSets::Similar] {
            for seed in [1, 2, 3] {
                let a = partition(&d, 4, how, 2, 3, seed).unwrap();
                assert_eq!(a, partition(&d, 4, how, 2, 3, seed).unwrap(), "{how:?}");
                let mut dealt: Vec<usize> = a.records.iter().flatten().copied().collect();
                let n = dealt.len();
                dealt.sort_unstable();
                dealt.dedup();
                assert_eq!(dealt.len(), n, "{how:?}: a record dealt twice");
                // Exactly the records of the classes some party holds.
                let held: Vec<usize> = (0..d.len())
                    .filter(|&i| a.label_sets.iter().any(|s| s.contains(&d.labels[i])))
                    .collect();
                assert_eq!(dealt, held, "{how:?} seed {seed}");
                for (p, set) in a.label_sets.iter().enumerate() {
                    assert_eq!(set.len(), 2);
                    assert!(a.records[p].iter().all(|&i| set.contains(&d.labels[i])));
                }
            }
            // Another seed draws another benchmark.
            let draws: std::collections::BTreeSet<Vec<Vec<usize>>> = (1..=6)
                .map(|s| partition(&d, 4, how, 2, 3, s).unwrap().label_sets)
                .collect();
            assert!(
                draws.len() > 1,
                "{how:?}: every seed drew the same label sets"
            );
        }
    }

    #[test]
    fn diverse_covers_every_class_from_distinct_clusters_and_similar_stays_close() {
        let d = pairs_of_classes(12);
        for seed in 1..=5 {
            let div = partition(&d, 3, LabelSets::Diverse, 2, 3, seed).unwrap();
            let held: std::collections::BTreeSet<usize> =
                div.label_sets.iter().flatten().copied().collect();
            assert_eq!(
                held.len(),
                6,
                "D must cover every class: {:?}",
                div.label_sets
            );
            for s in &div.label_sets {
                assert_ne!(div.clusters[s[0]], div.clusters[s[1]], "{s:?}");
            }
            // S with two classes of a pair-clustered set: one pair each.
            let sim = partition(&d, 3, LabelSets::Similar, 2, 3, seed).unwrap();
            for s in &sim.label_sets {
                assert_eq!(sim.clusters[s[0]], sim.clusters[s[1]], "{s:?}");
            }
            let (sd, ss) = (stats(&d, &div.records), stats(&d, &sim.records));
            assert!(
                sd.diversity > 1.0 && ss.diversity < 0.1,
                "{} {}",
                sd.diversity,
                ss.diversity
            );
        }
        assert!(partition(&d, 3, LabelSets::Diverse, 4, 3, 1).is_err());
        // Too few slots to hold every class is refused, not half done.
        let e = partition(&d, 2, LabelSets::Diverse, 2, 3, 1).unwrap_err();
        assert!(e.0.contains("every class a holder"), "{e}");
    }

    /// Three parties holding classes {0, 1}, {1, 2} and {3} of a four-class
    /// set: every statistic by hand.
    #[test]
    fn statistics_match_a_hand_computed_case() {
        // Centroids on a line: class y at x = y.
        let d = Dataset {
            features: (0..8).map(|i| vec![(i / 2) as f64]).collect(),
            labels: (0..8).map(|i| i / 2).collect(),
            classes: 5,
            feature_names: vec!["x".into()],
        };
        // Records 2i and 2i+1 are of class i; class 4 has none.
        let records = vec![vec![0, 1, 2], vec![3, 4], vec![6, 7]];
        let s = stats(&d, &records);
        assert_eq!(s.sizes, vec![3, 2, 2]);
        assert_eq!(s.label_sets, vec![vec![0, 1], vec![1, 2], vec![3]]);
        assert_eq!(s.class_occurrence, vec![1, 2, 1, 1, 0]);
        assert!((s.coverage - 0.8).abs() < 1e-12);
        // Pairs: {0,1}-{1,2}: 1/3; {0,1}-{3}: 0; {1,2}-{3}: 0.
        assert!((s.pairwise_overlap[0][1] - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.pairwise_overlap[1][0], s.pairwise_overlap[0][1]);
        assert_eq!(s.pairwise_overlap[0][2], 0.0);
        assert!((s.mean_jaccard - 1.0 / 9.0).abs() < 1e-12);
        // Class 4's centroid is the origin (no records): distances between
        // centroids 0, 1, 2, 3, 0 average 1.6 over the 10 pairs; the
        // parties' own average 1, 1 and 0.
        let reference = (1.0 + 2.0 + 3.0 + 0.0 + 1.0 + 2.0 + 1.0 + 1.0 + 2.0 + 3.0) / 10.0;
        assert!(
            (s.diversity - (2.0 / 3.0) / reference).abs() < 1e-12,
            "{}",
            s.diversity
        );
    }
}
