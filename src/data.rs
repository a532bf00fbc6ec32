//! Data sets and how they are dealt out to parties.
//!
//! A CSV has a header row, numeric feature columns, an integer `label`
//! column and, optionally, a last `split` column (`train` / `test`). Errors
//! name the file, the line and the column. Standardisation is fitted on the
//! training rows only. Every split and partition is reproducible from a
//! seed.

use std::fmt;
use std::path::{Path, PathBuf};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::sampling::{standard_normal, uniform_open};

/// A CSV that could not be read.
#[derive(Debug)]
pub struct DataError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<String>,
    pub message: String,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(c) = &self.column {
            write!(f, ": column `{c}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for DataError {}

/// Records as rows of features with integer labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub features: Vec<Vec<f64>>,
    pub labels: Vec<usize>,
    pub classes: usize,
    pub feature_names: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.feature_names.len()
    }

    /// Writes the records as CSV (feature columns, then `label`), the form
    /// `load_csv` reads back.
    pub fn write_csv(&self, path: &Path) -> std::io::Result<()> {
        use std::fmt::Write as _;
        let mut s = self.feature_names.join(",");
        s.push_str(",label\n");
        for (x, y) in self.features.iter().zip(&self.labels) {
            for v in x {
                let _ = write!(s, "{v},");
            }
            let _ = writeln!(s, "{y}");
        }
        std::fs::write(path, s)
    }

    pub fn subset(&self, idx: &[usize]) -> Dataset {
        Dataset {
            features: idx.iter().map(|&i| self.features[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes,
            feature_names: self.feature_names.clone(),
        }
    }
}

/// A loaded file: the training rows, the test rows (from its `split`
/// column, or empty), and the file's name.
pub struct Loaded {
    pub train: Dataset,
    pub test: Option<Dataset>,
}

/// Labels above this are refused as unknown (a corrupt or wrong column).
pub const MAX_CLASSES: usize = 1000;

fn read_text(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|e| DataError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        message: format!("cannot read: {e}"),
    })
}

pub fn load_csv(path: &Path) -> Result<Loaded, DataError> {
    let text = read_text(path)?;
    parse_csv(path, &text)
}

/// A party's own records, checked against the model its policy trains:
/// `inputs` feature columns and labels below `classes`. Unlike a whole data
/// set, a party may lack classes (label skew is the normal case). Rows
/// marked `test` are left out.
pub fn load_party_csv(path: &Path, inputs: usize, classes: usize) -> Result<Dataset, DataError> {
    let text = read_text(path)?;
    parse_party_csv(path, &text, inputs, classes)
}

/// As [`load_party_csv`], from text.
pub fn parse_party_csv(
    path: &Path,
    text: &str,
    inputs: usize,
    classes: usize,
) -> Result<Dataset, DataError> {
    let mut d = parse(path, text, Some(classes))?.train;
    if d.dim() != inputs {
        return Err(DataError {
            file: path.to_path_buf(),
            line: Some(1),
            column: None,
            message: format!(
                "has {} feature columns; the policy's model takes {inputs} (strategy.inputs)",
                d.dim()
            ),
        });
    }
    d.classes = classes;
    Ok(d)
}

pub fn parse_csv(path: &Path, text: &str) -> Result<Loaded, DataError> {
    parse(path, text, None)
}

