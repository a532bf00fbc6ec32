//! Small dense models: softmax regression and ReLU MLPs on `ndarray`, with
//! forward, backward, per-example gradients (for record-level DP), SGD with
//! momentum, and weights in safetensors under PyTorch's `nn.Sequential`
//! names (`0.weight`, `0.bias`, `2.weight`, …; ReLUs sit at the odd
//! indices), weight matrices shaped `(out, in)`.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::data::Dataset;
use crate::sampling::standard_normal;

#[derive(Clone, Debug)]
pub struct Dense {
    /// `(out, in)`, as PyTorch's `nn.Linear.weight`.
    pub w: Array2<f64>,
    pub b: Array1<f64>,
}

/// A stack of dense layers with ReLU between them; no hidden layer is
/// softmax regression.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub layers: Vec<Dense>,
}

#[derive(Debug)]
pub struct ModelError(pub String);

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ModelError {}

impl ModelError {
    /// `got` parameter values for a model of `want`.
    pub fn check_length(got: usize, want: usize) -> Result<(), ModelError> {
        if got == want {
            Ok(())
        } else {
            Err(ModelError(format!(
                "{got} values for a model of {want} parameters"
            )))
        }
    }
}

impl Mlp {
    /// `sizes` = [inputs, hidden…, classes]; He initialisation from `seed`.
    pub fn new(sizes: &[usize], seed: u64) -> Mlp {
        assert!(sizes.len() >= 2, "a model needs inputs and classes");
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x30de1);
        let layers = sizes
            .windows(2)
            .map(|w| {
                let (fan_in, fan_out) = (w[0], w[1]);
                let scale = (2.0 / fan_in as f64).sqrt();
                Dense {
                    w: Array2::from_shape_simple_fn((fan_out, fan_in), || {
                        standard_normal(&mut rng) * scale
                    }),
                    b: Array1::zeros(fan_out),
                }
            })
            .collect();
        Mlp { layers }
    }

    pub fn sizes(&self) -> Vec<usize> {
        let mut s = vec![self.layers[0].w.ncols()];
        s.extend(self.layers.iter().map(|l| l.w.nrows()));
        s
    }

    /// Number of parameters.
    pub fn dimension(&self) -> usize {
        self.layers.iter().map(|l| l.w.len() + l.b.len()).sum()
    }

    /// Logits for a batch (rows are records).
    pub fn forward(&self, x: ArrayView2<f64>) -> Array2<f64> {
        self.forward_cached(x).1
    }

    /// Inputs to every layer, and the logits.
    pub(crate) fn forward_cached(&self, x: ArrayView2<f64>) -> (Vec<Array2<f64>>, Array2<f64>) {
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut a = x.to_owned();
        for (i, l) in self.layers.iter().enumerate() {
            let mut z = a.dot(&l.w.t());
            z += &l.b;
            inputs.push(a);
            if i + 1 < self.layers.len() {
                z.mapv_inplace(|v| v.max(0.0));
            }
            a = z;
        }
        (inputs, a)
    }

    /// Per-example `∂loss/∂logits` (softmax minus one-hot) and losses.
    fn output_delta(logits: &Array2<f64>, y: &[usize]) -> (Array2<f64>, Vec<f64>) {
        let mut p = logits.clone();
        let mut losses = Vec::with_capacity(y.len());
        for (mut row, &label) in p.axis_iter_mut(Axis(0)).zip(y) {
            let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            row.mapv_inplace(|v| (v - m).exp());
            let s = row.sum();
            row.mapv_inplace(|v| v / s);
            losses.push(-(row[label].max(1e-300)).ln());
            row[label] -= 1.0;
        }
        (p, losses)
    }

    /// Per-record cross-entropy losses.
    pub fn losses(&self, x: ArrayView2<f64>, y: &[usize]) -> Vec<f64> {
        Self::output_delta(&self.forward(x), y).1
    }

    /// Mean cross-entropy and its gradient, flattened.
    pub fn loss_and_grad(&self, x: ArrayView2<f64>, y: &[usize]) -> (f64, Vec<f64>) {
        let (inputs, logits) = self.forward_cached(x);
        let (delta, losses) = Self::output_delta(&logits, y);
        let n = y.len() as f64;
        (
            losses.iter().sum::<f64>() / n,
            self.mean_grad(&inputs, delta),
        )
    }

    /// Mean cross-entropy against soft targets (one distribution over the
    /// classes per row, as a distilled student learns) and its gradient.
    pub fn loss_and_grad_soft(
        &self,
        x: ArrayView2<f64>,
        targets: ArrayView2<f64>,
    ) -> (f64, Vec<f64>) {
        let (inputs, logits) = self.forward_cached(x);
        let p = softmax_rows(&logits);
        let n = p.nrows() as f64;
        let loss = -p
            .iter()
            .zip(targets.iter())
            .map(|(q, t)| t * q.max(1e-300).ln())
            .sum::<f64>()
            / n;
        (loss, self.mean_grad(&inputs, &p - &targets))
    }

    /// The mean gradient over a batch from `∂loss/∂logits` per record.
    fn mean_grad(&self, inputs: &[Array2<f64>], mut delta: Array2<f64>) -> Vec<f64> {
        let n = delta.nrows() as f64;
        let mut grads: Vec<(Array2<f64>, Array1<f64>)> = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate().rev() {
            let gw = delta.t().dot(&inputs[i]) / n;
            let gb = delta.sum_axis(Axis(0)) / n;
            grads.push((gw, gb));
            if i > 0 {
                delta = backprop(&delta, l, &inputs[i]);
            }
        }
        grads.reverse();
        let mut flat = Vec::with_capacity(self.dimension());
        for (gw, gb) in grads {
            flat.extend(gw.iter());
            flat.extend(gb.iter());
        }
        flat
    }

    /// One flattened gradient per record (of that record's loss alone).
    pub fn per_example_grads(&self, x: ArrayView2<f64>, y: &[usize]) -> Vec<Vec<f64>> {
        let (inputs, logits) = self.forward_cached(x);
        let (delta, _) = Self::output_delta(&logits, y);
        self.per_example_from(&inputs, delta)
    }

    /// One flattened gradient per record of its cross-entropy against soft
    /// targets (one distribution over the classes per row).
    pub fn per_example_grads_soft(
        &self,
        x: ArrayView2<f64>,
        targets: ArrayView2<f64>,
    ) -> Vec<Vec<f64>> {
        let (inputs, logits) = self.forward_cached(x);
        let delta = softmax_rows(&logits) - targets;
        self.per_example_from(&inputs, delta)
    }

    /// Per-record gradients from each record's `∂loss/∂logits`.
    fn per_example_from(&self, inputs: &[Array2<f64>], mut delta: Array2<f64>) -> Vec<Vec<f64>> {
        let n = delta.nrows();
        let dim = self.dimension();
        let mut out = vec![vec![0.0; dim]; n];
        // Offsets of each layer's block in the flat vector.
        let mut offsets = Vec::with_capacity(self.layers.len());
        let mut at = 0;
        for l in &self.layers {
            offsets.push(at);
            at += l.w.len() + l.b.len();
        }
        for (i, l) in self.layers.iter().enumerate().rev() {
            let (rows, cols) = l.w.dim();
            for (r, g) in out.iter_mut().enumerate() {
                let d = delta.row(r);
                let a = inputs[i].row(r);
                let block = &mut g[offsets[i]..offsets[i] + rows * cols + rows];
                for o in 0..rows {
                    let dv = d[o];
                    if dv != 0.0 {
                        let dst = &mut block[o * cols..(o + 1) * cols];
                        for (x, av) in dst.iter_mut().zip(a.iter()) {
                            *x = dv * av;
                        }
                    }
                    block[rows * cols + o] = dv;
                }
            }
            if i > 0 {
                delta = backprop(&delta, l, &inputs[i]);
            }
        }
        out
    }

    /// Parameters flattened: each layer's weight (row-major) then bias.
    pub fn to_flat(&self) -> Vec<f64> {
        let mut v = Vec::with_capacity(self.dimension());
        for l in &self.layers {
            v.extend(l.w.iter());
            v.extend(l.b.iter());
        }
        v
    }

    pub fn set_flat(&mut self, v: &[f64]) -> Result<(), ModelError> {
        ModelError::check_length(v.len(), self.dimension())?;
        let mut at = 0;
        for l in self.layers.iter_mut() {
            for w in l.w.iter_mut() {
                *w = v[at];
                at += 1;
            }
            for b in l.b.iter_mut() {
                *b = v[at];
                at += 1;
            }
        }
        Ok(())
    }

    pub fn predict(&self, x: ArrayView2<f64>) -> Vec<usize> {
        argmax_rows(&self.forward(x))
    }

    pub fn accuracy(&self, d: &Dataset) -> f64 {
        hit_rate(|x| self.predict(x), d)
    }

    /// Writes the weights as safetensors (f32), PyTorch names and shapes.
    pub fn save_safetensors(&self, path: &Path) -> Result<(), ModelError> {
        write_tensors(path, self.tensors(""))
    }

    /// Each layer's weight and bias as named f32 tensors, names prefixed.
    pub(crate) fn tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        let to_bytes = |it: &mut dyn Iterator<Item = f64>| -> Vec<u8> {
            it.flat_map(|v| (v as f32).to_le_bytes()).collect()
        };
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let idx = 2 * i;
            out.push((
                format!("{prefix}{idx}.weight"),
                vec![l.w.nrows(), l.w.ncols()],
                to_bytes(&mut l.w.iter().copied()),
            ));
            out.push((
                format!("{prefix}{idx}.bias"),
                vec![l.b.len()],
                to_bytes(&mut l.b.iter().copied()),
            ));
        }
        out
    }

    /// Reads weights written by [`Mlp::save_safetensors`] (or by PyTorch
    /// from an `nn.Sequential` of Linear and ReLU layers).
    pub fn load_safetensors(path: &Path) -> Result<Mlp, ModelError> {
        let bytes = read_file(path)?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ModelError(e.to_string()))?;
        Mlp::from_tensors(&st, "")?.ok_or_else(|| ModelError("no `0.weight` tensor".into()))
    }

    /// The layers named `{prefix}0.weight`, `{prefix}0.bias`, `{prefix}2.weight`, …;
    /// `None` when there is no first layer.
    pub(crate) fn from_tensors(
        st: &safetensors::SafeTensors<'_>,
        prefix: &str,
    ) -> Result<Option<Mlp>, ModelError> {
        use safetensors::tensor::Dtype;
        let mut layers = Vec::new();
        for i in 0.. {
            let (wn, bn) = (
                format!("{prefix}{}.weight", 2 * i),
                format!("{prefix}{}.bias", 2 * i),
            );
            let Ok(w) = st.tensor(&wn) else { break };
            let b = st
                .tensor(&bn)
                .map_err(|_| ModelError(format!("missing {bn}")))?;
            let read = |t: &safetensors::tensor::TensorView<'_>| -> Result<Vec<f64>, ModelError> {
                match t.dtype() {
                    Dtype::F32 => Ok(t
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                        .collect()),
                    Dtype::F64 => Ok(t
                        .data()
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect()),
                    other => Err(ModelError(format!("unsupported dtype {other:?}"))),
                }
            };
            let shape = w.shape().to_vec();
            if shape.len() != 2 || b.shape() != [shape[0]] {
                return Err(ModelError(format!("{wn} / {bn} have inconsistent shapes")));
            }
            let w = Array2::from_shape_vec((shape[0], shape[1]), read(&w)?)
                .map_err(|e| ModelError(e.to_string()))?;
            let b = Array1::from_vec(read(&b)?);
            layers.push(Dense { w, b });
        }
        Ok((!layers.is_empty()).then_some(Mlp { layers }))
    }
}

