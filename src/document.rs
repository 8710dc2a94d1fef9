//! Reading a TOML file section by section, so that one run reports every problem.
//!
//! serde stops at the first error it meets. An operator fixing a config file wants the
//! whole list at once, each with file, line and column. So we parse the document once
//! (keeping every value's byte span), then deserialise each top-level section, and each
//! entry of an array of tables, on its own, collecting the errors. Semantic checks that
//! span several values (duplicate names, unknown labels) add their own [`Problem`]s
//! at the span of the value they blame.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// One thing wrong with a file, with where it is: enough to fix it without guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the offending key (`model.device`, `camera[2].url`); empty for
    /// problems with the document as a whole.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: no place in a file (a whole file, or a message that is not one).
        match self.line {
            0 => write!(f, "{}: ", self.file.display())?,
            _ => write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?,
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.reason)
    }
}

/// All the problems found in one or more files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A parsed TOML file that remembers its source, so spans become line:column.
pub struct Document<'a> {
    file: PathBuf,
    source: &'a str,
    root: Spanned<DeTable<'a>>,
    problems: Vec<Problem>,
    /// The parser had to recover from syntax errors: its placeholder values would only
    /// add confusing problems, so sections are not deserialised.
    broken: bool,
}

impl<'a> Document<'a> {
    /// Parses `source`; syntax errors are recorded (all of them that the parser can
    /// recover from) and the rest of the document is still available.
    pub fn parse(file: &Path, source: &'a str) -> Self {
        let (root, errors) = DeTable::parse_recoverable(source);
        let broken = !errors.is_empty();
        let mut doc = Document { file: file.to_path_buf(), source, root, problems: Vec::new(), broken };
        for e in errors {
            let span = e.span().unwrap_or(0..0);
            doc.push_problem(span, "", e.message().trim());
        }
        doc
    }

    /// Top-level keys of the document with their spans, in file order.
    pub fn keys(&self) -> Vec<(String, Range<usize>)> {
        let mut keys: Vec<_> = self.root.get_ref().iter().map(|(k, _)| (k.get_ref().to_string(), k.span())).collect();
        keys.sort_by_key(|(_, span)| span.start);
        keys
    }

    /// Deserialises top-level `key` as `T`, or returns `None` if it is absent. A value
    /// that does not deserialise is recorded as a problem and gives `None` too.
    pub fn section<T: DeserializeOwned>(&mut self, key: &str) -> Option<Spanned<T>> {
        if self.broken {
            return None;
        }
        let value = self.root.get_ref().get(key)?.clone();
        self.value(key, value)
    }

    /// Deserialises each entry of the array of tables `key` (`[[key]]`) on its own, so a
    /// bad entry does not hide problems in the next. Entries that fail are recorded and
    /// left out.
    pub fn entries<T: DeserializeOwned>(&mut self, key: &str) -> Vec<Spanned<T>> {
        if self.broken {
            return Vec::new();
        }
        let Some(value) = self.root.get_ref().get(key).cloned() else {
            return Vec::new();
        };
        let span = value.span();
        match value.into_inner() {
            DeValue::Array(items) => {
                items.into_iter().enumerate().filter_map(|(i, item)| self.value(&format!("{key}[{i}]"), item)).collect()
            }
            other => {
                let kind = other.type_str();
                self.push_problem(span, key, &format!("expected an array of tables ([[{key}]]), found {kind}"));
                Vec::new()
            }
        }
    }

    fn value<T: DeserializeOwned>(&mut self, key: &str, value: Spanned<DeValue<'a>>) -> Option<Spanned<T>> {
        let span = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(Spanned::new(span, v)),
            Err(e) => {
                let at = e.span().unwrap_or(span);
                self.push_problem(at, key, e.message().trim());
                None
            }
        }
    }

    /// Records a problem at byte span `span` of the source.
    pub fn push_problem(&mut self, span: Range<usize>, key: &str, reason: &str) {
        let problem = self.problem_at(span, key, reason);
        self.problems.push(problem);
    }

    /// A problem at byte span `span`, not recorded: for what is only found out later
    /// (an alert's example photo that cannot be read when the model looks at it).
    pub fn problem_at(&self, span: Range<usize>, key: &str, reason: &str) -> Problem {
        let (line, column) = line_column(self.source, span.start);
        Problem { file: self.file.clone(), line, column, key: key.to_string(), reason: reason.to_string() }
    }

    /// Rejects top-level keys that are not in `known`.
    pub fn reject_unknown_keys(&mut self, known: &[&str]) {
        if self.broken {
            return;
        }
        for (key, span) in self.keys() {
            if !known.contains(&key.as_str()) {
                let expected = known.join(", ");
                self.push_problem(span, &key, &format!("unknown key `{key}`, expected one of: {expected}"));
            }
        }
    }

    /// The problems found so far, in file order.
    pub fn into_problems(mut self) -> Vec<Problem> {
        self.problems.sort_by_key(|p| (p.line, p.column));
        self.problems
    }
}

/// 1-based line and column (in characters) of byte offset `at`.
pub fn line_column(source: &str, at: usize) -> (usize, usize) {
    let at = at.min(source.len());
    let before = &source[..source.floor_char_boundary(at)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Section {
        #[allow(dead_code)]
        n: u32,
    }

    #[test]
    fn line_column_counts_from_one() {
        let s = "a = 1\nbb = 2\n";
        assert_eq!(line_column(s, 0), (1, 1));
        assert_eq!(line_column(s, 6), (2, 1));
        assert_eq!(line_column(s, 11), (2, 6));
        assert_eq!(line_column(s, 999), (3, 1));
    }

    #[test]
    fn every_bad_section_and_entry_is_reported() {
        let src = "stray = true\n[one]\nn = \"x\"\n\n[[many]]\nn = 1\n[[many]]\nm = 2\n[[many]]\nn = -1\n";
        let mut doc = Document::parse(Path::new("t.toml"), src);
        assert!(doc.section::<Section>("one").is_none());
        let many = doc.entries::<Section>("many");
        assert_eq!(many.len(), 1);
        doc.reject_unknown_keys(&["one", "many"]);
        let problems = doc.into_problems();
        let lines: Vec<_> = problems.iter().map(|p| (p.line, p.key.as_str())).collect();
        assert_eq!(lines, vec![(1, "stray"), (3, "one"), (8, "many[1]"), (10, "many[2]")], "{problems:?}");
        assert!(problems[2].reason.contains("unknown field `m`"), "{}", problems[2].reason);
    }

    #[test]
    fn syntax_errors_carry_positions() {
        let src = "a = 1\nb = = 2\n";
        let doc = Document::parse(Path::new("t.toml"), src);
        let problems = doc.into_problems();
        assert!(!problems.is_empty());
        assert!(problems.iter().all(|p| p.line == 2), "only the syntax error is reported: {problems:?}");
    }
}
