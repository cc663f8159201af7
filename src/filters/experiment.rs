//! Which variant of an experiment serves a request: a forced variant (a `pick_variant` client's
//! `x-gateway-variant` header), else a stable hash of the experiment's name and the request's
//! sticky key (its `user`, its session, or nothing) mapped onto the variants' cumulative weights.
//!
//! The hash is SHA-256 (never a per-process seeded hasher), so the same user lands in the same
//! variant on every replica and after every restart. A weight change moves only the users whose
//! point lies between the old and the new boundary.

use crate::config::{Client, Experiment, Sticky, Variant};
use crate::error::GatewayError;
use sha2::{Digest, Sha256};

/// The request header that forces a variant.
pub const HEADER: &str = "x-gateway-variant";

/// What a request carries that stickiness may use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keys<'a> {
    /// The request's `user` (OpenAI `user`, Anthropic `metadata.user_id`).
    pub user: Option<&'a str>,
    /// `metadata.session_id`, else the `x-gateway-session` header.
    pub session: Option<&'a str>,
}

/// The value the assignment hashes, or `None` for a draw per request: `user` falls back to the
/// session, then to a draw; `session` falls back to a draw; `request` always draws.
pub fn sticky_key<'a>(sticky: Sticky, keys: Keys<'a>) -> Option<&'a str> {
    let present = |v: Option<&'a str>| v.filter(|v| !v.is_empty());
    match sticky {
        Sticky::User => present(keys.user).or(present(keys.session)),
        Sticky::Session => present(keys.session),
        Sticky::Request => None,
    }
}

/// A point in [0, 1) for `key` in `experiment`: the first 53 bits of
/// SHA-256(experiment name, NUL, key), so every f64 step is equally likely.
pub fn point(experiment: &str, key: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(experiment.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The variant whose share of the cumulative weights holds `point` (in [0, 1)). Variants of
/// weight zero are never drawn.
pub fn at(e: &Experiment, point: f64) -> usize {
    let total: f64 = e.variants.iter().map(|v| v.weight).sum();
    let target = point * total;
    let mut upper = 0.0;
    let mut last = 0;
    for (i, v) in e.variants.iter().enumerate() {
        if v.weight <= 0.0 {
            continue;
        }
        upper += v.weight;
        last = i;
        if target < upper {
            return i;
        }
    }
    // Rounding at the very top of the range: the last variant that has a share.
    last
}

/// The variant serving this request. `forced` is the header's value: only a client with
/// `pick_variant: true` may send it (403 otherwise, whatever the scenario); a name the
/// experiment does not have is a 400 listing the valid ones.
pub fn choose<'e>(
    e: &'e Experiment,
    keys: Keys<'_>,
    forced: Option<&str>,
) -> Result<&'e Variant, GatewayError> {
    if let Some(name) = forced {
        return e.variant(name).ok_or_else(|| unknown(e, name));
    }
    let p = match sticky_key(e.sticky, keys) {
        Some(key) => point(&e.name, key),
        None => fastrand::f64(),
    };
    Ok(&e.variants[at(e, p)])
}

/// 403 for a forced variant from a client that may not force one.
pub fn check_forcing(client: Option<&Client>, forced: Option<&str>) -> Result<(), GatewayError> {
    if forced.is_none() || client.is_some_and(|c| c.pick_variant) {
        return Ok(());
    }
    Err(GatewayError::Mapped {
        status: 403,
        message: format!(
            "this API key may not choose an experiment variant (header {HEADER}); \
             the client needs `pick_variant: true`"
        ),
        error_type: "permission_error".into(),
        code: "variant_forbidden".into(),
        param: None,
        should_retry: Some(false),
        retry_after: None,
    })
}

