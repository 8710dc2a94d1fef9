//! The labels the cascade answers in: the levels of its tree (view, make, model) and a
//! complete answer (a leaf). Their own module because the manifest that names them, the
//! cascade that computes them and the alerts that ask for them all use them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A level of the tree. The order is fixed: view, then make, then model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

/// A complete answer: view, make and model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leaf {
    pub view: String,
    pub make: String,
    pub model: String,
}

impl Leaf {
    pub fn label(&self, level: Level) -> &str {
        match level {
            Level::View => &self.view,
            Level::Make => &self.make,
            Level::Model => &self.model,
        }
    }
}
