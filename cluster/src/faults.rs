//! Fault injection rules for chaos testing (SPEC sections 5.3 and 9.2).
//!
//! Role: hold the rules set through `POST /admin/faults` and decide, for each gossip datagram or
//! internode frame to or from a peer, whether it passes, is dropped, or is delayed. The node's
//! transport and membership actor ask [`FaultPlan::decide`] (or [`FaultPlan::decide_with`]) and
//! carry out the [`Verdict`]; this module does no I/O, reads no clock, and takes its randomness
//! from the caller so tests are deterministic.
//!
//! How rules combine: every rule whose `peer` equals the peer's node name and whose direction
//! covers the packet's direction applies. Their drop probabilities combine as independent drops,
//! `1 - (1 - drop_1)(1 - drop_2)...` (so any `drop = 1.0` partitions); their `delay_ms` add up and
//! their `jitter_ms` add up. No matching rule means [`Verdict::Pass`].
//!
//! Invariants: a [`FaultPlan`] only holds rules that passed [`FaultRules::validate`] (at most
//! [`MAX_FAULT_RULES`] rules, `drop` in `[0, 1]`, delays and jitters at most
//! [`MAX_FAULT_DELAY_MS`], a non-empty peer name); deserialising a body refuses more than
//! [`MAX_FAULT_RULES`] rules while reading, before storing more; the empty plan answers
//! [`Verdict::Pass`] without looking at anything; no input makes it panic.

use std::fmt;
use std::time::Duration;

use rand::{Rng, RngExt};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

/// The most rules one plan holds.
///
/// Why: a chaos scenario needs a rule or two per peer; 256 covers a 128-node cluster with one
/// rule per direction, and bounds the per-packet scan and the memory one admin request can claim.
pub const MAX_FAULT_RULES: usize = 256;

/// The largest `delay_ms` or `jitter_ms` of one rule: 60 s.
///
/// Why: longer than any failure-detection or raft timeout, so it can simulate any slow link;
/// beyond it a "delay" is a partition and should be written as `drop: 1.0` instead of holding
/// delayed packets (and their memory) for minutes.
pub const MAX_FAULT_DELAY_MS: u64 = 60_000;

/// The longest peer node name in a rule, in bytes (the handshake's name bound).
pub const MAX_PEER_NAME_BYTES: usize = 255;

/// Which traffic a rule applies to, seen from this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Packets received from the peer.
    In,
    /// Packets sent to the peer.
    Out,
    /// Both (the default: a partition from the peer).
    #[default]
    Both,
}

impl Direction {
    /// The JSON spelling: `"in"`, `"out"` or `"both"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Both => "both",
        }
    }

    /// Whether a rule with this direction applies to a packet going `packet`.
    ///
    /// `Both` covers everything; `In` and `Out` cover themselves only (so a query with `Both`
    /// matches only `Both` rules).
    pub const fn covers(self, packet: Direction) -> bool {
        matches!(
            (self, packet),
            (Direction::Both, _) | (Direction::In, Direction::In) | (Direction::Out, Direction::Out)
        )
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule of the `POST /admin/faults` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// The peer's node name.
    pub peer: String,
    /// Which traffic with the peer the rule applies to (default `both`).
    #[serde(default)]
    pub direction: Direction,
    /// The probability in `[0, 1]` of dropping a packet (default 0; 1 = partition).
    #[serde(default)]
    pub drop: f64,
    /// A fixed delay added to every packet that is not dropped, in milliseconds (default 0).
    #[serde(default)]
    pub delay_ms: u64,
    /// A random extra delay in `[0, jitter_ms]` milliseconds (default 0).
    #[serde(default)]
    pub jitter_ms: u64,
}

impl FaultRule {
    /// A rule for `peer` in `direction` that does nothing until its fields are set.
    pub fn new(peer: impl Into<String>, direction: Direction) -> Self {
        Self { peer: peer.into(), direction, drop: 0.0, delay_ms: 0, jitter_ms: 0 }
    }

    /// Whether the rule applies to a packet with `peer` going `direction`.
    pub fn matches(&self, peer: &str, direction: Direction) -> bool {
        self.peer == peer && self.direction.covers(direction)
    }
}

/// The body of `POST /admin/faults`: `{"rules":[...]}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRules {
    /// The rules, in order; at most [`MAX_FAULT_RULES`] (enforced while deserialising).
    #[serde(default, deserialize_with = "bounded_rules")]
    pub rules: Vec<FaultRule>,
}

