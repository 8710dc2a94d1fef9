//! `carwatch train`: builds a cascade from labelled photos and prints its head table.

use super::table::{Align, Table};
use super::*;

pub(super) fn train_cmd(a: TrainArgs) -> Result<ExitCode> {
    let placement = resolve_placement(&a.placement, None)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let opts = TrainOptions {
        data: a.data,
        backbone: a.backbone,
        out: a.out,
        cache_dir: a.cache_dir.unwrap_or_else(default_cache_dir),
        placement,
        seed: a.seed,
        validation_fraction: a.validation,
        flip: a.flip,
        fit: FitOptions { hidden: a.hidden, max_epochs: a.epochs, ..Default::default() },
        batch_size: a.batch.max(1),
        progress: true,
        notice: a.notice,
        int8: a.int8,
    };
    let report = carwatch::train::run(&opts)?;
    let mut out = std::io::stdout().lock();
    let mut table = Table::new(&[
        ("head", Align::Left),
        ("level", Align::Left),
        ("labels", Align::Right),
        ("train", Align::Right),
        ("val", Align::Right),
        ("val acc", Align::Right),
        ("epochs", Align::Right),
    ]);
    for h in &report.heads {
        let acc = h.val_accuracy.map_or("-".to_string(), |a| format!("{a:.3}"));
        let cells = [h.id.clone(), h.level.to_string(), h.labels.to_string(), h.train_samples.to_string()];
        let rest = [h.val_samples.to_string(), acc, h.epochs.to_string()];
        table.row(cells.into_iter().chain(rest).collect());
    }
    table.write(&mut out)?;
    writeln!(
        out,
        "{} photos; features: {} from cache, {} computed; {} skipped; wrote {}",
        report.photos,
        report.cached,
        report.computed,
        report.skipped.len(),
        report.manifest.display()
    )?;
    if let Some(q) = &report.int8 {
        writeln!(
            out,
            "int8 backbone {} (first convolution {}): same view/make/model as fp32 on {:.1}% of {} photos; {}",
            q.path.display(),
            q.first_conv.name(),
            q.agreement * 100.0,
            q.photos,
            if q.enabled {
                "used on CPU when precision = \"auto\""
            } else {
                "below 98%: used only if precision = \"int8\""
            }
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
