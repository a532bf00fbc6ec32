//! The privacy ledger on real SQLite: charges survive a crash between charge
//! and release, the budget refuses jobs that would exceed it, and spent ε
//! is the composition of every charge.

use std::path::{Path, PathBuf};
use std::process::Command;

use shroud::dp::accountant::zcdp_epsilon_of_rho;
use shroud::dp::plan::RoundCharge;
use shroud::policy::AccountantKind;
use shroud::store::ledger::ChargeKind;
use shroud::store::{LedgerError, PrivacyLedger};

const TRAINING: ChargeKind = ChargeKind::Training;

fn charge(rho: f64) -> RoundCharge {
    RoundCharge::of_zcdp(rho, 1.0)
}

fn temp_db(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shroud-ledger-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("ledger.db");
    let _ = std::fs::remove_file(&db);
    db
}

#[test]
fn spent_is_the_composition_of_all_charges() {
    let db = temp_db("compose");
    let mut l = PrivacyLedger::open(&db).unwrap();
    l.set_budget("c1", 10.0, 1e-6, AccountantKind::Zcdp)
        .unwrap();
    l.begin_job("c1", "job-a", "hash", &[charge(0.05), charge(0.05)])
        .unwrap();
    let first = l.charge("job-a", 1, 0, TRAINING, &charge(0.05)).unwrap();
    let second = l.charge("job-a", 2, 0, TRAINING, &charge(0.075)).unwrap();
    assert!(second.epsilon_after > first.epsilon_after);
    let spent = l.spent("c1").unwrap();
    assert_eq!(spent.charges, 2);
    // ρ adds: 0.125 total gives the known conversion at δ = 1e-6.
    assert!((spent.epsilon - 2.41909).abs() < 1e-4, "{}", spent.epsilon);
    assert!((spent.epsilon - zcdp_epsilon_of_rho(0.125, 1e-6).unwrap()).abs() < 1e-12);
    assert!((second.epsilon_after - spent.epsilon).abs() < 1e-12);
    assert!(!second.released);
    l.mark_released(second.id).unwrap();
    assert!(l.charges(Some("job-a")).unwrap()[1].released);
}

#[test]
fn a_job_over_budget_is_refused_and_leaves_no_trace() {
    let db = temp_db("refuse");
    let mut l = PrivacyLedger::open(&db).unwrap();
    l.set_budget("c2", 1.0, 1e-5, AccountantKind::Rdp).unwrap();
    let heavy: Vec<RoundCharge> = (0..50).map(|_| charge(0.05)).collect();
    match l.begin_job("c2", "too-much", "hash", &heavy) {
        Err(LedgerError::BudgetExceeded {
            with_job, budget, ..
        }) => {
            assert!(with_job > budget);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(l.spent("c2").unwrap().jobs, 0);
    assert!(matches!(
        l.charge("too-much", 1, 0, TRAINING, &charge(0.1)),
        Err(LedgerError::UnknownJob(_))
    ));
    // A small job fits, and then a second one no longer does.
    let light: Vec<RoundCharge> = (0..3).map(|_| charge(0.002)).collect();
    l.begin_job("c2", "light", "hash", &light).unwrap();
    for r in 0..3 {
        l.charge("light", r, 0, TRAINING, &charge(0.002)).unwrap();
    }
    let big: Vec<RoundCharge> = (0..40).map(|_| charge(0.002)).collect();
    let err = l.begin_job("c2", "next", "hash", &big).unwrap_err();
    assert!(
        err.to_string()
            .contains("job refused: consortium c2 has spent"),
        "{err}"
    );
}

const CRASH_DB: &str = "SHROUD_TEST_CRASH_DB";

/// In the child: charge a round, then die before releasing it.
fn crash_child(db: &Path) -> ! {
    let mut l = PrivacyLedger::open(db).unwrap();
    l.set_budget("c3", 5.0, 1e-5, AccountantKind::Zcdp).unwrap();
    l.begin_job("c3", "job-crash", "hash", &[charge(0.1)])
        .unwrap();
    l.charge("job-crash", 7, 0, TRAINING, &charge(0.1)).unwrap();
    // The process dies between the charge and the release: no destructor,
    // no clean close of the database.
    std::process::abort();
}

#[test]
fn a_charge_survives_a_crash_before_release() {
    if let Ok(db) = std::env::var(CRASH_DB) {
        crash_child(Path::new(&db));
    }
    let db = temp_db("crash");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_charge_survives_a_crash_before_release",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CRASH_DB, &db)
        .status()
        .unwrap();
    assert!(!status.success(), "the child was meant to abort");
    let l = PrivacyLedger::open(&db).unwrap();
    let charges = l.charges(Some("job-crash")).unwrap();
    assert_eq!(charges.len(), 1, "the in-flight round's charge is on disk");
    assert_eq!(charges[0].round, 7);
    assert!(!charges[0].released);
    let spent = l.spent("c3").unwrap();
    assert!(spent.epsilon > 0.0, "the in-flight round counts as spent");
}

#[test]
fn a_job_spends_only_its_own_charges() {
    let db = temp_db("per-job");
    let mut l = PrivacyLedger::open(&db).unwrap();
    l.set_budget("c4", 10.0, 1e-6, AccountantKind::Zcdp)
        .unwrap();
    l.begin_job("c4", "first", "hash", &[charge(0.1)]).unwrap();
    l.begin_job("c4", "second", "hash", &[charge(0.025), charge(0.1)])
        .unwrap();
    l.charge("first", 1, 0, TRAINING, &charge(0.1)).unwrap();
    l.charge("second", 1, 0, TRAINING, &charge(0.025)).unwrap();
    let audit = l
        .charge("second", 2, 0, ChargeKind::Audit, &charge(0.1))
        .unwrap();
    assert_eq!(audit.kind, ChargeKind::Audit);
    // The second job's model rests on its own 0.125, not the consortium's 0.225.
    let own = l.job_spent("second").unwrap();
    assert!((own - zcdp_epsilon_of_rho(0.125, 1e-6).unwrap()).abs() < 1e-12);
    assert!(l.spent("c4").unwrap().epsilon > own);
    assert!(matches!(
        l.job_spent("nobody"),
        Err(LedgerError::UnknownJob(_))
    ));
}

#[test]
fn a_ledger_from_before_charge_kinds_is_brought_up_to_date() {
    let db = temp_db("migrate");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE budgets (consortium TEXT PRIMARY KEY, epsilon REAL NOT NULL,
               delta REAL NOT NULL, accountant TEXT NOT NULL);
             CREATE TABLE jobs (job TEXT PRIMARY KEY, consortium TEXT NOT NULL,
               policy_hash TEXT NOT NULL, planned INTEGER NOT NULL,
               created_at TEXT NOT NULL DEFAULT 'then');
             CREATE TABLE charges (id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL,
               round INTEGER NOT NULL, task INTEGER NOT NULL, accountant TEXT NOT NULL,
               rho REAL NOT NULL, rdp TEXT NOT NULL, epsilon_after REAL NOT NULL,
               delta REAL NOT NULL, released INTEGER NOT NULL DEFAULT 0,
               created_at TEXT NOT NULL DEFAULT 'then');
             INSERT INTO budgets VALUES ('old', 5.0, 1e-5, 'zcdp');
             INSERT INTO jobs (job, consortium, policy_hash, planned) VALUES ('j', 'old', 'h', 1);
             INSERT INTO charges (job, round, task, accountant, rho, rdp, epsilon_after, delta)
               VALUES ('j', 1, 0, 'zcdp', 0.1, '[0.1]', 1.0, 1e-5);",
        )
        .unwrap();
    }
    let l = PrivacyLedger::open(&db).unwrap();
    let charges = l.charges(Some("j")).unwrap();
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].kind, ChargeKind::Training);
    // zCDP totals need only ρ: the old curve's grid does not matter...
    assert!(l.spent("old").unwrap().epsilon > 0.0);
    drop(l);
    // ...but an RDP budget cannot be totalled over another grid of orders.
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute("UPDATE budgets SET accountant = 'rdp'", [])
        .unwrap();
    drop(c);
    let l = PrivacyLedger::open(&db).unwrap();
    let err = l.spent("old").unwrap_err().to_string();
    assert!(err.contains("earlier RDP accountant"), "{err}");
}

