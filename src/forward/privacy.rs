//! Patient privacy per attempt: what a target with `privacy:` receives. The request's texts are
//! rewritten once per setting (detectors and action) and reused by every attempt with that
//! setting; the conversation's placeholders come from the conversation store (a session keeps
//! `[PHONE_1]` for the same number across turns) and are saved there as soon as a rewrite adds
//! one, before the upstream is called. A `block` target with personal data in the request is
//! skipped; a request no target may receive is refused with 400 `pii_detected`.

use crate::conversations::{ConversationKey, ConversationStore, CONVERSATION_IDLE};
use crate::downstream::RequestCtx;
use crate::privacy::detect::Detector;
use crate::privacy::{self, Action, Mapping, Privacy, Report};
use crate::protocol::{ChatRequest, Operation};
use crate::state::Shared;
use std::sync::Arc;

/// What an attempt sends.
pub enum Prepared<'a> {
    /// The client's request as it is (no privacy, or nothing found for `block`).
    Plain,
    /// The request with placeholders.
    Rewritten(&'a ChatRequest),
    /// The target may not receive this request (`block` and personal data found).
    Blocked,
}

/// The privacy state of one request. Nothing is computed (or allocated) until a target with
/// `privacy:` is tried.
pub struct Private<'r> {
    req: &'r ChatRequest,
    /// The client's `x-gateway-pii-names` header.
    names_header: Option<String>,
    names: Vec<String>,
    mapping: Mapping,
    /// Where the conversation's placeholders live: a session's, else none (this request's).
    key: Option<ConversationKey>,
    loaded: bool,
    rewritten: Vec<(Privacy, Box<ChatRequest>)>,
    /// `block` settings already checked, and whether they found anything.
    checked: Vec<(Privacy, bool)>,
    /// What a `block` target found (the refusal names its kinds).
    pub blocked: Option<Report>,
}

impl<'r> Private<'r> {
    pub fn new(req: &'r ChatRequest, names_header: Option<&str>) -> Self {
        Private {
            req,
            names_header: names_header.map(str::to_owned),
            names: Vec::new(),
            mapping: Mapping::default(),
            key: None,
            loaded: false,
            rewritten: Vec::new(),
            checked: Vec::new(),
            blocked: None,
        }
    }

    /// The names to look for and the conversation's placeholders, on first use.
    async fn load(&mut self, shared: &Shared, client: Option<&str>) {
        self.loaded = true;
        self.names = privacy::names(&self.req.user_profile, self.names_header.as_deref())
            .into_iter()
            .map(str::to_owned)
            .collect();
        self.key = self.req.session.as_ref().map(|s| ConversationKey {
            target: "privacy".into(),
            user: format!(
                "{}/{}",
                client.unwrap_or("-"),
                self.req.user.as_deref().unwrap_or("-")
            ),
            session: s.clone(),
        });
        if let Some(key) = &self.key {
            if let Some(text) = shared.conversations.get(key).await {
                self.mapping = serde_json::from_str(&text).unwrap_or_default();
            }
        }
    }

    /// The request for a target with `privacy`; sets (or clears) what its answer is restored
    /// from.
    pub async fn prepare(
        &mut self,
        shared: &Shared,
        scenario: &str,
        ctx: &mut RequestCtx,
        privacy: Option<Privacy>,
    ) -> Prepared<'_> {
        ctx.restore = None;
        let Some(p) = privacy.filter(|_| self.req.op == Operation::Chat) else {
            return Prepared::Plain;
        };
        if !self.loaded {
            self.load(shared, ctx.client.as_deref()).await;
        }
        let detector = Detector::new(
            p.kinds,
            &self.names.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        if p.action == Action::Block {
            if let Some((_, found)) = self.checked.iter().find(|(q, _)| *q == p) {
                return if *found {
                    Prepared::Blocked
                } else {
                    Prepared::Plain
                };
            }
            // Found or not is all that matters: a scratch mapping, nothing kept.
            let (_, report) = privacy::rewrite(self.req, &detector, &mut self.mapping.clone());
            self.checked.push((p, !report.is_empty()));
            if report.is_empty() {
                return Prepared::Plain;
            }
            count(shared, scenario, p.action, &report);
            ctx.pii = Some(report.summary());
            self.blocked = Some(report);
            return Prepared::Blocked;
        }
        let at = match self.rewritten.iter().position(|(q, _)| *q == p) {
            Some(at) => at,
            None => {
                let before = self.mapping.len();
                let (req, report) = privacy::rewrite(self.req, &detector, &mut self.mapping);
                count(shared, scenario, p.action, &report);
                if !report.is_empty() {
                    ctx.pii = Some(report.summary());
                }
                if let (Some(key), true) = (&self.key, self.mapping.len() > before) {
                    // Saved before the upstream is called: the session's next turn may come
                    // as soon as this answer ends.
                    if let Ok(text) = serde_json::to_string(&self.mapping) {
                        shared
                            .conversations
                            .put(key.clone(), text, CONVERSATION_IDLE)
                            .await;
                    }
                }
                self.rewritten.push((p, Box::new(req)));
                self.rewritten.len() - 1
            }
        };
        if p.action == Action::Pseudonymize && !self.mapping.is_empty() {
            ctx.restore = Some(Arc::new(self.mapping.clone()));
        }
        Prepared::Rewritten(&self.rewritten[at].1)
    }
}

fn count(shared: &Shared, scenario: &str, action: Action, report: &Report) {
    for (kind, n) in report.iter() {
        shared
            .metrics
            .pii_detections_total
            .with_label_values(&[scenario, kind.config_name(), action.as_str()])
            .inc_by(u64::from(n));
    }
}