/// Parses a CSV; with `classes`, labels must be below it and classes may
/// be missing, else every class up to the largest label must appear.
fn parse(path: &Path, text: &str, classes: Option<usize>) -> Result<Loaded, DataError> {
    let party = classes.is_some();
    let err = |line: Option<usize>, column: Option<String>, message: String| DataError {
        file: path.to_path_buf(),
        line,
        column,
        message,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| {
        err(
            None,
            None,
            "the file is empty; expected a header row".into(),
        )
    })?;
    let names: Vec<String> = header.split(',').map(|s| s.trim().to_string()).collect();
    let has_split = names.last().map(String::as_str) == Some("split");
    let label_col = if has_split {
        names.len().checked_sub(2)
    } else {
        names.len().checked_sub(1)
    };
    let label_col = match label_col {
        Some(i) if names[i] == "label" && i > 0 => i,
        _ => {
            return Err(err(
                Some(1),
                None,
                "the header must end with a `label` column (then optionally `split`), after at least one feature".into(),
            ))
        }
    };
    let feature_names = names[..label_col].to_vec();
    let mut train = (Vec::new(), Vec::new());
    let mut test = (Vec::new(), Vec::new());
    for (i, line) in lines {
        let lineno = i + 1;
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != names.len() {
            return Err(err(
                Some(lineno),
                None,
                format!("has {} cells, the header has {}", cells.len(), names.len()),
            ));
        }
        let mut row = Vec::with_capacity(label_col);
        for (j, cell) in cells[..label_col].iter().enumerate() {
            let v: f64 = cell.parse().map_err(|_| {
                err(
                    Some(lineno),
                    Some(names[j].clone()),
                    format!("`{cell}` is not a number"),
                )
            })?;
            if !v.is_finite() {
                return Err(err(
                    Some(lineno),
                    Some(names[j].clone()),
                    format!("`{cell}` is not finite"),
                ));
            }
            row.push(v);
        }
        let label: usize = cells[label_col]
            .parse()
            .ok()
            .filter(|&l: &usize| l < classes.unwrap_or(MAX_CLASSES))
            .ok_or_else(|| {
                err(
                    Some(lineno),
                    Some("label".into()),
                    format!(
                        "`{}` is not a class label (an integer from 0 to {}{})",
                        cells[label_col],
                        classes.unwrap_or(MAX_CLASSES) - 1,
                        if classes.is_some() {
                            ", the policy's strategy.classes"
                        } else {
                            ""
                        }
                    ),
                )
            })?;
        let into_test = if has_split {
            match cells[label_col + 1] {
                "train" => false,
                "test" => true,
                other => {
                    return Err(err(
                        Some(lineno),
                        Some("split".into()),
                        format!("`{other}` is not `train` or `test`"),
                    ))
                }
            }
        } else {
            false
        };
        let target = if into_test { &mut test } else { &mut train };
        target.0.push(row);
        target.1.push(label);
    }
    if train.1.is_empty() {
        return Err(err(None, None, "no training rows".into()));
    }
    let classes = match classes {
        Some(k) => k,
        None => train.1.iter().chain(&test.1).max().map_or(0, |m| m + 1),
    };
    if classes < 2 {
        return Err(err(
            None,
            Some("label".into()),
            "needs at least two classes".into(),
        ));
    }
    // Every class up to the largest must appear in training, or the label
    // column is not what it claims.
    let mut seen = vec![false; classes];
    train.1.iter().for_each(|&l| seen[l] = true);
    let missing = seen.iter().position(|s| !s);
    if let Some(missing) = missing.filter(|_| !party) {
        return Err(err(
            None,
            Some("label".into()),
            format!(
                "labels run to {} but class {missing} never appears in the training rows",
                classes - 1
            ),
        ));
    }
    let make = |(features, labels): (Vec<Vec<f64>>, Vec<usize>)| Dataset {
        features,
        labels,
        classes,
        feature_names: feature_names.clone(),
    };
    Ok(Loaded {
        test: if has_split { Some(make(test)) } else { None },
        train: make(train),
    })
}

/// Per-feature mean and standard deviation, fitted on training rows.
#[derive(Clone, Debug)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Standardizer {
    pub fn fit(d: &Dataset) -> Standardizer {
        let n = d.len() as f64;
        let dim = d.dim();
        let mut mean = vec![0.0; dim];
        for r in &d.features {
            mean.iter_mut().zip(r).for_each(|(m, v)| *m += v / n);
        }
        let mut var = vec![0.0; dim];
        for r in &d.features {
            var.iter_mut()
                .zip(r.iter().zip(&mean))
                .for_each(|(s, (v, m))| *s += (v - m).powi(2) / n);
        }
        // Constant features are centred and left unscaled.
        let std = var
            .iter()
            .map(|v| if *v > 1e-12 { v.sqrt() } else { 1.0 })
            .collect();
        Standardizer { mean, std }
    }

    /// Undoes [`Standardizer::apply`]: the features as they were read.
    pub fn revert(&self, d: &mut Dataset) {
        for r in d.features.iter_mut() {
            for ((v, m), s) in r.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = *v * s + m;
            }
        }
    }

    pub fn apply(&self, d: &mut Dataset) {
        for r in d.features.iter_mut() {
            for ((v, m), s) in r.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
    }
}

/// Shuffles `0..n` reproducibly.
pub fn shuffled(n: usize, rng: &mut ChaCha20Rng) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx
}

/// A seeded train/test split of one data set.
pub fn train_test_split(d: &Dataset, test_fraction: f64, seed: u64) -> (Dataset, Dataset) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x0005_7117);
    let idx = shuffled(d.len(), &mut rng);
    let n_test = ((d.len() as f64) * test_fraction).round() as usize;
    let (test, train) = idx.split_at(n_test);
    (d.subset(train), d.subset(test))
}

