//! Small typed values that config sections share: durations, names that end up in MQTT
//! topics, secrets. Each validates while deserialising, so a bad value is reported at
//! its own line and column.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A non-negative number of seconds (integer or fraction), as a `Duration`.
pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = f64::deserialize(d)?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(de::Error::custom(format!("expected a non-negative number of seconds, found {v}")));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A non-negative whole number of milliseconds, as a `Duration`.
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Ok(Duration::from_millis(u64::deserialize(d)?))
}

/// A name that is safe inside an MQTT topic level and a file name: letters, digits,
/// `-`, `_` and `.`, 1 to 64 of them. Camera names and alert ids are names.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn new(s: &str) -> Result<Name, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !s.starts_with('.');
        if ok {
            Ok(Name(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a valid name: use 1 to 64 letters, digits, `-`, `_` or `.` (it becomes part of MQTT topics and file names)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(&s).map_err(de::Error::custom)
    }
}

/// A password or other credential. Its `Debug` and `Display` print `***`, so a config
/// struct can be logged without leaking it; use [`Secret::expose`] where it is needed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret from `path` (trailing newline removed). A relative path is looked
    /// up in systemd's `$CREDENTIALS_DIRECTORY` first (`LoadCredential=`).
    pub fn from_file(path: &Path) -> Result<Secret, String> {
        let resolved = resolve_credential_path(path);
        let text = std::fs::read_to_string(&resolved)
            .map_err(|e| format!("cannot read password file {}: {e}", resolved.display()))?;
        Ok(Secret(text.trim_end_matches(['\n', '\r']).to_string()))
    }
}

fn resolve_credential_path(path: &Path) -> PathBuf {
    if path.is_relative()
        && let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY")
    {
        let candidate = Path::new(&dir).join(path);
        if candidate.exists() {
            return candidate;
        }
    }
    path.to_path_buf()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret(String::deserialize(d)?))
    }
}

/// A probability threshold in [0, 1].
pub fn probability<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    let v = f64::deserialize(d)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v as f32)
    } else {
        Err(de::Error::custom(format!("expected a probability between 0 and 1, found {v}")))
    }
}

/// A whole number at least 1.
pub fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a whole number of at least 1")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v)
                .ok()
                .filter(|&v| v >= 1)
                .ok_or_else(|| E::custom(format!("expected a whole number of at least 1, found {v}")))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            self.visit_i64(v as i64)
        }
    }
    d.deserialize_i64(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn names_are_topic_safe() {
        assert!(Name::new("gate-1_north.cam").is_ok());
        for bad in ["", "a/b", "a+b", "a#", "with space", ".hidden", &"x".repeat(65)] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_files_lose_their_trailing_newline() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap().expose(), "s3cret");
        let e = Secret::from_file(&d.path().join("nope")).unwrap_err();
        assert!(e.contains("nope"), "{e}");
    }
}
