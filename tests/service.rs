//! The networked service over loopback: real TLS sockets, real parties as
//! tokio tasks (each with its own connection), the real coordinator engine
//! and SQLite store. Sums are checked end to end: every party's input is
//! observed where it is made and every aggregate where it is unmasked.

mod common;
use common::{check_sums, inputs_of};

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::{shroud, temp_dir};
use shroud::coordinator::ObservedSum;
use shroud::data::{partition, prepare, Dataset, Partition};
use shroud::job::session::InputRandomness;
use shroud::job::{demo_identity_seed, demo_public_key_hex};
use shroud::localnet::{
    free_port, start_coordinator, CoordinatorOptions, LocalCoordinator, ServeProcess,
};
use shroud::net::api::JobStatus;
use shroud::net::auth::{self, Signer};
use shroud::net::client::Client;
use shroud::party::{PartyConfig, PartyObservation, PartyReport};
use shroud::policy::Policy;
use shroud::store::ledger::ChargeKind;
use shroud::store::PrivacyLedger;
use shroud_crypto::IdentityKey;

const OPERATOR_SEED: [u8; 32] = [7u8; 32];

/// Eight parties' digits records (IID) and the policy text for them.
fn consortium(rounds: u32, phase_timeout: f64) -> (Vec<Dataset>, String) {
    let data = prepare(Path::new("data/digits.csv"), 3).unwrap();
    let parts = partition(&data.train.labels, 10, 8, &Partition::Iid, 3).unwrap();
    let sets: Vec<Dataset> = parts.iter().map(|p| data.train.subset(p)).collect();
    let mut text = format!(
        "[consortium]\nid = \"test-net\"\nthreshold = 6\nmax_colluding = 2\nactive = true\n\
         neighbors = \"all\"\nphase_timeout_secs = {phase_timeout}\n\n"
    );
    for (i, d) in sets.iter().enumerate() {
        text += &format!(
            "[[party]]\nid = {i}\nname = \"member-{i}\"\nidentity_key = \"{}\"\nrecords = {}\n\n",
            demo_public_key_hex(i as u32),
            d.len()
        );
    }
    text += &format!(
        "[privacy]\nunit = \"record\"\nepsilon = 8.0\ndelta = 1e-5\naccountant = \"zcdp\"\n\
         clip_norm = 1.0\ncalibrate = true\nrounds = {rounds}\nsampling_rate = 1.0\n\n\
         [encoding]\nbits = 20\nrotation = \"hadamard\"\n\n\
         [strategy]\nkind = \"fedavg\"\nmodel = \"mlp\"\ninputs = 64\nhidden = [16]\nclasses = 10\n\
         learning_rate = 1.0\nmomentum = 0.9\n\n\
         [audit]\nattacks = [\"loss\"]\nmax_auc = 0.65\nconfidence = 0.95\ncanaries = 40\n"
    );
    (sets, text)
}

fn policy_of(text: &str) -> Policy {
    Policy::parse(Path::new("test-net.toml"), text).unwrap()
}

fn operator() -> IdentityKey {
    IdentityKey::from_seed(&OPERATOR_SEED)
}

async fn coordinator(
    dir: &Path,
    text: &str,
    observer: Option<mpsc::Sender<ObservedSum>>,
) -> LocalCoordinator {
    start_coordinator(CoordinatorOptions {
        policy: policy_of(text),
        policy_text: text.to_string(),
        db: &dir.join("coordinator.db"),
        out: &dir.join("out"),
        tls_dir: Some(&dir.join("tls")),
        operator: operator().public(),
        allow_no_dp: false,
        observer,
    })
    .await
    .unwrap()
}

type PartyTask = tokio::task::JoinHandle<Result<PartyReport, shroud::party::PartyError>>;

fn spawn_parties(
    url: &str,
    tls: Option<rustls::ClientConfig>,
    text: &str,
    sets: &[Dataset],
    tap: Option<mpsc::Sender<PartyObservation>>,
) -> Vec<PartyTask> {
    spawn_parties_with(url, tls, text, sets, tap, InputRandomness::Os)
}

fn spawn_parties_with(
    url: &str,
    tls: Option<rustls::ClientConfig>,
    text: &str,
    sets: &[Dataset],
    tap: Option<mpsc::Sender<PartyObservation>>,
    randomness: InputRandomness,
) -> Vec<PartyTask> {
    sets.iter()
        .enumerate()
        .map(|(i, d)| {
            let cfg = PartyConfig {
                policy: policy_of(text),
                id: i as u32,
                identity_seed: demo_identity_seed(i as u32),
                data: d.clone(),
                coordinator: url.to_string(),
                tls: tls.clone(),
                job: None,
                once: true,
                patience: Duration::from_secs(120),
                dropout: 0.0,
                dropout_seed: 0,
                randomness,
                journal: None,
                tap: tap.clone(),
            };
            tokio::spawn(shroud::party::run(cfg))
        })
        .collect()
}

fn operator_client(url: &str, tls: Option<rustls::ClientConfig>) -> Client {
    Client::new(
        url,
        tls,
        operator(),
        Signer::Operator,
        Duration::from_secs(120),
    )
    .unwrap()
}

async fn wait_until_done(op: &mut Client, job: &str) -> JobStatus {
    wait_for(op, job, |s| s.state != "running" && s.state != "auditing").await
}

