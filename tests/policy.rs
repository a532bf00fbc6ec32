//! Policy files: every file in policies/ is valid, and each kind of bad
//! policy gets the promised message naming the file, the key and what would
//! be valid.

mod common;

use std::path::Path;

use shroud::policy::{Policy, PolicyError, Unit};

fn base() -> String {
    std::fs::read_to_string("policies/default.toml").unwrap()
}

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse(Path::new("policies/test.toml"), text)
}

fn refused(text: &str) -> PolicyError {
    match parse(text) {
        Ok(_) => panic!("policy was accepted:\n{text}"),
        Err(e) => e,
    }
}

fn assert_names(e: &PolicyError, key: &str, fragment: &str) {
    let msg = e.to_string();
    assert!(msg.starts_with("policies/test.toml"), "{msg}");
    assert!(msg.contains(key), "expected key `{key}` in: {msg}");
    assert!(msg.contains(fragment), "expected `{fragment}` in: {msg}");
}

#[test]
fn every_policy_in_the_folder_is_valid() {
    let mut seen = 0;
    for entry in std::fs::read_dir("policies").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let p = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.hash.len(), 64);
        assert!(p.privacy.noise_multiplier > 0.0, "{}", path.display());
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected default, strict and party-level policies"
    );
    let strict = Policy::load(Path::new("policies/strict.toml")).unwrap();
    assert!(strict.privacy.epsilon <= 1.0);
    assert_eq!(strict.privacy.unit, Unit::Record);
    let party = Policy::load(Path::new("policies/party-level.toml")).unwrap();
    assert_eq!(party.privacy.unit, Unit::Party);
}

#[test]
fn unknown_key_names_it_with_line_and_column() {
    let text = base().replace("bits = 20", "bits = 20\nbitz = 3");
    let e = refused(&text);
    let msg = e.to_string();
    assert!(msg.contains("unknown field `bitz`"), "{msg}");
    assert!(msg.contains("bits"), "valid keys listed: {msg}");
    let (line, _) = e.line_col.expect("line and column");
    let want = text.lines().position(|l| l.starts_with("bitz")).unwrap() + 1;
    assert_eq!(line, want, "{msg}");
}

#[test]
fn syntax_errors_give_line_and_column() {
    let e = refused(&base().replace("epsilon = 8.0", "epsilon = = 8.0"));
    assert!(e.line_col.is_some(), "{e}");
}

#[test]
fn threshold_above_roster() {
    let e = refused(&base().replace("threshold = 6 ", "threshold = 9 "));
    assert_names(
        &e,
        "consortium.threshold",
        "above the roster size (8 parties); use 2 to 8",
    );
    assert!(e.line_col.is_some());
}

#[test]
fn colluding_at_or_above_threshold() {
    let e = refused(&base().replace("max_colluding = 2 ", "max_colluding = 6 "));
    assert_names(
        &e,
        "consortium.max_colluding",
        "must be below the threshold (6)",
    );
}

#[test]
fn budget_exceeded_by_rounds() {
    let text = base().replace("calibrate = true ", "noise_multiplier = 0.8 ");
    let e = refused(&text);
    assert_names(&e, "privacy.rounds", "reaching the budget");
    assert!(e.to_string().contains("use at most"), "{e}");
}

#[test]
fn bits_too_few() {
    let e = refused(&base().replace("bits = 20", "bits = 8"));
    assert_names(&e, "encoding.bits", "bits are too few");
    let e = refused(&base().replace("bits = 20", "bits = 12\ngamma = 1e-4"));
    assert_names(&e, "encoding.bits", "too few for gamma");
    let e = refused(&base().replace("bits = 20", "bits = 32\ngamma = 0.5"));
    assert_names(&e, "encoding.gamma", "too coarse");
}

#[test]
fn delta_not_far_below_one_over_records() {
    let e = refused(&base().replace("delta = 1e-5", "delta = 1e-3"));
    assert_names(
        &e,
        "privacy.delta",
        "not far below one over the 1440 protected records",
    );
}

#[test]
fn invalid_choices_list_the_valid_ones() {
    let e = refused(&base().replace("unit = \"record\"", "unit = \"row\""));
    assert_names(
        &e,
        "privacy.unit",
        "must be one of \"record\", \"party\", \"none\"",
    );
    let e = refused(&base().replace("accountant = \"zcdp\"", "accountant = \"pld\""));
    assert_names(&e, "privacy.accountant", "\"zcdp\", \"rdp\"");
    let e = refused(&base().replace("rotation = \"hadamard\"", "rotation = \"dct\""));
    assert_names(&e, "encoding.rotation", "\"hadamard\", \"none\"");
    let e = refused(&base().replace("kind = \"fedavg\"", "kind = \"fedprox\""));
    assert_names(&e, "strategy.kind", "fedavg");
}

