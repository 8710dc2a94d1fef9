//! How an alert turns matching frames into a hit: the confirmation and cooldown rule,
//! and `[matcher]`, the defaults every alert's rule starts from.
//!
//! Its own module so that the alerts (which carry a rule) and the matcher (which
//! applies it) both depend on it, and not on each other.

use std::time::Duration;

use serde::Deserialize;

use crate::values::{positive, seconds};

/// `[matcher]`: defaults for every alert (each may override them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatcherConfig {
    #[serde(default = "default_frames", deserialize_with = "positive")]
    pub confirm_frames: u32,
    #[serde(default = "default_window", deserialize_with = "seconds", rename = "confirm_window_s")]
    pub confirm_window: Duration,
    #[serde(default = "default_cooldown", deserialize_with = "seconds", rename = "cooldown_s")]
    pub cooldown: Duration,
}

fn default_frames() -> u32 {
    2
}

fn default_window() -> Duration {
    Duration::from_secs(10)
}

fn default_cooldown() -> Duration {
    Duration::from_secs(60)
}

impl Default for MatcherConfig {
    fn default() -> Self {
        MatcherConfig {
            confirm_frames: default_frames(),
            confirm_window: default_window(),
            cooldown: default_cooldown(),
        }
    }
}

/// Confirmation and cooldown of one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub confirm_frames: u32,
    pub window: Duration,
    pub cooldown: Duration,
}
