//! `shroud bench encoding`: how fast a party encodes an update with its
//! noise share, next to raw ChaCha keystream generation for the same number
//! of 32-bit words, measured in the same run.

use std::time::Instant;

use anyhow::{bail, Result};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::dp::encode::EncodingScheme;
use crate::dp::noise::DiscreteGaussianShare;
use crate::dp::plan::rounded_sensitivity;
use shroud_crypto::prg::raw_keystream;

#[derive(Serialize)]
struct EncodingBench {
    coordinates: usize,
    padded: usize,
    /// Rotation, clipping, scaling and conditional randomized rounding.
    quantize_ms: f64,
    /// Drawing the discrete Gaussian share with opendp and adding it.
    noise_ms: f64,
    /// Wrapping to words mod 2^bits.
    wrap_ms: f64,
    encode_total_ms: f64,
    encode_coordinates_per_s: f64,
    noise_coordinates_per_s: f64,
    /// ChaCha20 keystream for the same number of 32-bit words.
    keystream_ms: f64,
    keystream_words_per_s: f64,
    encode_vs_keystream: f64,
    noise_std: f64,
}

pub fn encoding(len: usize, sigma: f64, json: bool) -> Result<()> {
    if len == 0 {
        bail!("--len must be at least 1");
    }
    let padded = len.next_power_of_two();
    let clip = 1.0;
    let gamma = 1e-4;
    let b = rounded_sensitivity(clip / gamma, padded);
    let scheme = EncodingScheme {
        dimension: len,
        padded,
        clip_norm: clip,
        gamma,
        bits: 32,
        rotation_seed: Some([7; 32]),
        rounding_bound_sq: b * b,
    };
    let share = DiscreteGaussianShare::new(sigma)?;
    let mut rng = ChaCha20Rng::from_entropy();
    let x: Vec<f64> = (0..len)
        .map(|i| ((i as f64) * 0.001).sin() * 1e-3)
        .collect();

    let t = Instant::now();
    let mut q = scheme.quantize(&x, &mut rng)?;
    let quantize = t.elapsed();
    let t = Instant::now();
    share.add_to(&mut q)?;
    let noise = t.elapsed();
    let t = Instant::now();
    let words = scheme.wrap(&q);
    let wrap = t.elapsed();
    std::hint::black_box(&words);

    let mut buf = vec![0u8; padded * 4];
    let t = Instant::now();
    raw_keystream([1; 32], &mut buf);
    let keystream = t.elapsed();
    std::hint::black_box(&buf);

    let total = quantize + noise + wrap;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let r = EncodingBench {
        coordinates: len,
        padded,
        quantize_ms: ms(quantize),
        noise_ms: ms(noise),
        wrap_ms: ms(wrap),
        encode_total_ms: ms(total),
        encode_coordinates_per_s: padded as f64 / total.as_secs_f64(),
        noise_coordinates_per_s: padded as f64 / noise.as_secs_f64(),
        keystream_ms: ms(keystream),
        keystream_words_per_s: padded as f64 / keystream.as_secs_f64(),
        encode_vs_keystream: total.as_secs_f64() / keystream.as_secs_f64(),
        noise_std: sigma,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} coordinates ({} after padding), noise std {}",
            r.coordinates, r.padded, sigma
        );
        println!("rotate, clip, scale, round   {:>10.1} ms", r.quantize_ms);
        println!(
            "opendp noise share           {:>10.1} ms  ({:.3e} coordinates/s)",
            r.noise_ms, r.noise_coordinates_per_s
        );
        println!("wrap mod 2^bits              {:>10.1} ms", r.wrap_ms);
        println!(
            "encoding with noise          {:>10.1} ms  ({:.3e} coordinates/s)",
            r.encode_total_ms, r.encode_coordinates_per_s
        );
        println!(
            "raw ChaCha keystream, same   {:>10.1} ms  ({:.3e} words/s)",
            r.keystream_ms, r.keystream_words_per_s
        );
        println!(
            "encoding / keystream         {:>10.1}x",
            r.encode_vs_keystream
        );
    }
    Ok(())
}