/// A tensor to write: name, shape, little-endian f32 bytes.
pub(crate) type NamedTensor = (String, Vec<usize>, Vec<u8>);

/// Writes tensors as one safetensors file (PyTorch format tag).
pub(crate) fn write_tensors(path: &Path, buffers: Vec<NamedTensor>) -> Result<(), ModelError> {
    use safetensors::tensor::{Dtype, TensorView};
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(n, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| ModelError(e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| ModelError(format!("{}: {e}", path.display())))
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|e| ModelError(format!("{}: {e}", path.display())))
}

/// The share of `d`'s records whose label `predict` gives (0 for none).
pub fn hit_rate(predict: impl Fn(ArrayView2<f64>) -> Vec<usize>, d: &Dataset) -> f64 {
    if d.is_empty() {
        return 0.0;
    }
    hits(predict, d, None) as f64 / d.len() as f64
}

/// How many of `d`'s records (or of the listed ones) `predict` labels
/// right.
pub fn hits(
    predict: impl Fn(ArrayView2<f64>) -> Vec<usize>,
    d: &Dataset,
    idx: Option<&[usize]>,
) -> usize {
    let label = |j: usize| d.labels[idx.map_or(j, |idx| idx[j])];
    predict(matrix(d, idx).view())
        .iter()
        .enumerate()
        .filter(|&(j, &p)| p == label(j))
        .count()
}

