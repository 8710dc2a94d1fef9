//! `carwatch.toml`: the operator's file, read once at start-up into typed sections.
//!
//! Nothing after start-up reads raw TOML: each stage gets its own typed section. Paths
//! that are relative resolve against the working directory (the unit file sets it).
//! Every problem in the file is reported at once with file:line:column, so an operator
//! fixes them in one pass; see [`document`].

pub mod document;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use document::Document;
pub use document::{Problem, Problems};

use crate::model::{DeviceChoice, PrecisionChoice};

/// Where carwatch looks for its config when none is given.
pub const DEFAULT_PATH: &str = "config/carwatch.toml";

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, for messages.
    pub file: PathBuf,
    /// Everything carwatch writes besides snapshots (feature cache, outbox).
    pub state_dir: PathBuf,
    /// The alert descriptions file.
    pub alerts: PathBuf,
    pub model: ModelConfig,
}

/// `[model]`: which trained cascade to load, where and how to run it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Directory holding `cascade.toml` (which names the backbone weights).
    #[serde(default = "default_model_dir")]
    pub dir: PathBuf,
    #[serde(default)]
    pub device: DeviceChoice,
    #[serde(default)]
    pub precision: PrecisionChoice,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { dir: default_model_dir(), device: DeviceChoice::Auto, precision: PrecisionChoice::Auto }
    }
}

fn default_model_dir() -> PathBuf {
    PathBuf::from("models")
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(Problems),
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::parse(path, &text).map_err(ConfigError::Invalid)
    }

    /// Parses `text` as if read from `path`, collecting every problem.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Problems> {
        let mut doc = Document::parse(path, text);
        doc.reject_unknown_keys(&["state_dir", "alerts", "model"]);
        let state_dir = doc.section::<PathBuf>("state_dir").map(|s| s.into_inner());
        let alerts = doc.section::<PathBuf>("alerts").map(|s| s.into_inner());
        let model = doc.section::<ModelConfig>("model").map(|s| s.into_inner());
        let problems = doc.into_problems();
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        Ok(Config {
            file: path.to_path_buf(),
            state_dir: state_dir.unwrap_or_else(|| PathBuf::from("/var/lib/carwatch")),
            alerts: alerts.unwrap_or_else(|| PathBuf::from("config/alerts.toml")),
            model: model.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Precision;

    fn parse(text: &str) -> Result<Config, Problems> {
        Config::parse(Path::new("carwatch.toml"), text)
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = parse("").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/carwatch"));
        assert_eq!(c.alerts, PathBuf::from("config/alerts.toml"));
        assert_eq!(c.model.dir, PathBuf::from("models"));
        assert_eq!(c.model.device, DeviceChoice::Auto);
    }

    #[test]
    fn typed_values_parse() {
        let c =
            parse("state_dir = \"/tmp/s\"\n[model]\ndir = \"m\"\ndevice = \"cuda:1\"\nprecision = \"bf16\"\n").unwrap();
        assert_eq!(c.model.device, DeviceChoice::Cuda(1));
        assert_eq!(c.model.precision, PrecisionChoice::Exactly(Precision::Bf16));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_all_reported_with_lines() {
        let text = "state_dir = \"/tmp/s\"\nfrobnicate = 1\n\n[model]\ndevice = \"gpu\"\nprecison = \"fp32\"\n";
        let problems = parse(text).unwrap_err().0;
        let at: Vec<(usize, usize)> = problems.iter().map(|p| (p.line, p.column)).collect();
        assert_eq!(at, vec![(2, 1), (5, 10)], "{problems:?}");
        assert!(problems[0].reason.contains("unknown key `frobnicate`"), "{}", problems[0]);
        assert!(problems[1].reason.contains("unknown device `gpu`"), "{}", problems[1]);
        let shown = Problems(problems).to_string();
        assert!(shown.starts_with("carwatch.toml:2:1: frobnicate: unknown key"), "{shown}");

        // serde stops at the first problem inside one section; the misspelt key is
        // reported once the device is fixed.
        let problems = parse("[model]\ndevice = \"cpu\"\nprecison = \"fp32\"\n").unwrap_err().0;
        assert_eq!((problems[0].line, problems[0].column), (3, 1), "{problems:?}");
        assert!(problems[0].reason.contains("unknown field `precison`"), "{}", problems[0]);
    }

    #[test]
    fn wrong_types_are_reported() {
        let problems = parse("state_dir = 5\n[model]\ndir = [1]\n").unwrap_err().0;
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].line, 1);
        assert_eq!(problems[1].line, 3);
    }
}
