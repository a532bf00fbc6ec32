//! Masks: ChaCha12 keystreams read as little-endian 32-bit words. A stream can
//! start at any word offset, so a long vector can be masked or unmasked chunk
//! by chunk with memory independent of its length.

use chacha20::cipher::consts::U6;
use chacha20::cipher::{
    Block, KeyIvInit, StreamCipher, StreamCipherCore, StreamCipherCoreWrapper, StreamCipherSeekCore,
};
use chacha20::ChaChaCore;
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

/// The mask PRG: ChaCha with 12 rounds (6 double rounds), zero nonce, block
/// counter from 0. Each seed keys exactly one stream. docs/protocol.md says
/// why 12 rounds.
type MaskCore = ChaChaCore<U6>;

/// 32-bit words in one ChaCha block.
const BLOCK_WORDS: usize = 16;

/// Blocks per keystream refill: 4 KiB keeps the buffer in L1, and the SIMD
/// backends fill several blocks at once.
const REFILL_BLOCKS: usize = 64;

/// One mask keystream. The ChaCha state holds the key and is wiped on drop.
pub struct MaskStream {
    core: MaskCore,
}

impl MaskStream {
    pub fn new(seed: &MaskSeed) -> Self {
        MaskStream {
            core: MaskCore::new(&seed.0.into(), &[0u8; 12].into()),
        }
    }

    /// Adds (or subtracts) keystream words `offset .. offset + out.len()` to
    /// `out`, wrapping mod 2^32. Callers reduce mod `2^bits` at the end, which
    /// is exact because `2^bits` divides `2^32`.
    ///
    /// # Panics
    /// If the words reach beyond the block counter's 2^32 blocks (2^36
    /// words, far beyond any vector a policy admits).
    pub fn apply(&mut self, offset: u64, out: &mut [u32], sign: Sign) {
        let end = offset + out.len() as u64;
        assert!(
            end.div_ceil(BLOCK_WORDS as u64) <= 1 << 32,
            "mask stream beyond 2^36 words"
        );
        self.core
            .set_block_pos((offset / BLOCK_WORDS as u64) as u32);
        let mut skip = (offset % BLOCK_WORDS as u64) as usize;
        let mut blocks = [Block::<MaskCore>::default(); REFILL_BLOCKS];
        let mut done = 0;
        while done < out.len() {
            let want = (out.len() - done + skip).min(REFILL_BLOCKS * BLOCK_WORDS);
            let n = want.div_ceil(BLOCK_WORDS);
            self.core.write_keystream_blocks(&mut blocks[..n]);
            let stream = &as_bytes(&blocks[..n])[4 * skip..4 * want];
            let chunk = &mut out[done..done + want - skip];
            // One fused pass: read each keystream word and add it.
            match sign {
                Sign::Add => {
                    for (o, w) in chunk.iter_mut().zip(stream.chunks_exact(4)) {
                        *o = o.wrapping_add(u32::from_le_bytes(w.try_into().expect("4 bytes")));
                    }
                }
                Sign::Sub => {
                    for (o, w) in chunk.iter_mut().zip(stream.chunks_exact(4)) {
                        *o = o.wrapping_sub(u32::from_le_bytes(w.try_into().expect("4 bytes")));
                    }
                }
            }
            done += want - skip;
            skip = 0;
        }
        for b in blocks.iter_mut() {
            b.as_mut_slice().zeroize();
        }
    }
}

// A block is a `#[repr(transparent)]` `[u8; 64]`: a slice of blocks is
// contiguous bytes.
const _: () = assert!(
    core::mem::size_of::<Block<MaskCore>>() == 64 && core::mem::align_of::<Block<MaskCore>>() == 1
);

fn as_bytes(blocks: &[Block<MaskCore>]) -> &[u8] {
    // SAFETY: each block is 64 bytes with alignment 1 (asserted above), so
    // the slice covers exactly `64 × len` initialised bytes.
    unsafe { core::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), blocks.len() * 64) }
}

/// The mask PRG's raw keystream XORed into a byte buffer (a zeroed buffer
/// receives the keystream itself): the physical reference the benchmarks
/// compare masking against.
pub fn raw_keystream(seed: [u8; 32], out: &mut [u8]) {
    StreamCipherCoreWrapper::from_core(MaskCore::new(&seed.into(), &[0u8; 12].into()))
        .apply_keystream(out);
}

/// ChaCha20 (`rand_chacha`) keystream into a byte buffer: the PRG the
/// noise sampler reads, and the masks' PRG before version 3 of the wire
/// format; benchmarks report it beside the mask PRG.
pub fn raw_chacha20_keystream(seed: [u8; 32], out: &mut [u8]) {
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
