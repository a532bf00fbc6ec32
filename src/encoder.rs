//! The frozen encoder FST-CBDG builds on: a small network trained once, by
//! `shroud data encoder`, on a *public* set that is no party's data — the
//! first 5000 MNIST training images brought to the format of the digits
//! data (8×8 counts 0–16) — and shipped as safetensors with its input
//! standardiser and its class prototypes (each class's mean embedding on
//! that public set, of unit length: the stand-in for CLIP's text
//! prototypes, as no model hub is reachable).
//!
//! The encoder is a classifier `64 → 64 → 32 → 10` trained centrally on
//! the public set, cut after its second layer; an embedding is that
//! layer's output scaled to unit length.

use std::io::Read;
use std::path::Path;

use ndarray::{Array2, ArrayView2, Axis};

use crate::data::{Dataset, Standardizer};
use crate::model::{read_file, train_central, write_tensors, Mlp, ModelError, NamedTensor};

/// The encoder `shroud data encoder` trains with its defaults (seed 1),
/// built into the binary so that the demo runs from any folder.
pub const DIGITS_ENCODER: &[u8] = include_bytes!("../data/digits-encoder.safetensors");

/// Width of the embedding.
pub const EMBEDDING: usize = 32;
/// Layer widths of the classifier the encoder is cut from.
const CLASSIFIER: [usize; 4] = [64, 64, EMBEDDING, 10];

#[derive(Clone, Debug)]
pub struct FrozenEncoder {
    /// The public set's per-feature mean and standard deviation.
    pub standardizer: Standardizer,
    /// `inputs → … → embedding` (ReLU between layers, none after).
    pub mlp: Mlp,
    /// One unit-length prototype per class.
    pub prototypes: Vec<Vec<f64>>,
}

impl FrozenEncoder {
    pub fn inputs(&self) -> usize {
        self.mlp.sizes()[0]
    }

    pub fn dimension(&self) -> usize {
        self.mlp.sizes().last().copied().unwrap_or(0)
    }

    pub fn classes(&self) -> usize {
        self.prototypes.len()
    }

    /// Unit-length embeddings of the records `x` (raw features).
    pub fn embed(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let mut z = x.to_owned();
        for mut row in z.axis_iter_mut(Axis(0)) {
            for ((v, m), s) in row
                .iter_mut()
                .zip(&self.standardizer.mean)
                .zip(&self.standardizer.std)
            {
                *v = (*v - m) / s;
            }
        }
        let mut e = self.mlp.forward(z.view());
        for mut row in e.axis_iter_mut(Axis(0)) {
            unit(row.as_slice_mut().expect("contiguous rows"));
        }
        e
    }

