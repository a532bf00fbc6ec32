//! A party trusts its own policy, not the coordinator: every task a lying
//! coordinator can announce that the policy does not allow is refused, and
//! the refusal leaves the party's state exactly as it was.

mod common;

use std::path::Path;

use shroud::audit;
use shroud::dp::encode::EncodingScheme;
use shroud::dp::plan::PrivacyPlan;
use shroud::job::rotation_seed;
use shroud::job::session::{PartyRules, Refusal, SessionState, TaskKind, AUDIT_BITS};
use shroud::net::api::LiveTask;
use shroud::party::SessionJournal;
use shroud::policy::Policy;

const ME: u32 = 3;
const JOB: &str = "job-1";

fn policy() -> Policy {
    Policy::load(Path::new("policies/default.toml")).unwrap()
}

fn session(state: SessionState) -> PartyRules {
    let p = policy();
    let plan = PrivacyPlan::for_policy(&p).unwrap();
    PartyRules::new(ME, JOB, p, plan, state)
}

/// What an honest coordinator would announce for a training round.
fn training(round: u32) -> LiveTask {
    let p = policy();
    let plan = PrivacyPlan::for_policy(&p).unwrap();
    // The rotated model, then one plain coordinate per audit canary.
    let len = EncodingScheme::from_plan(&plan, rotation_seed(&p, JOB, round, 0)).padded
        + p.audit.canaries as usize;
    LiveTask {
        round,
        task: 0,
        kind: "training".into(),
        phase: "advertise-keys".into(),
        cohort: (0..8).collect(),
        bits: plan.bits,
        len,
    }
}

fn audit_task(round: u32) -> LiveTask {
    let p = policy();
    LiveTask {
        round,
        task: 0,
        kind: "audit".into(),
        phase: "advertise-keys".into(),
        cohort: (0..8).collect(),
        bits: AUDIT_BITS,
        len: audit::counts_width(&p),
    }
}

/// Refuses `live` and checks the state did not move.
fn refuses(s: &PartyRules, live: &LiveTask) -> Refusal {
    let before = s.state();
    let err = s.admit(live).expect_err("the task should be refused");
    assert_eq!(s.state(), before, "a refusal changed the party's state");
    assert!(!err.to_string().is_empty());
    err
}

#[test]
fn an_honest_task_is_admitted_with_the_partys_own_parameters() {
    let mut s = session(SessionState::default());
    let a = s.admit(&training(1)).unwrap();
    assert_eq!(a.kind, TaskKind::Training);
    let round = s.protocol_round(&a).unwrap();
    // Threshold, collusion bound and check come from this party's policy.
    assert_eq!(round.config().threshold, 6);
    assert_eq!(round.config().max_colluding, 2);
    assert!(round.config().active);
    s.start(&a);
    assert_eq!(s.state().last_training, Some((1, 0)));
}

#[test]
fn a_cohort_smaller_than_the_threshold_is_refused() {
    let s = session(SessionState::default());
    // {victim, colluder}: today's code ran this with t = 2.
    let mut live = training(1);
    live.cohort = vec![ME, 7];
    assert_eq!(
        refuses(&s, &live),
        Refusal::CohortTooSmall { size: 2, needed: 6 }
    );
    live.cohort = vec![0, 1, 2, ME, 4];
    assert_eq!(
        refuses(&s, &live),
        Refusal::CohortTooSmall { size: 5, needed: 6 }
    );
}

#[test]
fn a_cohort_below_min_survivors_is_refused() {
    let text = std::fs::read_to_string("policies/default.toml")
        .unwrap()
        .replace(
            "max_colluding = 2 ",
            "min_survivors = 7\nmax_colluding = 2 ",
        );
    let p = Policy::parse(Path::new("policies/min7.toml"), &text).unwrap();
    let plan = PrivacyPlan::for_policy(&p).unwrap();
    let s = PartyRules::new(ME, JOB, p, plan, SessionState::default());
    let mut live = training(1);
    live.cohort = vec![0, 1, 2, ME, 4, 5];
    assert_eq!(
        refuses(&s, &live),
        Refusal::CohortTooSmall { size: 6, needed: 7 }
    );
}

#[test]
fn a_cohort_without_the_party_or_outside_the_roster_is_refused() {
    let s = session(SessionState::default());
    let mut live = training(1);
    live.cohort = vec![0, 1, 2, 4, 5, 6, 7];
    assert_eq!(refuses(&s, &live), Refusal::NotInCohort);
    live.cohort = vec![0, 1, 2, ME, 4, 5, 6, 7, 99];
    assert_eq!(refuses(&s, &live), Refusal::NotInRoster(99));
    live.cohort = vec![0, 1, 2, ME, ME, 4, 5, 6];
    assert_eq!(refuses(&s, &live), Refusal::MalformedCohort);
}

