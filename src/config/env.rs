//! `${VAR}` / `${VAR:-default}` expansion for configuration strings.
//!
//! Expansion happens per string value after YAML parsing (not on the raw text), so a secret that
//! contains `#`, `:` or quotes can never change the structure of the document and every position
//! reported by the parser stays true to the file on disk.

/// Expands `${VAR}` and `${VAR:-default}` with `lookup`; `$${` yields a literal `${`.
/// An unset variable without a default expands to the empty string (the shipped file must load
/// with no variable set); a variable set to the empty string also takes the default, as in POSIX
/// `${VAR:-default}`.
pub fn expand_with(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {input:?}"))?;
            let expr = &tail[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?} in `${{{expr}}}`"));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {}
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands from the process environment.
pub fn expand(input: &str) -> Result<String, String> {
    expand_with(input, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_unset_and_defaults() {
        assert_eq!(expand_with("a-${SET}-b", env).unwrap(), "a-value-b");
        assert_eq!(expand_with("${UNSET}", env).unwrap(), "");
        assert_eq!(expand_with("${UNSET:-x:y}", env).unwrap(), "x:y");
        assert_eq!(expand_with("${EMPTY:-d}", env).unwrap(), "d");
        assert_eq!(expand_with("${SET:-d}", env).unwrap(), "value");
        assert_eq!(
            expand_with("cost $5 $${SET}", env).unwrap(),
            "cost $5 ${SET}"
        );
    }

    #[test]
    fn rejects_malformed_references() {
        assert!(expand_with("${SET", env).is_err());
        assert!(expand_with("${}", env).is_err());
        assert!(expand_with("${A B}", env).is_err());
    }
}