/// Follows `job`'s status (long-polling) until `done` holds, within 600 s.
async fn wait_for(op: &mut Client, job: &str, done: impl Fn(&JobStatus) -> bool) -> JobStatus {
    let mut s: JobStatus = op.json(&format!("/v1/jobs/{job}"), job).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while !done(&s) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "job did not get there: {s:?}"
        );
        s = op
            .json(
                &format!("/v1/jobs/{job}?after={}&wait_ms=5000", s.version),
                job,
            )
            .await
            .unwrap();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_parties_run_a_whole_job_over_tls() {
    let dir = temp_dir("net-whole");
    let (sets, text) = consortium(3, 20.0);
    let (stx, srx) = mpsc::channel();
    let (itx, irx) = mpsc::channel();
    let c = coordinator(&dir, &text, Some(stx)).await;
    assert!(c.url.starts_with("https://"));
    let tls = c.client_tls().unwrap();
    let parties = spawn_parties(&c.url, tls.clone(), &text, &sets, Some(itx));
    let mut op = operator_client(&c.url, tls);
    let started: JobStatus = op
        .post_json("/v1/jobs", "j1", &serde_json::json!({"job": "j1"}))
        .await
        .unwrap();
    assert_eq!(started.state, "running");
    let s = wait_until_done(&mut op, "j1").await;
    assert_eq!(s.state, "released", "{s:?}");
    for p in parties {
        let r = p.await.unwrap().unwrap();
        assert_eq!(r.jobs, vec![("j1".to_string(), "released".to_string())]);
        assert_eq!(
            r.rounds_contributed, 4,
            "3 training rounds and the audit's sum"
        );
    }
    let sums: Vec<ObservedSum> = srx.try_iter().collect();
    let inputs = inputs_of(irx.try_iter());
    assert_eq!(sums.len(), 4);
    assert!(sums.iter().all(|s| s.contributors.len() == 8));
    check_sums(&sums, &inputs);
    // Rounds and phases as stored; one released charge per training round.
    let finished: Vec<_> = s.history.iter().filter(|r| r.state == "finished").collect();
    assert_eq!(finished.len(), 4);
    assert!(finished.iter().all(|r| r.survivors.len() == 8));
    let release = s.release.as_ref().unwrap();
    assert!(Path::new(release.model_path.as_ref().unwrap()).exists());
    let metrics = reqwest_get(&c, "/metrics").await;
    assert!(
        metrics.contains("shroud_rounds_finished_total 4"),
        "{metrics}"
    );
    assert!(metrics.contains("shroud_dropouts_total 0"), "{metrics}");
    c.shutdown().await;
    let ledger = PrivacyLedger::open(&dir.join("coordinator.db")).unwrap();
    let charges = ledger.charges(Some("j1")).unwrap();
    let kinds: Vec<ChargeKind> = charges.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [
            ChargeKind::Training,
            ChargeKind::Training,
            ChargeKind::Training,
            ChargeKind::Audit
        ]
    );
    assert!(charges.iter().all(|c| c.released));
    // Calibrated to spend just under the budget, the audit's counts
    // included (σ rounded up to whole units: at most).
    let spent = charges[3].epsilon_after;
    assert!(spent < 8.0 * 0.999 + 1e-12 && spent > 7.0, "{spent}");
    assert!((ledger.job_spent("j1").unwrap() - spent).abs() < 1e-12);
    let (code, out, _) = shroud(&[
        "verify-log",
        "--db",
        dir.join("coordinator.db").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
}

/// The same FedMR job (a FedAvg warm-up round, then recombination rounds
/// of four tasks each, then the audit's sum) in memory and over TLS, with
/// the same seeds for the parties' rounding and noise: every secure sum is
/// the same, bit for bit. The two transports drive one engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_job_gives_the_same_sums_in_memory_and_over_tls() {
    let shares = common::wine_shares(8);
    let records: Vec<usize> = shares.iter().map(|d| d.len()).collect();
    let text = common::fedmr_policy_text(&records, 4, 1, 3);
    let policy = policy_of(&text);
    let randomness = InputRandomness::Seeded(17);
    let key = |s: &ObservedSum| (s.round, s.task, s.contributors.clone(), s.sum.clone());

    let dir = temp_dir("net-same-sums");
    let (mtx, mrx) = mpsc::channel();
    let mut ledger = PrivacyLedger::open(&dir.join("memory.db")).unwrap();
    let members = shares
        .iter()
        .enumerate()
        .map(|(i, d)| shroud::job::session::Member {
            id: i as u32,
            identity_seed: demo_identity_seed(i as u32),
            data: d.clone(),
        })
        .collect();
    let memory = shroud::job::local::run(
        shroud::job::local::LocalJob {
            policy: &policy,
            policy_text: &text,
            request: shroud::net::api::StartJob {
                job: "same".into(),
                seed: None,
                epsilon: None,
                rounds: None,
            },
            parties: members,
            allow_no_dp: false,
            dropout: 0.0,
            dropout_seed: 0,
            randomness,
            out: &dir.join("memory-out"),
            tap: None,
        },
        &mut ledger,
        Some(&mtx),
        &mut |_| {},
    )
    .unwrap();
    let mut in_memory: Vec<_> = mrx.try_iter().map(|s| key(&s)).collect();

    let (stx, srx) = mpsc::channel();
    let c = coordinator(&dir, &text, Some(stx)).await;
    let tls = c.client_tls().unwrap();
    let parties = spawn_parties_with(&c.url, tls.clone(), &text, &shares, None, randomness);
    let mut op = operator_client(&c.url, tls);
    let _: JobStatus = op
        .post_json("/v1/jobs", "same", &serde_json::json!({"job": "same"}))
        .await
        .unwrap();
    let networked = wait_until_done(&mut op, "same").await;
    for p in parties {
        p.await.unwrap().unwrap();
    }
    c.shutdown().await;
    let mut over_tls: Vec<_> = srx.try_iter().map(|s| key(&s)).collect();

    in_memory.sort();
    over_tls.sort();
    // 1 warm-up sum, 2 rounds × 2 layers × 2 groups, the audit's.
    assert_eq!(in_memory.len(), 1 + 8 + 1, "{:?}", memory.history);
    assert_eq!(in_memory, over_tls);
    assert_eq!(memory.state, networked.state);
    assert_eq!(
        memory.release.as_ref().and_then(|r| r.model_sha256.clone()),
        networked
            .release
            .as_ref()
            .and_then(|r| r.model_sha256.clone()),
    );
}

