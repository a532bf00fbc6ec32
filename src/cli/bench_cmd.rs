//! `shroud bench encoding`: the noise sampler's rate at a range of σ next to
//! opendp's, and one party's whole work on one task (encode, noise, mask),
//! each against raw ChaCha20 keystream measured in the same run.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::dp::encode::EncodingScheme;
use crate::dp::gaussian::{DiscreteGaussian, NoiseBits, NoiseSeed};
use crate::dp::noise::DiscreteGaussianShare;
use crate::dp::plan::rounded_sensitivity;
use shroud_crypto::prg::{
    apply_all, raw_chacha20_keystream, raw_keystream, MaskSeed, MaskStream, Sign,
};

/// The σ the sampler is measured at (integer units).
const SIGMAS: [u64; 9] = [1, 3, 16, 17, 100, 1_000, 10_000, 100_000, 1_000_000];

/// opendp draws this many samples per σ (its rate is ~10⁵/s).
const OPENDP_SAMPLES: usize = 20_000;

#[derive(Serialize)]
struct SamplerRate {
    sigma: u64,
    samples_per_s: f64,
    opendp_samples_per_s: f64,
    speedup_over_opendp: f64,
    /// ChaCha20 words (the noise PRG) generated in the time of one sample.
    chacha20_words_per_sample: f64,
    /// Random bits one sample consumed, on average.
    bits_per_sample: f64,
}

#[derive(Serialize)]
struct PartyTask {
    coordinates: usize,
    padded: usize,
    noise_std: u64,
    neighbors: usize,
    /// Rotation, clipping, scaling and conditional randomized rounding.
    quantize_ms: f64,
    noise_ms: f64,
    wrap_ms: f64,
    /// The pairwise masks and the self mask.
    mask_ms: f64,
    total_ms: f64,
    /// Raw mask-PRG (ChaCha12) keystream for the words the masks use.
    mask_keystream_ms: f64,
    total_vs_mask_keystream: f64,
    /// Raw ChaCha20 keystream for the same words.
    chacha20_keystream_ms: f64,
    total_vs_chacha20_keystream: f64,
}

#[derive(Serialize)]
struct EncodingBench {
    /// Raw ChaCha20 keystream (the noise PRG), one thread, in cache.
    chacha20_words_per_s: f64,
    /// Raw ChaCha12 keystream (the mask PRG), one thread, in cache.
    mask_keystream_words_per_s: f64,
    /// Samples per σ on one thread.
    samples: usize,
    sampler: Vec<SamplerRate>,
    party_task: PartyTask,
}

