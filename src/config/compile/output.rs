//! A scenario's `output:` — the JSON Schema its answers must validate against, from a file or
//! inline, compiled at load so a bad schema is a load error naming its file and position.

use super::Ctx;
use crate::config::raw::RawOutput;
use crate::output::{OutputSpec, Schema, DEFAULT_REPAIR_ATTEMPTS};
use std::path::Path;
use std::sync::Arc;

/// More repairs than this only spend tokens on a target that cannot do it.
const MAX_REPAIR_ATTEMPTS: u32 = 5;

pub(super) fn compile(
    cx: &mut Ctx,
    key: &str,
    scenario: &str,
    raw: &RawOutput,
    base_dir: &Path,
) -> Option<Arc<OutputSpec>> {
    let okey = format!("{key}.output");
    let repair_attempts = raw.repair_attempts.unwrap_or(DEFAULT_REPAIR_ATTEMPTS);
    if repair_attempts > MAX_REPAIR_ATTEMPTS {
        cx.error(
            format!("{okey}.repair_attempts"),
            format!("at most {MAX_REPAIR_ATTEMPTS} (0 = validate only)"),
        );
    }
    let schema = match (&raw.schema, &raw.schema_file) {
        (Some(_), Some(_)) => {
            cx.error(&okey, "set schema or schema_file, not both");
            return None;
        }
        (None, None) => {
            cx.error(&okey, "a schema is required: schema_file or schema");
            return None;
        }
        (Some(inline), None) => match Schema::compile(inline.clone(), scenario) {
            Ok(s) => s,
            Err(e) => {
                cx.error(format!("{okey}.schema"), e);
                return None;
            }
        },
        (None, Some(file)) => {
            let full = base_dir.join(file);
            // Watched even when unreadable, so a reload picks it up once it is fixed.
            cx.sources.push(full.clone());
            let text = match std::fs::read_to_string(&full) {
                Ok(t) => t,
                Err(e) => {
                    cx.error(
                        format!("{okey}.schema_file"),
                        format!("cannot read {}: {e}", full.display()),
                    );
                    return None;
                }
            };
            let json = match serde_json::from_str(&text) {
                Ok(j) => j,
                Err(e) => {
                    cx.error(
                        format!("{okey}.schema_file"),
                        format!(
                            "{}:{}:{}: not JSON: {e}",
                            full.display(),
                            e.line(),
                            e.column()
                        ),
                    );
                    return None;
                }
            };
            match Schema::compile(json, scenario) {
                Ok(s) => s,
                Err(e) => {
                    cx.error(
                        format!("{okey}.schema_file"),
                        format!("{}: {e}", full.display()),
                    );
                    return None;
                }
            }
        }
    };
    Some(Arc::new(OutputSpec {
        schema: Arc::new(schema),
        repair_attempts: repair_attempts.min(MAX_REPAIR_ATTEMPTS),
    }))
}
