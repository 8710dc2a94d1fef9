//! `carwatch search`: the vehicles `watch` remembered, by description, camera and time.

use super::table::{Align, Table};
use super::*;

use carwatch::sightings::{Query, Sighting, Store};

pub(super) fn search_cmd(a: SearchArgs) -> Result<ExitCode> {
    let config = Config::load(&a.config)?;
    let refuse = |msg: String| -> Result<ExitCode> {
        eprintln!("{msg}");
        Ok(ExitCode::from(EXIT_CONFIG))
    };
    if a.model.is_some() && a.make.is_none() {
        return refuse("--model needs --make".into());
    }
    // Makes and models are checked against the models' labels, as alerts are.
    match carwatch::model::Manifest::load(&config.model.dir) {
        Ok(manifest) => {
            let leaves = manifest.leaves();
            if let Some(make) = &a.make
                && !leaves.iter().any(|l| l.make == make.as_str())
            {
                let mut makes: Vec<String> = leaves.iter().map(|l| l.make.to_string()).collect();
                makes.dedup();
                return refuse(format!("unknown make `{make}`; the models know: {}", makes.join(", ")));
            }
            if let (Some(make), Some(model)) = (&a.make, &a.model)
                && !leaves.iter().any(|l| l.make == make.as_str() && l.model == model.as_str())
            {
                return refuse(format!("unknown model `{model}` of make `{make}`"));
            }
        }
        Err(e) => eprintln!("note: makes and models not checked: {e}"),
    }
    let now = jiff::Timestamp::now();
    let since = match a.since.as_deref().map(|s| when(s, now)).transpose() {
        Ok(t) => t,
        Err(e) => return refuse(format!("--since: {e}")),
    };
    let until = match a.until.as_deref().map(|s| when(s, now)).transpose() {
        Ok(t) => t,
        Err(e) => return refuse(format!("--until: {e}")),
    };
    if let Some(c) = &a.camera
        && !config.cameras.iter().any(|k| k.name.as_str() == c)
    {
        eprintln!("note: camera `{c}` is not in {}; searching its past sightings anyway", config.file.display());
    }
    let path = config.sightings.path(&config.state_dir);
    let store = match Store::open_read_only(&path) {
        Ok(s) => s,
        Err(e) => return refuse(e.to_string()),
    };
    let colour = match a.colour.as_deref().map(|c| carwatch::colour::Colour::parse(c).ok_or(c)).transpose() {
        Ok(c) => c,
        Err(c) => {
            return refuse(format!(
                "unknown colour `{c}`; carwatch names black, white, grey (or silver), red, orange, yellow, green, blue, brown, purple"
            ));
        }
    };
    let like = match &a.like {
        None => None,
        Some(photo) => {
            if let Err(e) = carwatch::input::load(photo) {
                return refuse(format!("--like: {e}"));
            }
            let recognizer = Recognizer::load_choosing(&config.model.dir, config.model.device, config.model.precision)
                .with_context(|| format!("loading models from {} for --like", config.model.dir.display()))?;
            match carwatch::example::of_photos(std::slice::from_ref(photo), &recognizer) {
                Ok(d) => Some(d.embedding),
                Err(e) => return refuse(format!("--like: {e}")),
            }
        }
    };
    let query = Query {
        like,
        min_similarity: a.min_similarity,
        ended_only: false,
        colour,
        make: a.make.clone(),
        model: a.model.clone(),
        camera: a.camera.clone(),
        since,
        until,
        min_confidence: a.min_confidence,
        limit: a.limit,
    };
    let found = store.search(&query).map_err(anyhow::Error::from)?;
    let mut out = std::io::stdout().lock();
    let confidence = |s: &Sighting| match &a.make {
        Some(m) => s.probability(m, a.model.as_deref()),
        None => s.confidence,
    };
    if a.json {
        for s in &found {
            let mut v = carwatch::publish::sighting_payload(s);
            v["confidence"] = serde_json::json!(confidence(s));
            v["thumbnail"] = serde_json::json!(s.thumbnail);
            if let Some(sim) = s.similarity {
                v["similarity"] = serde_json::json!(sim);
            }
            writeln!(out, "{v}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("time", Align::Left),
        ("camera", Align::Left),
        ("track", Align::Right),
        ("vehicle", Align::Left),
        ("confidence", Align::Right),
        ("similarity", Align::Right),
        ("thumbnail", Align::Left),
    ]);
    for s in &found {
        table.row(vec![
            carwatch::time::rfc3339(s.last_seen),
            s.camera.clone(),
            s.track_id.to_string(),
            format!("{} {} {} ({})", s.colour.name(), s.make, s.model, s.view),
            format!("{:.2}", confidence(s)),
            s.similarity.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into()),
            s.thumbnail.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        ]);
    }
    table.write(&mut out)?;
    writeln!(out, "{} sighting(s)", found.len())?;
    Ok(ExitCode::SUCCESS)
}

/// `2h`, `30m`, `90s`, `1d` before `now`, or an RFC 3339 time.
fn when(text: &str, now: jiff::Timestamp) -> std::result::Result<jiff::Timestamp, String> {
    let bad = || format!("`{text}` is neither a span like 2h, 30m, 90s or 1d nor a time like 2026-11-30T08:00:00Z");
    let unit = text.chars().last().ok_or_else(bad)?;
    let seconds_per = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86_400.0,
        _ => return text.parse::<jiff::Timestamp>().map_err(|_| bad()),
    };
    let n: f64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    if !(n.is_finite() && n >= 0.0 && n * seconds_per <= 3650.0 * 86_400.0) {
        return Err(bad());
    }
    now.checked_sub(jiff::SignedDuration::from_secs_f64(n * seconds_per)).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_times() {
        let now: jiff::Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        assert_eq!(when("2h", now).unwrap().to_string(), "2026-11-30T10:00:00Z");
        assert_eq!(when("90s", now).unwrap().to_string(), "2026-11-30T11:58:30Z");
        assert_eq!(when("2026-11-29T08:00:00Z", now).unwrap().to_string(), "2026-11-29T08:00:00Z");
        for bad in ["", "h", "yesterday", "-2h", "1e300d", "2026-13-01T00:00:00Z"] {
            assert!(when(bad, now).is_err(), "{bad}");
        }
    }
}
