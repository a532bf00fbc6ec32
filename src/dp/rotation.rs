//! The randomized Hadamard rotation `x ↦ H·D·x`: D flips signs drawn from a
//! public per-round seed, H is the orthonormal Walsh–Hadamard transform. It
//! spreads a vector's norm evenly over coordinates, so that fewer bits hold
//! the sum, and it is exactly invertible (`D·H` undoes it, H being its own
//! inverse).

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The length a vector of `dim` entries is padded to: the next power of two.
pub fn padded_len(dim: usize) -> usize {
    dim.next_power_of_two()
}

fn signs(seed: [u8; 32], n: usize) -> Vec<f64> {
    let mut rng = ChaCha20Rng::from_seed(seed);
    let mut out = Vec::with_capacity(n);
    let mut word = 0u64;
    for i in 0..n {
        if i % 64 == 0 {
            word = rng.next_u64();
        }
        out.push(if (word >> (i % 64)) & 1 == 1 {
            -1.0
        } else {
            1.0
        });
    }
    out
}

/// In-place orthonormal fast Walsh–Hadamard transform; `x.len()` must be a
/// power of two.
fn fwht(x: &mut [f64]) {
    let n = x.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for block in x.chunks_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                let (s, d) = (*u + *v, *u - *v);
                *u = s;
                *v = d;
            }
        }
        h *= 2;
    }
    let norm = 1.0 / (n as f64).sqrt();
    x.iter_mut().for_each(|v| *v *= norm);
}

/// Pads `x` with zeros to a power of two and rotates it.
pub fn rotate(x: &[f64], seed: [u8; 32]) -> Vec<f64> {
    let n = padded_len(x.len());
    let mut out = vec![0.0; n];
    out[..x.len()].copy_from_slice(x);
    for (v, s) in out.iter_mut().zip(signs(seed, n)) {
        *v *= s;
    }
    fwht(&mut out);
    out
}

/// Undoes [`rotate`] and drops the padding, keeping `dim` entries.
pub fn unrotate(y: &[f64], seed: [u8; 32], dim: usize) -> Vec<f64> {
    let mut out = y.to_vec();
    fwht(&mut out);
    for (v, s) in out.iter_mut().zip(signs(seed, y.len())) {
        *v *= s;
    }
    out.truncate(dim);
    out
}
