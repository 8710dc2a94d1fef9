//! `carwatch bench`: model and pipeline measurements, as a table or JSON.

use super::table::{Align, Table};
use super::*;

pub(super) fn bench_cmd(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Model(a) => model(a),
        BenchCommand::Pipeline(a) => pipeline(a),
        BenchCommand::Accuracy(a) => accuracy(a),
        BenchCommand::Sightings { rows, json } => {
            let r = carwatch::bench::sightings(rows).map_err(anyhow::Error::msg)?;
            emit(json, &r, |r| {
                format!(
                    "{} sightings: {:.0} inserts/s (transactions of 1,000); by make, model and last hour {:.1} ms ({} found); a camera's last hour {:.1} ms; --like over all {:.0} ms; file {:.0} MB; resident {:.0} MB before, {:.0} MB after the inserts, {:.0} MB after --like",
                    r.rows,
                    r.inserts_per_s,
                    r.search_ms,
                    r.found,
                    r.search_recent_ms,
                    r.like_ms,
                    r.file_mb,
                    r.rss_mb_before,
                    r.rss_mb_after_inserts,
                    r.rss_mb_after_like
                )
            })
        }
        BenchCommand::Frame { frames, resolution, json } => {
            let (width, height) = resolution.size();
            let r = carwatch::bench::frame_work(frames, width, height).map_err(anyhow::Error::msg)?;
            emit(json, &r, |r| {
                format!(
                    "per frame at {} (ms, one thread): whole frame to RGB {:.2} + preprocess {:.2} (+ motion {:.2}) = {:.2}; I420 kept: copy {:.2} (into fresh memory {:.2}) + preprocess {:.2} (+ motion {:.2}) = {:.2}; a snapshot's conversion {:.2}",
                    r.resolution,
                    r.rgb_convert_ms,
                    r.rgb_preprocess_ms,
                    r.rgb_motion_ms,
                    r.rgb_convert_ms + r.rgb_preprocess_ms,
                    r.i420_copy_pooled_ms,
                    r.i420_copy_ms,
                    r.i420_preprocess_ms,
                    r.i420_motion_ms,
                    r.i420_copy_pooled_ms + r.i420_preprocess_ms,
                    r.snapshot_rgb_ms
                )
            })
        }
        BenchCommand::Locate { frames, resolution, json } => {
            let (width, height) = resolution.size();
            let r = carwatch::bench::locate(frames, width, height);
            emit(json, &r, |r| {
                format!(
                    "motion locator at {}: {:.2} ms per frame (one thread), vehicle boxed in {} of {} frames",
                    r.resolution, r.ms_per_frame, r.boxed, r.frames
                )
            })
        }
    }
}