/// A rule set refused by [`FaultRules::validate`]; [`field`](Self::field) names the bad field as
/// a JSON path (`rules[2].drop`).
#[derive(Clone, Debug, PartialEq, Error)]
pub enum FaultRuleError {
    /// More than [`MAX_FAULT_RULES`] rules.
    #[error("rules: {count} rules, at most {max} are accepted")]
    TooManyRules {
        /// The number of rules given.
        count: usize,
        /// [`MAX_FAULT_RULES`].
        max: usize,
    },
    /// A `peer` is empty or longer than [`MAX_PEER_NAME_BYTES`].
    #[error("rules[{index}].peer: must be a node name of 1..={max} bytes, is {len} bytes")]
    BadPeer {
        /// The rule's position.
        index: usize,
        /// The name's length in bytes.
        len: usize,
        /// [`MAX_PEER_NAME_BYTES`].
        max: usize,
    },
    /// A `drop` outside `[0, 1]` or NaN.
    #[error("rules[{index}].drop: {value} is not a probability in [0, 1]")]
    BadDrop {
        /// The rule's position.
        index: usize,
        /// The value given.
        value: f64,
    },
    /// A `delay_ms` above [`MAX_FAULT_DELAY_MS`].
    #[error("rules[{index}].delay_ms: {value} is above the maximum of {max}")]
    DelayTooLarge {
        /// The rule's position.
        index: usize,
        /// The value given.
        value: u64,
        /// [`MAX_FAULT_DELAY_MS`].
        max: u64,
    },
    /// A `jitter_ms` above [`MAX_FAULT_DELAY_MS`].
    #[error("rules[{index}].jitter_ms: {value} is above the maximum of {max}")]
    JitterTooLarge {
        /// The rule's position.
        index: usize,
        /// The value given.
        value: u64,
        /// [`MAX_FAULT_DELAY_MS`].
        max: u64,
    },
}

impl FaultRuleError {
    /// The JSON path of the bad field, e.g. `rules[2].drop`, for the admin API's `detail`.
    pub fn field(&self) -> String {
        match self {
            FaultRuleError::TooManyRules { .. } => "rules".to_owned(),
            FaultRuleError::BadPeer { index, .. } => format!("rules[{index}].peer"),
            FaultRuleError::BadDrop { index, .. } => format!("rules[{index}].drop"),
            FaultRuleError::DelayTooLarge { index, .. } => format!("rules[{index}].delay_ms"),
            FaultRuleError::JitterTooLarge { index, .. } => format!("rules[{index}].jitter_ms"),
        }
    }
}

impl FaultRules {
    /// Checks every bound; the first bad field is reported.
    pub fn validate(&self) -> Result<(), FaultRuleError> {
        if self.rules.len() > MAX_FAULT_RULES {
            return Err(FaultRuleError::TooManyRules { count: self.rules.len(), max: MAX_FAULT_RULES });
        }
        for (index, rule) in self.rules.iter().enumerate() {
            let len = rule.peer.len();
            if len == 0 || len > MAX_PEER_NAME_BYTES {
                return Err(FaultRuleError::BadPeer { index, len, max: MAX_PEER_NAME_BYTES });
            }
            if !(0.0..=1.0).contains(&rule.drop) {
                return Err(FaultRuleError::BadDrop { index, value: rule.drop });
            }
            if rule.delay_ms > MAX_FAULT_DELAY_MS {
                return Err(FaultRuleError::DelayTooLarge { index, value: rule.delay_ms, max: MAX_FAULT_DELAY_MS });
            }
            if rule.jitter_ms > MAX_FAULT_DELAY_MS {
                return Err(FaultRuleError::JitterTooLarge { index, value: rule.jitter_ms, max: MAX_FAULT_DELAY_MS });
            }
        }
        Ok(())
    }
}

/// Deserialises `rules`, refusing the element after the [`MAX_FAULT_RULES`]th instead of storing
/// an unbounded list first and validating it afterwards.
fn bounded_rules<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<FaultRule>, D::Error> {
    struct BoundedRules;

    impl<'de> Visitor<'de> for BoundedRules {
        type Value = Vec<FaultRule>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {MAX_FAULT_RULES} fault rules")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut rules = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_FAULT_RULES));
            while let Some(rule) = seq.next_element::<FaultRule>()? {
                if rules.len() == MAX_FAULT_RULES {
                    return Err(de::Error::custom(format_args!(
                        "rules: more than {MAX_FAULT_RULES} rules are not accepted"
                    )));
                }
                rules.push(rule);
            }
            Ok(rules)
        }
    }

    deserializer.deserialize_seq(BoundedRules)
}

