//! The detectors: exact, not shape-only. One compiled regex finds every candidate in a single
//! scan (e-mail addresses, numbers grouped by spaces or dashes, and maximal digit runs); each
//! candidate is then classified by code that checks what a shape cannot — the length of the
//! whole digit run (a phone number inside a 20-digit timestamp is no phone number), the GB
//! 11643 checksum, region and birth date of an ID, the Luhn check and issuer prefix of a card,
//! and the neighbours that make a number a price (`¥`, `元`, a decimal part). Names from the
//! user profile and the `x-gateway-pii-names` header are matched literally (Aho-Corasick).
//!
//! Not detected: names nobody told the gateway about, addresses, free-form medical details, and
//! anything inside images or audio.

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;
use std::sync::LazyLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Phone,
    Id,
    Card,
    Email,
    Name,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Phone, Kind::Id, Kind::Card, Kind::Email, Kind::Name];

    /// The placeholder's tag: `[PHONE_1]`.
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Phone => "PHONE",
            Kind::Id => "ID",
            Kind::Card => "CARD",
            Kind::Email => "EMAIL",
            Kind::Name => "NAME",
        }
    }

    /// The detector's name in `privacy.detect` (also the metrics' `kind` label).
    pub fn config_name(self) -> &'static str {
        match self {
            Kind::Phone => "cn_mobile",
            Kind::Id => "cn_id",
            Kind::Card => "bank_card",
            Kind::Email => "email",
            Kind::Name => "profile_names",
        }
    }

    pub fn from_config_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.config_name() == name)
    }
}

/// Which detectors are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Kinds(u8);

impl Kinds {
    pub fn of(kinds: &[Kind]) -> Kinds {
        let mut k = Kinds::default();
        for kind in kinds {
            k.insert(*kind);
        }
        k
    }

    pub fn insert(&mut self, kind: Kind) {
        self.0 |= 1 << kind as u8;
    }

    pub fn contains(self, kind: Kind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// One finding: a byte range of the text and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
}

/// Candidates, leftmost first. Grouped forms come before the plain digit run, so `138 0013
/// 8000` is one candidate rather than three short runs.
static SHAPES: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?P<email>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})",
        // A mobile number grouped 3-4-4, with an optional +86.
        r"|(?P<phone>(?:\+?86[ -]?)?1[3-9][0-9][ -][0-9]{4}[ -][0-9]{4})",
        // A card number grouped by fours (the last group may be shorter).
        r"|(?P<card>[0-9]{4}(?:[ -][0-9]{4}){2,3}(?:[ -][0-9]{1,4})?)",
        // A maximal run of digits, an ID's check character included.
        r"|(?P<run>\+?[0-9]+[Xx]?)",
    ))
    .unwrap_or_else(|e| unreachable!("the detector regex is a constant: {e}"))
});

/// The compiled detectors of one request (the shapes are compiled once per process; only the
/// names automaton is per request, and only when there are names).
pub struct Detector {
    kinds: Kinds,
    names: Option<AhoCorasick>,
}

impl Detector {
    /// `names` are matched literally; names shorter than two characters are ignored (a
    /// one-character "name" would match everywhere).
    pub fn new(kinds: Kinds, names: &[&str]) -> Detector {
        let names: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| n.chars().count() >= 2)
            .collect();
        let names = (kinds.contains(Kind::Name) && !names.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&names)
                    .ok()
            })
            .flatten();
        Detector { kinds, names }
    }

    /// Every finding in `text`, in order and without overlaps (the earlier one wins, then the
    /// longer).
    pub fn find(&self, text: &str) -> Vec<Found> {
        let mut out = Vec::new();
        let shapes = self.kinds.contains(Kind::Phone)
            || self.kinds.contains(Kind::Id)
            || self.kinds.contains(Kind::Card)
            || self.kinds.contains(Kind::Email);
        // Cheap guard: no digit and no `@` means no shape can match.
        if shapes && text.bytes().any(|b| b.is_ascii_digit() || b == b'@') {
            for caps in SHAPES.captures_iter(text) {
                let Some(m) = caps.get(0) else { continue };
                let kind = if caps.name("email").is_some() {
                    Some(Kind::Email)
                } else if caps.name("phone").is_some() {
                    isolated(text, m.start(), m.end()).then_some(Kind::Phone)
                } else if caps.name("card").is_some() {
                    let digits = digits_of(m.as_str());
                    (isolated(text, m.start(), m.end()) && is_card(&digits)).then_some(Kind::Card)
                } else {
                    classify_run(text, m.start(), m.end())
                };
                if let Some(kind) = kind.filter(|k| self.kinds.contains(*k)) {
                    out.push(Found {
                        start: m.start(),
                        end: m.end(),
                        kind,
                    });
                }
            }
        }
        if let Some(ac) = &self.names {
            let names: Vec<Found> = ac
                .find_iter(text)
                .map(|m| Found {
                    start: m.start(),
                    end: m.end(),
                    kind: Kind::Name,
                })
                .collect();
            if !names.is_empty() {
                out.extend(names);
                out.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end)));
                let mut kept: Vec<Found> = Vec::with_capacity(out.len());
                for f in out {
                    if kept.last().is_none_or(|last| f.start >= last.end) {
                        kept.push(f);
                    }
                }
                return kept;
            }
        }
        out
    }
}

