//! Noise shares: each party's exact discrete Gaussian vector, drawn by the
//! integer sampler in [`super::gaussian`] from a ChaCha20 stream keyed
//! afresh from the operating system for every vector. opendp's measurement
//! for the same σ supplies the privacy map (opendp stays the accountant) and
//! serves as the reference sampler the tests compare against. The modular
//! wrap to `[0, 2^bits)` happens afterwards, in the encoder.

use opendp::core::Measurement;
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;

use super::gaussian::{DiscreteGaussian, NoiseBits, NoiseSeed, MAX_SIGMA};

/// Vectors shorter than this are sampled on one thread.
const PARALLEL_MIN: usize = 1 << 16;

/// One party's share of the noise: `N_Z(0, σ²)` on every coordinate.
/// (`Send`: opendp's measurement, which is not, is built when asked for.)
pub struct DiscreteGaussianShare {
    sampler: DiscreteGaussian,
}

type OpendpGaussian = Measurement<
    VectorDomain<AtomDomain<i64>>,
    L2Distance<f64>,
    ZeroConcentratedDivergence,
    Vec<i64>,
>;

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
    /// `sigma` is the standard deviation in integer units: a whole number
    /// from 1 to [`MAX_SIGMA`] (plans round it up to one).
    pub fn new(sigma: f64) -> Result<Self, NoiseError> {
        if !(sigma.is_finite() && sigma >= 1.0 && sigma.fract() == 0.0) {
            return Err(NoiseError(format!(
                "the noise standard deviation must be a whole number of at least 1, got {sigma}"
            )));
        }
        if sigma > MAX_SIGMA as f64 {
            return Err(NoiseError(format!(
                "the noise standard deviation {sigma} exceeds the sampler's limit {MAX_SIGMA}; \
                 use fewer encoding bits of precision (a larger gamma)"
            )));
        }
        let sampler = DiscreteGaussian::new(sigma as u64).map_err(|e| NoiseError(e.to_string()))?;
        Ok(DiscreteGaussianShare { sampler })
    }

    /// opendp's measurement for the same σ.
    fn opendp(&self) -> Result<OpendpGaussian, NoiseError> {
        super::with_opendp(|| {
            make_gaussian(
                VectorDomain::new(AtomDomain::<i64>::default()),
                L2Distance::<f64>::default(),
                self.sigma(),
                None,
            )
        })
        .map_err(|e| NoiseError(e.to_string()))
    }

    pub fn sigma(&self) -> f64 {
        self.sampler.sigma() as f64
    }

    /// Adds a fresh noise share to `v` in place, from a stream keyed afresh
    /// from the operating system. Long vectors are split over the machine's
    /// cores, each thread reading its own stream of that key.
    pub fn add_to(&self, v: &mut [i64]) -> Result<(), NoiseError> {
        self.add_to_with_seed(v, &NoiseSeed::from_os())
    }

    /// As [`Self::add_to`] with a given key: tests and benchmarks only.
    #[doc(hidden)]
    pub fn add_to_with_seed(&self, v: &mut [i64], seed: &NoiseSeed) -> Result<(), NoiseError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads == 1 || v.len() < PARALLEL_MIN {
            self.sampler.add_to(v, &mut NoiseBits::new(seed, 0));
            return Ok(());
        }
        let per = v.len().div_ceil(threads);
        std::thread::scope(|s| {
            let handles: Vec<_> = v
                .chunks_mut(per)
                .enumerate()
                .map(|(i, chunk)| {
                    let sampler = &self.sampler;
                    s.spawn(move || sampler.add_to(chunk, &mut NoiseBits::new(seed, i as u64)))
                })
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| NoiseError("noise thread panicked".into()))
            })
        })
    }

    /// opendp's own sampler for the same σ, one thread: the reference the
    /// tests and `shroud bench encoding` compare against.
    #[doc(hidden)]
    pub fn add_to_with_opendp(&self, v: &mut [i64]) -> Result<(), NoiseError> {
        let m = self.opendp()?;
        super::with_opendp(|| m.invoke(&v.to_vec()))
            .map(|noisy| v.copy_from_slice(&noisy))
            .map_err(|e| NoiseError(e.to_string()))
    }

    /// ρ of one share alone at L2 sensitivity `d_in`, from opendp's own map.
    pub fn rho(&self, d_in: f64) -> Result<f64, NoiseError> {
        let m = self.opendp()?;
        super::with_opendp(|| m.map(&d_in)).map_err(|e| NoiseError(e.to_string()))
    }
}
