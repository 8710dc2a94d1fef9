//! Alerts by example photo: "a car like this one".
//!
//! An `[[alert]]` with `example = "suspect.jpg"` names a photo rather than (or as well
//! as) a description. When the alert arrives, the inference worker (the model's only
//! owner) runs each photo through backbone and cascade, takes the mean of their
//! predictions and embeddings, estimates the colour, and fills in the alert's
//! [`Derived`]. From then on the alert matches like one written out by hand, plus, with
//! `min_similarity`, a cosine similarity of embeddings.
//!
//! A photo that cannot be read, fetched or decoded rejects its alert alone: the others
//! keep working, and the problem (with the line of the `example` key) goes to the log
//! and to `{prefix}/errors`. Alerts whose definition did not change keep what was derived
//! for them, so a reload of the file does not read every photo again.

use std::sync::Arc;
use std::time::Duration;

use crate::alerts::{Alert, AlertSet, Derived};
use crate::colour::Colour;
use crate::document::Problem;
use crate::model::{Average, Level, Recognizer};

/// Longest a photo URL may take to download (the worker waits for it).
pub const FETCH_LIMIT: Duration = Duration::from_secs(10);

/// `set` with every example derived: from `previous` where an alert is unchanged,
/// else through `recognizer`. Alerts whose photos fail are left out, with a problem
/// each.
pub fn derive(set: AlertSet, previous: &AlertSet, recognizer: &Recognizer) -> (AlertSet, Vec<Problem>) {
    let mut alerts = Vec::with_capacity(set.alerts.len());
    let mut problems = Vec::new();
    for alert in set.alerts {
        if !alert.underived() {
            alerts.push(alert);
            continue;
        }
        if let Some(known) = previous.alerts.iter().find(|old| same_but_derived(old, &alert)) {
            alerts.push(Arc::clone(known));
            continue;
        }
        let Some(example) = &alert.example else { continue };
        match of_photos(&example.photos, recognizer) {
            Ok(derived) => {
                tracing::info!(
                    alert = %alert.id,
                    "alert {}: the example shows a {} {} {} ({})",
                    alert.id,
                    derived.colour.map_or("", Colour::name),
                    derived.make,
                    derived.model,
                    derived.view
                );
                let mut a = (*alert).clone();
                if let Some(e) = a.example.as_mut() {
                    e.derived = Some(derived);
                }
                alerts.push(Arc::new(a));
            }
            Err(reason) => {
                let reason = format!("alert `{}` is not in force: {reason}", alert.id);
                tracing::error!(alert = %alert.id, "{}:{}: {reason}", example.at.file.display(), example.at.line);
                problems.push(Problem { reason, ..example.at.clone() });
            }
        }
    }
    (AlertSet { alerts }, problems)
}

/// Whether `old` is `new` with its example derived.
fn same_but_derived(old: &Alert, new: &Alert) -> bool {
    if old.underived() || old.example.is_none() {
        return false;
    }
    let mut bare = old.clone();
    if let Some(e) = bare.example.as_mut() {
        e.derived = None;
    }
    bare == *new
}

/// What the model makes of `photos` together.
pub fn of_photos(photos: &[String], recognizer: &Recognizer) -> Result<Derived, String> {
    let mut images = Vec::with_capacity(photos.len());
    for p in photos {
        images.push(crate::input::load_within(p, FETCH_LIMIT).map_err(|e| format!("example photo {e}"))?);
    }
    let views = crate::model::preprocess::whole(images.iter());
    let predictions = recognizer.classify(&views).map_err(|e| format!("classifying the example photos: {e}"))?;
    let (first, rest) = predictions.split_first().ok_or("no example photo")?;
    let mut mean = Average::new(first);
    for p in rest {
        mean.add(p);
    }
    let p = mean.prediction();
    let embedding = p.embedding.clone().ok_or("the backbone gave no embedding for the example photos")?;
    let ((make, model), _) = p.make_models().into_iter().next().ok_or("the cascade knows no make")?;
    // The colour most photos show; none when they show none.
    let mut votes: Vec<(Colour, usize)> = Vec::new();
    for img in &images {
        let c = crate::colour::estimate(img.as_raw(), img.width(), (0, 0, img.width(), img.height())).colour;
        match votes.iter_mut().find(|(v, _)| *v == c) {
            Some((_, n)) => *n += 1,
            None => votes.push((c, 1)),
        }
    }
    let colour = votes.into_iter().max_by_key(|(_, n)| *n).map(|(c, _)| c).filter(|c| *c != Colour::Unknown);
    Ok(Derived { view: p.label(Level::View).clone(), make, model, colour, embedding })
}