fn per_s(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Time to generate `words` 32-bit words of raw keystream with `generate`,
/// 16 KiB at a time into one buffer that stays in cache (as masking's
/// buffers do), so the reference measures the cipher, not page faults.
fn keystream(words: usize, generate: fn([u8; 32], &mut [u8])) -> Duration {
    let mut buf = vec![0u8; 16 << 10];
    let mut left = words * 4;
    let t = Instant::now();
    let mut i = 0u8;
    while left > 0 {
        let n = left.min(buf.len());
        generate([i; 32], &mut buf[..n]);
        std::hint::black_box(&buf);
        left -= n;
        i = i.wrapping_add(1);
    }
    t.elapsed()
}

pub fn encoding(len: usize, sigma: f64, neighbors: usize, json: bool) -> Result<()> {
    if len == 0 {
        bail!("--len must be at least 1");
    }
    if !(sigma >= 1.0 && sigma.fract() == 0.0) {
        bail!("--sigma must be a whole number of at least 1, got {sigma}");
    }
    let chacha20_words_per_s = per_s(len, keystream(len, raw_chacha20_keystream));
    let mask_keystream_words_per_s = per_s(len, keystream(len, raw_keystream));

    let mut sampler = Vec::new();
    let mut v = vec![0i64; len];
    for (i, &s) in SIGMAS.iter().enumerate() {
        let g = DiscreteGaussian::new(s)?;
        let mut bits = NoiseBits::new(&NoiseSeed::from_os(), i as u64);
        v.fill(0);
        let t = Instant::now();
        g.add_to(&mut v, &mut bits);
        let ours = per_s(len, t.elapsed());
        std::hint::black_box(&v);
        let reference = DiscreteGaussianShare::new(s as f64)?;
        let mut w = vec![0i64; OPENDP_SAMPLES.min(len)];
        let t = Instant::now();
        reference.add_to_with_opendp(&mut w)?;
        let theirs = per_s(w.len(), t.elapsed());
        sampler.push(SamplerRate {
            sigma: s,
            samples_per_s: ours,
            opendp_samples_per_s: theirs,
            speedup_over_opendp: ours / theirs,
            chacha20_words_per_sample: chacha20_words_per_s / ours,
            bits_per_sample: bits.bits_used() as f64 / len as f64,
        });
    }

    let party_task = party_task(len, sigma as u64, neighbors)?;
    let r = EncodingBench {
        chacha20_words_per_s,
        mask_keystream_words_per_s,
        samples: len,
        sampler,
        party_task,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "raw keystream, one thread: ChaCha20 (noise) {:.3e} words/s, ChaCha12 (masks) {:.3e} words/s",
        r.chacha20_words_per_s, r.mask_keystream_words_per_s
    );
    println!("exact discrete Gaussian, one thread, {len} samples per σ:");
    println!(
        "{:>10} {:>14} {:>14} {:>10} {:>16} {:>12}",
        "σ", "samples/s", "opendp /s", "× opendp", "ChaCha20 words", "bits used"
    );
    for s in &r.sampler {
        println!(
            "{:>10} {:>14.3e} {:>14.3e} {:>10.0} {:>16.1} {:>12.1}",
            s.sigma,
            s.samples_per_s,
            s.opendp_samples_per_s,
            s.speedup_over_opendp,
            s.chacha20_words_per_sample,
            s.bits_per_sample
        );
    }
    let p = &r.party_task;
    println!(
        "one party's task, one thread: {} coordinates ({} padded), σ {}, {} neighbours",
        p.coordinates, p.padded, p.noise_std, p.neighbors
    );
    println!("  rotate, clip, scale, round  {:>9.1} ms", p.quantize_ms);
    println!("  noise                       {:>9.1} ms", p.noise_ms);
    println!("  wrap mod 2^bits             {:>9.1} ms", p.wrap_ms);
    println!(
        "  masks ({} streams)          {:>9.1} ms",
        p.neighbors + 1,
        p.mask_ms
    );
    println!("  total                       {:>9.1} ms", p.total_ms);
    println!(
        "  raw ChaCha12, mask words    {:>9.1} ms   total / keystream {:.2}x",
        p.mask_keystream_ms, p.total_vs_mask_keystream
    );
    println!(
        "  raw ChaCha20, mask words    {:>9.1} ms   total / keystream {:.2}x",
        p.chacha20_keystream_ms, p.total_vs_chacha20_keystream
    );
    Ok(())
}

/// One party's work on one task, one thread: encode with noise, then add
/// `neighbors` pairwise masks and its self mask.
fn party_task(len: usize, sigma: u64, neighbors: usize) -> Result<PartyTask> {
    let padded = len.next_power_of_two();
    let (clip, gamma) = (1.0, 1e-4);
    let b = rounded_sensitivity(clip / gamma, padded);
    let scheme = EncodingScheme {
        dimension: len,
        plain: 0,
        padded,
        rotated: padded,
        clip_norm: clip,
        gamma,
        bits: 32,
        rotation_seed: Some([7; 32]),
        rounding_bound_sq: b * b,
    };
    let noise = DiscreteGaussian::new(sigma)?;
    let mut rng = ChaCha20Rng::from_entropy();
    let x: Vec<f64> = (0..len)
        .map(|i| ((i as f64) * 0.001).sin() * 1e-3)
        .collect();
    let mut streams: Vec<(MaskStream, Sign)> = (0..=neighbors)
        .map(|i| {
            let seed = MaskSeed::for_testing([i as u8 + 1; 32]);
            (MaskStream::new(&seed), Sign::Add)
        })
        .collect();

    let t = Instant::now();
    let mut q = scheme.quantize(&x, &mut rng)?;
    let quantize = t.elapsed();
    let t = Instant::now();
    noise.add_to(&mut q, &mut NoiseBits::new(&NoiseSeed::from_os(), 0));
    let noise_time = t.elapsed();
    let t = Instant::now();
    let mut words = scheme.wrap(&q);
    let wrap = t.elapsed();
    let t = Instant::now();
    apply_all(&mut words, &mut streams);
    let mask = t.elapsed();
    std::hint::black_box(&words);
    let reference = keystream(padded * (neighbors + 1), raw_keystream);
    let chacha20 = keystream(padded * (neighbors + 1), raw_chacha20_keystream);

    let total = quantize + noise_time + wrap + mask;
    Ok(PartyTask {
        coordinates: len,
        padded,
        noise_std: sigma,
        neighbors,
        quantize_ms: ms(quantize),
        noise_ms: ms(noise_time),
        wrap_ms: ms(wrap),
        mask_ms: ms(mask),
        total_ms: ms(total),
        mask_keystream_ms: ms(reference),
        total_vs_mask_keystream: total.as_secs_f64() / reference.as_secs_f64(),
        chacha20_keystream_ms: ms(chacha20),
        total_vs_chacha20_keystream: total.as_secs_f64() / chacha20.as_secs_f64(),
    })
}