fn digits_of(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Not part of a longer number: no digit (or decimal point followed by a digit) next to it.
fn isolated(text: &str, start: usize, end: usize) -> bool {
    let before = text[..start].chars().next_back();
    let mut after = text[end..].chars();
    let next = after.next();
    if before.is_some_and(|c| c.is_ascii_digit()) || next.is_some_and(|c| c.is_ascii_digit()) {
        return false;
    }
    !is_price(before, next, after.next())
}

/// A number written as an amount: a currency sign before it, a unit after it, or a decimal part.
fn is_price(before: Option<char>, next: Option<char>, after_next: Option<char>) -> bool {
    matches!(before, Some('¥' | '￥' | '$' | '€' | '£'))
        || matches!(next, Some('元' | '块' | '万' | '圆' | '%'))
        || (matches!(next, Some('.' | ',')) && after_next.is_some_and(|c| c.is_ascii_digit()))
}

/// A maximal digit run (possibly `+86…`, possibly ending in an ID's `X`) as the kind it is,
/// if any.
fn classify_run(text: &str, start: usize, end: usize) -> Option<Kind> {
    if !isolated(text, start, end) {
        return None;
    }
    let run = &text[start..end];
    let plus = run.starts_with('+');
    let body = run.trim_start_matches('+');
    let x = body.ends_with(['X', 'x']);
    let n = body.len();
    if x {
        return (n == 18 && !plus && id18_ok(body)).then_some(Kind::Id);
    }
    if n == 11 && !plus && is_mobile(body) {
        return Some(Kind::Phone);
    }
    if n == 13 && body.starts_with("86") && is_mobile(&body[2..]) {
        return Some(Kind::Phone);
    }
    if plus {
        return None;
    }
    if n == 18 && id18_ok(body) {
        return Some(Kind::Id);
    }
    if n == 15 && id15_ok(body) {
        return Some(Kind::Id);
    }
    ((13..=19).contains(&n) && is_card(body)).then_some(Kind::Card)
}

fn is_mobile(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 11 && b[0] == b'1' && (b'3'..=b'9').contains(&b[1])
}

/// The GB 11643-1999 check character of an 18-character ID.
pub fn gb11643_ok(id: &str) -> bool {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let b = id.as_bytes();
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let sum: u32 = b[..17]
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    CHECK[(sum % 11) as usize] == b[17].to_ascii_uppercase()
}

/// A region code a mainland, Hong Kong, Macao or Taiwan ID can start with.
fn region_ok(d: &str) -> bool {
    d.get(..2).and_then(|p| p.parse::<u32>().ok()).is_some_and(
        |p| matches!(p, 11..=15 | 21..=23 | 31..=37 | 41..=46 | 50..=54 | 61..=65 | 71 | 81 | 82),
    )
}

fn id18_ok(id: &str) -> bool {
    region_ok(id) && date_ok(&id[6..10], &id[10..12], &id[12..14]) && gb11643_ok(id)
}

fn id15_ok(id: &str) -> bool {
    region_ok(id) && id.len() == 15 && date_ok(&format!("19{}", &id[6..8]), &id[8..10], &id[10..12])
}

/// A real calendar date from 1900 to this year.
fn date_ok(y: &str, m: &str, d: &str) -> bool {
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<u32>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1900..=this_year()).contains(&y) && (1..=days).contains(&d)
}

fn this_year() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Within a day of New Year this may be off by one: a birth date is not that recent.
    1970 + (secs / 31_556_952) as u32
}

/// The Luhn check of a digit string.
pub fn luhn(digits: &str) -> bool {
    let mut sum = 0;
    for (i, b) in digits.bytes().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum % 10 == 0
}

