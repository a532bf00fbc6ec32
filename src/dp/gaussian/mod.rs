//! Exact sampling of the discrete Gaussian `N_Z(0, σ²)`,
//! `P(x) ∝ e^(−x²/(2σ²))` on the integers, for a whole-number σ, in integer
//! arithmetic only.
//!
//! The draw follows Karney's construction (2016, Algorithm D) with the block
//! index taken from a table: write `|x| = kσ + j` with `k ≥ 0` and
//! `0 ≤ j < σ`, then
//!
//! 1. draw `k` with `P(k) ∝ e^(−k²/2)` by comparing a lazily extended
//!    uniform number with ⌊C_k · 2^256⌋ ([`exact`]; more bits are computed
//!    in the astronomically rare case that 256 do not decide);
//! 2. draw `j` uniformly from `[0, σ)` (Lemire's multiply-and-reject);
//! 3. draw a sign, rejecting `−0` so that zero is not counted twice;
//! 4. accept with probability `e^(−γ)`, `γ = j(2kσ + j) / (2σ²)`, by
//!    Canonne, Kamath & Steinke's series of Bernoulli(γ/K) draws, each an
//!    exact comparison of random bits with a rational.
//!
//! Steps 1–4 give `(kσ + j)` weight `e^(−k²/2) · e^(−γ) = e^(−(kσ+j)²/(2σ²))`,
//! exactly the target. Every comparison is exact: a draw that ties with a
//! boundary on the bits read so far reads more bits, so no step is exact
//! only up to a bound and nothing is added to δ.
//!
//! Randomness is a ChaCha20 stream read a few bits at a time ([`NoiseBits`]).

mod cdf_table;
pub mod exact;

use dashu_int::UBig;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::{Zeroize, ZeroizeOnDrop};

use cdf_table::CDF;

/// The largest σ accepted. With σ ≤ 2^30, `2σ²` fits in 61 bits and every
/// intermediate product in 128.
pub const MAX_SIGMA: u64 = 1 << 30;

/// A noise scale the sampler cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigmaOutOfRange(pub u64);

impl std::fmt::Display for SigmaOutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "noise standard deviation {} is outside the sampler's range 1..={MAX_SIGMA}",
            self.0
        )
    }
}

impl std::error::Error for SigmaOutOfRange {}

/// The 32-byte key of a noise stream. Drawn from the operating system for
/// each noise vector, never reused, wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct NoiseSeed([u8; 32]);

impl NoiseSeed {
    pub fn from_os() -> Self {
        let mut seed = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut seed);
        NoiseSeed(seed)
    }

    /// Tests and benchmarks only: a reproducible stream.
    #[doc(hidden)]
    pub fn for_testing(bytes: [u8; 32]) -> Self {
        NoiseSeed(bytes)
    }
}

/// Random bits for the sampler: ChaCha20 keystream consumed a few bits at a
/// time, so a draw that needs 1 bit (a sign) costs 1 bit, not a word.
pub struct NoiseBits {
    rng: ChaCha20Rng,
    reservoir: u64,
    available: u32,
    /// 64-bit words drawn from the stream so far.
    drawn: u64,
}

impl NoiseBits {
    /// Stream `stream` of the key `seed`; threads sharing one seed each take
    /// their own stream.
    pub fn new(seed: &NoiseSeed, stream: u64) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed.0);
        rng.set_stream(stream);
        NoiseBits {
            rng,
            reservoir: 0,
            available: 0,
            drawn: 0,
        }
    }

    /// Random bits consumed so far (whole 64-bit words drawn, less what is
    /// still in the reservoir): what a sample costs in randomness.
    pub fn bits_used(&self) -> u64 {
        64 * self.drawn - u64::from(self.available)
    }

    /// `w` uniform bits, `1 ≤ w ≤ 64`, in the low bits of the result.
    #[inline]
    fn take(&mut self, w: u32) -> u64 {
        debug_assert!((1..=64).contains(&w));
        if w <= self.available {
            let out = self.reservoir & low_mask(w);
            self.reservoir = shr(self.reservoir, w);
            self.available -= w;
            out
        } else {
            let have = self.available;
            let fresh = self.rng.next_u64();
            self.drawn += 1;
            let need = w - have;
            let out = self.reservoir | ((fresh & low_mask(need)) << have);
            self.reservoir = shr(fresh, need);
            self.available = 64 - need;
            out
        }
    }
}

impl Drop for NoiseBits {
    fn drop(&mut self) {
        // ChaCha20Rng has no Zeroize impl; overwrite it with a public
        // zero-keyed state by a volatile write the compiler cannot elide.
        unsafe {
            core::ptr::write_volatile(&mut self.rng, ChaCha20Rng::from_seed([0u8; 32]));
            core::ptr::write_volatile(&mut self.reservoir, 0);
        }
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }
}