/// What to do with one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it now.
    Pass,
    /// Drop it (count it as a fault-injected drop).
    Drop,
    /// Deliver it after this delay.
    Delay(Duration),
}

/// A validated set of fault rules, consulted for every packet while chaos is enabled.
///
/// ```
/// use cohort_cluster::faults::{Direction, FaultPlan, FaultRules, Verdict};
///
/// let body = r#"{"rules":[{"peer":"beta","direction":"in","drop":1.0}]}"#;
/// let rules: FaultRules = serde_json::from_str(body).unwrap();
/// let plan = FaultPlan::new(rules).unwrap();
/// assert_eq!(plan.decide("beta", Direction::In, 0.99, 0.0), Verdict::Drop);
/// assert_eq!(plan.decide("beta", Direction::Out, 0.0, 0.0), Verdict::Pass);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    rules: Vec<FaultRule>,
}

impl FaultPlan {
    /// A plan from rules that pass [`FaultRules::validate`].
    pub fn new(rules: FaultRules) -> Result<Self, FaultRuleError> {
        rules.validate()?;
        Ok(Self { rules: rules.rules })
    }

    /// The plan with no rules: everything passes.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Whether the plan has no rules (every packet passes).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, in the order given.
    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    /// The verdict for a packet with `peer` going `direction`, given two uniform samples in
    /// `[0, 1)` from the caller: the packet is dropped when `drop_sample` is below the combined
    /// drop probability (always when it is 1, never when it is 0), else delayed by the summed
    /// `delay_ms` plus `jitter_sample` times the summed `jitter_ms` (rounded down). Samples
    /// outside `[0, 1]` are clamped; a NaN sample counts as 0.
    pub fn decide(&self, peer: &str, direction: Direction, drop_sample: f64, jitter_sample: f64) -> Verdict {
        if self.rules.is_empty() {
            return Verdict::Pass;
        }
        let mut pass_probability = 1.0f64;
        let mut delay_ms = 0u64;
        let mut jitter_ms = 0u64;
        let mut matched = false;
        for rule in self.rules.iter().filter(|rule| rule.matches(peer, direction)) {
            matched = true;
            pass_probability *= 1.0 - rule.drop.clamp(0.0, 1.0);
            delay_ms = delay_ms.saturating_add(rule.delay_ms);
            jitter_ms = jitter_ms.saturating_add(rule.jitter_ms);
        }
        if !matched {
            return Verdict::Pass;
        }
        let drop_probability = 1.0 - pass_probability;
        if drop_probability >= 1.0 || (drop_probability > 0.0 && unit(drop_sample) < drop_probability) {
            return Verdict::Drop;
        }
        // jitter_ms <= MAX_FAULT_RULES * MAX_FAULT_DELAY_MS, far below 2^53: exact in an f64.
        let jitter = ((jitter_ms as f64) * unit(jitter_sample)).floor() as u64;
        let total_ms = delay_ms.saturating_add(jitter.min(jitter_ms));
        if total_ms == 0 { Verdict::Pass } else { Verdict::Delay(Duration::from_millis(total_ms)) }
    }

    /// [`decide`](Self::decide) with samples drawn from `rng` (only when a rule matches, so the
    /// empty plan costs nothing).
    pub fn decide_with<R: Rng + ?Sized>(&self, peer: &str, direction: Direction, rng: &mut R) -> Verdict {
        if !self.rules.iter().any(|rule| rule.matches(peer, direction)) {
            return Verdict::Pass;
        }
        let drop_sample: f64 = rng.random();
        let jitter_sample: f64 = rng.random();
        self.decide(peer, direction, drop_sample, jitter_sample)
    }
}

impl TryFrom<FaultRules> for FaultPlan {
    type Error = FaultRuleError;

    fn try_from(rules: FaultRules) -> Result<Self, Self::Error> {
        Self::new(rules)
    }
}