#[test]
fn out_of_range_numbers() {
    let e = refused(&base().replace("epsilon = 8.0", "epsilon = -1.0"));
    assert_names(&e, "privacy.epsilon", "must be a number in (0, 100]");
    let e = refused(&base().replace("sampling_rate = 1.0", "sampling_rate = 1.5"));
    assert_names(&e, "privacy.sampling_rate", "probability in (0, 1]");
    let e = refused(&base().replace("bits = 20", "bits = 40"));
    assert_names(&e, "encoding.bits", "from 8 to 32");
}

#[test]
fn missing_and_conflicting_noise_settings() {
    let e = refused(&base().replace("calibrate = true ", ""));
    assert_names(&e, "privacy.noise_multiplier", "is required");
    let e = refused(&base().replace(
        "calibrate = true ",
        "calibrate = true\nnoise_multiplier = 2.0 ",
    ));
    assert_names(&e, "privacy.calibrate", "not both");
}

#[test]
fn bad_identity_keys_and_duplicate_ids() {
    let text = base().replacen(
        "b27b0c206468f5085cb0517ba6db28ddba1db1b58fa63c44e2c129755ca463f3",
        "not-a-key",
        1,
    );
    let e = refused(&text);
    assert_names(&e, "party[0].identity_key", "64 hex characters");
    let e = refused(&base().replacen("id = 1\n", "id = 0\n", 1));
    assert_names(&e, "party[1].id", "appears twice");
}

#[test]
fn record_unit_needs_record_counts() {
    let e = refused(&base().replace("records = 180\n", ""));
    assert_names(&e, "party", "needs `records`");
}

#[test]
fn active_mode_needs_a_threshold_that_outweighs_the_colluders() {
    let e = refused(
        &base()
            .replace("threshold = 6 ", "threshold = 4 ")
            .replace("max_colluding = 2 ", "max_colluding = 1 "),
    );
    assert_names(
        &e,
        "consortium.threshold",
        "2·threshold > holders + max_colluding",
    );
    // The split view of the threat model: 8 parties, t = 5, 2 colluders.
    let e = refused(&base().replace("threshold = 6 ", "threshold = 5 "));
    assert_names(&e, "consortium.threshold", "use at least 6");
    // Sparse: 6 neighbours (7 holders), t = 5 and 2 colluders is accepted,
    // 3 colluders is not.
    let sparse = |c: &str| {
        base()
            .replace("threshold = 6 ", "threshold = 5 ")
            .replace("max_colluding = 2 ", &format!("max_colluding = {c} "))
            .replace("neighbors = \"all\"", "neighbors = 6")
    };
    parse(&sparse("2")).unwrap();
    let e = refused(&sparse("3"));
    assert_names(&e, "consortium.threshold", "7 + 3");
}

#[test]
fn calibration_lands_just_under_the_budget() {
    use shroud::dp::plan::{PrivacyPlan, CALIBRATION_MARGIN};
    for file in ["default", "strict"] {
        let p = Policy::load(Path::new(&format!("policies/{file}.toml"))).unwrap();
        let plan = PrivacyPlan::for_policy(&p).unwrap();
        let budget = p.privacy.epsilon;
        // Never on the budget, where another accountant's rounding could
        // tip it over; and not far under it either.
        assert!(
            plan.epsilon_total <= budget * (1.0 - CALIBRATION_MARGIN),
            "{file}: {}",
            plan.epsilon_total
        );
        assert!(
            plan.epsilon_total > 0.998 * budget,
            "{file}: {}",
            plan.epsilon_total
        );
        // The audit's counts are charged inside the budget.
        let audit = plan.audit.as_ref().expect("population attacks");
        let training = *plan.epsilon_by_round.last().unwrap();
        assert!(training < plan.epsilon_total && audit.epsilon_alone > 0.0);
        // ε grows round by round and the discrete pipeline costs no less
        // than the ideal Gaussian.
        assert!(plan.epsilon_by_round.windows(2).all(|w| w[0] < w[1]));
        assert!(plan.epsilon_ideal <= training + 1e-9, "{file}");
    }
}

