//! `privacy:` at every level that may carry it — `defaults`, `providers.X`, `scenarios.X` and a
//! target — resolved into each target's effective setting. The most specific level that says
//! anything decides whether privacy is on (`off` turns it off there); a level that turns it on
//! without naming `detect` or `action` takes them from the less specific levels, else all
//! detectors and `pseudonymize`.

use super::Ctx;
use crate::privacy::detect::{Kind, Kinds};
use crate::privacy::{Action, Privacy};
use serde_json::Value;

/// One level's `privacy:` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Off,
    On {
        kinds: Option<Kinds>,
        action: Option<Action>,
    },
}

const DETECTORS: &str = "cn_mobile, cn_id, bank_card, email, profile_names";

/// Reads one level; problems are reported into `cx` when given (each level is checked once),
/// and the level is then ignored.
pub(super) fn parse(mut cx: Option<&mut Ctx>, key: &str, v: &Value) -> Option<Level> {
    let mut error = |path: String, message: String| {
        if let Some(cx) = cx.as_deref_mut() {
            cx.error(path, message);
        }
    };
    let map = match v {
        Value::String(s) if s == "off" => return Some(Level::Off),
        Value::Bool(false) => return Some(Level::Off),
        Value::Object(map) => map,
        _ => {
            error(
                key.to_owned(),
                "must be `off` or `{detect: [...], action: pseudonymize | mask | block}`".into(),
            );
            return None;
        }
    };
    let mut kinds = None;
    let mut action = None;
    for (k, v) in map {
        match k.as_str() {
            "detect" => {
                let Some(list) = v.as_array() else {
                    error(format!("{key}.detect"), format!("a list of: {DETECTORS}"));
                    return None;
                };
                let mut set = Kinds::default();
                for (i, item) in list.iter().enumerate() {
                    match item.as_str().and_then(Kind::from_config_name) {
                        Some(kind) => set.insert(kind),
                        None => {
                            error(
                                format!("{key}.detect[{i}]"),
                                format!("unknown detector {item}; known: {DETECTORS}"),
                            );
                            return None;
                        }
                    }
                }
                kinds = Some(set);
            }
            "action" => {
                action = match v.as_str() {
                    Some("pseudonymize") => Some(Action::Pseudonymize),
                    Some("mask") => Some(Action::Mask),
                    Some("block") => Some(Action::Block),
                    _ => {
                        error(
                            format!("{key}.action"),
                            "must be pseudonymize, mask or block".into(),
                        );
                        return None;
                    }
                };
            }
            other => {
                error(
                    format!("{key}.{other}"),
                    "unknown key (privacy takes `detect` and `action`, or `off`)".into(),
                );
                return None;
            }
        }
    }
    Some(Level::On { kinds, action })
}

/// The effective setting from the levels, most specific first.
pub(super) fn resolve(levels: &[Option<Level>]) -> Option<Privacy> {
    let mut kinds = None;
    let mut action = None;
    let mut on = false;
    for level in levels.iter().flatten() {
        match level {
            // The most specific level that says anything said `off`.
            Level::Off if !on => return None,
            // `off` below a level that turned privacy on changes nothing.
            Level::Off => {}
            Level::On {
                kinds: k,
                action: a,
            } => {
                on = true;
                kinds = kinds.or(*k);
                action = action.or(*a);
            }
        }
    }
    if !on {
        return None;
    }
    let kinds = kinds.unwrap_or_else(|| Kinds::of(&Kind::ALL));
    if kinds.is_empty() {
        return None;
    }
    Some(Privacy {
        kinds,
        action: action.unwrap_or(Action::Pseudonymize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn level(v: Value) -> Option<Level> {
        parse(None, "privacy", &v)
    }

    #[test]
    fn the_most_specific_level_decides_and_borrows_what_it_leaves_out() {
        let scenario = level(json!({"detect": ["cn_mobile"], "action": "mask"}));
        let target = level(json!({"action": "pseudonymize"}));
        let p = resolve(&[target, None, scenario, None]).unwrap();
        assert_eq!(p.action, Action::Pseudonymize);
        assert!(p.kinds.contains(Kind::Phone) && !p.kinds.contains(Kind::Email));
        assert_eq!(resolve(&[level(json!("off")), None, scenario, None]), None);
        // `off` below an enabled level does not turn it off.
        let p = resolve(&[target, level(json!("off")), None, None]).unwrap();
        assert_eq!(p.kinds, Kinds::of(&Kind::ALL));
        assert_eq!(resolve(&[None, None, None, None]), None);
    }

    #[test]
    fn bad_levels_are_ignored_without_a_context() {
        assert_eq!(level(json!({"detect": ["passport"]})), None);
        assert_eq!(level(json!({"action": "hide"})), None);
        assert_eq!(level(json!(3)), None);
    }
}