/// Clamps a sample into `[0, 1]`, NaN to 0.
fn unit(sample: f64) -> f64 {
    if sample.is_nan() { 0.0 } else { sample.clamp(0.0, 1.0) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn plan(rules: Vec<FaultRule>) -> FaultPlan {
        FaultPlan::new(FaultRules { rules }).unwrap()
    }

    fn rule(peer: &str, direction: Direction, drop: f64, delay_ms: u64, jitter_ms: u64) -> FaultRule {
        FaultRule { peer: peer.to_owned(), direction, drop, delay_ms, jitter_ms }
    }

    const SAMPLES: [f64; 6] = [0.0, 0.1, 0.5, 0.9, 0.999_999, 1.0];

    #[test]
    fn spec_example_body_parses() {
        let body = r#"{"rules":[
            {"peer":"beta","direction":"in","drop":1.0,"delay_ms":0,"jitter_ms":0},
            {"peer":"gamma","direction":"both","drop":0.25,"delay_ms":200,"jitter_ms":100},
            {"peer":"delta","direction":"out"}
        ]}"#;
        let rules: FaultRules = serde_json::from_str(body).unwrap();
        assert_eq!(
            rules.rules,
            [
                rule("beta", Direction::In, 1.0, 0, 0),
                rule("gamma", Direction::Both, 0.25, 200, 100),
                rule("delta", Direction::Out, 0.0, 0, 0),
            ]
        );
        assert!(FaultPlan::try_from(rules).is_ok());
        let empty: FaultRules = serde_json::from_str(r#"{"rules":[]}"#).unwrap();
        assert!(FaultPlan::new(empty).unwrap().is_empty());
    }

    #[test]
    fn unknown_fields_and_bad_directions_are_refused_while_parsing() {
        assert!(serde_json::from_str::<FaultRules>(r#"{"rules":[{"peer":"b","delay":5}]}"#).is_err());
        assert!(serde_json::from_str::<FaultRules>(r#"{"rules":[{"peer":"b","direction":"up"}]}"#).is_err());
        assert!(serde_json::from_str::<FaultRules>(r#"{"rules":[{"peer":"b","delay_ms":-1}]}"#).is_err());
    }

    #[test]
    fn more_than_max_rules_are_refused_while_parsing() {
        let one = r#"{"peer":"b"}"#;
        let body = |n: usize| format!(r#"{{"rules":[{}]}}"#, vec![one; n].join(","));
        assert_eq!(serde_json::from_str::<FaultRules>(&body(MAX_FAULT_RULES)).unwrap().rules.len(), MAX_FAULT_RULES);
        let error = serde_json::from_str::<FaultRules>(&body(MAX_FAULT_RULES + 1)).unwrap_err();
        assert!(error.to_string().contains("rules: more than 256"), "{error}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            (rule("b", Direction::In, 1.5, 0, 0), "rules[1].drop"),
            (rule("b", Direction::In, -0.1, 0, 0), "rules[1].drop"),
            (rule("b", Direction::In, f64::NAN, 0, 0), "rules[1].drop"),
            (rule("", Direction::In, 0.0, 0, 0), "rules[1].peer"),
            (rule(&"x".repeat(256), Direction::In, 0.0, 0, 0), "rules[1].peer"),
            (rule("b", Direction::In, 0.0, MAX_FAULT_DELAY_MS + 1, 0), "rules[1].delay_ms"),
            (rule("b", Direction::In, 0.0, 0, MAX_FAULT_DELAY_MS + 1), "rules[1].jitter_ms"),
        ];
        for (bad, field) in cases {
            let rules = FaultRules { rules: vec![rule("ok", Direction::Both, 0.5, 10, 10), bad] };
            let error = FaultPlan::new(rules).unwrap_err();
            assert_eq!(error.field(), field);
            assert!(error.to_string().starts_with(field), "{error}");
        }
        let too_many = FaultRules { rules: vec![rule("b", Direction::In, 0.0, 0, 0); MAX_FAULT_RULES + 1] };
        assert_eq!(too_many.validate().unwrap_err().field(), "rules");
    }

    #[test]
    fn partition_drops_everything_in_the_configured_direction_only() {
        let plan = plan(vec![rule("beta", Direction::In, 1.0, 0, 0)]);
        for sample in SAMPLES {
            assert_eq!(plan.decide("beta", Direction::In, sample, sample), Verdict::Drop);
            assert_eq!(plan.decide("beta", Direction::Out, sample, sample), Verdict::Pass);
            assert_eq!(plan.decide("gamma", Direction::In, sample, sample), Verdict::Pass);
        }
    }

    #[test]
    fn both_direction_covers_in_and_out() {
        let plan = plan(vec![rule("beta", Direction::Both, 1.0, 0, 0)]);
        for sample in SAMPLES {
            assert_eq!(plan.decide("beta", Direction::In, sample, 0.0), Verdict::Drop);
            assert_eq!(plan.decide("beta", Direction::Out, sample, 0.0), Verdict::Drop);
        }
        assert!(!Direction::In.covers(Direction::Both));
    }

    #[test]
    fn drop_probability_compares_with_the_callers_sample() {
        let plan = plan(vec![rule("beta", Direction::Out, 0.3, 0, 0)]);
        assert_eq!(plan.decide("beta", Direction::Out, 0.29, 0.0), Verdict::Drop);
        assert_eq!(plan.decide("beta", Direction::Out, 0.31, 0.0), Verdict::Pass);
        let never = self::plan(vec![rule("beta", Direction::Out, 0.0, 0, 0)]);
        assert_eq!(never.decide("beta", Direction::Out, 0.0, 0.0), Verdict::Pass);
    }

    #[test]
    fn delay_lies_within_delay_plus_jitter() {
        let plan = plan(vec![rule("beta", Direction::Both, 0.0, 200, 100)]);
        assert_eq!(plan.decide("beta", Direction::In, 0.5, 0.0), Verdict::Delay(Duration::from_millis(200)));
        assert_eq!(plan.decide("beta", Direction::In, 0.5, 0.5), Verdict::Delay(Duration::from_millis(250)));
        assert_eq!(plan.decide("beta", Direction::In, 0.5, 1.0), Verdict::Delay(Duration::from_millis(300)));
        assert_eq!(plan.decide("beta", Direction::In, 0.5, 7.0), Verdict::Delay(Duration::from_millis(300)));
        assert_eq!(plan.decide("beta", Direction::In, 0.5, f64::NAN), Verdict::Delay(Duration::from_millis(200)));
    }

    #[test]
    fn matching_rules_combine_drops_independently_and_add_delays() {
        let plan = plan(vec![
            rule("beta", Direction::In, 0.5, 100, 10),
            rule("beta", Direction::Both, 0.5, 50, 0),
            rule("beta", Direction::Out, 1.0, 0, 0),
        ]);
        // Combined drop for `in`: 1 - 0.5 * 0.5 = 0.75.
        assert_eq!(plan.decide("beta", Direction::In, 0.74, 0.0), Verdict::Drop);
        assert_eq!(plan.decide("beta", Direction::In, 0.76, 0.0), Verdict::Delay(Duration::from_millis(150)));
        assert_eq!(plan.decide("beta", Direction::In, 0.76, 1.0), Verdict::Delay(Duration::from_millis(160)));
        assert_eq!(plan.decide("beta", Direction::Out, 0.99, 0.0), Verdict::Drop);
    }

    #[test]
    fn empty_plan_passes_everything() {
        let plan = FaultPlan::empty();
        assert!(plan.is_empty());
        assert_eq!(plan.decide("beta", Direction::In, 0.0, 0.0), Verdict::Pass);
        assert_eq!(plan.decide_with("beta", Direction::Out, &mut StdRng::seed_from_u64(0)), Verdict::Pass);
    }

    #[test]
    fn decide_with_a_seeded_rng_is_deterministic_and_partitions() {
        let plan = plan(vec![rule("beta", Direction::In, 1.0, 0, 0), rule("gamma", Direction::Out, 0.5, 10, 5)]);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            assert_eq!(plan.decide_with("beta", Direction::In, &mut rng), Verdict::Drop);
        }
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..100).map(|_| plan.decide_with("gamma", Direction::Out, &mut rng)).collect::<Vec<_>>()
        };
        let verdicts = run(3);
        assert_eq!(verdicts, run(3));
        let drops = verdicts.iter().filter(|v| **v == Verdict::Drop).count();
        assert!((20..=80).contains(&drops), "about half of 100 dropped, got {drops}");
    }

    proptest! {
        #[test]
        fn verdict_stays_within_the_rules_for_any_samples(
            drop in 0.0..=1.0f64,
            delay in 0..=MAX_FAULT_DELAY_MS,
            jitter in 0..=MAX_FAULT_DELAY_MS,
            drop_sample in prop_oneof![any::<f64>(), 0.0..1.0f64],
            jitter_sample in prop_oneof![any::<f64>(), 0.0..1.0f64],
        ) {
            let plan = plan(vec![rule("beta", Direction::Both, drop, delay, jitter)]);
            match plan.decide("beta", Direction::In, drop_sample, jitter_sample) {
                Verdict::Drop => prop_assert!(drop > 0.0),
                Verdict::Pass => prop_assert!(drop < 1.0 && delay == 0),
                Verdict::Delay(d) => {
                    prop_assert!(drop < 1.0);
                    let ms = d.as_millis() as u64;
                    prop_assert!(ms >= delay && ms <= delay + jitter, "{ms} outside [{delay}, {}]", delay + jitter);
                }
            }
        }
    }
}
