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
    load_within(input, FETCH_TIMEOUT)
}

/// [`load`], allowing a download `limit` in all (the inference worker, which must not
/// stall long on a dead link).
pub fn load_within(input: &str, limit: Duration) -> Result<image::RgbImage, InputError> {
    let bytes = if input.starts_with("http://") || input.starts_with("https://") {
        fetch(input, limit)?
    } else {
        read_file(input)?
    };
    decode(input, &bytes)
}

/// Reads a regular file of at most [`MAX_BYTES`]. Devices and pipes (`/dev/zero`,
/// `/dev/stdin`) are refused: their size says nothing about how much they hold.
fn read_file(input: &str) -> Result<Vec<u8>, InputError> {
    use std::io::Read;
    let path = PathBuf::from(input.strip_prefix("file://").unwrap_or(input));
    let read_err = |source| InputError::Read { path: path.clone(), source };
    let file = std::fs::File::open(&path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file");
        return Err(read_err(source));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(MAX_BYTES) as usize);
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(InputError::TooLarge { input: input.to_string(), limit: MAX_BYTES });
    }
    Ok(bytes)
}

/// Decodes image bytes (JPEG or PNG, detected from content) to RGB.
pub fn decode(input: &str, bytes: &[u8]) -> Result<image::RgbImage, InputError> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| InputError::Decode { input: input.to_string(), reason: e.to_string() })?;
    Ok(img.to_rgb8())
}

fn fetch(url: &str, limit: Duration) -> Result<Vec<u8>, InputError> {
    let err = |reason: String| InputError::Fetch { url: url.to_string(), reason };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT.min(limit)))
        .timeout_global(Some(limit))
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
    fn devices_and_pipes_are_refused() {
        let e = load("/dev/zero").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    /// A server that accepts and then says nothing: only the time limit ends the fetch.
    #[test]
    fn silent_servers_time_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/car.jpg", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(fetch(&url, Duration::from_millis(500)));
        });
        let _accepted = listener.accept().unwrap();
        let result = rx.recv_timeout(Duration::from_secs(10)).expect("the fetch did not time out");
        assert!(matches!(result, Err(InputError::Fetch { .. })), "{result:?}");
    }
}