/// One result as a JSON line, or as the sentence `text` makes of it.
fn emit<T: serde::Serialize>(json: bool, r: &T, text: impl FnOnce(&T) -> String) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
    } else {
        writeln!(out, "{}", text(r))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `models`, else `models/demo` when no trained models are installed.
fn models_or_demo(models: Option<PathBuf>) -> PathBuf {
    models.unwrap_or_else(|| {
        if PathBuf::from("models/cascade.toml").exists() {
            PathBuf::from("models")
        } else {
            PathBuf::from("models/demo")
        }
    })
}

fn accuracy(a: BenchAccuracyArgs) -> Result<ExitCode> {
    let (make, model) =
        a.wanted.split_once('/').ok_or_else(|| anyhow::anyhow!("--wanted takes MAKE/MODEL, not `{}`", a.wanted))?;
    let (width, height) = a.resolution.size();
    let opts = carwatch::bench::accuracy::AccuracyOptions {
        models: models_or_demo(a.model.models),
        device: a.model.device,
        precision: a.model.precision,
        wanted: (make.to_string(), model.to_string()),
        passages: a.passages,
        width,
        height,
        fps: a.fps,
        seed: a.seed,
        confirm_frames: a.confirm_frames,
        min_confidence: a.min_confidence,
    };
    let r = carwatch::bench::accuracy::accuracy(&opts).map_err(anyhow::Error::msg)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    writeln!(
        out,
        "wide view {} at {} analysed frames/s, {} frames, wanted {}",
        r.resolution, a.fps, r.frames, r.wanted
    )?;
    let mut table = Table::new(&[("measure", Align::Left), ("value", Align::Right), ("of", Align::Right)]);
    table.row(vec!["locating: recall (IoU >= 0.5)".into(), pct(r.locate_recall), r.truth_boxes.to_string()]);
    table.row(vec!["locating: precision".into(), pct(r.locate_precision), r.located_boxes.to_string()]);
    table.row(vec!["make+model per crop".into(), pct(r.crop_accuracy), r.crops.to_string()]);
    table.row(vec![
        "looks left out (settled, entering, or cut after whole)".into(),
        r.looks_skipped.to_string(),
        (r.crops + r.looks_skipped).to_string(),
    ]);
    table.row(vec!["make+model per track".into(), pct(r.track_accuracy), r.tracks.to_string()]);
    table.row(vec!["wanted passages hit".into(), r.hit.to_string(), r.wanted_passages.to_string()]);
    table.row(vec!["wanted passages missed".into(), r.missed.to_string(), r.wanted_passages.to_string()]);
    table.row(vec!["hits on other vehicles".into(), r.wrong.to_string(), String::new()]);
    table.row(vec!["repeated hits on one passage".into(), r.repeated.to_string(), String::new()]);
    table.row(vec!["motion ms per frame".into(), format!("{:.2}", r.cpu_ms_per_frame_locate), String::new()]);
    table.write(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

fn model(a: BenchModelArgs) -> Result<ExitCode> {
    let device = a.device.resolve()?;
    let precisions = if a.precision.is_empty() {
        match device {
            tch::Device::Cuda(_) => vec![model::Precision::Fp16, model::Precision::Bf16, model::Precision::Fp32],
            _ if model::cpu_has_native_bf16() => {
                vec![model::Precision::Fp32, model::Precision::Bf16, model::Precision::Int8]
            }
            _ => vec![model::Precision::Fp32, model::Precision::Int8],
        }
    } else {
        a.precision
            .iter()
            .map(|p| match p.parse::<PrecisionChoice>() {
                Ok(PrecisionChoice::Exactly(p)) => Ok(p),
                _ => Err(anyhow::anyhow!("--precision takes fp32, bf16, fp16 or int8, not `{p}`")),
            })
            .collect::<Result<_>>()?
    };
    let batches = match (a.quick, a.batches.is_empty(), device) {
        (true, _, _) => vec![1, 2],
        (false, false, _) => a.batches,
        (false, true, tch::Device::Cuda(_)) => vec![1, 8, 32, 64, 128, 256],
        (false, true, _) => vec![1, 4, 8, 16, 32],
    };
    let opts = carwatch::bench::ModelOptions {
        backbone: a.backbone,
        models: a.models,
        device,
        precisions,
        batches,
        min_time: std::time::Duration::from_secs_f64(if a.quick { 0.2 } else { a.seconds }),
        warmup: if a.quick { 1 } else { a.warmup },
    };
    let results = carwatch::bench::model(&opts).map_err(anyhow::Error::msg)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&results)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(r) = results.first() {
        writeln!(out, "backbone + cascade ({})", r.cascade)?;
    }
    let mut table = Table::new(&[
        ("device", Align::Left),
        ("precision", Align::Left),
        ("batch", Align::Right),
        ("img/s", Align::Right),
        ("ms/batch", Align::Right),
        ("GFLOP/s", Align::Right),
        ("backbone img/s", Align::Right),
        ("from frames img/s", Align::Right),
    ]);
    for r in &results {
        table.row(vec![
            r.device.to_string(),
            r.precision.to_string(),
            r.batch.to_string(),
            format!("{:.1}", r.img_per_s),
            format!("{:.1}", r.ms_per_batch),
            format!("{:.0}", r.gflops),
            format!("{:.1}", r.backbone_img_per_s),
            format!("{:.1}", r.from_frames_img_per_s),
        ]);
    }
    table.write(&mut out)?;
    Ok(ExitCode::SUCCESS)
}

fn pipeline(a: BenchPipelineArgs) -> Result<ExitCode> {
    let (width, height) = a.resolution.size();
    let decode: carwatch::camera::DecodeMode = serde_json::from_value(serde_json::Value::String(a.decode.clone()))
        .map_err(|_| anyhow::anyhow!("unknown --decode `{}`", a.decode))?;
    let models = models_or_demo(a.model.models);
    let opts = carwatch::bench::PipelineOptions {
        cameras: a.cameras,
        fps: a.fps,
        width,
        height,
        source_fps: a.source_fps,
        duration: std::time::Duration::from_secs_f64(a.duration),
        warmup: std::time::Duration::from_secs_f64(a.warmup),
        models,
        device: a.model.device,
        precision: a.model.precision,
        decode,
        threads: a.threads,
        scene: a.scene,
        motion: a.motion,
        locate: toml::Value::String(a.locate.clone())
            .try_into()
            .map_err(|_| anyhow::anyhow!("--locate takes frame, motion, regions or detector, not `{}`", a.locate))?,
        peer: a.peer.then_some(carwatch::bench::Peer { python: a.peer_python, script: a.peer_script }),
        no_hits: a.no_hits,
        batch: a.batch,
    };
    if a.find_max {
        return find_max(&opts, &a.wanted, a.max_cameras, a.json);
    }
    let r = carwatch::bench::pipeline(&opts).map_err(anyhow::Error::msg)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&[&r])?)?;
    } else {
        writeln!(
            out,
            "{} cameras x {} fps at {} ({}, batch {}, {}, locate {}): {:.2} frames/s analysed, {} dropped, {} answered by motion gating; latency p50/p95/p99 {:.0}/{:.0}/{:.0} ms; CPU per frame {:.1} ms decode + {:.1} ms locate + {:.1} ms inference; peak RSS {:.0} MB",
            r.cameras,
            r.fps,
            r.resolution,
            r.model,
            r.batch_max,
            r.decoder,
            r.locate,
            r.analysed_fps,
            r.dropped,
            r.motion_skipped,
            r.latency_ms_p50,
            r.latency_ms_p95,
            r.latency_ms_p99,
            r.cpu_ms_per_frame_decode,
            r.cpu_ms_per_frame_locate,
            r.cpu_ms_per_frame_infer,
            r.peak_rss_mb
        )?;
        if let (Some(p), Some(ratio), Some(peer)) = (r.peer_frames_per_s, r.ratio_to_peer, &r.peer) {
            writeln!(
                out,
                "Python peer on the same cameras ({}, {}): {:.2} frames/s analysed, {} dropped, CPU {:.1} ms per frame; carwatch/peer {:.2}x",
                peer["model"].as_str().unwrap_or("?"),
                peer["decoder"].as_str().unwrap_or("?"),
                p,
                peer["dropped"],
                peer["cpu_ms_per_frame"].as_f64().unwrap_or(0.0),
                ratio
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn find_max(opts: &carwatch::bench::PipelineOptions, wanted: &str, max_cameras: usize, json: bool) -> Result<ExitCode> {
    let r = carwatch::bench::find_max(opts, wanted, max_cameras).map_err(anyhow::Error::msg)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&r)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let side = |name: &str, s: &carwatch::bench::FindMaxSide| {
        let tried: Vec<String> = s
            .steps
            .iter()
            .map(|t| format!("{}{}", t.cameras, if t.kept_up { "" } else { " (missed or dropped)" }))
            .collect();
        format!(
            "{name}: {}{} cameras at {} fps with every passage hit and nothing dropped (tried {})",
            if s.capped { "at least " } else { "" },
            s.max_cameras,
            r.fps,
            tried.join(", ")
        )
    };
    writeln!(out, "{} traffic, {:.0} s per count ({}):", r.resolution, r.seconds, r.scene)?;
    writeln!(out, "{}", side("carwatch", &r.carwatch))?;
    if let Some(p) = &r.peer {
        writeln!(out, "{}", side("Python peer", p))?;
    }
    if let Some(ratio) = r.ratio_to_peer {
        writeln!(out, "carwatch/peer {ratio:.2}x cameras")?;
    }
    Ok(ExitCode::SUCCESS)
}
