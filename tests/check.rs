//! `carwatch check`: every problem listed with file:line:column, exit status 2.

use std::time::Duration;

use crate::support::{self, carwatch, run, stdout, trained, write};

#[test]
fn bad_config_lists_every_problem_with_positions() {
    let dir = support::tempdir();
    let cfg = dir.path().join("carwatch.toml");
    write(&cfg, "state_dir = \"/tmp/x\"\ncolour = \"red\"\n\n[model]\ndevice = \"gpu\"\n");
    let mut cmd = carwatch();
    cmd.arg("check").arg("--config").arg(&cfg);
    let o = run(cmd, Duration::from_secs(10));
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let text = stdout(&o);
    let path = cfg.display().to_string();
    assert!(text.contains(&format!("{path}:2:1: colour: unknown key")), "{text}");
    assert!(text.contains(&format!("{path}:5:10: model: unknown device `gpu`")), "{text}");
}

#[test]
fn good_config_with_trained_models_passes() {
    let t = trained();
    let dir = support::tempdir();
    let cfg = dir.path().join("carwatch.toml");
    write(
        &cfg,
        &format!(
            "state_dir = \"{}\"\n[model]\ndir = \"{}\"\ndevice = \"cpu\"\n",
            dir.path().display(),
            t.models.display()
        ),
    );
    let mut cmd = carwatch();
    cmd.arg("check").arg("--config").arg(&cfg);
    let o = run(cmd, Duration::from_secs(30));
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("27 leaves"), "{}", stdout(&o));
}

#[test]
fn without_config_the_environment_names_the_file() {
    let dir = support::tempdir();
    let cfg = dir.path().join("elsewhere.toml");
    write(&cfg, "state_dir = \"/tmp/x\"\nshade = \"red\"\n");
    // From a directory with no config/carwatch.toml: $CARWATCH_CONFIG is the one read.
    let mut cmd = carwatch();
    cmd.arg("check").current_dir(dir.path()).env("CARWATCH_CONFIG", &cfg);
    let o = run(cmd, Duration::from_secs(10));
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stdout(&o).contains(&format!("{}:2:1: shade: unknown key", cfg.display())), "{}", stdout(&o));
}

#[test]
fn models_whose_heads_do_not_fit_the_backbone_are_reported() {
    let t = trained();
    let dir = support::tempdir();
    // Same heads, but the manifest claims the full VGG-19 widths: every head's input
    // size is now wrong, and so is the backbone file.
    let models = dir.path().join("models");
    copy_dir(&t.models, &models);
    let text = std::fs::read_to_string(models.join("cascade.toml")).unwrap();
    let mut manifest: toml::Table = toml::from_str(&text).unwrap();
    let widths = toml::Value::Array([64, 128, 256, 512, 512].into_iter().map(toml::Value::Integer).collect());
    manifest["backbone"].as_table_mut().unwrap().insert("widths".into(), widths);
    write(&models.join("cascade.toml"), &toml::to_string(&manifest).unwrap());
    let cfg = dir.path().join("carwatch.toml");
    write(&cfg, &format!("[model]\ndir = \"{}\"\n", models.display()));
    let mut cmd = carwatch();
    cmd.arg("check").arg("--config").arg(&cfg);
    let o = run(cmd, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(2));
    let text = stdout(&o);
    assert!(text.contains("features.0.weight") && text.contains("expected [64, 3, 3, 3]"), "{text}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn relative_paths_resolve_against_the_config_file_not_the_working_directory() {
    let t = trained();
    let dir = support::tempdir();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::os::unix::fs::symlink(&t.models, etc.join("models")).unwrap();
    write(&etc.join("alerts.toml"), "[[alert]]\nid = \"bmw\"\nmake = \"bmw\"\n");
    let cfg = etc.join("carwatch.toml");
    write(&cfg, "state_dir = \"../state\"\nalerts = \"alerts.toml\"\n[model]\ndir = \"models\"\ndevice = \"cpu\"\n");
    // From another directory, where none of those relative paths exist.
    let mut cmd = carwatch();
    cmd.arg("check").arg("--config").arg(&cfg).current_dir("/");
    let o = run(cmd, Duration::from_secs(30));
    let text = stdout(&o);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("27 leaves") && text.contains("1 alert"), "{text}");
    assert!(text.contains(&etc.join("alerts.toml").display().to_string()), "{text}");
}
