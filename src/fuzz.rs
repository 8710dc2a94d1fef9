//! Property tests for the parsers of operator files (config and alerts): whatever the
//! text, parsing returns a value or a list of problems with positions inside the
//! file; it never panics. Bounded in cases so `make test` stays quick; raise
//! `PROPTEST_CASES` to fuzz longer.

use std::path::Path;

use proptest::prelude::*;

use crate::alerts::{AlertSet, Vocabulary};
use crate::config::Config;
use crate::model::Leaf;
use crate::rule::MatcherConfig;
use crate::values::Name;

/// Lines a config file is made of, good and bad.
const CONFIG_LINES: &[&str] = &[
    "state_dir = \"/tmp/x\"",
    "state_dir = 5",
    "alerts = \"a.toml\"",
    "status_interval_s = 2.5",
    "status_interval_s = -1",
    "[model]",
    "device = \"cuda:1\"",
    "device = \"gpu\"",
    "precision = \"bf16\"",
    "dir = []",
    "[batch]",
    "max_size = 0",
    "max_size = 8",
    "max_wait_ms = 50",
    "[matcher]",
    "confirm_frames = 3",
    "cooldown_s = \"x\"",
    "[[camera]]",
    "name = \"gate\"",
    "name = \"bad name\"",
    "url = \"rtsp://u:p@h:554/s?t=1\"",
    "url = \"::not a url\"",
    "file = \"clip.mkv\"",
    "fps = 0",
    "fps = 2",
    "regions = [{ x = 0, y = 0, width = 0.5, height = 1.0 }]",
    "regions = [{ x = 1.5, y = 0, width = 1, height = 1 }]",
    "regions = [{ x = 0.9, y = 0, width = 0.5, height = 1.0 }]",
    "password = \"pw\"",
    "password_file = \"/nonexistent\"",
    "[mqtt]",
    "url = \"mqtts://b\"",
    "url = \"mqtt://b:1883\"",
    "topic_prefix = \"a/+\"",
    "[broker]",
    "listen = \"127.0.0.1:1\"",
    "listen = \"nowhere\"",
    "[outbox]",
    "max_hits = 0",
    "unknown = true",
    "= =",
    "[[",
    "\"unterminated",
    "é = \"ü\"",
    "",
];

const ALERT_LINES: &[&str] = &[
    "[[alert]]",
    "id = \"a1\"",
    "id = \"a 1\"",
    "make = \"bmw\"",
    "make = \"BMW\"",
    "make = \"tesla\"",
    "make = 7",
    "model = \"x5\"",
    "model = \"a4\"",
    "view = \"front\"",
    "view = \"top\"",
    "cameras = [\"gate\"]",
    "cameras = [\"roof\"]",
    "min_confidence = 0.6",
    "min_confidence = 2",
    "expires = 2026-12-01T00:00:00Z",
    "expires = 2026-12-01T00:00:00",
    "expires = \"tomorrow\"",
    "note = \"case 1\"",
    "confirm_frames = 0",
    "cooldown_s = 5",
    "[alert]",
    "x = = y",
    "",
];

fn document(lines: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(lines), 0..24).prop_map(|l| l.join("\n"))
}

fn vocabulary() -> Vocabulary {
    let leaf = |v: &str, m: &str, o: &str| Leaf { view: v.into(), make: m.into(), model: o.into() };
    Vocabulary {
        leaves: vec![leaf("front", "bmw", "x5"), leaf("angled", "audi", "a4")],
        cameras: vec![Name::new("gate").unwrap()],
    }
}

fn positions_are_inside(problems: &[crate::document::Problem], text: &str) -> bool {
    let lines = text.lines().count().max(1) + 1;
    problems.iter().all(|p| p.line >= 1 && p.line <= lines && p.column >= 1 && !p.reason.is_empty())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn config_parser_never_panics_on_any_text(text in "\\PC{0,300}") {
        if let Err(p) = Config::parse(Path::new("c.toml"), &text) {
            prop_assert!(positions_are_inside(&p.0, &text), "{p}");
        }
    }

    #[test]
    fn config_parser_handles_any_mix_of_good_and_bad_lines(text in document(CONFIG_LINES)) {
        if let Err(p) = Config::parse(Path::new("c.toml"), &text) {
            prop_assert!(!p.0.is_empty());
            prop_assert!(positions_are_inside(&p.0, &text), "{p}");
        }
    }

    #[test]
    fn alert_parser_never_panics(text in prop_oneof![document(ALERT_LINES), "\\PC{0,200}"]) {
        if let Err(p) = AlertSet::parse(Path::new("a.toml"), &text, &vocabulary(), &MatcherConfig::default()) {
            prop_assert!(!p.0.is_empty());
            prop_assert!(positions_are_inside(&p.0, &text), "{p}");
        }
    }
}
