//! Which targets may serve a request, in the order they should be tried.
//!
//! This is the seam for strategies, breakers and concurrency limits: today a scenario's targets
//! are taken in file order and those that cannot serve at all (no API key) are left out with the
//! reason kept for the error message.

use crate::config::{Scenario, Target};
use crate::error::GatewayError;

pub struct Plan<'a> {
    pub targets: Vec<&'a Target>,
}

fn unusable(target: &Target) -> Option<String> {
    let p = &target.provider;
    if p.api_key.is_none() {
        return Some(format!("provider {} has no api_key", p.name));
    }
    None
}

/// The ordered candidates, or 502 `upstream_error` naming why no target can serve.
pub fn plan(scenario: &Scenario) -> Result<Plan<'_>, GatewayError> {
    let mut reasons = Vec::new();
    let mut targets = Vec::with_capacity(scenario.targets.len());
    for t in &scenario.targets {
        match unusable(t) {
            Some(reason) => reasons.push(reason),
            None => targets.push(t),
        }
    }
    if targets.is_empty() {
        return Err(GatewayError::UpstreamError(format!(
            "no target of scenario {} can serve: {}",
            scenario.name,
            reasons.join("; ")
        )));
    }
    Ok(Plan { targets })
}

/// Whether some target of the scenario could serve now (`/ready`).
pub fn has_usable_target(scenario: &Scenario) -> bool {
    scenario.targets.iter().any(|t| unusable(t).is_none())
}
