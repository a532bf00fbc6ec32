//! Masks: ChaCha20 keystreams read as little-endian 32-bit words. A stream can
//! start at any word offset, so a long vector can be masked or unmasked chunk
//! by chunk with memory independent of its length.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte PRG seed (`b_u` expanded, or a pairwise `s_uv`). Wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MaskSeed([u8; 32]);

impl MaskSeed {
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> Self {
        MaskSeed(*bytes)
    }

    /// Test and benchmark helper: a seed from raw bytes.
    #[doc(hidden)]
    pub fn for_testing(bytes: [u8; 32]) -> Self {
        MaskSeed(bytes)
    }
}

/// Whether a mask is added to or subtracted from a vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    Add,
    Sub,
}

impl Sign {
    pub fn flip(self) -> Sign {
        match self {
            Sign::Add => Sign::Sub,
            Sign::Sub => Sign::Add,
        }
    }
}

/// Words per keystream refill; 4 KiB keeps the buffer in L1.
const BLOCK_WORDS: usize = 1024;

/// One mask keystream. The ChaCha state holds the key, so it is overwritten
/// with a public all-zero state on drop.
pub struct MaskStream {
    rng: ChaCha20Rng,
}

impl MaskStream {
    pub fn new(seed: &MaskSeed) -> Self {
        MaskStream {
            rng: ChaCha20Rng::from_seed(seed.0),
        }
    }

    /// Adds (or subtracts) keystream words `offset .. offset + out.len()` to
    /// `out`, wrapping mod 2^32. Callers reduce mod `2^bits` at the end, which
    /// is exact because `2^bits` divides `2^32`.
    pub fn apply(&mut self, offset: u64, out: &mut [u32], sign: Sign) {
        self.rng.set_word_pos(u128::from(offset));
        let mut buf = [0u32; BLOCK_WORDS];
        for chunk in out.chunks_mut(BLOCK_WORDS) {
            let words = &mut buf[..chunk.len()];
            fill_words(&mut self.rng, words);
            match sign {
                Sign::Add => {
                    for (o, w) in chunk.iter_mut().zip(words.iter()) {
                        *o = o.wrapping_add(*w);
                    }
                }
                Sign::Sub => {
                    for (o, w) in chunk.iter_mut().zip(words.iter()) {
                        *o = o.wrapping_sub(*w);
                    }
                }
            }
        }
        buf.zeroize();
    }
}

/// Fills `words` with keystream read as little-endian words. The keystream
/// is written straight into the words' bytes, so no second copy is made;
/// on big-endian targets the bytes are then swapped into place.
fn fill_words(rng: &mut ChaCha20Rng, words: &mut [u32]) {
    // SAFETY: a `[u32]` may be viewed as `4 × len` bytes: u8 has alignment
    // 1, the length is exact and every byte pattern is a valid u32.
    let bytes = unsafe {
        core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 4)
    };
    rng.fill_bytes(bytes);
    if cfg!(target_endian = "big") {
        words.iter_mut().for_each(|w| *w = u32::from_le(*w));
    }
}

impl Drop for MaskStream {
    fn drop(&mut self) {
        // ChaCha20Rng has no Zeroize impl; a volatile write of a zero-keyed
        // state cannot be elided and leaves no key material behind.
        unsafe {
            core::ptr::write_volatile(&mut self.rng, ChaCha20Rng::from_seed([0u8; 32]));
        }
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// Raw keystream generation into a byte buffer: the physical reference the
/// benchmarks compare masking against.
pub fn raw_keystream(seed: [u8; 32], out: &mut [u8]) {
    ChaCha20Rng::from_seed(seed).fill_bytes(out);
}

/// Words per chunk when several streams are applied to one vector: each
/// chunk of the vector stays in cache while every stream passes over it.
pub const CHUNK_WORDS: usize = 16 * 1024;

/// Applies every stream to `out`, chunk by chunk. Returns the keystream bytes
/// generated.
pub fn apply_all(out: &mut [u32], streams: &mut [(MaskStream, Sign)]) -> u64 {
    let mut offset = 0u64;
    for chunk in out.chunks_mut(CHUNK_WORDS) {
        for (stream, sign) in streams.iter_mut() {
            stream.apply(offset, chunk, *sign);
        }
        offset += chunk.len() as u64;
    }
    (streams.len() * out.len() * 4) as u64
}