#[test]
fn fedmr_settings_are_checked_against_the_consortium() {
    let fedmr = |group: usize, extra: &str| {
        common::fedmr_policy_text(&[20; 10], group, 0, 12)
            .replace("[privacy]", &format!("{extra}[privacy]"))
    };
    assert!(parse(&fedmr(3, "")).is_ok());
    // Too few to hide one party's layer among honest members: at least
    // max_colluding + 2, and at least the threshold to sum alone.
    let e = refused(&fedmr(2, ""));
    assert_names(&e, "strategy.group_size", "at least max_colluding + 2");
    assert_names(&e, "strategy.group_size", "use 3 to 5");
    // One group per layer is FedAvg under another name.
    let e = refused(&fedmr(6, ""));
    assert_names(&e, "strategy.group_size", "at most half the roster");
    // A consortium whose threshold exceeds half the roster cannot split.
    let e = refused(&fedmr(3, "").replace("threshold = 3", "threshold = 6"));
    assert_names(&e, "strategy.group_size", "cannot split 10 parties");
    // FedMR keys under FedAvg, and no group size under FedMR.
    let e = refused(&fedmr(3, "").replace("kind = \"fedmr\"", "kind = \"fedavg\""));
    assert_names(&e, "strategy.group_size", "only to kind = \"fedmr\"");
    let e = refused(&fedmr(3, "").replace("group_size = 3\n", ""));
    assert_names(&e, "strategy.group_size", "needs a group size");
    // Active mode: groups of at most half a complete roster cannot reach
    // its threshold (2·threshold > 10 + max_colluding); a sparse graph's
    // smaller neighbourhoods allow them.
    let active = |neighbors: &str, t: u32| {
        fedmr(5, "")
            .replace("active = false", "active = true")
            .replace("neighbors = \"all\"", &format!("neighbors = {neighbors}"))
            .replace("threshold = 3", &format!("threshold = {t}"))
    };
    let e = refused(&active("\"all\"", 5));
    assert_names(&e, "consortium.threshold", "active mode");
    let e = refused(&active("4", 3));
    assert_names(&e, "consortium.threshold", "active mode");
    assert!(parse(&active("4", 4)).is_ok());
}

#[test]
fn reviewers_and_the_sign_off_rule_are_checked() {
    let key = shroud::job::demo_public_key_hex(0);
    let with = |extra: &str, reviewers: &str| {
        base().replace(
            "canaries = \"auto\"",
            &format!("canaries = \"auto\"\n{extra}"),
        ) + reviewers
    };
    let alice =
        format!("\n[[reviewer]]\nid = \"alice\"\nname = \"Alice\"\nidentity_key = \"{key}\"\n");
    assert!(parse(&with("require_sign_off = true", &alice)).is_ok());
    let e = refused(&with("require_sign_off = true", ""));
    assert_names(
        &e,
        "audit.require_sign_off",
        "needs at least one [[reviewer]]",
    );
    let e = refused(&with("", &format!("{alice}{alice}")));
    assert_names(&e, "reviewer[1].id", "appears twice");
    let e = refused(&with("", &alice.replace(&key, "abcd")));
    assert_names(&e, "reviewer[0].identity_key", "64 hex characters");
}

/// `canaries = "auto"` sizes the one-run audit from the policy's ε, δ and
/// confidence: enough that every guess right certifies more than ε, and no
/// more than needed; a word other than "auto" is refused where it stands.
#[test]
fn auto_canaries_are_sized_to_certify_the_policys_epsilon() {
    let p = parse(&base()).unwrap();
    assert!(p.audit.canaries_auto);
    let m = p.audit.canaries as usize;
    let reach = |m: usize| shroud_audit::canary::certifiable_max(m, p.privacy.delta, 0.95);
    assert!(
        reach(m) > p.privacy.epsilon,
        "{m} canaries reach {}",
        reach(m)
    );
    assert!(
        reach(m * 95 / 100) < p.privacy.epsilon * 1.01,
        "{m} is more than needed"
    );
    let e = refused(&base().replace("canaries = \"auto\"", "canaries = \"many\""));
    assert_eq!(e.key, "audit.canaries");
    assert!(e.to_string().contains("\"auto\""), "{e}");
    let fixed = parse(&base().replace("canaries = \"auto\"", "canaries = 300")).unwrap();
    assert_eq!(fixed.audit.canaries, 300);
    assert!(!fixed.audit.canaries_auto);
}
