//! All network I/O of a node: the gossip socket ([`gossip`]) and the internode transport
//! ([`transport`]). Nothing else in Cohort opens a socket to a peer, so a simulated network can
//! replace this module in tests.
//!
//! Every datagram and frame that crosses this module passes the node's [`FaultInjector`] (SPEC
//! 5.3). With chaos disabled the injector is a `None` and costs one branch; with chaos enabled it
//! reads the current [`crate::faults::FaultPlan`] through an `ArcSwap` (no lock).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::faults::{Direction, FaultPlan, FaultRuleError, FaultRules, Verdict};

pub mod gossip;
pub mod transport;

/// The node's fault filter. Cheap to clone; all clones share one plan.
#[derive(Clone, Default)]
pub struct FaultInjector {
    /// `None` when chaos is disabled: every packet passes, the plan is never read.
    plan: Option<Arc<ArcSwap<FaultPlan>>>,
}

/// Why a fault plan could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum FaultInstallError {
    /// Chaos mode is off on this node.
    #[error("chaos is not enabled on this node")]
    ChaosDisabled,
    /// The rules are invalid.
    #[error(transparent)]
    Invalid(#[from] FaultRuleError),
}

impl FaultInjector {
    /// An injector that lets everything pass and cannot be changed (chaos disabled).
    pub fn disabled() -> Self {
        Self { plan: None }
    }

    /// An injector that starts with no rules and accepts [`FaultInjector::install`] (chaos enabled).
    pub fn enabled() -> Self {
        Self { plan: Some(Arc::new(ArcSwap::from_pointee(FaultPlan::empty()))) }
    }

    /// Whether chaos is enabled.
    pub fn is_enabled(&self) -> bool {
        self.plan.is_some()
    }

    /// Replace the rules.
    pub fn install(&self, rules: FaultRules) -> Result<(), FaultInstallError> {
        let plan = self.plan.as_ref().ok_or(FaultInstallError::ChaosDisabled)?;
        plan.store(Arc::new(FaultPlan::new(rules)?));
        Ok(())
    }

    /// Remove every rule.
    pub fn clear(&self) -> Result<(), FaultInstallError> {
        let plan = self.plan.as_ref().ok_or(FaultInstallError::ChaosDisabled)?;
        plan.store(Arc::new(FaultPlan::empty()));
        Ok(())
    }

    /// The rules in force (empty when disabled).
    pub fn rules(&self) -> FaultRules {
        match &self.plan {
            Some(p) => FaultRules { rules: p.load().rules().to_vec() },
            None => FaultRules::default(),
        }
    }

    /// What to do with a packet to (`Out`) or from (`In`) the peer named `peer`.
    #[inline]
    pub fn decide(&self, peer: &str, direction: Direction) -> Verdict {
        match &self.plan {
            None => Verdict::Pass,
            Some(plan) => {
                let plan = plan.load();
                if plan.is_empty() { Verdict::Pass } else { plan.decide_with(peer, direction, &mut rand::rng()) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultRule;

    #[test]
    fn disabled_injector_passes_everything_and_refuses_rules() {
        let f = FaultInjector::disabled();
        assert_eq!(f.decide("b", Direction::Out), Verdict::Pass);
        assert!(matches!(f.install(FaultRules::default()), Err(FaultInstallError::ChaosDisabled)));
    }

    #[test]
    fn installed_partition_drops_and_clear_heals() {
        let f = FaultInjector::enabled();
        let mut rule = FaultRule::new("b", Direction::Both);
        rule.drop = 1.0;
        f.install(FaultRules { rules: vec![rule] }).unwrap();
        let clone = f.clone();
        assert_eq!(clone.decide("b", Direction::In), Verdict::Drop);
        assert_eq!(clone.decide("c", Direction::In), Verdict::Pass);
        f.clear().unwrap();
        assert_eq!(clone.decide("b", Direction::In), Verdict::Pass);
    }
}
