//! Small typed values that config sections share: durations, names that end up in MQTT
//! topics, secrets. Each validates while deserialising, so a bad value is reported at
//! its own line and column.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// The longest duration any setting takes: ten years. Longer ones are typos (or a
/// value in the wrong unit), and near `u64::MAX` seconds `Instant + d` would panic.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A non-negative number of seconds (integer or fraction) up to [`MAX_DURATION`].
pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = f64::deserialize(d)?;
    if !(v.is_finite() && (0.0..=MAX_DURATION.as_secs_f64()).contains(&v)) {
        return Err(de::Error::custom(format!(
            "expected a number of seconds from 0 to {} (ten years), found {v}",
            MAX_DURATION.as_secs()
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A non-negative whole number of milliseconds up to [`MAX_DURATION`].
pub fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = u64::deserialize(d)?;
    let max = MAX_DURATION.as_millis() as u64;
    if v > max {
        return Err(de::Error::custom(format!("expected milliseconds from 0 to {max} (ten years), found {v}")));
    }
    Ok(Duration::from_millis(v))
}

/// `now + d` for live paths: never panics, however long `d` is (saturating at
/// [`MAX_DURATION`] past `now`, then at `now`).
pub fn later(now: std::time::Instant, d: Duration) -> std::time::Instant {
    now.checked_add(d).or_else(|| now.checked_add(MAX_DURATION)).unwrap_or(now)
}

/// A whole number of bytes, 1 to 1 TiB.
pub fn byte_count<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = i64::deserialize(d)?;
    match u64::try_from(v) {
        Ok(n) if (1..=1 << 40).contains(&n) => Ok(n),
        _ => Err(de::Error::custom(format!("expected a number of bytes from 1 to {} (1 TiB), found {v}", 1u64 << 40))),
    }
}

/// A whole number from `min` to `max`, for counts that size allocations.
pub fn bounded<'de, D: Deserializer<'de>>(d: D, min: u32, max: u32) -> Result<u32, D::Error> {
    let v = i64::deserialize(d)?;
    u32::try_from(v)
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| de::Error::custom(format!("expected a whole number from {min} to {max}, found {v}")))
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

pub(crate) fn resolve_credential_path(path: &Path) -> PathBuf {
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

/// A user name and password, from a config section's fields, its password file, and
/// the userinfo of its URL, in that order of precedence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl Credentials {
    /// Resolves the credentials of a camera or broker section and takes them out of
    /// `url`, so the URL can be logged. The userinfo is percent-decoded as RFC 3986 says
    /// (`p%40ss` is `p@ss`; `+` stays a plus, `&` and `=` are ordinary characters): the
    /// one place cameras and MQTT share, so both read a URL alike.
    pub fn resolve(
        url: &mut url::Url,
        username: Option<&str>,
        password: Option<&Secret>,
        password_file: Option<&Path>,
    ) -> Result<Credentials, String> {
        if password.is_some() && password_file.is_some() {
            return Err("give either password or password_file, not both".into());
        }
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| "the URL's user name or password is not valid UTF-8 once percent-decoded".to_string())
        };
        let mut out = Credentials { username: username.map(str::to_string), password: password.cloned() };
        if let Some(f) = password_file {
            out.password = Some(Secret::from_file(f)?);
        }
        if !url.username().is_empty() && out.username.is_none() {
            out.username = Some(decode(url.username())?);
        }
        if let Some(p) = url.password()
            && out.password.is_none()
        {
            out.password = Some(Secret::new(decode(p)?));
        }
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(out)
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

    #[derive(Debug, Deserialize)]
    struct D {
        #[serde(deserialize_with = "seconds")]
        s: Duration,
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(toml::from_str::<D>("s = 1.5").unwrap().s, Duration::from_millis(1500));
        for bad in ["s = 1e300", "s = -1", "s = nan", "s = inf", "s = 315360001"] {
            let e = toml::from_str::<D>(bad).unwrap_err().to_string();
            assert!(e.contains("ten years"), "{bad}: {e}");
        }
        let now = std::time::Instant::now();
        assert!(later(now, Duration::MAX) > now, "no panic, and still in the future");
    }

    #[test]
    fn credentials_in_urls_are_percent_decoded_and_removed() {
        // `+`, `&`, `=`, `@`, `%` and `:` in a password, as an operator's URL encodes them.
        let mut url = url::Url::parse("rtsp://ad%3Amin:a+b%26c%3Dd%40e%25f%3Ag@cam:554/s?x=1").unwrap();
        let c = Credentials::resolve(&mut url, None, None, None).unwrap();
        assert_eq!(c.username.as_deref(), Some("ad:min"));
        assert_eq!(c.password.unwrap().expose(), "a+b&c=d@e%f:g");
        assert_eq!(url.as_str(), "rtsp://cam:554/s?x=1");
        // Fields win over the URL; a password and a password file together are refused.
        let mut url = url::Url::parse("mqtt://u:p@b").unwrap();
        let c = Credentials::resolve(&mut url, Some("field"), Some(&Secret::new("pw")), None).unwrap();
        assert_eq!((c.username.as_deref(), c.password.unwrap().expose()), (Some("field"), "pw"));
        let both = Credentials::resolve(&mut url, None, Some(&Secret::new("a")), Some(Path::new("f")));
        assert!(both.unwrap_err().contains("not both"));
    }

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