/// A data set made ready for training: split, standardised on the training
/// rows.
pub struct Prepared {
    pub train: Dataset,
    pub test: Dataset,
    pub name: String,
    /// What the features were standardised with.
    pub standardizer: Standardizer,
}

/// The data sets built into the binary (data/README.md gives their
/// sources), so that the demo runs from any folder.
pub const BUNDLED: [(&str, &str); 5] = [
    ("breast_cancer", include_str!("../data/breast_cancer.csv")),
    ("caravan", include_str!("../data/caravan.csv")),
    ("digits", include_str!("../data/digits.csv")),
    ("mnist1d", include_str!("../data/mnist1d.csv")),
    ("wine", include_str!("../data/wine.csv")),
];

/// A bundled data set by name (`digits`), or a CSV file by path
/// (`my/data.csv`), split and standardised as [`prepare`] does.
pub fn prepare_named(dataset: &str, seed: u64) -> Result<Prepared, DataError> {
    let as_path = Path::new(dataset);
    if as_path.extension().is_none() && as_path.components().count() == 1 {
        if let Some((name, text)) = BUNDLED.iter().find(|(n, _)| *n == dataset) {
            let label = PathBuf::from(format!("data/{name}.csv (built in)"));
            return prepare_loaded(name, parse_csv(&label, text)?, seed);
        }
        return Err(DataError {
            file: as_path.to_path_buf(),
            line: None,
            column: None,
            message: format!(
                "no such bundled data set; the bundled ones are {}, or give a CSV file's path",
                BUNDLED.map(|(n, _)| n).join(", ")
            ),
        });
    }
    prepare(as_path, seed)
}

pub fn prepare(path: &Path, seed: u64) -> Result<Prepared, DataError> {
    let name = path
        .file_stem()
        .map_or("data".into(), |s| s.to_string_lossy().into_owned());
    prepare_loaded(&name, load_csv(path)?, seed)
}

fn prepare_loaded(name: &str, loaded: Loaded, seed: u64) -> Result<Prepared, DataError> {
    let (mut train, mut test) = match loaded.test {
        Some(test) => (loaded.train, test),
        None => train_test_split(&loaded.train, 0.2, seed),
    };
    let s = Standardizer::fit(&train);
    s.apply(&mut train);
    s.apply(&mut test);
    Ok(Prepared {
        train,
        test,
        name: name.to_string(),
        standardizer: s,
    })
}

/// How records are dealt out to parties.
#[derive(Clone, Debug, PartialEq)]
pub enum Partition {
    /// Uniformly at random, equal shares.
    Iid,
    /// Label skew: each class split over parties by Dirichlet(α) weights;
    /// every party gets at least `min_records`.
    Dirichlet { alpha: f64, min_records: usize },
    /// Each party holds only `k` classes.
    Pathological { k: usize },
    /// Party sizes from Dirichlet(α) weights, labels IID.
    Quantity { alpha: f64, min_records: usize },
    /// ModelNet label sets (`crate::modelnet`): `k` classes per party,
    /// random, diverse or similar over `clusters` clusters of the class
    /// centroids (0: ⌈√classes⌉, at least `k` for D). Needs the features:
    /// see `crate::modelnet::partition_dataset`.
    ModelNet {
        sets: LabelSets,
        k: usize,
        clusters: usize,
    },
}

/// How ModelNet label sets are drawn from the clustered classes
/// (`crate::modelnet`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum LabelSets {
    Random,
    Diverse,
    Similar,
}

#[derive(Debug, PartialEq)]
pub struct PartitionError(pub String);

impl fmt::Display for PartitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PartitionError {}