/// The index of each row's largest value.
pub fn argmax_rows(m: &Array2<f64>) -> Vec<usize> {
    m.axis_iter(Axis(0)).map(|r| argmax(r.iter())).collect()
}

/// The index of the largest value (the first on a tie).
pub fn argmax<'a>(values: impl IntoIterator<Item = &'a f64>) -> usize {
    values
        .into_iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Row-wise softmax of logits.
pub fn softmax_rows(logits: &Array2<f64>) -> Array2<f64> {
    let mut p = logits.clone();
    for mut row in p.axis_iter_mut(Axis(0)) {
        let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        row.mapv_inplace(|v| (v - m).exp());
        let s = row.sum();
        row.mapv_inplace(|v| v / s);
    }
    p
}

/// `∂loss/∂(layer input)` from `∂loss/∂(layer output)`, through the ReLU
/// that produced the input (a zero input means a clamped unit).
fn backprop(delta: &Array2<f64>, layer: &Dense, input: &Array2<f64>) -> Array2<f64> {
    let mut prev = delta.dot(&layer.w);
    prev.zip_mut_with(input, |d, a| {
        if *a <= 0.0 {
            *d = 0.0
        }
    });
    prev
}

/// Rows of `d` (or of the listed indices) as a matrix.
pub fn matrix(d: &Dataset, idx: Option<&[usize]>) -> Array2<f64> {
    match idx {
        None => {
            let flat: Vec<f64> = d.features.iter().flatten().copied().collect();
            Array2::from_shape_vec((d.len(), d.dim()), flat).expect("rectangular rows")
        }
        Some(idx) => {
            let flat: Vec<f64> = idx
                .iter()
                .flat_map(|&i| d.features[i].iter().copied())
                .collect();
            Array2::from_shape_vec((idx.len(), d.dim()), flat).expect("rectangular rows")
        }
    }
}

/// SGD with (heavy-ball) momentum on a flat parameter vector.
#[derive(Clone, Debug)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    velocity: Vec<f64>,
}

