//! Where each key path of a YAML document sits (line, column), so semantic errors found after
//! parsing (an unknown provider, a bad weight) can name `file:line:column` like syntax errors do.
//! serde_yaml keeps no spans, so the text is walked once more with yaml-rust2's marked events.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key path (`scenarios.s.targets[1].provider`) → 1-based (line, column) of its value.
pub type Positions = HashMap<String, (usize, usize)>;

enum Frame {
    /// A mapping: the key whose value comes next, if a key was just read.
    Map {
        path: String,
        key: Option<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

struct Walker {
    stack: Vec<Frame>,
    out: Positions,
}

impl Walker {
    /// The path of the node that starts now, or `None` when it is a mapping key.
    fn place(&mut self, scalar: Option<&str>) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) if path.is_empty() => Some(k),
                Some(k) => Some(format!("{path}.{k}")),
                None => {
                    // A key: non-scalar keys get a placeholder that never matches a path.
                    *key = Some(scalar.unwrap_or("\u{0}").to_owned());
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(p) = self.place(Some(&value)) {
                    self.out.entry(p).or_insert(at);
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.place(None) {
                    self.out.entry(p).or_insert(at);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = self.place(None).unwrap_or_else(|| "\u{0}".into());
                self.out.entry(path.clone()).or_insert(at);
                self.stack.push(if is_map {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// Positions of every key path in `text`; empty when the text does not parse.
pub fn index(text: &str) -> Positions {
    let mut w = Walker {
        stack: Vec::new(),
        out: HashMap::new(),
    };
    let mut parser = Parser::new_from_str(text);
    if parser.load(&mut w, false).is_err() {
        return HashMap::new();
    }
    w.out
}

/// The position of `path`, or of its nearest ancestor that is in the file (a missing key is
/// reported where its parent is).
pub fn find(positions: &Positions, path: &str) -> Option<(usize, usize)> {
    let mut p = path;
    loop {
        if let Some(at) = positions.get(p) {
            return Some(*at);
        }
        let cut = p.rfind(['.', '['])?;
        p = &p[..cut];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_block_and_flow_nodes() {
        let text = "a: 1\nscenarios:\n  s:\n    targets:\n      - provider: x\n      - { provider: y, weight: 0 }\n";
        let p = index(text);
        assert_eq!(p.get("a"), Some(&(1, 4)));
        assert_eq!(p.get("scenarios.s.targets[0].provider"), Some(&(5, 19)));
        assert_eq!(p.get("scenarios.s.targets[1].provider"), Some(&(6, 21)));
        assert_eq!(p.get("scenarios.s.targets[1].weight"), Some(&(6, 32)));
        assert_eq!(
            find(&p, "scenarios.s.targets[1].cost"),
            p.get("scenarios.s.targets[1]").copied()
        );
        assert_eq!(find(&p, "nothing.here"), None);
    }
}