/// Indices of each party's records.
pub fn partition(
    labels: &[usize],
    classes: usize,
    parties: usize,
    how: &Partition,
    seed: u64,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    let n = labels.len();
    if parties == 0 || parties > n {
        return Err(PartitionError(format!(
            "cannot deal {n} records to {parties} parties"
        )));
    }
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x00d1_5717);
    match *how {
        Partition::ModelNet { .. } => Err(PartitionError(
            "ModelNet label sets cluster the class centroids: they need the features \
             (modelnet::partition_dataset)"
                .into(),
        )),
        Partition::Iid => {
            let idx = shuffled(n, &mut rng);
            Ok((0..parties)
                .map(|p| idx.iter().skip(p).step_by(parties).copied().collect())
                .collect())
        }
        Partition::Dirichlet { alpha, min_records } => {
            check_alpha(alpha)?;
            if min_records * parties > n {
                return Err(PartitionError(format!(
                    "min_records {min_records} × {parties} parties exceeds the {n} records"
                )));
            }
            for _attempt in 0..1000 {
                let mut out = vec![Vec::new(); parties];
                for c in 0..classes {
                    let mut members: Vec<usize> = (0..n).filter(|&i| labels[i] == c).collect();
                    let order = shuffled(members.len(), &mut rng);
                    members = order.into_iter().map(|i| members[i]).collect();
                    let w = dirichlet(alpha, parties, &mut rng);
                    let cuts = cut_points(&w, members.len());
                    for (p, win) in cuts.windows(2).enumerate() {
                        out[p].extend_from_slice(&members[win[0]..win[1]]);
                    }
                }
                if out.iter().all(|v| v.len() >= min_records) {
                    return Ok(out);
                }
            }
            Err(PartitionError(format!(
                "no Dirichlet(α = {alpha}) draw in 1000 gave every party {min_records} records; lower min_records or raise α"
            )))
        }
        Partition::Pathological { k } => {
            if k == 0 || k > classes {
                return Err(PartitionError(format!(
                    "k must be from 1 to {classes}, got {k}"
                )));
            }
            if parties * k < classes {
                return Err(PartitionError(format!(
                    "{parties} parties × {k} classes each cannot cover all {classes} classes"
                )));
            }
            // The parties' k-class windows are laid end to end around the
            // classes, so every class is held and each party's k are distinct.
            let mut holders = vec![Vec::new(); classes];
            let start = (rng.next_u64() % classes as u64) as usize;
            for p in 0..parties {
                for j in 0..k {
                    holders[(start + p * k + j) % classes].push(p);
                }
            }
            let mut out = vec![Vec::new(); parties];
            for (c, hs) in holders.iter().enumerate() {
                let members: Vec<usize> = (0..n).filter(|&i| labels[i] == c).collect();
                if hs.is_empty() {
                    continue;
                }
                let order = shuffled(members.len(), &mut rng);
                for (j, i) in order.into_iter().enumerate() {
                    out[hs[j % hs.len()]].push(members[i]);
                }
            }
            if let Some(p) = out.iter().position(|v| v.is_empty()) {
                return Err(PartitionError(format!("party {p} received no records")));
            }
            Ok(out)
        }
        Partition::Quantity { alpha, min_records } => {
            check_alpha(alpha)?;
            if min_records * parties > n {
                return Err(PartitionError(format!(
                    "min_records {min_records} × {parties} parties exceeds the {n} records"
                )));
            }
            let idx = shuffled(n, &mut rng);
            let spare = n - min_records * parties;
            let w = dirichlet(alpha, parties, &mut rng);
            let extra = cut_points(&w, spare);
            let mut out = Vec::with_capacity(parties);
            let mut at = 0;
            for p in 0..parties {
                let take = min_records + extra[p + 1] - extra[p];
                out.push(idx[at..at + take].to_vec());
                at += take;
            }
            Ok(out)
        }
    }
}

fn check_alpha(alpha: f64) -> Result<(), PartitionError> {
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(PartitionError(format!("α must be positive, got {alpha}")));
    }
    Ok(())
}

/// Cumulative cut points of `n` items by weights summing to one.
fn cut_points(w: &[f64], n: usize) -> Vec<usize> {
    let mut cuts = vec![0];
    let mut acc = 0.0;
    for x in w {
        acc += x;
        cuts.push(((acc * n as f64).round() as usize).min(n));
    }
    *cuts.last_mut().expect("non-empty") = n;
    cuts
}

/// Gamma(shape, 1) by Marsaglia–Tsang (boosted for shape < 1).
fn gamma(shape: f64, rng: &mut ChaCha20Rng) -> f64 {
    if shape < 1.0 {
        return gamma(shape + 1.0, rng) * uniform_open(rng).powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = standard_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = uniform_open(rng);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A draw from the symmetric Dirichlet(α) on `k` categories.
pub fn dirichlet(alpha: f64, k: usize, rng: &mut ChaCha20Rng) -> Vec<f64> {
    let g: Vec<f64> = (0..k).map(|_| gamma(alpha, rng)).collect();
    let s: f64 = g.iter().sum();
    if s > 0.0 {
        g.iter().map(|x| x / s).collect()
    } else {
        vec![1.0 / k as f64; k]
    }
}