#[test]
fn rounds_beyond_the_job_are_refused() {
    let s = session(SessionState::default());
    assert_eq!(
        refuses(&s, &training(41)),
        Refusal::RoundOutOfRange {
            round: 41,
            rounds: 40
        }
    );
    assert_eq!(
        refuses(&s, &training(0)),
        Refusal::RoundOutOfRange {
            round: 0,
            rounds: 40
        }
    );
}

#[test]
fn a_replayed_or_earlier_round_is_refused() {
    let mut s = session(SessionState::default());
    let a = s.admit(&training(5)).unwrap();
    s.start(&a);
    for round in [5, 3] {
        assert_eq!(
            refuses(&s, &training(round)),
            Refusal::NotAfterLast {
                round,
                task: 0,
                last: (5, 0)
            }
        );
    }
    assert!(s.admit(&training(6)).is_ok());
}

#[test]
fn a_task_the_strategy_does_not_plan_is_refused() {
    let s = session(SessionState::default());
    let mut live = training(2);
    live.task = 1;
    assert_eq!(
        refuses(&s, &live),
        Refusal::UnknownTask { task: 1, tasks: 1 }
    );
}

#[test]
fn an_audit_sum_before_the_last_training_round_is_refused() {
    let s = session(SessionState::default());
    assert_eq!(
        refuses(&s, &audit_task(40)),
        Refusal::AuditBeforeTrainingEnds {
            round: 40,
            rounds: 40
        }
    );
    assert_eq!(s.admit(&audit_task(41)).unwrap().kind, TaskKind::Audit);
}

#[test]
fn a_second_audit_sum_is_refused_once_counts_went_out() {
    let mut s = session(SessionState::default());
    let a = s.admit(&audit_task(41)).unwrap();
    s.start(&a);
    // An attempt that ended before this party's masked input left may be
    // retried...
    assert!(s.admit(&audit_task(42)).is_ok());
    // ...but once its counts went out, no other audit sum gets them.
    s.masked_input_sent(&a);
    assert!(s.state().audit_sent);
    assert_eq!(refuses(&s, &audit_task(42)), Refusal::AuditAlreadySent);
}

#[test]
fn a_vector_shape_other_than_the_plan_is_refused() {
    let s = session(SessionState::default());
    let mut live = training(1);
    live.len += 1;
    assert!(matches!(refuses(&s, &live), Refusal::WrongShape { .. }));
    let mut live = training(1);
    live.bits = 32;
    assert!(matches!(refuses(&s, &live), Refusal::WrongShape { .. }));
    let mut live = audit_task(41);
    live.len = 1;
    assert!(matches!(refuses(&s, &live), Refusal::WrongShape { .. }));
    let mut live = training(1);
    live.kind = "exfiltrate".into();
    assert_eq!(
        refuses(&s, &live),
        Refusal::UnknownKind("exfiltrate".into())
    );
}

