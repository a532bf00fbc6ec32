//! The classifier a job trains and releases: one MLP, or a **series** of
//! MLP stages in which stage `k` reads the record's features followed by
//! the class probabilities of stages `0 … k−1` (Pomerat & Segev's series
//! network). A one-stage network is exactly its MLP, down to the names in
//! its safetensors file.
//!
//! The parameters flatten stage after stage, each stage as its MLP
//! flattens, so a stage is one contiguous slice of the flat vector: the
//! slice a series round's secure sum trains.

use std::path::Path;

use ndarray::{concatenate, Array2, ArrayView2, Axis};

use std::sync::Arc;

use crate::data::Dataset;
use crate::encoder::FrozenEncoder;
use crate::model::{argmax_rows, matrix, read_file, softmax_rows, write_tensors, Mlp, ModelError};

#[derive(Clone, Debug)]
pub struct Network {
    /// A frozen encoder the stages read the embeddings of (FST-CBDG); its
    /// parameters are not the network's to train: they are not in the
    /// flat vector.
    encoder: Option<Arc<FrozenEncoder>>,
    /// Invariant: at least one stage; stage `k` takes `inputs + k·classes`
    /// values and every stage ends in the same `classes`.
    stages: Vec<Mlp>,
}

impl Network {
    pub fn single(model: Mlp) -> Network {
        Network {
            encoder: None,
            stages: vec![model],
        }
    }

    /// A head reading the frozen `encoder`'s embeddings.
    pub fn encoded(encoder: Arc<FrozenEncoder>, head: Mlp) -> Network {
        Network {
            encoder: Some(encoder),
            stages: vec![head],
        }
    }

    pub fn encoder(&self) -> Option<&FrozenEncoder> {
        self.encoder.as_deref()
    }

    /// A fresh series: stage `k` of `[inputs + k·classes, hidden…, classes]`,
    /// initialised from `seed` and the stage's index.
    pub fn series(
        inputs: usize,
        hidden: &[usize],
        classes: usize,
        stages: usize,
        seed: u64,
    ) -> Network {
        assert!(stages >= 1, "a network needs a stage");
        Network {
            encoder: None,
            stages: (0..stages)
                .map(|k| {
                    let sizes = series_stage_sizes(inputs, hidden, classes, k);
                    Mlp::new(&sizes, seed ^ ((k as u64) << 32))
                })
                .collect(),
        }
    }

    pub fn stages(&self) -> &[Mlp] {
        &self.stages
    }

    /// The only stage of a one-stage network that reads the features
    /// themselves.
    pub fn as_single(&self) -> Option<&Mlp> {
        match (self.stages.as_slice(), &self.encoder) {
            ([m], None) => Some(m),
            _ => None,
        }
    }

    pub fn dimension(&self) -> usize {
        self.stages.iter().map(Mlp::dimension).sum()
    }

    /// Where stage `k`'s parameters lie in the flat vector.
    pub fn stage_range(&self, k: usize) -> std::ops::Range<usize> {
        let start = self.stages[..k].iter().map(Mlp::dimension).sum();
        start..start + self.stages[k].dimension()
    }

    pub fn to_flat(&self) -> Vec<f64> {
        self.stages.iter().flat_map(|m| m.to_flat()).collect()
    }

    pub fn set_flat(&mut self, v: &[f64]) -> Result<(), ModelError> {
        ModelError::check_length(v.len(), self.dimension())?;
        for k in 0..self.stages.len() {
            let range = self.stage_range(k);
            self.stages[k].set_flat(&v[range])?;
        }
        Ok(())
    }

    /// What stage `k` reads for the records `x`: the features, then the
    /// class probabilities of every earlier stage.
    pub fn stage_input(&self, x: ArrayView2<f64>, k: usize) -> Array2<f64> {
        let mut input = match &self.encoder {
            Some(e) => e.embed(x),
            None => x.to_owned(),
        };
        for stage in &self.stages[..k] {
            let p = softmax_rows(&stage.forward(input.view()));
            input = concatenate(Axis(1), &[input.view(), p.view()]).expect("same rows");
        }
        input
    }

    /// Stage `k`'s view of a data set: each record's features extended by
    /// the earlier stages' class probabilities (labels unchanged).
    pub fn stage_dataset(&self, d: &Dataset, k: usize) -> Dataset {
        if k == 0 || d.is_empty() {
            return d.clone();
        }
        let input = self.stage_input(matrix(d, None).view(), k);
        let classes = self.stages[0].sizes().last().copied().unwrap_or(0);
        let mut feature_names = d.feature_names.clone();
        for j in 0..k {
            feature_names.extend((0..classes).map(|c| format!("stage{j}_p{c}")));
        }
        Dataset {
            features: input.outer_iter().map(|r| r.to_vec()).collect(),
            labels: d.labels.clone(),
            classes: d.classes,
            feature_names,
        }
    }

    /// The last stage's logits.
    pub fn forward(&self, x: ArrayView2<f64>) -> Array2<f64> {
        let last = self.stages.len() - 1;
        self.stages[last].forward(self.stage_input(x, last).view())
    }