async fn reqwest_get(c: &LocalCoordinator, path: &str) -> String {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(c.client_tls().unwrap().unwrap())
        .build()
        .unwrap();
    client
        .get(format!("{}{path}", c.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_party_killed_mid_round_is_left_out_and_the_sum_stays_exact() {
    let dir = temp_dir("net-kill-party");
    let (sets, text) = consortium(2, 3.0);
    let (stx, srx) = mpsc::channel();
    let (itx, irx) = mpsc::channel::<PartyObservation>();
    let c = coordinator(&dir, &text, Some(stx)).await;
    let tls = c.client_tls().unwrap();
    // Party 7 runs with its own tap so the test can kill it the moment it
    // has made its first input, before it has shared any key.
    let (tx7, rx7) = mpsc::channel::<PartyObservation>();
    let mut parties = spawn_parties(&c.url, tls.clone(), &text, &sets[..7], Some(itx.clone()));
    let seven = spawn_parties(&c.url, tls.clone(), &text, &sets, Some(tx7))
        .into_iter()
        .enumerate()
        .filter_map(|(i, h)| {
            if i == 7 {
                Some(h)
            } else {
                h.abort();
                None
            }
        })
        .next()
        .unwrap();
    let mut op = operator_client(&c.url, tls);
    let _: JobStatus = op
        .post_json("/v1/jobs", "j2", &serde_json::json!({"job": "j2"}))
        .await
        .unwrap();
    let first = tokio::task::spawn_blocking(move || loop {
        match rx7.recv_timeout(Duration::from_secs(120)) {
            Ok(PartyObservation::Input(i)) => break i,
            Ok(_) => continue,
            Err(e) => panic!("party 7 made no input: {e}"),
        }
    })
    .await
    .unwrap();
    seven.abort();
    assert_eq!(first.round, 1);
    let s = wait_until_done(&mut op, "j2").await;
    assert_eq!(s.state, "released", "{s:?}");
    for p in parties.drain(..) {
        p.await.unwrap().unwrap();
    }
    let sums: Vec<ObservedSum> = srx.try_iter().collect();
    let mut inputs = inputs_of(irx.try_iter());
    inputs.push(first);
    assert_eq!(sums.len(), 3);
    for s in &sums {
        assert_eq!(
            s.contributors,
            (0..7).collect::<Vec<u32>>(),
            "round {}",
            s.round
        );
    }
    check_sums(&sums, &inputs);
    let r1 = s.history.iter().find(|r| r.round == 1).unwrap();
    assert_eq!(r1.state, "finished");
    assert_eq!(r1.dropped, vec![7]);
    let metrics = reqwest_get(&c, "/metrics").await;
    assert!(metrics.contains("shroud_dropouts_total 3"), "{metrics}");
    c.shutdown().await;
}

fn serve(dir: &Path, port: u16) -> ServeProcess {
    ServeProcess::start(Path::new(env!("CARGO_BIN_EXE_shroud")), dir, port, &[]).unwrap()
}

/// `shroud serve` that aborts at the failpoint `name`.
fn serve_failing_at(dir: &Path, port: u16, name: &str) -> ServeProcess {
    ServeProcess::start_with_env(
        Path::new(env!("CARGO_BIN_EXE_shroud")),
        dir,
        port,
        &[],
        &[("SHROUD_FAILPOINT", name)],
    )
    .unwrap()
}

/// Waits for a coordinator child that is meant to crash at a failpoint.
fn wait_for_crash(server: &mut ServeProcess, what: &str) {
    for _ in 0..1200 {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(!status.success(), "{what}: the coordinator exited cleanly");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: the coordinator never reached its failpoint");
}

/// A folder `shroud serve` can run from: the policy, a TLS key pair and
/// the operator's key. Returns the operator's key seed.
fn serve_dir(dir: &Path, text: &str) -> zeroize::Zeroizing<[u8; 32]> {
    std::fs::write(dir.join("policy.toml"), text).unwrap();
    let (code, _, err) = shroud(&[
        "keygen",
        "--tls",
        "--out",
        dir.join("server").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = shroud(&[
        "keygen",
        "--out",
        dir.join("operator.key").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("identity_key = \""), "{out}");
    shroud::keyfile::load(&dir.join("operator.key")).unwrap()
}

/// The operator's client for a `shroud serve` child, signing with the key
/// [`serve_dir`] made.
fn operator_with(url: &str, tls: Option<rustls::ClientConfig>, seed: &[u8; 32]) -> Client {
    Client::new(
        url,
        tls,
        IdentityKey::from_seed(seed),
        Signer::Operator,
        Duration::from_secs(60),
    )
    .unwrap()
}

/// Kills the coordinator of job `job` under `text` (wine shares, eight
/// parties) once round `kill_after` has finished, checks that the store
/// kept the strategy's own state under `tag`, restarts it and checks that
/// the job resumed from there: the finished rounds stay finished, at least
/// `finished_at_least` of the `rounds` training rounds finish, no round is
/// charged twice, and the log verifies.
async fn killed_mid_job_resumes(
    name: &str,
    text: &str,
    job: &str,
    tag: &[u8],
    kill_after: u32,
    rounds: u32,
    finished_at_least: usize,
) {
    killed_mid_job_resumes_with(
        name,
        text,
        job,
        tag,
        (kill_after, rounds, finished_at_least),
        common::wine_shares(8),
    )
    .await
}

/// [`killed_mid_job_resumes`] with the parties holding `shares`; `at` is
/// (kill_after, rounds, finished_at_least).
async fn killed_mid_job_resumes_with(
    name: &str,
    text: &str,
    job: &str,
    tag: &[u8],
    at: (u32, u32, usize),
    shares: Vec<Dataset>,
) {
    let (kill_after, rounds, finished_at_least) = at;
    let dir = temp_dir(name);
    let (mut server, mut op, parties, port, _) =
        serve_and_start(&dir, text, job, &shares, None, None).await;
    let s = wait_for(&mut op, job, |s| {
        assert!(s.state == "running", "{s:?}");
        s.history
            .iter()
            .any(|r| r.round == kill_after && r.state == "finished")
    })
    .await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    resumes_and_releases(
        &dir,
        &mut server,
        &mut op,
        port,
        parties,
        job,
        tag,
        &s,
        rounds,
        finished_at_least,
    )
    .await;
}

/// Checks the store a killed coordinator left (the strategy's own state
/// under `tag`), restarts it and checks that the job `s` described resumed
/// from there and released, charging no (round, payer) twice.
#[allow(clippy::too_many_arguments)]
async fn resumes_and_releases(
    dir: &Path,
    server: &mut ServeProcess,
    op: &mut Client,
    port: u16,
    parties: Vec<PartyTask>,
    job: &str,
    tag: &[u8],
    s: &JobStatus,
    rounds: u32,
    finished_at_least: usize,
) {
    let before: Vec<u32> = s
        .history
        .iter()
        .filter(|r| r.state == "finished")
        .map(|r| r.round)
        .collect();
    // What the store kept is the strategy's own state, tagged as such.
    let saved: Vec<u8> = rusqlite::Connection::open(dir.join("coordinator.db"))
        .unwrap()
        .query_row(
            "SELECT strategy_state FROM job_runs WHERE job = ?1",
            [job],
            |r| r.get(0),
        )
        .unwrap();
    // (A length-prefixed tag, then the state.)
    let end = 8 + tag.len();
    assert!(
        saved.len() > end
            && saved[..8] == (tag.len() as u64).to_le_bytes()
            && &saved[8..end] == tag,
        "{:?}",
        &saved[..end.min(saved.len())]
    );
    *server = serve(dir, port);
    let s = wait_until_done(op, job).await;
    assert_eq!(s.state, "released", "{s:?}");
    for p in parties {
        p.await.unwrap().unwrap();
    }
    // The rounds finished before the kill stay finished; the job went on
    // from there rather than starting again.
    for r in &before {
        let h = s.history.iter().find(|h| h.round == *r).unwrap();
        assert_eq!(h.state, "finished", "{h:?}");
    }
    let finished = s
        .history
        .iter()
        .filter(|r| r.state == "finished" && r.round <= rounds)
        .count();
    assert!(finished >= finished_at_least, "{:?}", s.history);
    let ledger = PrivacyLedger::open(&dir.join("coordinator.db")).unwrap();
    let charges = ledger.charges(Some(job)).unwrap();
    let charged: std::collections::BTreeSet<(u32, &str, Option<u32>)> = charges
        .iter()
        .map(|c| (c.round, c.kind.name(), c.party))
        .collect();
    assert_eq!(
        charged.len(),
        charges.len(),
        "a round charged twice: {charges:?}"
    );
    let (code, out, err) = shroud(&[
        "verify-log",
        "--db",
        dir.join("coordinator.db").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Starts job `job` under `text` (eight parties on wine shares, seen by
/// `tap`) at a coordinator that aborts right after its first charge, and
/// waits for that crash: the coordinator, the operator's client, the
/// parties, the port and the job's first status.
async fn crashed_at_first_charge(
    dir: &Path,
    text: &str,
    job: &str,
    tap: Option<mpsc::Sender<shroud::party::PartyObservation>>,
) -> (ServeProcess, Client, Vec<PartyTask>, u16, JobStatus) {
    let shares = common::wine_shares(8);
    let (mut server, op, parties, port, s) =
        serve_and_start(dir, text, job, &shares, Some("after-charge"), tap).await;
    wait_for_crash(&mut server, &format!("{job}: after its first charge"));
    (server, op, parties, port, s)
}

/// `shroud serve` from `dir` under `text` (aborting at `failpoint`, if
/// given), parties holding `shares` (seen by `tap`), and job `job`
/// started: the coordinator, the operator's client, the parties, the port
/// and the job's first status.
async fn serve_and_start(
    dir: &Path,
    text: &str,
    job: &str,
    shares: &[Dataset],
    failpoint: Option<&str>,
    tap: Option<mpsc::Sender<shroud::party::PartyObservation>>,
) -> (ServeProcess, Client, Vec<PartyTask>, u16, JobStatus) {
    let op_seed = serve_dir(dir, text);
    let port = free_port().unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let server = match failpoint {
        Some(name) => serve_failing_at(dir, port, name),
        None => serve(dir, port),
    };
    let tls = Some(shroud::net::tls::client_config(&dir.join("server.crt")).unwrap());
    let parties = spawn_parties(&url, tls.clone(), text, shares, tap);
    let mut op = operator_with(&url, tls, &op_seed);
    let s: JobStatus = op
        .post_json("/v1/jobs", job, &serde_json::json!({ "job": job }))
        .await
        .unwrap();
    (server, op, parties, port, s)
}

/// Transfer's base rounds resume like FedAvg's; after the restart the
/// parties still fine-tune at home as the audit's counts are taken, each
/// charged once under its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transfer_coordinator_killed_mid_job_resumes_and_releases() {
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let text = common::transfer_policy_text(&records, 6);
    killed_mid_job_resumes("net-transfer-restart", &text, "tf", b"fedavg/1", 3, 6, 5).await;
}

/// The ensemble's coordinator dies the instant its members' home training
/// is charged, before their sum could be decoded. Restarted, it counts
/// that sum aborted and tries again in the next round: each member sends
/// the very words it sent before (its one release, kept at home), so
/// nothing is charged again, and the student is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ensemble_coordinator_killed_at_its_sum_tries_again_and_releases() {
    let dir = temp_dir("net-ensemble-restart");
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let public = common::wine_public_set(&dir);
    let text = common::ensemble_policy_text(&records, &public, 6);
    let (tap, seen) = mpsc::channel();
    let (mut server, mut op, parties, port, s) =
        crashed_at_first_charge(&dir, &text, "en", Some(tap)).await;
    resumes_and_releases(
        &dir,
        &mut server,
        &mut op,
        port,
        parties,
        "en",
        b"ensemble/1",
        &s,
        3,
        1,
    )
    .await;
    drop(server);
    let ledger = PrivacyLedger::open(&dir.join("coordinator.db")).unwrap();
    let charges = ledger.charges(Some("en")).unwrap();
    let paid: Vec<Option<u32>> = charges
        .iter()
        .filter(|c| c.round == 1)
        .map(|c| c.party)
        .collect();
    assert_eq!(paid, (0..8).map(Some).collect::<Vec<_>>(), "{charges:?}");
    // The second attempt resent the first's release and paid nothing; its
    // sum is in, so there is no third, and the audit follows.
    assert!(
        charges
            .iter()
            .all(|c| c.round == 1 || c.kind == ChargeKind::Audit),
        "{charges:?}"
    );
    let inputs = common::inputs_of(seen.try_iter());
    for p in 0..8u32 {
        let words = |round: u32| {
            inputs
                .iter()
                .find(|i| i.party == p && i.round == round)
                .map(|i| i.words.clone())
        };
        let first = words(1).expect("a first attempt");
        assert_eq!(words(2), Some(first), "party {p} sent another release");
    }
}

/// FedImpres killed after round 3, its statistics summed and its first
/// impressions made after round 2: restarted, it goes on from the saved
/// statistics and impressions — refreshing them from its own state, never
/// summing the statistics again — and releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fedimpres_coordinator_killed_mid_job_resumes_with_its_impressions() {
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let text = common::fedimpres_policy_text(&records, 6);
    let name = "net-fedimpres-restart";
    killed_mid_job_resumes(name, &text, "fi", b"fedimpres/1", 3, 6, 5).await;
    let dir = temp_dir(name);
    let ledger = PrivacyLedger::open(&dir.join("coordinator.db")).unwrap();
    let statistics: Vec<u32> = ledger
        .charges(Some("fi"))
        .unwrap()
        .iter()
        .filter(|c| c.kind == ChargeKind::Statistics)
        .map(|c| c.round)
        .collect();
    assert_eq!(statistics, vec![1]);
    // The last round's state carries impressions (made after round 6).
    let policy = policy_of(&text);
    let rec = ledger.job_run("fi").unwrap().unwrap();
    let half =
        shroud::strategy::coordinator_half(&policy, rec.seed, Some(&rec.strategy_state)).unwrap();
    let dim = policy.strategy.dimension();
    assert_eq!(half.downlink(0).len(), dim + 1 + 30 * (13 + 1));
}

/// FedImpres' coordinator dies the instant its statistics sum is charged,
/// before the sum could be decoded. Restarted, it counts that sum aborted
/// and does not ask again in rounds 2 and 3: the release was paid, and the
/// parties sent their statistics once. The job goes on as FedAvg, without
/// impressions, and releases; the statistics are charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fedimpres_coordinator_killed_at_its_statistics_charge_never_asks_again() {
    let dir = temp_dir("net-fedimpres-charge");
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let text = common::fedimpres_policy_text(&records, 5);
    let (mut server, mut op, parties, port, s) =
        crashed_at_first_charge(&dir, &text, "fc", None).await;
    resumes_and_releases(
        &dir,
        &mut server,
        &mut op,
        port,
        parties,
        "fc",
        b"fedimpres/1",
        &s,
        5,
        4,
    )
    .await;
    let s = wait_until_done(&mut op, "fc").await;
    let statistics_tasks: Vec<(u32, &str)> = s
        .history
        .iter()
        .filter(|r| r.round <= 3 && r.task == 0)
        .map(|r| (r.round, r.state.as_str()))
        .collect();
    assert_eq!(statistics_tasks, vec![(1, "aborted")], "{:?}", s.history);
    drop(server);
    let ledger = PrivacyLedger::open(&dir.join("coordinator.db")).unwrap();
    let kinds: Vec<(u32, ChargeKind)> = ledger
        .charges(Some("fc"))
        .unwrap()
        .iter()
        .map(|c| (c.round, c.kind))
        .filter(|(_, k)| *k == ChargeKind::Statistics)
        .collect();
    assert_eq!(kinds, vec![(1, ChargeKind::Statistics)]);
}

/// FST-CBDG killed after round 3, its first prototype refresh summed:
/// restarted, it goes on from the saved head and refreshed prototypes,
/// refreshes again in round 5 and releases; each refresh charged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_fstcbdg_coordinator_killed_mid_job_resumes_and_releases() {
    let shares = common::raw_digits_shares(8);
    let records: Vec<usize> = shares.iter().map(|d| d.len()).collect();
    let text = common::fstcbdg_policy_text(&records, 6);
    let name = "net-fstcbdg-restart";
    killed_mid_job_resumes_with(name, &text, "fs", b"fstcbdg/1", (3, 6, 5), shares).await;
    let ledger = PrivacyLedger::open(&temp_dir(name).join("coordinator.db")).unwrap();
    let refreshes: Vec<u32> = ledger
        .charges(Some("fs"))
        .unwrap()
        .iter()
        .filter(|c| c.kind == ChargeKind::Statistics)
        .map(|c| c.round)
        .collect();
    assert_eq!(refreshes, vec![3, 5]);
}

/// FedMR's coordinator half lives in the store between rounds: a
/// coordinator killed after recombination rounds (2 and 3) resumes the job
/// from its saved state, keeps the finished rounds and releases.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fedmr_coordinator_killed_mid_job_resumes_and_releases() {
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let text = common::fedmr_policy_text(&records, 4, 1, 6);
    killed_mid_job_resumes("net-fedmr-restart", &text, "fm", b"fedmr/1", 3, 6, 5).await;
}

/// A series killed in its second stage resumes with its first stage as
/// released and its second stage's progress kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_series_coordinator_killed_mid_stage_resumes_and_releases() {
    let records: Vec<usize> = common::wine_shares(8).iter().map(|d| d.len()).collect();
    let text = common::series_policy_text(&records, 2, 6);
    killed_mid_job_resumes("net-series-restart", &text, "sr", b"series/1", 4, 6, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_coordinator_killed_at_any_moment_never_under_charges() {
    let dir = temp_dir("net-restart");
    let (sets, text) = consortium(6, 20.0);
    let op_seed = serve_dir(&dir, &text);
    let port = free_port().unwrap();
    let url = format!("https://127.0.0.1:{port}");
    // First life: dies the instant the first round's charge has committed,
    // before any of its unmask requests went out.
    let mut server = serve_failing_at(&dir, port, "after-charge");
    let tls = Some(shroud::net::tls::client_config(&dir.join("server.crt")).unwrap());
    let (tap, seen) = mpsc::channel();
    let parties = spawn_parties(&url, tls.clone(), &text, &sets, Some(tap));
    let mut op = operator_with(&url, tls, &op_seed);
    let _: JobStatus = op
        .post_json("/v1/jobs", "j3", &serde_json::json!({"job": "j3"}))
        .await
        .unwrap();
    wait_for_crash(&mut server, "after the charge");
    // Second life: dies at the next charge point, before charging.
    server = serve_failing_at(&dir, port, "before-charge");
    wait_for_crash(&mut server, "before the charge");
    // Third life: killed outright while a round is unmasking (charged,
    // unmask requests out); fourth: killed at a random moment.
    server = serve(&dir, port);
    wait_for(&mut op, "j3", |s| {
        s.live.as_ref().is_some_and(|l| l.phase == "unmasking")
    })
    .await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    server = serve(&dir, port);
    let delay = 200 + (0x5eed_u64.wrapping_mul(6364136223846793005) >> 33) % 1500;
    tokio::time::sleep(Duration::from_millis(delay)).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // Last life: to the end.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server = serve(&dir, port);
    let s = wait_until_done(&mut op, "j3").await;
    assert_eq!(s.state, "released", "{s:?}");
    for p in parties {
        let r = p.await.unwrap().unwrap();
        assert!(
            r.retries > 0,
            "every party retried while the coordinator was down"
        );
    }
    let aborted: Vec<_> = s.history.iter().filter(|r| r.state == "aborted").collect();
    assert!(aborted.len() >= 3, "{:?}", s.history);
    assert!(aborted
        .iter()
        .all(|r| r.reason.as_ref().unwrap().contains("coordinator restarted")));
    // The operator's command line sees the same job.
    let (code, out, err) = tokio::task::spawn_blocking({
        let (url, dir) = (url.clone(), dir.clone());
        move || {
            shroud(&[
                "job",
                "status",
                "--coordinator",
                &url,
                "--key",
                dir.join("operator.key").to_str().unwrap(),
                "--ca",
                dir.join("server.crt").to_str().unwrap(),
                "--job",
                "j3",
                "--json",
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let v = common::json(&out);
    assert_eq!(v["state"], "released");
    assert_eq!(v["history"].as_array().unwrap().len(), s.history.len());
    drop(server);
    let db = dir.join("coordinator.db");
    let ledger = PrivacyLedger::open(&db).unwrap();
    let charges = ledger.charges(Some("j3")).unwrap();
    // The promise: every round whose result could have been decoded (an
    // unmask request reached a party) is charged; no round is charged
    // twice; a finished round's charge is released.
    let unmasked: std::collections::BTreeSet<u32> = seen
        .try_iter()
        .filter_map(|o| match o {
            PartyObservation::UnmaskRequest { round, .. } => Some(round),
            _ => None,
        })
        .collect();
    let charged: Vec<u32> = charges.iter().map(|c| c.round).collect();
    let distinct: std::collections::BTreeSet<u32> = charged.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        charged.len(),
        "a round charged twice: {charges:?}"
    );
    for r in &unmasked {
        assert!(
            distinct.contains(r),
            "round {r} reached unmasking uncharged: {charges:?}"
        );
    }
    for r in s.history.iter().filter(|r| r.state == "finished") {
        let c = charges
            .iter()
            .find(|c| c.round == r.round)
            .expect("charged");
        assert!(c.released, "{c:?}");
    }
    // The crash after round 1's charge over-counts a round nobody could
    // decode; the crash at round 2's charge point, before it, costs nothing.
    assert!(
        distinct.contains(&1) && !unmasked.contains(&1),
        "{charges:?}"
    );
    let r2 = s.history.iter().find(|r| r.round == 2).unwrap();
    assert_eq!(
        (r2.state.as_str(), r2.charge_id),
        ("aborted", None),
        "{r2:?}"
    );
    assert!(!distinct.contains(&2) && !unmasked.contains(&2));
    assert_eq!(
        charges
            .iter()
            .filter(|c| c.kind == ChargeKind::Audit)
            .count(),
        1
    );
    let (code, out, err) = shroud(&["verify-log", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    drop(ledger);
    // A tampered entry is found.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE audit_log SET content = replace(content, '\"dropped\":[]', '\"dropped\":[5]') WHERE seq = (SELECT MIN(seq) FROM audit_log WHERE kind = 'round-finished')",
        [],
    )
    .unwrap();
    let seq: i64 = conn
        .query_row(
            "SELECT MIN(seq) FROM audit_log WHERE kind = 'round-finished'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    let (code, out, err) = shroud(&["verify-log", "--db", db.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains(&format!("first broken entry is {seq}")),
        "{out}{err}"
    );
}

/// Where the test consortium's requests go.
fn audience(base: &str) -> auth::Audience {
    auth::Audience::for_url("test-net", base)
}

/// Sends one request signed as `signer` with `key`; returns status and body.
#[allow(clippy::too_many_arguments)]
async fn signed(
    http: &reqwest::Client,
    base: &str,
    key: &IdentityKey,
    signer: Signer,
    method: &str,
    path: &str,
    job: &str,
    round: u64,
    body: Vec<u8>,
    content_type: &str,
) -> (u16, serde_json::Value) {
    let to = audience(base);
    signed_as(
        http,
        base,
        &to,
        key,
        signer,
        method,
        path,
        job,
        round,
        (&body, body.clone()),
        content_type,
    )
    .await
}

/// Sends one request signed for `to`, signing the first body and sending
/// the second.
#[allow(clippy::too_many_arguments)]
async fn signed_as(
    http: &reqwest::Client,
    base: &str,
    to: &auth::Audience,
    key: &IdentityKey,
    signer: Signer,
    method: &str,
    path: &str,
    job: &str,
    round: u64,
    (signed_body, body): (&[u8], Vec<u8>),
    content_type: &str,
) -> (u16, serde_json::Value) {
    let headers = auth::sign(key, signer, to, method, path, signed_body, job, round);
    let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let r = req
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// A protocol message posted to job j4's `round` as `signer`.
async fn post_message(
    http: &reqwest::Client,
    base: &str,
    key: &IdentityKey,
    signer: Signer,
    round: u64,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let path = format!("/v1/jobs/j4/rounds/{round}/messages");
    let oct = "application/octet-stream";
    signed(
        http, base, key, signer, "POST", &path, "j4", round, body, oct,
    )
    .await
}

/// A two-party consortium's coordinator (TLS) with job `job` started: the
/// coordinator, a raw HTTPS client that trusts it, the operator's client,
/// the job's first status and the policy text.
async fn started_job(
    dir: &str,
    job: &str,
) -> (LocalCoordinator, reqwest::Client, Client, JobStatus, String) {
    let dir = temp_dir(dir);
    let (_sets, text) = consortium(2, 600.0);
    let c = coordinator(&dir, &text, None).await;
    let tls = c.client_tls().unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls.clone().unwrap())
        .build()
        .unwrap();
    let mut op = operator_client(&c.url, tls);
    let s: JobStatus = op
        .post_json("/v1/jobs", job, &serde_json::json!({ "job": job }))
        .await
        .unwrap();
    (c, http, op, s, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_reason_and_change_nothing() {
    let (c, http, mut op, _, text) = started_job("net-bad", "j4").await;
    let before: JobStatus = op.json("/v1/jobs/j4", "j4").await.unwrap();
    let k0 = IdentityKey::from_seed(&demo_identity_seed(0));
    let k1 = IdentityKey::from_seed(&demo_identity_seed(1));
    let base = c.url.as_str();
    let msgs = "/v1/jobs/j4/rounds/1/messages";
    let oct = "application/octet-stream";

    let mut cases: Vec<(&str, u16, &str, serde_json::Value)> = Vec::new();
    // Unsigned.
    let r = http
        .post(format!("{base}{msgs}"))
        .body(vec![1u8, 2])
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    cases.push((
        "unsigned",
        st,
        "unauthenticated",
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    ));
    // Signed by a key that is not party 0's.
    let (st, b) = post_message(&http, base, &k1, Signer::Party(0), 1, vec![1, 2]).await;
    cases.push(("wrong key", st, "unauthenticated", b));
    // A party not in the roster.
    let (st, b) = post_message(&http, base, &k0, Signer::Party(99), 1, vec![1, 2]).await;
    cases.push(("unknown party", st, "unknown_signer", b));
    // A replay of an accepted request.
    let headers = auth::sign(
        &k0,
        Signer::Party(0),
        &audience(base),
        "GET",
        "/v1/jobs/j4",
        b"",
        "j4",
        0,
    );
    let mut codes = Vec::new();
    for _ in 0..2 {
        let mut req = http.get(format!("{base}/v1/jobs/j4"));
        for (k, v) in &headers {
            req = req.header(*k, v);
        }
        let r = req.send().await.unwrap();
        codes.push(r.status().as_u16());
        if codes.len() == 2 {
            cases.push((
                "replay",
                codes[1],
                "replay",
                serde_json::from_str(&r.text().await.unwrap()).unwrap(),
            ));
        }
    }
    assert_eq!(codes[0], 200);
    // Signed for another consortium, or for another coordinator: a
    // request replayed across coordinators is refused.
    for (name, to) in [
        (
            "another consortium",
            auth::Audience::for_url("other-consortium", base),
        ),
        (
            "another coordinator",
            auth::Audience::for_url("test-net", "https://coordinator-b.example:8443"),
        ),
    ] {
        let (st, b) = signed_as(
            &http,
            base,
            &to,
            &k0,
            Signer::Party(0),
            "GET",
            "/v1/jobs/j4",
            "j4",
            0,
            (b"", Vec::new()),
            oct,
        )
        .await;
        cases.push((name, st, "wrong_audience", b));
    }
    // A body other than the one signed.
    let (st, b) = signed_as(
        &http,
        base,
        &audience(base),
        &k0,
        Signer::Party(0),
        "POST",
        msgs,
        "j4",
        1,
        (&[1, 2, 3], vec![1, 2, 4]),
        oct,
    )
    .await;
    cases.push(("body not as signed", st, "invalid_request", b));
    // A GET with a body.
    let (st, b) = signed(
        &http,
        base,
        &k0,
        Signer::Party(0),
        "GET",
        "/v1/jobs/j4",
        "j4",
        0,
        vec![1, 2, 3],
        oct,
    )
    .await;
    cases.push(("GET with a body", st, "invalid_request", b));
    // A message for a round the job is not in.
    let (st, b) = post_message(&http, base, &k0, Signer::Party(0), 5, vec![1, 2]).await;
    cases.push(("wrong round", st, "wrong_round", b));
    // A well-formed message of a later phase.
    let session = {
        let roster = policy_of(&text).roster_keys();
        let cohort: Vec<_> = roster
            .iter()
            .map(|(i, k)| (shroud_crypto::PartyId(*i), *k))
            .collect();
        let len = before.live.as_ref().unwrap().len;
        *shroud::job::protocol_round(&policy_of(&text), "j4", 1, 0, &cohort, 20, len)
            .unwrap()
            .session()
    };
    let len = before.live.as_ref().unwrap().len;
    let masked = shroud_crypto::Message::MaskedInput(shroud_crypto::message::MaskedVector {
        party: shroud_crypto::PartyId(0),
        bits: 20,
        words: vec![0; len],
    })
    .encode(&session);
    let (st, b) = post_message(&http, base, &k0, Signer::Party(0), 1, masked).await;
    cases.push(("wrong phase", st, "wrong_phase", b));
    // Bytes that end early (a wrong length).
    let (st, b) = post_message(&http, base, &k0, Signer::Party(0), 1, vec![1, 0, 0]).await;
    cases.push(("truncated", st, "invalid_message", b));
    // An oversize body: one byte over the coordinator's limit.
    let limit = {
        let p = policy_of(&text);
        shroud::net::server::body_limit(&p, &shroud::dp::plan::PrivacyPlan::for_policy(&p).unwrap())
    };
    let (st, b) = signed(
        &http,
        base,
        &k0,
        Signer::Party(0),
        "POST",
        msgs,
        "j4",
        1,
        vec![0; limit + 1],
        oct,
    )
    .await;
    cases.push(("oversize", st, "too_large", b));
    // Non-finite and out-of-range numbers, a party starting a job, the
    // wrong media type, an unknown job.
    let opk = operator();
    let json_ct = "application/json";
    type Probe<'a> = (
        &'a str,
        &'a IdentityKey,
        Signer,
        &'a str,
        &'a str,
        &'a str,
        u64,
        &'a [u8],
        &'a str,
        &'a str,
    );
    let probes: Vec<Probe> = vec![
        (
            "epsilon 1e999",
            &opk,
            Signer::Operator,
            "POST",
            "/v1/jobs",
            "j5",
            0,
            br#"{"job":"j5","epsilon":1e999}"#,
            json_ct,
            "invalid_request",
        ),
        (
            "epsilon negative",
            &opk,
            Signer::Operator,
            "POST",
            "/v1/jobs",
            "j5",
            0,
            br#"{"job":"j5","epsilon":-1.0}"#,
            json_ct,
            "invalid_request",
        ),
        (
            "unknown field",
            &opk,
            Signer::Operator,
            "POST",
            "/v1/jobs",
            "j5",
            0,
            br#"{"job":"j5","budget":1}"#,
            json_ct,
            "invalid_request",
        ),
        (
            "party starts a job",
            &k0,
            Signer::Party(0),
            "POST",
            "/v1/jobs",
            "j5",
            0,
            br#"{"job":"j5"}"#,
            json_ct,
            "forbidden",
        ),
        (
            "media type",
            &k0,
            Signer::Party(0),
            "POST",
            msgs,
            "j4",
            1,
            &[1],
            "text/plain",
            "invalid_request",
        ),
        (
            "unknown job",
            &k0,
            Signer::Party(0),
            "GET",
            "/v1/jobs/nope",
            "nope",
            0,
            &[],
            oct,
            "unknown_job",
        ),
        (
            "round not a number",
            &k0,
            Signer::Party(0),
            "GET",
            "/v1/jobs/j4/rounds/abc/messages",
            "j4",
            0,
            &[],
            oct,
            "invalid_request",
        ),
        (
            "method",
            &k0,
            Signer::Party(0),
            "DELETE",
            "/v1/jobs/j4",
            "j4",
            0,
            &[],
            oct,
            "method_not_allowed",
        ),
    ];
    for (name, key, signer, method, path, job, round, body, ct, code) in probes {
        let (st, b) = signed(
            &http,
            base,
            key,
            signer,
            method,
            path,
            job,
            round,
            body.to_vec(),
            ct,
        )
        .await;
        cases.push((name, st, code, b));
    }

    for (name, status, code, body) in &cases {
        assert!(
            (400..500).contains(status),
            "{name}: status {status} {body}"
        );
        assert_eq!(body["error"], *code, "{name}: {status} {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.len() > 10),
            "{name}: {body}"
        );
    }
    assert_eq!(cases.iter().find(|c| c.0 == "oversize").unwrap().1, 413);

    // Nothing changed: same round, phase, history; no job j5.
    let after: JobStatus = op.json("/v1/jobs/j4", "j4").await.unwrap();
    assert_eq!(after.live, before.live);
    assert_eq!(after.history.len(), before.history.len());
    let all: Vec<JobStatus> = op.json("/v1/jobs", "").await.unwrap();
    assert_eq!(all.len(), 1);
    // The refused requests were counted, and a good message is still taken.
    let metrics = reqwest_get(&c, "/metrics").await;
    assert!(
        metrics.contains("shroud_requests_refused_total{code=\"wrong_phase\"} 1"),
        "{metrics}"
    );
    let policy = policy_of(&text);
    let cohort: Vec<_> = policy
        .roster_keys()
        .iter()
        .map(|(i, k)| (shroud_crypto::PartyId(*i), *k))
        .collect();
    let round = shroud::job::protocol_round(&policy, "j4", 1, 0, &cohort, 20, len).unwrap();
    let mut party = shroud_crypto::Party::new(
        round,
        shroud_crypto::PartyId(0),
        k0,
        vec![0; len],
        &mut rand_core::OsRng,
    )
    .unwrap();
    let advert = party.poll_outgoing().unwrap().encode(&session);
    let k0 = IdentityKey::from_seed(&demo_identity_seed(0));
    let (st, b) = post_message(&http, base, &k0, Signer::Party(0), 1, advert.clone()).await;
    assert_eq!(st, 202, "{b}");
    // The same advertisement again is refused (the protocol's own replay check).
    let (st, b) = post_message(&http, base, &k0, Signer::Party(0), 1, advert).await;
    assert_eq!(st, 409, "{b}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_routes() {
    let dir = temp_dir("net-openapi");
    let (_sets, text) = consortium(2, 60.0);
    let c = coordinator(&dir, &text, None).await;
    let doc: serde_json::Value =
        serde_json::from_str(&reqwest_get(&c, "/openapi.json").await).unwrap();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut routes: Vec<(String, String)> = shroud::net::server::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    routes.sort();
    assert_eq!(documented, routes);
    // Every route is served: nothing answers "no such route".
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(c.client_tls().unwrap().unwrap())
        .build()
        .unwrap();
    for (m, p) in shroud::net::server::ROUTES {
        let path = p.replace("{job}", "x").replace("{round}", "1");
        let r = http
            .request(
                m.to_uppercase().parse().unwrap(),
                format!("{}{path}", c.url),
            )
            .send()
            .await
            .unwrap();
        let body = r.text().await.unwrap();
        assert!(!body.contains("no such route"), "{m} {p}: {body}");
    }
    c.shutdown().await;
}

#[test]
fn serving_plain_http_needs_the_explicit_flag_and_keys_must_match_the_roster() {
    let dir = temp_dir("net-cli");
    let (sets, text) = consortium(2, 60.0);
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, &text).unwrap();
    let (code, _, err) = shroud(&[
        "serve",
        "--policy",
        policy.to_str().unwrap(),
        "--db",
        dir.join("c.db").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("--insecure-http"), "{err}");
    // A freshly made key is not party 0's roster entry: the party refuses
    // to run before it contacts anyone.
    let key = dir.join("stranger.key");
    let (code, _, err) = shroud(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = shroud(&["keygen", "--out", key.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("refusing to overwrite"), "{err}");
    let csv = dir.join("p0.csv");
    sets[0].write_csv(&csv).unwrap();
    let party = |coordinator: &str, extra: &[&str]| {
        let mut args = vec![
            "party",
            "--policy",
            policy.to_str().unwrap(),
            "--id",
            "0",
            "--key",
            key.to_str().unwrap(),
            "--data",
            csv.to_str().unwrap(),
            "--coordinator",
        ];
        args.push(coordinator);
        args.extend(extra);
        shroud(&args)
    };
    let none = dir.join("none.crt");
    let (code, _, err) = party("https://127.0.0.1:9", &["--ca", none.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("none.crt"), "{err}");
    let (code, _, err) = party("http://127.0.0.1:9", &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("not the one the policy lists for party 0"),
        "{err}"
    );
    assert!(!err.contains("warning"), "{err}");
    // A key file others can read is named, with the fix.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (code, _, err) = party("http://127.0.0.1:9", &[]);
        assert_ne!(code, 0);
        assert!(
            err.contains("mode is 644: other users can read it; `chmod 600` it"),
            "{err}"
        );
    }
}

/// A coordinator that lies about a job's budget: the party checks the ε and
/// rounds it is asked for against its own policy before sizing its noise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_refuses_a_job_that_would_spend_more_than_its_policy_allows() {
    use axum::routing::get;
    use shroud::net::api::PartySetup;
    let (sets, text) = consortium(2, 60.0);
    let policy = policy_of(&text);
    let ours = policy.hash.clone();
    // A coordinator-supplied string that a byte slice at 12 would cut
    // inside a character: the party refuses it, it does not panic.
    let odd = "é".repeat(20);
    for (epsilon, rounds, hash, why) in [
        (
            100.0,
            2,
            &ours,
            "spend ε = 100; the policy allows at most 8",
        ),
        (-1.0, 2, &ours, "spend ε = -1; the policy allows at most 8"),
        (8.0, 50, &ours, "for 50 rounds; the policy allows 1 to 2"),
        (8.0, 2, &odd, "under policy éééééééééééé…"),
    ] {
        let status = JobStatus {
            job: "greedy".into(),
            consortium: policy.consortium.id.clone(),
            policy_hash: policy.hash.clone(),
            state: "running".into(),
            rounds,
            epsilon: 8.0,
            delta: policy.privacy.delta,
            epsilon_spent: None,
            noise_std_per_party: 1.0,
            live: None,
            history: Vec::new(),
            release: None,
            reason: None,
            version: 1,
        };
        // The σ the party itself would derive from the lie, so that only
        // the budget check can stop it.
        let sigma = shroud::job::job_policy(&policy, Some(epsilon), Some(rounds))
            .ok()
            .and_then(|p| shroud::dp::plan::PrivacyPlan::for_policy(&p).ok())
            .map_or(1.0, |p| p.noise_std_per_party);
        let setup = PartySetup {
            job: "greedy".into(),
            policy_hash: hash.clone(),
            epsilon,
            rounds,
            noise_std_per_party: sigma,
            canaries: Vec::new(),
        };
        let setup_json = serde_json::to_string(&setup).unwrap();
        let app = axum::Router::new()
            .route(
                "/v1/jobs",
                get(move || async move { axum::Json(vec![status]) }),
            )
            .route(
                "/v1/jobs/greedy/setup",
                get(move || async move { ([("content-type", "application/json")], setup_json) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut parties = spawn_parties(&url, None, &text, &sets[..1], None);
        let err = parties.remove(0).await.unwrap().unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
        server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_message_fetch_loses_no_message() {
    let (c, http, _op, s, text) = started_job("net-ack", "j6").await;
    let live = s.live.unwrap();
    let policy = policy_of(&text);
    let roster = policy.roster_keys();
    let cohort: Vec<_> = live
        .cohort
        .iter()
        .map(|i| (shroud_crypto::PartyId(*i), roster[i]))
        .collect();
    let base = c.url.as_str();
    let msgs = format!("/v1/jobs/j6/rounds/{}/messages", live.round);
    // Every party advertises its keys, so the coordinator queues each its
    // neighbours' keys.
    for &i in &live.cohort {
        let round = shroud::job::protocol_round(
            &policy, "j6", live.round, live.task, &cohort, live.bits, live.len,
        )
        .unwrap();
        let session = *round.session();
        let mut party = shroud_crypto::Party::new(
            round,
            shroud_crypto::PartyId(i),
            IdentityKey::from_seed(&demo_identity_seed(i)),
            vec![0; live.len],
            &mut rand_core::OsRng,
        )
        .unwrap();
        let advert = party.poll_outgoing().unwrap().encode(&session);
        let k = IdentityKey::from_seed(&demo_identity_seed(i));
        let (st, b) = signed(
            &http,
            base,
            &k,
            Signer::Party(i),
            "POST",
            &msgs,
            "j6",
            u64::from(live.round),
            advert,
            "application/octet-stream",
        )
        .await;
        assert_eq!(st, 202, "{b}");
    }
    let k0 = IdentityKey::from_seed(&demo_identity_seed(0));
    let fetch = |after: u64| {
        let (http, k0, msgs) = (http.clone(), &k0, msgs.clone());
        async move {
            let path = format!("{msgs}?after={after}");
            let headers = auth::sign(
                k0,
                Signer::Party(0),
                &audience(base),
                "GET",
                &path,
                b"",
                "j6",
                u64::from(live.round),
            );
            let mut req = http.get(format!("{base}{path}"));
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let seq = r
                .headers()
                .get(shroud::net::server::MESSAGE_SEQ)
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (status, seq, r.bytes().await.unwrap().to_vec())
        }
    };
    // The first answer is "lost": the same fetch gets the same message.
    let (st1, seq1, first) = fetch(0).await;
    let (st2, seq2, again) = fetch(0).await;
    assert_eq!((st1, st2), (200, 200));
    assert!(!first.is_empty());
    assert_eq!((seq1, &first), (seq2, &again));
    // Acknowledged, it is gone: nothing else is queued for party 0 yet.
    let (st3, _, rest) = fetch(seq1.unwrap()).await;
    assert_eq!(st3, 204, "{rest:?}");
    c.shutdown().await;
}

/// A raw TLS connection to a local coordinator.
async fn tls_connect(
    c: &LocalCoordinator,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let port: u16 = c.url.rsplit(':').next().unwrap().parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let cfg = std::sync::Arc::new(c.client_tls().unwrap().unwrap());
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
}

/// Sends `head` and then `body_len` bytes one every `pace`, reconnecting
/// whenever the coordinator hangs up, until `stop` is set.
async fn trickle(
    c: &LocalCoordinator,
    head: Vec<u8>,
    head_pace: Option<Duration>,
    pace: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = tls_connect(c).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let sent = match head_pace {
            // Slowloris: the headers themselves, a byte at a time.
            Some(p) => {
                let mut ok = true;
                for b in &head {
                    if stop.load(Ordering::Relaxed) || conn.write_all(&[*b]).await.is_err() {
                        ok = false;
                        break;
                    }
                    let _ = conn.flush().await;
                    tokio::time::sleep(p).await;
                }
                ok
            }
            None => conn.write_all(&head).await.is_ok(),
        };
        if !sent {
            continue;
        }
        // Slow POST: the declared body, a byte at a time.
        while !stop.load(Ordering::Relaxed) {
            if conn.write_all(b"x").await.is_err() || conn.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(pace).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_and_unauthenticated_clients_cannot_stall_a_round() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = temp_dir("net-slow");
    let (sets, text) = consortium(2, 3.0);
    let c = Arc::new(coordinator(&dir, &text, None).await);
    let tls = c.client_tls().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let msgs = "/v1/jobs/j7/rounds/1/messages";
    let mut attackers = Vec::new();
    // Outsiders: slow POSTs declaring 100 kB bodies under forged party
    // headers, and slowloris connections sending their headers a byte at a
    // time — eight of each, more than the coordinator has body slots.
    let forged = format!(
        "POST {msgs} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/octet-stream\r\n\
         content-length: 100000\r\nx-shroud-signer: party:3\r\nx-shroud-consortium: test-net\r\n\
         x-shroud-coordinator: 127.0.0.1\r\nx-shroud-job: j7\r\nx-shroud-round: 1\r\n\
         x-shroud-timestamp: {}\r\nx-shroud-nonce: {}\r\nx-shroud-content-sha256: {}\r\n\
         x-shroud-signature: {}\r\n\r\n",
        auth::unix_now(),
        "ab".repeat(16),
        "cd".repeat(32),
        "ef".repeat(64)
    );
    for i in 0..16 {
        let (c, stop) = (c.clone(), stop.clone());
        let head = if i % 2 == 0 {
            forged.clone().into_bytes()
        } else {
            format!("POST {msgs} HTTP/1.1\r\nhost: 127.0.0.1\r\n").into_bytes()
        };
        let head_pace = (i % 2 == 1).then_some(Duration::from_secs(2));
        attackers.push(tokio::spawn(async move {
            trickle(&c, head, head_pace, Duration::from_secs(2), stop).await
        }));
    }
    // An insider: party 7's own key signs two 100 kB bodies it then
    // trickles; party 7 takes no other part.
    let k7 = IdentityKey::from_seed(&demo_identity_seed(7));
    for _ in 0..2 {
        let body = vec![0u8; 100_000];
        let headers = auth::sign(
            &k7,
            Signer::Party(7),
            &audience(&c.url),
            "POST",
            msgs,
            &body,
            "j7",
            1,
        );
        let mut head = format!(
            "POST {msgs} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/octet-stream\r\n\
             content-length: 100000\r\n"
        );
        for (k, v) in headers {
            head += &format!("{k}: {v}\r\n");
        }
        head += "\r\n";
        let (c, stop) = (c.clone(), stop.clone());
        attackers.push(tokio::spawn(async move {
            trickle(&c, head.into_bytes(), None, Duration::from_secs(2), stop).await
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The consortium's seven other parties run a job meanwhile.
    let parties = spawn_parties(&c.url, tls.clone(), &text, &sets[..7], None);
    let mut op = operator_client(&c.url, tls);
    let _: JobStatus = op
        .post_json("/v1/jobs", "j7", &serde_json::json!({"job": "j7"}))
        .await
        .unwrap();
    // Legitimate requests stay quick throughout.
    let mut slowest = Duration::ZERO;
    let s = loop {
        let t = std::time::Instant::now();
        let s: JobStatus = op.json("/v1/jobs/j7", "j7").await.unwrap();
        slowest = slowest.max(t.elapsed());
        if s.state != "running" && s.state != "auditing" {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop.store(true, Ordering::Relaxed);
    assert_eq!(s.state, "released", "{s:?}");
    assert!(
        s.history.iter().all(|r| r.state == "finished"),
        "{:?}",
        s.history
    );
    assert!(
        slowest < Duration::from_secs(3),
        "a status request took {slowest:?}"
    );
    for p in parties {
        p.await.unwrap().unwrap();
    }
    for a in attackers {
        a.abort();
    }
    let metrics = reqwest::Client::builder()
        .use_preconfigured_tls(c.client_tls().unwrap().unwrap())
        .build()
        .unwrap()
        .get(format!("{}/metrics", c.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The forged requests were turned away at their headers.
    assert!(metrics.contains("code=\"unauthenticated\""), "{metrics}");
}

/// A client holding the wrong CA is told the certificate is not trusted,
/// at once, instead of retrying until its patience runs out and calling
/// the coordinator unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_named_at_once() {
    let dir = temp_dir("net-untrusted");
    let (_sets, text) = consortium(2, 20.0);
    let c = coordinator(&dir, &text, None).await;
    let (other, _key) = shroud::net::tls::self_signed(&["127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join("other.crt"), other).unwrap();
    let tls = shroud::net::tls::client_config(&dir.join("other.crt")).unwrap();
    let mut op = operator_client(&c.url, Some(tls));
    let started = std::time::Instant::now();
    let err = op
        .json::<Vec<JobStatus>>("/v1/jobs", "")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, shroud::net::client::ClientError::Untrusted(_)),
        "{err}"
    );
    assert!(err.to_string().contains("not trusted"), "{err}");
    assert!(err.to_string().contains("--ca"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    c.shutdown().await;
}

/// `serve --log-format json` logs what the operator needs to follow a job:
/// each line one JSON object, with the job's sums, charges, the gate's
/// decision and refused requests. With `--metrics-listen` the counters are
/// scraped from their own address only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_coordinator_logs_a_job_as_json_lines() {
    let dir = temp_dir("net-logs");
    let (sets, text) = consortium(2, 20.0);
    let op_seed = serve_dir(&dir, &text);
    let port = free_port().unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let log = dir.join("serve.log");
    let metrics_port = free_port().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_shroud"))
        .env("RUST_LOG", "info")
        .arg("serve")
        .args(["--policy", dir.join("policy.toml").to_str().unwrap()])
        .args(["--db", dir.join("coordinator.db").to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", dir.join("server.crt").to_str().unwrap()])
        .args(["--tls-key", dir.join("server.key").to_str().unwrap()])
        .args([
            "--operator-public-key",
            dir.join("operator.pub").to_str().unwrap(),
        ])
        .args(["--out", dir.join("out").to_str().unwrap()])
        .args(["--log-format", "json"])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Killed on drop, should the test fail first.
    let mut server = ServeProcess { child };
    let tls = Some(shroud::net::tls::client_config(&dir.join("server.crt")).unwrap());
    let parties = spawn_parties(&url, tls.clone(), &text, &sets, None);
    let mut op = operator_with(&url, tls.clone(), &op_seed);
    let _: JobStatus = op
        .post_json("/v1/jobs", "logged", &serde_json::json!({"job": "logged"}))
        .await
        .unwrap();
    let s = wait_until_done(&mut op, "logged").await;
    for p in parties {
        p.await.unwrap().unwrap();
    }
    // A request signed by a stranger is refused, and logged with its code.
    let stranger = IdentityKey::from_seed(&[9u8; 32]);
    let mut bad = Client::new(
        &url,
        tls,
        stranger,
        Signer::Operator,
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(bad.json::<Vec<JobStatus>>("/v1/jobs", "").await.is_err());
    // --metrics-listen: the counters on their own plain-HTTP address, and
    // not on the API's.
    let scraped = reqwest::Client::builder()
        .use_preconfigured_tls(shroud::net::tls::client_config_trusting_none())
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    let text = scraped.text().await.unwrap();
    assert!(text.contains("shroud_rounds_finished_total 3"), "{text}");
    let api = reqwest::Client::builder()
        .use_preconfigured_tls(shroud::net::tls::client_config(&dir.join("server.crt")).unwrap())
        .build()
        .unwrap()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 404);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let with = |message: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .collect()
    };
    assert_eq!(with("coordinator listening").len(), 1, "{lines:?}");
    // Two training rounds and the audit's sum, each charged then decoded.
    assert_eq!(with("charged before decoding").len(), 3, "{lines:?}");
    let decoded = with("secure sum decoded");
    assert_eq!(decoded.len(), 3, "{lines:?}");
    assert!(decoded.iter().all(|l| l["fields"]["job"] == "logged"));
    let gate = with("release gate decided");
    assert_eq!(gate.len(), 1);
    assert_eq!(
        gate[0]["fields"]["decision"],
        if s.state == "released" {
            "release"
        } else {
            "block"
        }
    );
    assert!(
        with("request refused").iter().any(|l| l["level"] == "WARN"),
        "{lines:?}"
    );
}