#[test]
fn the_journal_keeps_the_count_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("shroud-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("party-3.journal.json");
    let _ = std::fs::remove_file(&path);
    {
        let mut journal = SessionJournal::open(Some(path.clone())).unwrap();
        let mut s = session(journal.get(JOB));
        let a = s.admit(&training(7)).unwrap();
        s.start(&a);
        journal.put(JOB, s.state()).unwrap();
        let a = s.admit(&audit_task(41)).unwrap();
        s.masked_input_sent(&a);
        journal.put(JOB, s.state()).unwrap();
    }
    // A restarted party reads its record back and refuses the replays.
    let journal = SessionJournal::open(Some(path.clone())).unwrap();
    let s = session(journal.get(JOB));
    assert_eq!(
        refuses(&s, &training(7)),
        Refusal::NotAfterLast {
            round: 7,
            task: 0,
            last: (7, 0)
        }
    );
    assert_eq!(refuses(&s, &audit_task(42)), Refusal::AuditAlreadySent);
    // Another job starts afresh.
    assert_eq!(journal.get("job-2"), SessionState::default());
    // The strategy's home state is kept beside the rules' state, and a
    // later rules-only record keeps it.
    let mut journal = journal;
    journal
        .put_with_home(JOB, s.state(), b"\x07home state")
        .unwrap();
    journal.put(JOB, s.state()).unwrap();
    let reread = SessionJournal::open(Some(path.clone())).unwrap();
    assert_eq!(
        reread.home(JOB).unwrap().as_deref(),
        Some(&b"\x07home state"[..])
    );
    assert_eq!(reread.home("job-2").unwrap(), None);
    // A damaged journal is refused, not silently reset.
    std::fs::write(&path, "{ not json").unwrap();
    let err = SessionJournal::open(Some(path.clone())).err().unwrap();
    assert!(err.contains("not valid"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_protocol_round_refuses_a_cohort_below_the_threshold() {
    // The in-process job and the coordinator build rounds with the same
    // function: a small cohort is refused there too, never run with t = n.
    let p = policy();
    let roster = p.roster_keys();
    let cohort: Vec<_> = [ME, 7]
        .iter()
        .map(|i| (shroud_crypto::PartyId(*i), roster[i]))
        .collect();
    let err = shroud::job::protocol_round(&p, JOB, 1, 0, &cohort, 20, 16).unwrap_err();
    assert!(err.to_string().contains("needs at least 6"), "{err}");
}

/// A lying coordinator may deal a party canaries that are not its own under
/// the public round-robin rule — another party's, one twice, or one past the
/// policy's count — to load it with work or skew the audit: the party
/// refuses to join, saying why. Its own canaries are accepted.
#[test]
fn canaries_dealt_against_the_rule_are_refused() {
    use shroud::data::Dataset;
    use shroud::job::demo_identity_seed;
    use shroud::job::session::{InputRandomness, Member, PartySession};
    use shroud::net::api::PartySetup;

    let p = policy();
    let plan = PrivacyPlan::for_policy(&p).unwrap();
    let m = p.audit.canaries;
    let join = |canaries: Vec<u32>| {
        let member = Member {
            id: ME,
            identity_seed: demo_identity_seed(ME),
            data: Dataset {
                features: vec![vec![0.0; p.strategy.inputs]; 4],
                labels: vec![0, 1, 2, 3],
                classes: p.strategy.classes,
                feature_names: (0..p.strategy.inputs).map(|i| format!("x{i}")).collect(),
            },
        };
        let setup = PartySetup {
            job: JOB.into(),
            policy_hash: p.hash.clone(),
            epsilon: p.privacy.epsilon,
            rounds: p.privacy.rounds,
            noise_std_per_party: plan.noise_std_per_party,
            canaries,
        };
        PartySession::join(
            member,
            &p,
            &setup,
            SessionState::default(),
            None,
            InputRandomness::Os,
        )
        .map(|_| ())
    };
    // Eight parties: party 3 holds canaries 3, 11, 19, …
    join(vec![ME, ME + 8, ME + 16]).expect("its own canaries are accepted");
    for bad in [vec![ME + 1], vec![ME, ME], vec![ME + 8, ME], vec![m + ME]] {
        let err = join(bad.clone()).expect_err("a canary against the rule");
        assert!(err.contains("not this party's"), "{bad:?}: {err}");
    }
}

/// An ensemble member's one sum carries no noise, so the kind of a task is
/// the party's to decide: an outputs sum announced as a training sum, a
/// training sum announced as outputs, a second sum round or another shape
/// are refused; the honest announcement is admitted with its own shape.
#[test]
fn the_kind_of_a_sum_is_the_partys_own_plan_not_the_announcement() {
    let dir = common::temp_dir("session-ensemble");
    let public = common::wine_public_set(&dir);
    let records = [20usize; 8];
    let p = Policy::parse(
        &dir.join("e.toml"),
        &common::ensemble_policy_text(&records, &public, 10),
    )
    .unwrap();
    let q = p.strategy.public_set.as_ref().unwrap().records;
    let plan = PrivacyPlan::for_policy(&p).unwrap();
    let s = PartyRules::new(ME, JOB, p, plan.clone(), SessionState::default());
    let outputs = |round: u32| LiveTask {
        round,
        task: 0,
        kind: "outputs".into(),
        phase: "advertise-keys".into(),
        cohort: (0..8).collect(),
        bits: shroud::job::session::OUTPUT_BITS,
        len: q * 3,
    };
    let a = s.admit(&outputs(1)).unwrap();
    assert_eq!((a.kind, a.len, a.bits), (TaskKind::Outputs, q * 3, 32));
    let as_training = LiveTask {
        kind: "training".into(),
        ..outputs(1)
    };
    assert_eq!(
        refuses(&s, &as_training),
        Refusal::WrongKind {
            task: 0,
            announced: "training"
        }
    );
    // Three attempts at the one sum, no more.
    assert!(s.admit(&outputs(3)).is_ok());
    assert_eq!(
        refuses(&s, &outputs(4)),
        Refusal::RoundOutOfRange {
            round: 4,
            rounds: 3
        }
    );
    assert!(matches!(
        refuses(
            &s,
            &LiveTask {
                len: q * 3 + 1,
                ..outputs(1)
            }
        ),
        Refusal::WrongShape { .. }
    ));
    // A transfer party's base rounds are noisy training sums: "outputs"
    // for one of them is refused.
    let t = Policy::parse(
        &dir.join("t.toml"),
        &common::transfer_policy_text(&records, 4),
    )
    .unwrap();
    let tplan = PrivacyPlan::for_policy(&t).unwrap();
    let ts = PartyRules::new(ME, JOB, t, tplan, SessionState::default());
    assert_eq!(
        refuses(&ts, &outputs(1)),
        Refusal::WrongKind {
            task: 0,
            announced: "outputs"
        }
    );
}

/// What an honest coordinator announces for a statistics sum in `round`
/// over a roster of ten.
fn statistics_task(p: &Policy, round: u32) -> LiveTask {
    LiveTask {
        round,
        task: 0,
        kind: "statistics".into(),
        phase: "advertise-keys".into(),
        cohort: (0..10).collect(),
        bits: shroud::job::session::STATISTICS_BITS,
        len: shroud::dp::statistics::width(&shroud::dp::statistics::blocks(p)),
    }
}

/// FedImpres' statistics sum: a party sends its statistics once. A lying
/// coordinator that asks again — in a later round, where the plan has
/// attempts left, or passing the sum off as a training update or the
/// reverse — is refused, so no two sums over different survivors can be
/// subtracted to leave one party's noisy statistics.
#[test]
fn statistics_go_out_once_and_only_as_planned() {
    let p = Policy::load(Path::new("policies/fedimpres.toml")).unwrap();
    let plan = PrivacyPlan::for_policy(&p).unwrap();
    let stats = |round: u32| statistics_task(&p, round);
    let mut s = PartyRules::new(ME, JOB, p.clone(), plan.clone(), SessionState::default());
    let a = s.admit(&stats(1)).unwrap();
    assert_eq!(a.kind, TaskKind::Statistics);
    assert_eq!(a.len, 2 * p.strategy.inputs + p.strategy.classes);
    // Announced as a training update, the same task is refused.
    let mut as_training = stats(1);
    as_training.kind = "training".into();
    assert!(matches!(
        refuses(&s, &as_training),
        Refusal::WrongKind { task: 0, .. }
    ));
    s.start(&a);
    // Before its masked input left, a later attempt may still come...
    assert!(s.admit(&stats(2)).is_ok());
    s.masked_input_sent(&a);
    assert_eq!(s.state().statistics_sent, Some(0));
    // ...after, none: not in round 2 or 3, where the plan allows one.
    for round in [2, 3] {
        assert_eq!(refuses(&s, &stats(round)), Refusal::StatisticsAlreadySent);
    }
    // Past the attempts, task 0 is the training update: a statistics sum
    // announced there is refused by kind, whatever was sent.
    let fresh = PartyRules::new(ME, JOB, p.clone(), plan.clone(), SessionState::default());
    assert!(matches!(
        refuses(&fresh, &stats(4)),
        Refusal::WrongKind { task: 0, .. }
    ));
    // And the training update of round 1 is task 1, not task 0.
    let mut update = stats(1);
    update.kind = "training".into();
    assert!(matches!(
        refuses(&fresh, &update),
        Refusal::WrongKind { task: 0, .. }
    ));
}

/// FST-CBDG refreshes its prototypes in rounds 11 and 21: each refresh is
/// a release of its own, so a party that sent round 11's sends round 21's,
/// but never round 11's again (nor any statistics in a round without one).
#[test]
fn each_prototype_refresh_is_sent_once() {
    let p = Policy::load(Path::new("policies/fstcbdg.toml")).unwrap();
    let plan = PrivacyPlan::for_policy(&p).unwrap();
    assert_eq!(plan.statistics.as_ref().unwrap().sums, 2);
    let stats = |round: u32| statistics_task(&p, round);
    // Sent for round 11 in an earlier life of the party (its journal).
    let s = PartyRules::new(
        ME,
        JOB,
        p.clone(),
        plan.clone(),
        SessionState {
            last_training: Some((11, 0)),
            statistics_sent: Some(11),
            ..SessionState::default()
        },
    );
    assert!(s.admit(&stats(21)).is_ok());
    let replayed = PartyRules::new(
        ME,
        JOB,
        p.clone(),
        plan.clone(),
        SessionState {
            statistics_sent: Some(11),
            ..SessionState::default()
        },
    );
    assert_eq!(
        refuses(&replayed, &stats(11)),
        Refusal::StatisticsAlreadySent
    );
    // Round 12 plans no statistics: its task 0 is the head's update.
    assert!(matches!(
        refuses(&replayed, &stats(12)),
        Refusal::WrongKind { task: 0, .. }
    ));
}