fn unknown(e: &Experiment, name: &str) -> GatewayError {
    let valid = e
        .variants
        .iter()
        .map(|v| v.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    // The client's value is echoed only when it is short printable text.
    let shown = if name.len() <= 64 && name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        format!("{name:?}")
    } else {
        "in the header".to_owned()
    };
    GatewayError::Mapped {
        status: 400,
        message: format!(
            "unknown variant {shown} of experiment {} (header {HEADER}); valid: {valid}",
            e.name
        ),
        error_type: "invalid_request_error".into(),
        code: "unknown_variant".into(),
        param: None,
        should_retry: Some(false),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn experiment(weights: (u32, u32), sticky: &str) -> Config {
        let yaml = format!(
            "providers:\n  m: {{ type: mock }}\nscenarios:\n  s:\n    experiment:\n      name: exp\n      sticky: {sticky}\n      variants:\n        - {{ name: a, weight: {}, targets: [{{ provider: m }}] }}\n        - {{ name: b, weight: {}, targets: [{{ provider: m }}] }}\n",
            weights.0, weights.1
        );
        Config::from_str_at(&yaml, Path::new("t.yaml")).unwrap()
    }

    fn exp(cfg: &Config) -> &Experiment {
        cfg.scenarios[0].experiment.as_ref().unwrap()
    }

    fn user(u: &str) -> Keys<'_> {
        Keys {
            user: Some(u),
            session: None,
        }
    }

    #[test]
    fn points_are_stable_and_spread() {
        assert_eq!(point("exp", "alice"), point("exp", "alice"));
        assert_ne!(point("exp", "alice"), point("other", "alice"));
        let below: usize = (0..10_000)
            .filter(|i| point("exp", &format!("user-{i}")) < 0.5)
            .count();
        assert!((4_800..5_200).contains(&below), "{below}");
        assert!((0..1000).all(|i| (0.0..1.0).contains(&point("e", &i.to_string()))));
    }

    #[test]
    fn the_same_user_keeps_its_variant_and_a_weight_change_moves_only_some() {
        let even = experiment((50, 50), "user");
        let more_a = experiment((60, 40), "user");
        let mut moved = 0;
        for i in 0..2_000 {
            let id = format!("u{i}");
            let before = choose(exp(&even), user(&id), None).unwrap();
            assert_eq!(
                before.name,
                choose(exp(&even), user(&id), None).unwrap().name
            );
            let after = choose(exp(&more_a), user(&id), None).unwrap();
            if before.name == "a" {
                assert_eq!(after.name, "a", "a grows: none of its users leaves");
            } else if after.name == "a" {
                moved += 1;
            }
        }
        // About a tenth of all users sit between 0.5 and 0.6.
        assert!((120..280).contains(&moved), "{moved}");
    }

    #[test]
    fn stickiness_falls_back_as_documented() {
        let both = Keys {
            user: Some("u"),
            session: Some("s"),
        };
        let session_only = Keys {
            user: None,
            session: Some("s"),
        };
        assert_eq!(sticky_key(Sticky::User, both), Some("u"));
        assert_eq!(sticky_key(Sticky::User, session_only), Some("s"));
        assert_eq!(sticky_key(Sticky::User, Keys::default()), None);
        assert_eq!(sticky_key(Sticky::Session, both), Some("s"));
        assert_eq!(sticky_key(Sticky::Session, user("u")), None);
        assert_eq!(sticky_key(Sticky::Request, both), None);
        assert_eq!(
            sticky_key(
                Sticky::User,
                Keys {
                    user: Some(""),
                    session: None
                }
            ),
            None
        );
    }

    #[test]
    fn zero_weight_variants_are_only_reached_by_forcing() {
        let cfg = experiment((0, 1), "request");
        let e = exp(&cfg);
        assert!((0..200).all(|_| choose(e, Keys::default(), None).unwrap().name == "b"));
        assert_eq!(at(e, 0.0), 1);
        assert_eq!(choose(e, Keys::default(), Some("a")).unwrap().name, "a");
        let err = choose(e, Keys::default(), Some("zz")).unwrap_err();
        assert_eq!((err.status(), err.code()), (400, "unknown_variant"));
        assert!(err.to_string().contains("valid: a, b"), "{err}");
    }

    #[test]
    fn only_pick_variant_clients_may_force() {
        let cfg = Config::from_str_at(
            "clients:\n  - { name: qa, api_key: k1, pick_variant: true }\n  - { name: app, api_key: k2 }\nproviders:\n  m: { type: mock }\nscenarios:\n  s: { targets: [{ provider: m }] }\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        let clients = cfg.clients.as_deref().unwrap();
        assert!(check_forcing(Some(&clients[0]), Some("a")).is_ok());
        assert!(check_forcing(Some(&clients[1]), None).is_ok());
        let err = check_forcing(Some(&clients[1]), Some("a")).unwrap_err();
        assert_eq!(
            (
                err.status(),
                err.code(),
                err.to_json()["error"]["type"].as_str()
            ),
            (403, "variant_forbidden", Some("permission_error"))
        );
        assert!(check_forcing(None, Some("a")).is_err());
    }
}