/// 13–19 digits from a known card issuer, passing Luhn.
fn is_card(d: &str) -> bool {
    let n = d.len();
    let prefix = |k: usize| d.get(..k).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    let issuer = d.starts_with("62") // China UnionPay
        || d.starts_with("60") // domestic debit, Discover 6011
        || d.starts_with('4') // Visa
        || (51..=55).contains(&prefix(2)) // Mastercard
        || (2221..=2720).contains(&prefix(4))
        || ((d.starts_with("34") || d.starts_with("37")) && n == 15) // Amex
        || (3528..=3589).contains(&prefix(4)) // JCB
        || d.starts_with("65");
    (13..=19).contains(&n) && issuer && luhn(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Detector {
        Detector::new(Kinds::of(&Kind::ALL), &["张伟", "Li Na"])
    }

    fn kinds(text: &str) -> Vec<(Kind, String)> {
        all()
            .find(text)
            .into_iter()
            .map(|f| (f.kind, text[f.start..f.end].to_owned()))
            .collect()
    }

    /// A valid ID from its first 17 digits.
    fn with_check(first17: &str) -> String {
        (0..11u8)
            .map(|i| {
                let c = if i == 10 { 'X' } else { char::from(b'0' + i) };
                format!("{first17}{c}")
            })
            .find(|id| gb11643_ok(id))
            .unwrap()
    }

    /// A Luhn-valid card from its first digits.
    fn card(prefix: &str) -> String {
        (0..10)
            .map(|d| format!("{prefix}{d}"))
            .find(|c| luhn(c))
            .unwrap()
    }

    #[test]
    fn phones_in_every_usual_form() {
        for text in [
            "13800138000",
            "我的电话是13800138000谢谢",
            "+8613800138000",
            "+86 138 0013 8000",
            "138-0013-8000",
            "86 13912345678",
        ] {
            let k = kinds(text);
            assert_eq!(k.len(), 1, "{text}: {k:?}");
            assert_eq!(k[0].0, Kind::Phone, "{text}");
        }
    }

    #[test]
    fn ids_cards_emails_and_names() {
        let id = with_check("11010519491231002");
        assert_eq!(
            kinds(&format!("身份证{id}。")),
            vec![(Kind::Id, id.clone())]
        );
        let id15 = "110105491231002";
        assert_eq!(kinds(id15), vec![(Kind::Id, id15.into())]);
        let unionpay = card("621700000000000000");
        assert_eq!(
            kinds(&format!("卡号 {unionpay} 谢谢")),
            vec![(Kind::Card, unionpay.clone())]
        );
        let visa = card("411111111111111");
        let grouped = format!(
            "{} {} {} {}",
            &visa[..4],
            &visa[4..8],
            &visa[8..12],
            &visa[12..]
        );
        assert_eq!(kinds(&grouped), vec![(Kind::Card, grouped.clone())]);
        assert_eq!(
            kinds("mail zhang.wei+vip@clinic-mail.com.cn now"),
            vec![(Kind::Email, "zhang.wei+vip@clinic-mail.com.cn".into())]
        );
        assert_eq!(
            kinds("张伟和Li Na预约了"),
            vec![(Kind::Name, "张伟".into()), (Kind::Name, "Li Na".into())]
        );
    }

    #[test]
    fn near_misses_do_not_match() {
        let bad_check = {
            let id = with_check("11010519491231002");
            let last = if id.ends_with('1') { '2' } else { '1' };
            format!("{}{last}", &id[..17])
        };
        let month_13 = with_check("11010519491331002");
        let bad_luhn = {
            let c = card("621700000000000000");
            let last = (c.as_bytes()[18] - b'0' + 1) % 10;
            format!("{}{last}", &c[..18])
        };
        for text in [
            bad_check.as_str(),
            month_13.as_str(),
            bad_luhn.as_str(),
            "20240101123045123456",      // a 20-digit timestamp
            "1380013800099",             // a phone inside a longer number
            "订单202401011380013800099", // an order number
            "售价13800元",
            "价格13800138000元",
            "¥13800138000",
            "13800138000.00",
            "2024-01-01 12:30:45",
            "NO.202401011234",
            "192.168.100.200",
            "v1.13.8000",
            "1700000000",  // a Unix time
            "12345678901", // 11 digits, not a mobile prefix
        ] {
            assert_eq!(kinds(text), vec![], "{text}");
        }
    }

    #[test]
    fn only_the_detectors_asked_for() {
        let d = Detector::new(Kinds::of(&[Kind::Email]), &["张伟"]);
        assert!(d.find("张伟 13800138000").is_empty());
        assert_eq!(d.find("a@b.cn").len(), 1);
    }

    #[test]
    fn a_4k_chinese_prompt_is_scanned_once() {
        // No timing here (the bench measures it): the scan stays linear and correct at size.
        let mut text = String::new();
        while text.len() < 4096 {
            text.push_str(
                "客户咨询了双眼皮手术的恢复期和费用，预算大约一万元，希望下个月安排面诊。",
            );
        }
        text.push_str("联系电话13800138000。");
        let found = all().find(&text);
        assert_eq!(found.len(), 1);
        assert_eq!(&text[found[0].start..found[0].end], "13800138000");
    }
}
