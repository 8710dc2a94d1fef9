//! `carwatch check`: config, alerts and models, every problem listed (exit 2).

use super::*;

pub(super) fn check_cmd(a: CheckArgs) -> Result<ExitCode> {
    let config = match Config::load(&a.config) {
        Ok(c) => c,
        Err(ConfigError::Invalid(problems)) => {
            println!("{problems}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        Err(e) => {
            println!("{e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let mut problems: Vec<String> = Vec::new();
    // Shapes are checked by loading on the CPU in fp32: no GPU needed to check a config.
    let cpu = Placement { device: tch::Device::Cpu, precision: model::Precision::Fp32 };
    let mut recognizer = None;
    match Recognizer::load(&config.model.dir, cpu) {
        Ok(r) => {
            if let Some(n) = r.cascade.notice() {
                println!("note: {n}");
            }
            println!(
                "models {}: backbone widths {:?}, {} leaves",
                config.model.dir.display(),
                r.backbone.spec().widths,
                r.cascade.leaves().len()
            );
            recognizer = Some(r);
        }
        Err(e) => problems.push(format!("models {}: {e}", config.model.dir.display())),
    }
    if let Some(r) = &recognizer {
        let leaves = r.cascade.leaves().to_vec();
        let vocabulary = Vocabulary { leaves, cameras: config.cameras.iter().map(|c| c.name.clone()).collect() };
        match AlertSet::load(&config.alerts, &vocabulary, &config.matcher) {
            Ok(set) => {
                println!("alerts {}: {} alert(s)", config.alerts.display(), set.alerts.len());
                // Example photos are read and classified as `watch` will: each one that
                // fails is named (watch would leave its alert out).
                let (derived, failed) = carwatch::example::derive(set, &AlertSet::default(), r);
                for a in derived.alerts.iter().filter(|a| a.example.is_some()) {
                    println!("alert {}: the example shows {}", a.id, a.describe());
                }
                problems.extend(failed.iter().map(|p| p.to_string()));
            }
            Err(AlertsError::Invalid(p)) => problems.extend(p.0.iter().map(|p| p.to_string())),
            Err(e) => problems.push(e.to_string()),
        }
    } else {
        println!("alerts {}: not checked (they are checked against the models' labels)", config.alerts.display());
    }
    let detecting = config.cameras.iter().filter(|c| c.locate == carwatch::locate::Method::Detector).count();
    if let (Some(d), true) = (&config.detector, detecting > 0) {
        // Loaded and run once, as `watch` does at start-up: a bad file fails here.
        match carwatch::locate::detector::check_file(d) {
            Ok(()) => println!("detector {}: ok ({detecting} camera(s))", d.file.display()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    println!("{} camera(s)", config.cameras.len());
    if problems.is_empty() {
        println!("{}: ok", config.file.display());
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            println!("{p}");
        }
        Ok(ExitCode::from(EXIT_CONFIG))
    }
}
