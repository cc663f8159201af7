//! Per-model state for a target without a configured `model`: such a target forwards whatever
//! model the client names, and the upstream limits, fails and answers per model. One shared
//! breaker would let a 429 or an outage of one model refuse every other model on that target
//! without asking the upstream, so each model name gets its own state.
//!
//! Model names come from clients, so they are bounded: at most [`MAX_MODELS`] per target; later
//! names share the target's own state (`provider/-`), which stays the overflow slot. A per-model
//! state is listed in the router's map under `provider/<model>` (for `/admin/providers` and the
//! `circuit_state` series) and indexed by name under its target's state, so a request finds it
//! with one lookup by the name it already has, without building a key. When a target also
//! configures that model explicitly on the same provider, both are one upstream model and share
//! one state.

use super::{refresh, Router, TargetState};
use crate::config::{ProviderKind, Target};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Model names tracked separately per target; bounds memory and metric series.
pub(super) const MAX_MODELS: usize = 64;

/// Whether the client's model is what the target sends to an upstream that limits and fails per
/// model. A Dify app has its own model; the built-in mock only reports the name, and its faults
/// are settings of the whole provider: both stay one state whatever the client names.
fn forwards_client_model(t: &Target) -> bool {
    t.model.is_none() && matches!(t.provider.kind, ProviderKind::OpenAi)
}

impl Router {
    /// The state a request for `model` uses on `t`: the model's own state when `t` forwards it,
    /// else the target's.
    pub(super) fn state_for(&self, t: &Target, model: Option<&str>) -> Arc<TargetState> {
        let mut map = self.targets.lock();
        let target = self.state_in(&mut map, t);
        let Some(model) = model.filter(|m| !m.is_empty() && forwards_client_model(t)) else {
            return target;
        };
        let mut models = target.models.lock();
        if let Some(s) = models.get(model) {
            refresh(s, t);
            return s.clone();
        }
        if models.len() >= MAX_MODELS {
            drop(models);
            return target;
        }
        // First request for this name: the only path that allocates.
        let key = format!("{}/{model}", t.provider.name);
        let s = match map.get(&key).filter(|s| s.endpoint == target.endpoint) {
            Some(configured) => configured.clone(),
            None => {
                let s = self.new_state(t, model.to_owned(), target.endpoint.clone());
                map.insert(key, s.clone());
                s
            }
        };
        models.insert(model.to_owned(), s.clone());
        s
    }
}

/// The per-model states of the targets `sync` keeps (same key, same endpoint): they are kept
/// too, whatever their own key says.
pub(super) fn of_live_targets(
    map: &HashMap<String, Arc<TargetState>>,
    live: &HashMap<String, String>,
) -> HashSet<*const TargetState> {
    map.iter()
        .filter(|(key, s)| live.get(*key) == Some(&s.endpoint))
        .flat_map(|(_, s)| {
            s.models
                .lock()
                .values()
                .map(Arc::as_ptr)
                .collect::<Vec<_>>()
        })
        .collect()
}
