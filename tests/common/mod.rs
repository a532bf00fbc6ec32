//! Helpers shared by the integration tests that run the `shroud` binary.
#![allow(dead_code)] // each test crate uses its own share of the helpers

use std::process::Command;

/// Runs `shroud` with `args`: exit code, stdout, stderr.
pub fn shroud(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shroud"))
        .args(args)
        .output()
        .expect("run shroud");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh folder under the system's temporary directory.
#[allow(dead_code)]
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("shroud-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Parses one JSON object printed by `shroud`.
#[allow(dead_code)]
pub fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The inputs among what the parties saw.
pub fn inputs_of(
    seen: impl IntoIterator<Item = shroud::party::PartyObservation>,
) -> Vec<shroud::party::ObservedInput> {
    seen.into_iter()
        .filter_map(|o| match o {
            shroud::party::PartyObservation::Input(i) => Some(i),
            _ => None,
        })
        .collect()
}

/// Every aggregate equals the sum, mod 2^bits, of the inputs its
/// contributors made for that round and task.
pub fn check_sums(
    sums: &[shroud::coordinator::ObservedSum],
    inputs: &[shroud::party::ObservedInput],
) {
    assert!(!sums.is_empty());
    for s in sums {
        let mask = if s.bits == 32 {
            u32::MAX
        } else {
            (1u32 << s.bits) - 1
        };
        let mut want = vec![0u32; s.sum.len()];
        for c in &s.contributors {
            let x = inputs
                .iter()
                .find(|i| i.party == *c && i.round == s.round && i.task == s.task && i.job == s.job)
                .unwrap_or_else(|| panic!("no input observed for party {c} round {}", s.round));
            for (w, v) in want.iter_mut().zip(&x.words) {
                *w = w.wrapping_add(*v) & mask;
            }
        }
        assert_eq!(
            s.sum, want,
            "round {} task {}: secure sum differs",
            s.round, s.task
        );
    }
}

/// A policy for demo parties holding `records` each, on the wine data
/// (13 features, 3 classes), running FedMR in groups of at least `group_size` after
/// `warmup` FedAvg rounds: passive mode, threshold 3, one colluder,
/// record-level DP at ε = 8 over `rounds` rounds, no canaries, and a gate
/// (AUC ≤ 0.95) loose enough that the tests that use it, which are about
/// the engine, see a release whatever the few audit records score.
pub fn fedmr_policy_text(records: &[usize], group_size: usize, warmup: u32, rounds: u32) -> String {
    let mut text = "[consortium]\nid = \"fedmr-test\"\nthreshold = 3\nmax_colluding = 1\n\
                    active = false\nneighbors = \"all\"\nphase_timeout_secs = 20.0\n\n"
        .to_string();
    for (i, r) in records.iter().enumerate() {
        text += &format!(
            "[[party]]\nid = {i}\nname = \"p{i}\"\nidentity_key = \"{}\"\nrecords = {r}\n\n",
            shroud::job::demo_public_key_hex(i as u32)
        );
    }
    text += &format!(
        "[privacy]\nunit = \"record\"\nepsilon = 8.0\ndelta = 1e-5\naccountant = \"zcdp\"\n\
         clip_norm = 1.0\ncalibrate = true\nrounds = {rounds}\nsampling_rate = 1.0\n\n\
         [encoding]\nbits = 24\nrotation = \"hadamard\"\n\n\
         [strategy]\nkind = \"fedmr\"\ngroup_size = {group_size}\nwarmup_rounds = {warmup}\n\
         model = \"mlp\"\ninputs = 13\nhidden = [8]\nclasses = 3\nlearning_rate = 1.0\nmomentum = 0.5\n\n\
         [audit]\nattacks = [\"loss\"]\nmax_auc = 0.95\nconfidence = 0.95\ncanaries = 0\n"
    );
    text
}

/// The same consortium training a series network of `stages` stages over
/// `rounds` rounds (a multiple of `stages`).
pub fn series_policy_text(records: &[usize], stages: u32, rounds: u32) -> String {
    fedmr_policy_text(records, 3, 0, rounds).replace(
        "kind = \"fedmr\"\ngroup_size = 3\nwarmup_rounds = 0\n",
        &format!("kind = \"series\"\nstages = {stages}\n"),
    )
}

/// The wine test split's features, written to `dir/public.csv` as a
/// public unlabelled set: records no party holds. Returns the file and its
/// SHA-256.
#[allow(dead_code)]
pub fn wine_public_set(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    use sha2::Digest;
    let data = shroud::data::prepare(std::path::Path::new("data/wine.csv"), 2).unwrap();
    let mut text = "# wine features, no labels\n".to_string();
    for row in &data.test.features {
        let line: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        text += &line.join(",");
        text.push('\n');
    }
    let path = std::fs::canonicalize(dir).unwrap().join("public.csv");
    std::fs::write(&path, &text).unwrap();
    (
        path,
        shroud::policy::hex(&sha2::Sha256::digest(text.as_bytes())),
    )
}

/// The consortium of [`fedmr_policy_text`] running the average ensemble:
/// each member trains `steps` home DP-SGD steps and labels `public`.
#[allow(dead_code)]
pub fn ensemble_policy_text(
    records: &[usize],
    public: &(std::path::PathBuf, String),
    steps: u32,
) -> String {
    fedmr_policy_text(records, 3, 0, steps).replace(
        "kind = \"fedmr\"\ngroup_size = 3\nwarmup_rounds = 0\n",
        &format!(
            "kind = \"ensemble\"\npublic_set = \"{}\"\npublic_set_sha256 = \"{}\"\nstudent_epochs = 30\n",
            public.0.display(),
            public.1
        ),
    )
}

/// The consortium of [`fedmr_policy_text`] running transfer learning: a
/// FedAvg base over `rounds` rounds, then 5 home fine-tuning steps.
#[allow(dead_code)]
pub fn transfer_policy_text(records: &[usize], rounds: u32) -> String {
    fedmr_policy_text(records, 3, 0, rounds).replace(
        "kind = \"fedmr\"\ngroup_size = 3\nwarmup_rounds = 0\n",
        "kind = \"transfer\"\nfinetune_steps = 5\nfinetune_share = 0.2\n",
    )
}

/// `n` equal IID shares of the wine training records.
pub fn wine_shares(n: usize) -> Vec<shroud::data::Dataset> {
    iid_shares("data/wine.csv", n, false)
}

/// `n` equal IID shares of a data set's training records, standardised or
/// (`raw`) as read.
fn iid_shares(path: &str, n: usize, raw: bool) -> Vec<shroud::data::Dataset> {
    let mut data = shroud::data::prepare(std::path::Path::new(path), 2).unwrap();
    if raw {
        data.standardizer.revert(&mut data.train);
    }
    let parts = shroud::data::partition(
        &data.train.labels,
        data.train.classes,
        n,
        &shroud::data::Partition::Iid,
        2,
    )
    .unwrap();
    parts.iter().map(|p| data.train.subset(p)).collect()
}

/// The headless Chromium to render pages with: `SHROUD_CHROMIUM`, or the
/// first of the usual names on PATH.
pub fn chromium() -> String {
    std::env::var("SHROUD_CHROMIUM").unwrap_or_else(|_| {
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find(|c| Command::new(c).arg("--version").output().is_ok())
            .expect("chromium on PATH")
            .to_string()
    })
}

/// Runs headless Chromium with a throwaway profile under `dir` and
/// `args`, returning its stdout and whether it succeeded.
pub fn run_chromium(dir: &std::path::Path, args: &[String]) -> (bool, String, String) {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(args)
        .output()
        .expect("run chromium");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The page's DOM after layout in a `width`-pixel window.
pub fn rendered_dom(dir: &std::path::Path, page: &std::path::Path, width: u32) -> String {
    run_chromium(
        dir,
        &[
            format!("--window-size={width},900"),
            "--dump-dom".into(),
            format!("file://{}", page.display()),
        ],
    )
    .1
}

/// Content width and viewport width of `page` laid out `width` pixels
/// wide: a copy gets a script that writes both into its title once laid
/// out (the pages themselves have no scripts).
pub fn laid_out_widths(dir: &std::path::Path, page: &std::path::Path, width: u32) -> (u32, u32) {
    let probe = dir.join("probe.html");
    let html = std::fs::read_to_string(page).unwrap().replace(
        "</body>",
        "<script>document.title = 'widths ' + document.documentElement.scrollWidth + ' ' + \
         document.documentElement.clientWidth;</script></body>",
    );
    std::fs::write(&probe, html).unwrap();
    let dom = rendered_dom(dir, &probe, width);
    let widths: Vec<u32> = dom
        .split("<title>widths ")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .expect("the probe ran")
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    (widths[0], widths[1])
}

/// The consortium of [`fedmr_policy_text`] running FedImpres over `rounds`
/// rounds: the statistics sum in round 1, 30 impressions made after round
/// 2 and every 2 rounds after.
#[allow(dead_code)]
pub fn fedimpres_policy_text(records: &[usize], rounds: u32) -> String {
    fedmr_policy_text(records, 3, 0, rounds).replace(
        "kind = \"fedmr\"\ngroup_size = 3\nwarmup_rounds = 0\n",
        "kind = \"fedimpres\"\nwarmup_rounds = 2\nrefresh_rounds = 2\nimpressions = 30\n",
    )
}

/// `n` equal IID shares of the digits training records, their features as
/// read (the counts 0–16 a frozen encoder reads).
#[allow(dead_code)]
pub fn raw_digits_shares(n: usize) -> Vec<shroud::data::Dataset> {
    iid_shares("data/digits.csv", n, true)
}

/// The consortium of [`fedmr_policy_text`] on digits running FST-CBDG over
/// `rounds` rounds with the shipped encoder, the prototypes refreshed
/// every 2 rounds.
#[allow(dead_code)]
pub fn fstcbdg_policy_text(records: &[usize], rounds: u32) -> String {
    use sha2::Digest;
    let encoder = std::fs::canonicalize("data/digits-encoder.safetensors").unwrap();
    let sha = shroud::policy::hex(&sha2::Sha256::digest(std::fs::read(&encoder).unwrap()));
    fedmr_policy_text(records, 3, 0, rounds)
        .replace(
            "kind = \"fedmr\"\ngroup_size = 3\nwarmup_rounds = 0\n",
            &format!(
                "kind = \"fstcbdg\"\nencoder = \"{}\"\nencoder_sha256 = \"{sha}\"\n\
                 prototype_refresh_rounds = 2\nsynthetic_per_class = 4\n",
                encoder.display()
            ),
        )
        .replace(
            "model = \"mlp\"\ninputs = 13\nhidden = [8]\nclasses = 3\n",
            "model = \"softmax\"\ninputs = 64\nclasses = 10\n",
        )
}
