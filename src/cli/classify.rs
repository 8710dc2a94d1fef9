//! `carwatch classify`: images or URLs through backbone and cascade, as text or JSON.

use super::*;

pub(super) fn classify_cmd(a: ClassifyArgs) -> Result<ExitCode> {
    let config = if a.config.exists() { Some(Config::load(&a.config)?) } else { None };
    let models =
        a.models.clone().or(config.as_ref().map(|c| c.model.dir.clone())).unwrap_or_else(|| PathBuf::from("models"));
    let device = a.placement.device.or(config.as_ref().map(|c| c.model.device)).unwrap_or_default();
    let precision = a.placement.precision.or(config.as_ref().map(|c| c.model.precision)).unwrap_or_default();
    let recognizer = Recognizer::load_choosing(&models, device, precision)
        .with_context(|| format!("loading models from {}", models.display()))?;
    if let Some(notice) = recognizer.cascade.notice() {
        eprintln!("NOTE: {notice}");
    }
    let placement = recognizer.backbone.placement();
    tracing::info!("classifying on {}", placement.describe());

    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    // Load and classify in small batches (one backbone pass each, memory bounded);
    // results come out in input order.
    for chunk in a.inputs.chunks(8) {
        let loaded: Vec<Result<image::RgbImage, String>> =
            chunk.iter().map(|input| carwatch::input::load(input).map_err(|e| e.to_string())).collect();
        let views = carwatch::model::preprocess::whole(loaded.iter().flatten());
        let mut predictions = match recognizer.classify(&views) {
            Ok(p) => p.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => views.iter().map(|_| Err(e.to_string())).collect(),
        }
        .into_iter();
        for (input, image) in chunk.iter().zip(loaded) {
            let result = image.and_then(|_| predictions.next().unwrap_or_else(|| Err("no prediction".into())));
            match result {
                Ok(p) if a.json => writeln!(out, "{}", prediction_json(input, &p))?,
                Ok(p) => write_prediction(&mut out, input, &p)?,
                Err(e) => {
                    failed += 1;
                    report_failure(&mut out, a.json, input, &e)?;
                }
            }
        }
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn report_failure(out: &mut impl Write, json: bool, input: &str, error: &str) -> Result<()> {
    if json {
        writeln!(out, "{}", json!({ "input": input, "error": error }))?;
    }
    eprintln!("{input}: {error}");
    Ok(())
}

fn prediction_json(input: &str, p: &Prediction) -> serde_json::Value {
    let levels: Vec<_> = p
        .path
        .iter()
        .map(|c| {
            json!({
                "level": c.level,
                "label": c.label,
                "probability": c.p,
                "top": c.top.iter().map(|(l, q)| json!({ "label": l, "probability": q })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let marginal =
        |level| p.marginal(level).into_iter().map(|(l, q)| json!({ "label": l, "probability": q })).collect::<Vec<_>>();
    json!({
        "input": input,
        "view": p.label(Level::View),
        "make": p.label(Level::Make),
        "model": p.label(Level::Model),
        "confidence": p.confidence(),
        "levels": levels,
        "marginals": {
            "view": marginal(Level::View),
            "make": marginal(Level::Make),
            "make_model": p.make_models().into_iter().map(|((m, o), q)| json!({ "make": m, "model": o, "probability": q })).collect::<Vec<_>>(),
        },
    })
}

fn write_prediction(out: &mut impl Write, input: &str, p: &Prediction) -> Result<()> {
    writeln!(
        out,
        "{input}: {} / {} / {}  (confidence {:.3})",
        p.label(Level::View),
        p.label(Level::Make),
        p.label(Level::Model),
        p.confidence()
    )?;
    for c in &p.path {
        let alternatives: Vec<String> = c.top.iter().skip(1).map(|(l, q)| format!("{l} {q:.3}")).collect();
        writeln!(out, "  {:<6} {:<16} {:.3}   {}", c.level.name(), c.label, c.p, alternatives.join(", "))?;
    }
    Ok(())
}
