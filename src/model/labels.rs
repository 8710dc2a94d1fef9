//! The labels the cascade answers in: the levels of its tree (view, make, model) and a
//! complete answer (a leaf). Their own module because the manifest that names them, the
//! cascade that computes them and the alerts that ask for them all use them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A level of the tree. The order is fixed: view, then make, then model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    View,
    Make,
    Model,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::View, Level::Make, Level::Model];

    /// The level a head of this level leads to.
    pub fn below(self) -> Option<Level> {
        match self {
            Level::View => Some(Level::Make),
            Level::Make => Some(Level::Model),
            Level::Model => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::View => "view",
            Level::Make => "make",
            Level::Model => "model",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A label the cascade answers in (`BMW`, `3-series`, `front`). Labels compare and hash
/// case-insensitively everywhere (an operator writes `bmw`, a dataset folder says `BMW`)
/// and keep the spelling they were made with for display: one type, so no comparison
/// can forget the rule.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Label(String);

impl Label {
    /// No label (a prediction without that level).
    pub const NONE: Label = Label(String::new());

    pub fn new(s: impl Into<String>) -> Label {
        Label(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Label {
    fn eq(&self, other: &Label) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl Eq for Label {}

impl PartialEq<str> for Label {
    fn eq(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl PartialEq<&str> for Label {
    fn eq(&self, other: &&str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

impl PartialEq<Label> for str {
    fn eq(&self, other: &Label) -> bool {
        other == self
    }
}

impl PartialEq<Label> for &str {
    fn eq(&self, other: &Label) -> bool {
        other == self
    }
}

impl std::hash::Hash for Label {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for b in self.0.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
        state.write_u8(0xff);
    }
}

impl std::ops::Deref for Label {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<&str> for Label {
    fn from(s: &str) -> Label {
        Label(s.to_string())
    }
}

impl From<String> for Label {
    fn from(s: String) -> Label {
        Label(s)
    }
}

/// The distinct labels of `labels` (first spelling seen), in order.
pub fn distinct<'a>(labels: impl Iterator<Item = &'a Label>) -> Vec<Label> {
    let mut out: Vec<Label> = Vec::new();
    for l in labels {
        if !out.contains(l) {
            out.push(l.clone());
        }
    }
    out
}

/// A complete answer: view, make and model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leaf {
    pub view: Label,
    pub make: Label,
    pub model: Label,
}

impl Leaf {
    pub fn new(view: &str, make: &str, model: &str) -> Leaf {
        Leaf { view: view.into(), make: make.into(), model: model.into() }
    }

    pub fn label(&self, level: Level) -> &Label {
        match level {
            Level::View => &self.view,
            Level::Make => &self.make,
            Level::Model => &self.model,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_compare_and_hash_case_insensitively_and_keep_their_spelling() {
        let a = Label::from("BMW");
        let lower = Label::from("bmw");
        assert!(a == lower && a == "Bmw" && a != "audi");
        let set: std::collections::HashSet<Label> = ["BMW", "bmw", "Audi"].into_iter().map(Label::from).collect();
        assert_eq!(set.len(), 2);
        assert_eq!(a.to_string(), "BMW");
        let list = [Label::from("front"), Label::from("FRONT"), Label::from("rear")];
        assert_eq!(distinct(list.iter()).iter().map(|l| l.as_str()).collect::<Vec<_>>(), ["front", "rear"]);
    }
}
