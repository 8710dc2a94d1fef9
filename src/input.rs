//! Images the operator names on the command line: a file path or an http(s) URL.
//!
//! URLs are fetched with bounded time and size so that `classify` on a dead or huge
//! link fails with a message instead of hanging or filling memory. Every failure names
//! the input, so a batch of inputs can report each one and carry on with the rest.

use std::path::PathBuf;
use std::time::Duration;

/// Largest image accepted, file or download.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Time allowed to connect to an image URL.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a whole download.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot fetch {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{input} is larger than {limit} bytes")]
    TooLarge { input: String, limit: u64 },
    #[error("{input} is not a readable image: {reason}")]
    Decode { input: String, reason: String },
}

/// Reads `input` (path, `file://` path or http(s) URL) as 8-bit RGB.
pub fn load(input: &str) -> Result<image::RgbImage, InputError> {
    let bytes = if input.starts_with("http://") || input.starts_with("https://") {
        fetch(input)?
    } else {
        let path = PathBuf::from(input.strip_prefix("file://").unwrap_or(input));
        let len = std::fs::metadata(&path).map_err(|source| InputError::Read { path: path.clone(), source })?.len();
        if len > MAX_BYTES {
            return Err(InputError::TooLarge { input: input.to_string(), limit: MAX_BYTES });
        }
        std::fs::read(&path).map_err(|source| InputError::Read { path, source })?
    };
    decode(input, &bytes)
}

/// Decodes image bytes (JPEG or PNG, detected from content) to RGB.
pub fn decode(input: &str, bytes: &[u8]) -> Result<image::RgbImage, InputError> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| InputError::Decode { input: input.to_string(), reason: e.to_string() })?;
    Ok(img.to_rgb8())
}

fn fetch(url: &str) -> Result<Vec<u8>, InputError> {
    let err = |reason: String| InputError::Fetch { url: url.to_string(), reason };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(FETCH_TIMEOUT))
        .max_redirects(5)
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| err(e.to_string()))?;
    let body = response.body_mut().with_config().limit(MAX_BYTES).read_to_vec();
    body.map_err(|e| match e {
        ureq::Error::BodyExceedsLimit(_) => InputError::TooLarge { input: url.to_string(), limit: MAX_BYTES },
        e => err(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_garbage_are_named() {
        let e = load("/nonexistent/car.jpg").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/car.jpg"), "{e}");
        let e = decode("junk.png", b"not an image").unwrap_err();
        assert!(matches!(e, InputError::Decode { .. }), "{e}");
        assert!(e.to_string().contains("junk.png"));
    }

    #[test]
    fn unreachable_urls_fail_fast() {
        // Port 9 (discard) on loopback: nothing listens there in a test sandbox.
        let start = std::time::Instant::now();
        let e = load("http://127.0.0.1:9/car.jpg").unwrap_err();
        assert!(matches!(e, InputError::Fetch { .. }), "{e}");
        assert!(start.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1));
    }
}