#[inline]
fn low_mask(w: u32) -> u64 {
    if w >= 64 {
        u64::MAX
    } else {
        (1u64 << w) - 1
    }
}

#[inline]
fn shr(x: u64, w: u32) -> u64 {
    if w >= 64 {
        0
    } else {
        x >> w
    }
}

/// Bits read at once in each kind of comparison. The defaults decide almost
/// every comparison on the first read; tests shrink them so that ties, and
/// the paths that resolve them, become common.
#[derive(Clone, Copy, Debug)]
struct Widths {
    /// First read when drawing the block index (≤ 32, ≤ `table`).
    first: u32,
    /// Table bits used before computing more (≤ 256).
    table: usize,
    /// Bits per read when comparing with a rational.
    compare: u32,
    /// Extra bits over log2 σ in the uniform draw (fewer means more
    /// rejections).
    uniform_slack: u32,
}

const DEFAULT_WIDTHS: Widths = Widths {
    first: 16,
    table: exact::TABLE_BITS,
    compare: 16,
    uniform_slack: 8,
};

/// The exact sampler for one σ.
#[derive(Clone, Debug)]
pub struct DiscreteGaussian {
    sigma: u64,
    two_sigma_sq: u128,
    uniform_bits: u32,
    /// `2^uniform_bits mod σ`: products whose low part is below this are
    /// rejected so that every `j` has the same number of preimages.
    uniform_reject_below: u64,
    widths: Widths,
}

impl DiscreteGaussian {
    pub fn new(sigma: u64) -> Result<Self, SigmaOutOfRange> {
        Self::with_widths(sigma, DEFAULT_WIDTHS)
    }

    /// Tests only: the same distribution with ties on nearly every
    /// comparison, so that the rare paths (more table bits, big-integer
    /// bounds, continued comparisons, uniform rejections) run constantly.
    #[doc(hidden)]
    pub fn forcing_rare_paths(sigma: u64) -> Result<Self, SigmaOutOfRange> {
        Self::with_widths(
            sigma,
            Widths {
                first: 3,
                table: 5,
                compare: 1,
                uniform_slack: 1,
            },
        )
    }

    fn with_widths(sigma: u64, widths: Widths) -> Result<Self, SigmaOutOfRange> {
        if !(1..=MAX_SIGMA).contains(&sigma) {
            return Err(SigmaOutOfRange(sigma));
        }
        let uniform_bits = (64 - sigma.leading_zeros()) + widths.uniform_slack;
        let uniform_reject_below = ((1u128 << uniform_bits) % u128::from(sigma)) as u64;
        Ok(DiscreteGaussian {
            sigma,
            two_sigma_sq: 2 * u128::from(sigma) * u128::from(sigma),
            uniform_bits,
            uniform_reject_below,
            widths,
        })
    }

    pub fn sigma(&self) -> u64 {
        self.sigma
    }

    /// One draw from `N_Z(0, σ²)`.
    pub fn sample(&self, bits: &mut NoiseBits) -> i64 {
        let s = u128::from(self.sigma);
        loop {
            let k = self.block(bits);
            let j = if self.sigma == 1 {
                0
            } else {
                self.uniform(bits)
            };
            let negative = bits.take(1) == 1;
            let accept = if k == 0 {
                // γ = j²/(2σ²) < 1/2, both terms below 2^61.
                !(negative && j == 0)
                    && self.bernoulli_exp_unit_64(j * j, self.two_sigma_sq as u64, bits)
            } else {
                let (k, j) = (u128::from(k), u128::from(j));
                self.bernoulli_exp(j * (2 * k * s + j), self.two_sigma_sq, bits)
            };
            if !accept {
                continue;
            }
            let (k, j) = (u128::from(k), u128::from(j));
            // k beyond 2^33 needs a uniform draw within e^(−2^65) of 1.
            let x = i64::try_from(k * s + j).expect("noise sample beyond 2^63");
            return if negative { -x } else { x };
        }
    }

    /// Adds one draw to every coordinate, wrapping mod 2^64 (the encoder
    /// reduces mod 2^bits afterwards, which commutes with the wrap).
    pub fn add_to(&self, v: &mut [i64], bits: &mut NoiseBits) {
        for x in v.iter_mut() {
            *x = x.wrapping_add(self.sample(bits));
        }
    }

