//! `carwatch synth`: generated photos, backbones, clips and RTSP cameras.

use super::*;

pub(super) fn synth_cmd(cmd: SynthCommand) -> Result<ExitCode> {
    match cmd {
        SynthCommand::Dataset { out, per_class, seed, size } => {
            let samples = carwatch::synthetic::write_dataset(&out, per_class, seed, size)
                .with_context(|| format!("writing synthetic photos to {}", out.display()))?;
            println!("wrote {} synthetic photos to {}", samples.len(), out.display());
        }
        SynthCommand::Clip { out, scene, width, height, fps } => {
            let scene = Scene::parse(&scene, width, height, fps).map_err(anyhow::Error::msg)?;
            carwatch::synthetic::video::write_clip(&scene, &out).map_err(anyhow::Error::msg)?;
            println!("wrote a {:.0} s clip to {}", scene.period().as_secs_f64(), out.display());
        }
        SynthCommand::Rtsp { mounts, port, width, height, fps } => {
            let mut parsed = Vec::new();
            for m in &mounts {
                let (path, scene) = m.split_once('=').ok_or_else(|| anyhow::anyhow!("--mount takes PATH=SCENE"))?;
                parsed.push((path.to_string(), Scene::parse(scene, width, height, fps).map_err(anyhow::Error::msg)?));
            }
            let paths: Vec<String> = parsed.iter().map(|(p, _)| p.clone()).collect();
            let server = RtspServer::start(parsed, port, None).map_err(anyhow::Error::msg)?;
            for p in paths {
                println!("{}", server.url(&p));
            }
            let mut signals =
                signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
            let _ = signals.forever().next();
            server.stop();
        }
        SynthCommand::Backbone { out, widths, seed } => {
            let spec = match widths {
                Some(w) => {
                    VggSpec { widths: w.try_into().map_err(|_| anyhow::anyhow!("--widths takes five numbers"))? }
                }
                None => VggSpec::VGG19,
            };
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            model::weights::write_atomic(&out, &spec.random_state_dict(seed))?;
            println!("wrote random VGG weights (widths {:?}) to {}", spec.widths, out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