    /// Tensors under `prefix`: the layers as an MLP's, then `mean`, `std`
    /// and `prototypes`.
    pub(crate) fn tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        let f32s =
            |v: &[f64]| -> Vec<u8> { v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect() };
        let mut t = self.mlp.tensors(prefix);
        let d = self.inputs();
        t.push((
            format!("{prefix}mean"),
            vec![d],
            f32s(&self.standardizer.mean),
        ));
        t.push((
            format!("{prefix}std"),
            vec![d],
            f32s(&self.standardizer.std),
        ));
        t.push((
            format!("{prefix}prototypes"),
            vec![self.classes(), self.dimension()],
            f32s(&self.prototypes.concat()),
        ));
        t
    }

    pub(crate) fn from_tensors(
        st: &safetensors::SafeTensors<'_>,
        prefix: &str,
    ) -> Result<Option<FrozenEncoder>, ModelError> {
        let Some(mlp) = Mlp::from_tensors(st, prefix)? else {
            return Ok(None);
        };
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f64>), ModelError> {
            let t = st
                .tensor(&format!("{prefix}{name}"))
                .map_err(|_| ModelError(format!("missing {prefix}{name}")))?;
            if t.dtype() != safetensors::tensor::Dtype::F32 {
                return Err(ModelError(format!("{prefix}{name} is not f32")));
            }
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            Ok((t.shape().to_vec(), v))
        };
        let d = mlp.sizes()[0];
        let e = mlp.sizes().last().copied().unwrap_or(0);
        let (ms, mean) = read("mean")?;
        let (ss, std) = read("std")?;
        let (ps, protos) = read("prototypes")?;
        if ms != [d] || ss != [d] || ps.len() != 2 || ps[1] != e || ps[0] < 2 {
            return Err(ModelError(format!(
                "{prefix}: the standardiser or prototypes do not fit a {d} → {e} encoder"
            )));
        }
        if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(ModelError(format!(
                "{prefix}std holds a non-positive value"
            )));
        }
        Ok(Some(FrozenEncoder {
            standardizer: Standardizer { mean, std },
            mlp,
            prototypes: protos.chunks(e).map(<[f64]>::to_vec).collect(),
        }))
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        write_tensors(path, self.tensors(""))
    }

    pub fn load(path: &Path) -> Result<FrozenEncoder, ModelError> {
        FrozenEncoder::from_bytes(&read_file(path)?)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<FrozenEncoder, ModelError> {
        let st =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| ModelError(e.to_string()))?;
        FrozenEncoder::from_tensors(&st, "")?.ok_or_else(|| ModelError("no `0.weight`".into()))
    }
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn unit(v: &mut [f64]) {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// A 28×28 image (pixels 0–255, row by row) in the digits format: the
/// digit's bounding box scaled to fit a 32×32 bitmap (centred, aspect
/// kept), pixels of at least 128 set, and the set pixels counted in each
/// 4×4 block — 64 counts from 0 to 16, as the UCI digits were made.
pub fn digitise(pixels: &[f64]) -> Vec<f64> {
    const S: usize = 28;
    let on = |r: usize, c: usize| pixels[r * S + c] >= 128.0;
    let rows: Vec<usize> = (0..S).filter(|&r| (0..S).any(|c| on(r, c))).collect();
    let cols: Vec<usize> = (0..S).filter(|&c| (0..S).any(|r| on(r, c))).collect();
    let mut counts = vec![0.0; 64];
    let (Some(&r0), Some(&r1), Some(&c0), Some(&c1)) =
        (rows.first(), rows.last(), cols.first(), cols.last())
    else {
        return counts;
    };
    let (h, w) = ((r1 - r0 + 1) as f64, (c1 - c0 + 1) as f64);
    let k = 32.0 / h.max(w);
    let (oh, ow) = ((32.0 - h * k) / 2.0, (32.0 - w * k) / 2.0);
    for y in 0..32 {
        for x in 0..32 {
            // The source pixel under the bitmap pixel's centre.
            let sy = (y as f64 + 0.5 - oh) / k;
            let sx = (x as f64 + 0.5 - ow) / k;
            if sy < 0.0 || sx < 0.0 || sy >= h || sx >= w {
                continue;
            }
            if on(r0 + sy as usize, c0 + sx as usize) {
                counts[(y / 4) * 8 + x / 4] += 1.0;
            }
        }
    }
    counts
}

/// Reads a gzip-compressed CSV of 784 pixel columns and a `label` column.
pub fn load_mnist_gz(path: &Path) -> anyhow::Result<Dataset> {
    use anyhow::Context;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .with_context(|| format!("{}: not a gzip-compressed text file", path.display()))?;
    let loaded = crate::data::parse_csv(path, &text)?;
    let d = loaded.train;
    if d.dim() != 784 {
        anyhow::bail!(
            "{}: {} feature columns; a 28×28 image has 784",
            path.display(),
            d.dim()
        );
    }
    Ok(d)
}

/// The public set in the digits format.
pub fn digitise_dataset(d: &Dataset) -> Dataset {
    Dataset {
        features: d.features.iter().map(|p| digitise(p)).collect(),
        labels: d.labels.clone(),
        classes: d.classes,
        feature_names: (0..64).map(|j| format!("x{j}")).collect(),
    }
}

/// What training the encoder reports.
pub struct EncoderTraining {
    pub encoder: FrozenEncoder,
    /// The classifier's accuracy on the public set it was trained on.
    pub public_accuracy: f64,
}

/// Trains the classifier on `public` (digits format, labelled) from
/// `seed`, cuts the encoder from it and takes each class's mean embedding
/// as its prototype.
pub fn train(public: &Dataset, seed: u64) -> EncoderTraining {
    let standardizer = Standardizer::fit(public);
    let mut scaled = public.clone();
    standardizer.apply(&mut scaled);
    let mut classifier = Mlp::new(&CLASSIFIER, seed);
    train_central(&mut classifier, &scaled, 40, 32, 0.05, 0.9, seed);
    let public_accuracy = classifier.accuracy(&scaled);
    let mlp = Mlp {
        layers: classifier.layers[..2].to_vec(),
    };
    let mut encoder = FrozenEncoder {
        standardizer,
        mlp,
        prototypes: Vec::new(),
    };
    let e = encoder.embed(crate::model::matrix(public, None).view());
    let classes = public.classes;
    let mut prototypes = vec![vec![0.0; EMBEDDING]; classes];
    for (row, &y) in e.outer_iter().zip(&public.labels) {
        prototypes[y].iter_mut().zip(row).for_each(|(p, v)| *p += v);
    }
    prototypes.iter_mut().for_each(|p| unit(p));
    encoder.prototypes = prototypes;
    EncoderTraining {
        encoder,
        public_accuracy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_box_digitises_to_full_counts_and_blank_to_none() {
        let mut img = vec![0.0; 784];
        assert_eq!(digitise(&img), vec![0.0; 64]);
        // A filled square scales up to the whole bitmap: every block full.
        for r in 10..18 {
            for c in 10..18 {
                img[r * 28 + c] = 255.0;
            }
        }
        assert_eq!(digitise(&img), vec![16.0; 64]);
        // A tall bar keeps its aspect: only the middle columns are set.
        let mut bar = vec![0.0; 784];
        for r in 4..24 {
            for c in 13..15 {
                bar[r * 28 + c] = 200.0;
            }
        }
        let d = digitise(&bar);
        assert!(d.iter().all(|&v| (0.0..=16.0).contains(&v)));
        assert!(
            d[0] == 0.0 && d[3] > 0.0 && d[4] > 0.0 && d[7] == 0.0,
            "{d:?}"
        );
    }

    #[test]
    fn an_encoder_round_trips_through_safetensors() {
        let dir = std::env::temp_dir().join(format!("shroud-encoder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let enc = FrozenEncoder {
            standardizer: Standardizer {
                mean: vec![0.5; 4],
                std: vec![2.0; 4],
            },
            mlp: Mlp::new(&[4, 5, 3], 1),
            prototypes: vec![vec![1.0, 0.0, 0.0], vec![0.0, 0.6, 0.8]],
        };
        let path = dir.join("e.safetensors");
        enc.save(&path).unwrap();
        let back = FrozenEncoder::load(&path).unwrap();
        let x = Array2::from_shape_vec((1, 4), vec![1.0, 2.0, -1.0, 0.0]).unwrap();
        let (a, b) = (enc.embed(x.view()), back.embed(x.view()));
        for (u, v) in a.iter().zip(b.iter()) {
            assert!((u - v).abs() < 1e-5);
        }
        let n: f64 = a.iter().map(|v| v * v).sum();
        assert!((n - 1.0).abs() < 1e-12);
        assert_eq!(back.prototypes.len(), 2);
    }
}
