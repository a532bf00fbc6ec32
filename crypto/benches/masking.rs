//! Mask expansion and unmasking, each next to raw ChaCha20 keystream
//! generation of the same number of bytes measured in the same run.
//! Criterion reports every figure as bytes per second, so each protocol
//! step reads directly as a fraction of the physical reference.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shroud_crypto::prg::{apply_all, raw_keystream, MaskSeed, MaskStream, Sign};
use shroud_crypto::sim::{NoMeter, Scenario};
use shroud_crypto::{GraphSpec, PartyId, Phase};

const LEN: usize = 100_000;

fn streams(n: usize, sign: Sign) -> Vec<(MaskStream, Sign)> {
    (0..n)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            (MaskStream::new(&MaskSeed::for_testing(seed)), sign)
        })
        .collect()
}

fn keystream_vs_masking(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask-expansion");
    for n_streams in [1usize, 8, 100] {
        let bytes = (n_streams * LEN * 4) as u64;
        g.throughput(Throughput::Bytes(bytes));
        g.bench_with_input(
            BenchmarkId::new("raw-keystream", n_streams),
            &n_streams,
            |b, &n| {
                let mut buf = vec![0u8; n * LEN * 4];
                b.iter(|| raw_keystream([1; 32], &mut buf));
            },
        );
        g.bench_with_input(
            BenchmarkId::new("apply-masks", n_streams),
            &n_streams,
            |b, &n| {
                let mut v = vec![0u32; LEN];
                let mut s = streams(n, Sign::Add);
                b.iter(|| apply_all(&mut v, &mut s));
            },
        );
    }
    g.finish();
}

/// The coordinator's whole unmasking phase for a small SecAgg+ round with
/// dropouts after sharing: reconstruction, key agreement with the
/// dropouts' keys and mask regeneration.
fn unmasking(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmasking");
    g.sample_size(10);
    let s = Scenario {
        parties: 40,
        len: LEN,
        bits: 32,
        threshold: 4,
        max_colluding: 0,
        graph: GraphSpec::Regular { degree: 6 },
        active: false,
        seed: 5,
    };
    let inputs = s.inputs();
    // Keystream the coordinator regenerates, measured once.
    let bytes = {
        let mut sim = s.sim(&inputs, NoMeter).unwrap();
        for p in 0..4 {
            sim.drop_party(PartyId(p * 10), Phase::MaskedInput);
        }
        sim.run().unwrap();
        sim.coordinator.stats().keystream_bytes
    };
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("raw-keystream-same-bytes", |b| {
        let mut buf = vec![0u8; bytes as usize];
        b.iter(|| raw_keystream([2; 32], &mut buf));
    });
    g.bench_function("coordinator-unmask", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let meter = UnmaskTimer::default();
                let mut sim = s.sim(&inputs, meter).unwrap();
                for p in 0..4 {
                    sim.drop_party(PartyId(p * 10), Phase::MaskedInput);
                }
                sim.run().unwrap();
                total += *sim.meter.0.lock().unwrap();
            }
            total
        })
    });
    g.finish();
}

/// Times only the coordinator's work in the unmasking phase.
#[derive(Default)]
struct UnmaskTimer(std::sync::Mutex<std::time::Duration>);

impl shroud_crypto::sim::Meter for UnmaskTimer {
    fn measure<R>(
        &self,
        actor: shroud_crypto::sim::Actor,
        phase: Phase,
        work: impl FnOnce() -> R,
    ) -> R {
        if actor != shroud_crypto::sim::Actor::Coordinator || phase != Phase::Unmasking {
            return work();
        }
        let start = std::time::Instant::now();
        let r = work();
        *self.0.lock().unwrap() += start.elapsed();
        r
    }
}

/// A party's fixed work per round, one operation at a time: what a SecAgg+
/// party with k neighbours pays besides keystream (2 key pairs, 2k X25519
/// agreements, one signature, k verifications, two Shamir splits, k share
/// boxes sealed and k opened).
fn party_fixed_work(c: &mut Criterion) {
    use rand_chacha::rand_core::SeedableRng;
    use shroud_crypto::agreement::{x25519_raw, DhSecret};
    use shroud_crypto::shamir::{split, SharedSecret};
    use shroud_crypto::share_box::aead_seal_raw;
    use shroud_crypto::IdentityKey;

    let mut g = c.benchmark_group("party-fixed-work");
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    g.bench_function("x25519-key-pair", |b| {
        b.iter(|| DhSecret::random(&mut rng).public())
    });
    let peer = *DhSecret::random(&mut rng).public().as_bytes();
    g.bench_function("x25519-agreement", |b| b.iter(|| x25519_raw([7; 32], peer)));
    let key = IdentityKey::from_seed(&[3; 32]);
    let message = [1u8; 200];
    g.bench_function("ed25519-sign", |b| b.iter(|| key.sign_request(&message)));
    let signature = key.sign_request(&message);
    let public = key.public();
    g.bench_function("ed25519-verify-strict", |b| {
        b.iter(|| assert!(public.verify_request(&message, &signature)))
    });
    for (holders, threshold) in [(8u32, 4usize), (100, 51)] {
        let ids: Vec<PartyId> = (0..holders).map(PartyId).collect();
        let secret = SharedSecret::random(&mut rng);
        g.bench_function(
            format!("shamir-split-{holders}-holders-t{threshold}"),
            |b| b.iter(|| split(&secret, &ids, threshold, &mut rng).unwrap()),
        );
    }
    g.bench_function("share-box-seal", |b| {
        b.iter(|| aead_seal_raw(&[5; 32], &[0; 12], &[0; 40], &[0; 72]))
    });
    g.finish();
}

criterion_group!(benches, keystream_vs_masking, unmasking, party_fixed_work);
criterion_main!(benches);
