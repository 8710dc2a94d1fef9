//! `carwatch watch`: the daemon, with signals installed here (the library takes them as a `Shutdown`).

use super::*;

pub(super) fn watch_cmd(a: WatchArgs) -> Result<ExitCode> {
    let config = Config::load(&a.config)?;
    let on_hit: Option<carwatch::publish::HitCallback> = if a.print_hits {
        Some(Box::new(|hit| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{hit}");
            let _ = out.flush();
        }))
    } else {
        None
    };
    let mut seam = carwatch::watch::Seam::default();
    match a.test_fault.as_deref() {
        None => {}
        Some("hang-inference") => seam.hang_inference = true,
        Some("slow-load") => seam.slow_load = true,
        Some(f) if f.starts_with("panic-thread:") => seam.panic_thread = Some(f["panic-thread:".len()..].to_string()),
        Some(other) => anyhow::bail!("unknown test fault `{other}`"),
    }
    let shutdown = carwatch::watch::Shutdown::signals().context("cannot install signal handlers")?;
    carwatch::watch::run(&config, carwatch::watch::WatchOptions { models: a.models, on_hit, seam }, shutdown)?;
    carwatch::threads::leave_if_any_running(0);
    Ok(ExitCode::SUCCESS)
}