    /// Per-record cross-entropy losses of the last stage.
    pub fn losses(&self, x: ArrayView2<f64>, y: &[usize]) -> Vec<f64> {
        let last = self.stages.len() - 1;
        self.stages[last].losses(self.stage_input(x, last).view(), y)
    }

    pub fn predict(&self, x: ArrayView2<f64>) -> Vec<usize> {
        argmax_rows(&self.forward(x))
    }

    /// Class probabilities of the last stage.
    pub fn probabilities(&self, x: ArrayView2<f64>) -> Array2<f64> {
        softmax_rows(&self.forward(x))
    }

    pub fn accuracy(&self, d: &Dataset) -> f64 {
        crate::model::hit_rate(|x| self.predict(x), d)
    }

    /// Safetensors (f32): a one-stage network under its MLP's PyTorch
    /// names (`0.weight`, …), a series under `stages.{k}.0.weight`, …; a
    /// head on a frozen encoder under its names, the encoder under
    /// `encoder.`.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), ModelError> {
        let tensors = match (self.stages.as_slice(), &self.encoder) {
            // The head under its MLP's names, the encoder under `encoder.`.
            ([m], Some(e)) => {
                let mut t = e.tensors("encoder.");
                t.extend(m.tensors(""));
                t
            }
            ([m], None) => m.tensors(""),
            _ => self
                .stages
                .iter()
                .enumerate()
                .flat_map(|(k, m)| m.tensors(&format!("stages.{k}.")))
                .collect(),
        };
        write_tensors(path, tensors)
    }

    /// Reads what [`Network::save_safetensors`] wrote.
    pub fn load_safetensors(path: &Path) -> Result<Network, ModelError> {
        let bytes = read_file(path)?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ModelError(e.to_string()))?;
        if let Some(m) = Mlp::from_tensors(&st, "")? {
            return Ok(match FrozenEncoder::from_tensors(&st, "encoder.")? {
                Some(e) => Network::encoded(Arc::new(e), m),
                None => Network::single(m),
            });
        }
        let mut stages = Vec::new();
        while let Some(m) = Mlp::from_tensors(&st, &format!("stages.{}.", stages.len()))? {
            stages.push(m);
        }
        if stages.is_empty() {
            return Err(ModelError(format!(
                "{}: neither `0.weight` nor `stages.0.0.weight`",
                path.display()
            )));
        }
        Ok(Network {
            encoder: None,
            stages,
        })
    }
}

/// Layer widths of stage `k` of a series.
pub fn series_stage_sizes(inputs: usize, hidden: &[usize], classes: usize, k: usize) -> Vec<usize> {
    let mut sizes = vec![inputs + k * classes];
    sizes.extend(hidden);
    sizes.push(classes);
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_reads_features_then_earlier_probabilities() {
        let n = Network::series(3, &[4], 2, 3, 9);
        let x = Array2::from_shape_vec((2, 3), vec![0.1, -0.2, 0.3, 1.0, 0.5, -1.0]).unwrap();
        let in2 = n.stage_input(x.view(), 2);
        assert_eq!(in2.dim(), (2, 3 + 2 * 2));
        assert_eq!(in2.slice(ndarray::s![.., ..3]), x);
        let p0 = softmax_rows(&n.stages()[0].forward(x.view()));
        assert_eq!(in2.slice(ndarray::s![.., 3..5]), p0);
        // The network's output is the last stage's on that input.
        assert_eq!(n.forward(x.view()), n.stages()[2].forward(in2.view()));
    }

    #[test]
    fn flat_parameters_lie_stage_after_stage() {
        let mut n = Network::series(3, &[4], 2, 2, 1);
        let d0 = n.stages()[0].dimension();
        assert_eq!(n.stage_range(0), 0..d0);
        assert_eq!(n.stage_range(1), d0..n.dimension());
        let flat = n.to_flat();
        assert_eq!(&flat[n.stage_range(1)], n.stages()[1].to_flat().as_slice());
        let v: Vec<f64> = (0..n.dimension()).map(|i| i as f64 * 1e-3).collect();
        n.set_flat(&v).unwrap();
        assert_eq!(n.to_flat(), v);
        assert!(n.set_flat(&v[1..]).is_err());
    }

    #[test]
    fn safetensors_round_trip_single_and_series() {
        let dir = std::env::temp_dir().join(format!("shroud-network-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, n) in [
            ("single", Network::single(Mlp::new(&[3, 4, 2], 5))),
            ("series", Network::series(3, &[4], 2, 3, 5)),
        ] {
            let path = dir.join(format!("{name}.safetensors"));
            n.save_safetensors(&path).unwrap();
            let back = Network::load_safetensors(&path).unwrap();
            assert_eq!(back.stages().len(), n.stages().len());
            for (a, b) in back.to_flat().iter().zip(n.to_flat()) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "f32 round trip");
            }
        }
        // A one-stage network keeps the MLP's PyTorch names.
        let m = Mlp::load_safetensors(&dir.join("single.safetensors")).unwrap();
        assert_eq!(m.sizes(), vec![3, 4, 2]);
    }
}