impl Sgd {
    pub fn new(lr: f64, momentum: f64, dim: usize) -> Sgd {
        Sgd {
            lr,
            momentum,
            velocity: vec![0.0; dim],
        }
    }

    /// The momentum buffer, saved with the model so a restarted
    /// coordinator continues the same optimisation.
    pub fn velocity(&self) -> &[f64] {
        &self.velocity
    }

    pub fn set_velocity(&mut self, v: &[f64]) -> Result<(), ModelError> {
        if v.len() != self.velocity.len() {
            return Err(ModelError(format!(
                "momentum buffer has {} values, the model {}",
                v.len(),
                self.velocity.len()
            )));
        }
        self.velocity.copy_from_slice(v);
        Ok(())
    }

    pub fn step(&mut self, params: &mut [f64], grad: &[f64]) {
        for ((p, v), g) in params.iter_mut().zip(self.velocity.iter_mut()).zip(grad) {
            *v = self.momentum * *v + g;
            *p -= self.lr * *v;
        }
    }
}

/// Trains `model` centrally by minibatch SGD: the reference every federated
/// result is compared with.
pub fn train_central(
    model: &mut Mlp,
    d: &Dataset,
    epochs: usize,
    batch: usize,
    lr: f64,
    momentum: f64,
    seed: u64,
) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xce17);
    let mut opt = Sgd::new(lr, momentum, model.dimension());
    let mut params = model.to_flat();
    for _ in 0..epochs {
        let order = crate::data::shuffled(d.len(), &mut rng);
        for chunk in order.chunks(batch.max(1)) {
            let x = matrix(d, Some(chunk));
            let y: Vec<usize> = chunk.iter().map(|&i| d.labels[i]).collect();
            let (_, g) = model.loss_and_grad(x.view(), &y);
            opt.step(&mut params, &g);
            model.set_flat(&params).expect("same dimension");
        }
    }
}