    /// `k` with `P(k) ∝ e^(−k²/2)`: the least `k` with `U < C_k` for a
    /// uniform `U` in [0, 1), read from its most significant bits.
    #[inline]
    fn block(&self, bits: &mut NoiseBits) -> u64 {
        let first = self.widths.first;
        let u = bits.take(first);
        let shift = 64 - first;
        for (k, row) in CDF.iter().enumerate() {
            let t = row[0] >> shift;
            if u < t {
                return k as u64;
            }
            if u == t {
                return self.block_after_tie(u, k as u64, bits);
            }
        }
        // The last row is all ones, so `u` cannot exceed it; kept total.
        self.block_after_tie(u, CDF.len() as u64, bits)
    }

    /// `U`'s first bits tie with `C_start`'s and are known to be at least
    /// every earlier boundary: read more of `U` until a boundary decides.
    #[cold]
    fn block_after_tie(&self, u: u64, start: u64, bits: &mut NoiseBits) -> u64 {
        let mut prefix = UniformPrefix {
            value: UBig::from(u),
            len: self.widths.first as usize,
        };
        (start..)
            .find(|&k| self.below_cdf(&mut prefix, k, bits))
            .expect("some boundary exceeds a number below 1")
    }

    /// Whether `U < C_k`, reading as many bits of `U` as that takes.
    fn below_cdf(&self, u: &mut UniformPrefix, k: u64, bits: &mut NoiseBits) -> bool {
        let table_bits = self.widths.table;
        if let Some(row) = CDF.get(k as usize) {
            // The top p bits of ⌊C_k·2^256⌋ are ⌊C_k·2^p⌋.
            let t = exact::from_limbs(row) >> (exact::TABLE_BITS - table_bits);
            let v = u.first(table_bits, bits);
            if v < t {
                return true;
            }
            if v > t {
                return false;
            }
        }
        let mut precision = (2 * table_bits).max(64);
        loop {
            let (lo, hi) = exact::cdf_bounds(k, precision);
            let v = u.first(precision, bits);
            // U ∈ [v, v + 1) / 2^p and C_k ∈ [lo, hi] / 2^p.
            if &v + UBig::ONE <= lo {
                return true;
            }
            if v >= hi {
                return false;
            }
            precision *= 2;
        }
    }

    /// `j` uniform in `[0, σ)`.
    #[inline]
    fn uniform(&self, bits: &mut NoiseBits) -> u64 {
        let w = self.uniform_bits;
        loop {
            let product = u128::from(bits.take(w)) * u128::from(self.sigma);
            if (product as u64) & low_mask(w) >= self.uniform_reject_below {
                return (product >> w) as u64;
            }
        }
    }

    /// Bernoulli(e^(−num/den)).
    #[inline]
    fn bernoulli_exp(&self, num: u128, den: u128, bits: &mut NoiseBits) -> bool {
        if num < den {
            return self.bernoulli_exp_unit(num, den, bits);
        }
        // e^(−γ) = e^(−1)^⌊γ⌋ · e^(−(γ − ⌊γ⌋)).
        let whole = num / den;
        let mut i = 0;
        while i < whole {
            if !self.bernoulli_exp_unit(1, 1, bits) {
                return false;
            }
            i += 1;
        }
        self.bernoulli_exp_unit(num % den, den, bits)
    }

    /// Bernoulli(e^(−γ)) for `γ = n/d ∈ [0, 1]`: draw Bernoulli(γ/K) for
    /// K = 1, 2, … until one fails; the answer is whether that K is odd
    /// (Canonne, Kamath & Steinke 2020, Algorithm 1).
    fn bernoulli_exp_unit(&self, n: u128, d: u128, bits: &mut NoiseBits) -> bool {
        if let (Ok(n), Ok(d)) = (u64::try_from(n), u64::try_from(d)) {
            return self.bernoulli_exp_unit_64(n, d, bits);
        }
        if n == 0 {
            return true;
        }
        let mut k: u128 = 1;
        loop {
            if !self.bernoulli_ratio(n, d * k, bits) {
                return k % 2 == 1;
            }
            k += 1;
        }
    }

    /// [`Self::bernoulli_exp_unit`] for 64-bit `n ≤ d`; `d·K` leaves 64 bits
    /// only for K beyond 2^3 when σ = 2^30, and then takes the wide path.
    #[inline]
    fn bernoulli_exp_unit_64(&self, n: u64, d: u64, bits: &mut NoiseBits) -> bool {
        if n == 0 {
            return true;
        }
        let mut k: u64 = 1;
        loop {
            let below = match d.checked_mul(k) {
                Some(m) => self.bernoulli_ratio_64(n, m, bits),
                None => self.bernoulli_ratio(u128::from(n), u128::from(d) * u128::from(k), bits),
            };
            if !below {
                return k % 2 == 1;
            }
            k += 1;
        }
    }

