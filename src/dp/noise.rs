//! Noise shares: each party's exact discrete Gaussian vector, drawn by
//! opendp's sampler (`make_gaussian` on integer vectors, with its
//! OpenSSL-backed randomness). opendp saturates at the i64 limits; the
//! modular wrap to `[0, 2^bits)` happens afterwards, in the encoder.

use opendp::core::Measurement;
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;

/// Vectors shorter than this are sampled on one thread.
const PARALLEL_MIN: usize = 4096;

/// One party's share of the noise: `N_Z(0, σ²)` on every coordinate.
pub struct DiscreteGaussianShare {
    sigma: f64,
    measurement: Measurement<
        VectorDomain<AtomDomain<i64>>,
        L2Distance<f64>,
        ZeroConcentratedDivergence,
        Vec<i64>,
    >,
}

/// What can go wrong drawing noise.
#[derive(Debug)]
pub struct NoiseError(pub String);

impl std::fmt::Display for NoiseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "noise sampling failed: {}", self.0)
    }
}

impl std::error::Error for NoiseError {}

impl DiscreteGaussianShare {
    /// `sigma` is the standard deviation in integer units.
    pub fn new(sigma: f64) -> Result<Self, NoiseError> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(NoiseError(format!(
                "noise scale must be positive and finite, got {sigma}"
            )));
        }
        let measurement = make_gaussian(
            VectorDomain::new(AtomDomain::<i64>::default()),
            L2Distance::<f64>::default(),
            sigma,
            None,
        )
        .map_err(|e| NoiseError(e.to_string()))?;
        Ok(DiscreteGaussianShare { sigma, measurement })
    }

    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Adds a fresh noise share to `v` in place. opendp's exact sampler
    /// does arbitrary-precision arithmetic per coordinate, so long vectors
    /// are split over the machine's cores, each thread with its own
    /// measurement (opendp's functions are not `Send`).
    pub fn add_to(&self, v: &mut [i64]) -> Result<(), NoiseError> {
        let r = self.sample_into(v);
        restore_panic_reporting();
        r
    }

    fn sample_into(&self, v: &mut [i64]) -> Result<(), NoiseError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads == 1 || v.len() < PARALLEL_MIN {
            let noisy = self
                .measurement
                .invoke(&v.to_vec())
                .map_err(|e| NoiseError(e.to_string()))?;
            v.copy_from_slice(&noisy);
            return Ok(());
        }
        let sigma = self.sigma;
        let per = v.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = v
                .chunks_mut(per)
                .map(|chunk| {
                    s.spawn(move || -> Result<(), NoiseError> {
                        let m = Self::new(sigma)?;
                        let noisy = m
                            .measurement
                            .invoke(&chunk.to_vec())
                            .map_err(|e| NoiseError(e.to_string()))?;
                        chunk.copy_from_slice(&noisy);
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| NoiseError("noise thread panicked".into()))?
            })
        })
    }

    /// ρ of one share alone at L2 sensitivity `d_in`, from opendp's own map.
    pub fn rho(&self, d_in: f64) -> Result<f64, NoiseError> {
        self.measurement
            .map(&d_in)
            .map_err(|e| NoiseError(e.to_string()))
    }
}

/// opendp's arithmetic swaps the process's panic hook for a silent one
/// around some operations; when threads do so at once, a silent hook can be
/// left installed for good and every later panic would print nothing.
/// Putting the default hook back after sampling keeps failures reported.
/// (A sampler still running on another thread may then report a panic its
/// arithmetic catches itself: noise on stderr, nothing worse.)
fn restore_panic_reporting() {
    let _ = std::panic::take_hook();
}