/// A charge paid by one party's records (its home training) counts for
/// that party alone: the consortium pays the shared charges plus the
/// largest party's own total, under either accountant; a party's home
/// charges across jobs add up.
#[test]
fn home_charges_compose_in_parallel_across_parties() {
    for accountant in [AccountantKind::Zcdp, AccountantKind::Rdp] {
        let db = temp_db(&format!("home-{}", accountant.name()));
        let mut l = PrivacyLedger::open(&db).unwrap();
        l.set_budget("c", 100.0, 1e-6, accountant).unwrap();
        l.begin_job("c", "ens", "hash", &[]).unwrap();
        l.charge_all_with(
            "ens",
            1,
            0,
            TRAINING,
            &[
                (Some(0), charge(0.2)),
                (Some(1), charge(0.5)),
                (Some(2), charge(0.3)),
            ],
            |_, _| Ok(()),
        )
        .unwrap();
        let last = l
            .charge("ens", 2, 0, ChargeKind::Audit, &charge(0.1))
            .unwrap();
        let exact = |rho: f64| match accountant {
            AccountantKind::Zcdp => zcdp_epsilon_of_rho(rho, 1e-6).unwrap(),
            AccountantKind::Rdp => shroud::dp::accountant::rdp_epsilon(&charge(rho).rdp, 1e-6).0,
        };
        let spent = l.spent("c").unwrap();
        assert!(
            (spent.epsilon - exact(0.5 + 0.1)).abs() < 1e-9,
            "{accountant:?}: {} vs {}",
            spent.epsilon,
            exact(0.6)
        );
        assert!((last.epsilon_after - spent.epsilon).abs() < 1e-12);
        // Summing the parties instead would have charged ρ = 1.1.
        assert!(spent.epsilon < exact(1.1) - 0.5);
        let parties: Vec<Option<u32>> = l
            .charges(Some("ens"))
            .unwrap()
            .iter()
            .map(|c| c.party)
            .collect();
        assert_eq!(parties, vec![Some(0), Some(1), Some(2), None]);
        // A second job's home training adds to the same party's total:
        // party 0 reaches 0.2 + 0.6 = 0.8, now the largest.
        l.begin_job("c", "ens2", "hash", &[]).unwrap();
        l.charge_all_with("ens2", 1, 0, TRAINING, &[(Some(0), charge(0.6))], |_, _| {
            Ok(())
        })
        .unwrap();
        let spent = l.spent("c").unwrap();
        assert!((spent.epsilon - exact(0.8 + 0.1)).abs() < 1e-9);
        assert!((l.job_spent("ens2").unwrap() - exact(0.6)).abs() < 1e-9);
    }
}