    /// [`Self::bernoulli_ratio`] for 64-bit `n ≤ m`.
    #[inline]
    fn bernoulli_ratio_64(&self, mut n: u64, m: u64, bits: &mut NoiseBits) -> bool {
        if n >= m {
            return true;
        }
        let w = self.widths.compare;
        let m = u128::from(m);
        loop {
            let a = u128::from(bits.take(w)) * m;
            let b = u128::from(n) << w;
            if a + m <= b {
                return true;
            }
            if a >= b {
                return false;
            }
            // 0 < b − a < m < 2^64.
            n = (b - a) as u64;
        }
    }

    /// Bernoulli(n/m) for `0 ≤ n ≤ m < 2^127`: compare `U` with `n/m` a
    /// chunk of `w` bits at a time. With `x` the chunk, `U < n/m` is settled
    /// unless `x = ⌊n·2^w/m⌋`, when the comparison continues with the
    /// remainder `n·2^w − x·m` over `m`.
    fn bernoulli_ratio(&self, mut n: u128, m: u128, bits: &mut NoiseBits) -> bool {
        if n >= m {
            return true;
        }
        // x·m and n·2^w must fit in 128 bits.
        let w = self.widths.compare.min(m.leading_zeros()).max(1);
        loop {
            let a = u128::from(bits.take(w)) * m;
            let b = n << w;
            if a + m <= b {
                return true;
            }
            if a >= b {
                return false;
            }
            n = b - a;
        }
    }
}

/// The bits of a uniform number in [0, 1) read so far, most significant
/// first: `U ∈ [value, value + 1) / 2^len`.
struct UniformPrefix {
    value: UBig,
    len: usize,
}

impl UniformPrefix {
    /// `⌊U · 2^p⌋`, reading more bits if fewer than `p` are known.
    fn first(&mut self, p: usize, bits: &mut NoiseBits) -> UBig {
        while self.len < p {
            let w = (p - self.len).min(64);
            self.value = (&self.value << w) | UBig::from(bits.take(w as u32));
            self.len += w;
        }
        &self.value >> (self.len - p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_is_the_generated_one() {
        assert_eq!(
            include_str!("cdf_table.rs"),
            exact::render_table(),
            "regenerate with scripts/gen-gaussian-table"
        );
    }

    #[test]
    fn the_table_agrees_with_floating_point_to_its_precision() {
        // An independent check of the big-integer arithmetic.
        let w = |k: usize| (-((k * k) as f64) / 2.0).exp();
        let z: f64 = (0..40).map(w).sum();
        let mut acc = 0.0;
        for (k, row) in CDF.iter().enumerate() {
            acc += w(k);
            let table = row[0] as f64 / 2f64.powi(64);
            assert!(
                (acc / z - table).abs() < 1e-15,
                "k {k}: {} vs {table}",
                acc / z
            );
        }
    }

    #[test]
    fn big_integer_bounds_agree_with_the_table_and_tighten() {
        for (k, row) in CDF.iter().enumerate() {
            let t = exact::from_limbs(row);
            for p in [64usize, 256, 512] {
                let (lo, hi) = exact::cdf_bounds(k as u64, p);
                assert!(&hi - &lo <= UBig::from(4u8), "k {k} p {p}");
                // ⌊C_k·2^p⌋ from the table where it has the bits.
                if p <= exact::TABLE_BITS {
                    let floor = &t >> (exact::TABLE_BITS - p);
                    assert!(lo <= &floor + UBig::ONE && floor <= hi, "k {k} p {p}");
                }
            }
        }
    }

    #[test]
    fn sigma_outside_the_range_is_refused() {
        assert_eq!(DiscreteGaussian::new(0).unwrap_err(), SigmaOutOfRange(0));
        assert!(DiscreteGaussian::new(MAX_SIGMA + 1)
            .unwrap_err()
            .to_string()
            .contains("outside the sampler's range"));
        assert!(DiscreteGaussian::new(MAX_SIGMA).is_ok());
    }

    #[test]
    fn bits_are_taken_without_loss() {
        // Reading 64 bits as 1 + 63 or 64 at once gives the same stream.
        let seed = NoiseSeed::for_testing([9; 32]);
        let mut a = NoiseBits::new(&seed, 0);
        let mut b = NoiseBits::new(&seed, 0);
        for _ in 0..100 {
            let whole = a.take(64);
            let low = b.take(1);
            let high = b.take(63);
            assert_eq!(whole, low | (high << 1));
        }
    }
}
