//! `carwatch train`: a cascade from a folder of labelled photos.
//!
//! 1. [`dataset`] scans `DIR/<view>/<make>/<model>/` and splits each leaf's photos into
//!    training and validation (seeded, stratified).
//! 2. [`features`] runs the frozen backbone once per photo (and once per mirrored photo
//!    when flipping is on), caching results on disk: a second run skips the backbone.
//! 3. [`fit`] trains each head on its slice of the features.
//! 4. The heads and `cascade.toml` are written to the output directory, naming the
//!    backbone file so that `classify --models DIR` needs nothing else.

pub mod dataset;
pub mod features;
pub mod fit;

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use tch::{Device, Kind, Tensor};

use crate::model::int8::FirstConv;
use crate::model::manifest::{BackboneEntry, FORMAT, HeadEntry, Manifest};
use crate::model::weights::write_atomic;
use crate::model::{Backbone, Cascade, Level, ModelError, Placement, Precision, preprocess};
use dataset::Dataset;
use features::{FeatureCache, ImageKey};
use fit::{FitOptions, Split};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("dataset: {0}")]
    Dataset(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Everything `carwatch train` is told.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub data: PathBuf,
    pub backbone: PathBuf,
    pub out: PathBuf,
    pub cache_dir: PathBuf,
    pub placement: Placement,
    pub seed: u64,
    /// Share of each leaf's photos held out for validation.
    pub validation_fraction: f64,
    /// Also train on mirror images (features of each flipped photo are cached too).
    pub flip: bool,
    pub fit: FitOptions,
    /// Images per backbone batch.
    pub batch_size: usize,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Copied into the manifest (and from there into logs): the demo model says it is
    /// synthetic here.
    pub notice: Option<String>,
    /// Also make an int8 backbone (CPU) and measure its agreement with fp32.
    pub int8: bool,
}

/// What training did, head by head.
#[derive(Debug, Clone)]
pub struct TrainReport {
    pub heads: Vec<HeadReport>,
    pub photos: usize,
    /// Feature vectors read from the cache / computed by the backbone.
    pub cached: usize,
    pub computed: usize,
    pub skipped: Vec<(PathBuf, String)>,
    pub manifest: PathBuf,
    pub int8: Option<Int8Report>,
}

/// What `--int8` produced.
#[derive(Debug, Clone)]
pub struct Int8Report {
    pub path: PathBuf,
    /// Share of validation photos with the same view/make/model as fp32.
    pub agreement: f64,
    pub photos: usize,
    /// Whether `precision = "auto"` will use it (agreement at least the minimum).
    pub enabled: bool,
    /// Which variant was kept (see [`FirstConv`]).
    pub first_conv: FirstConv,
}

#[derive(Debug, Clone)]
pub struct HeadReport {
    pub id: String,
    pub level: Level,
    pub labels: usize,
    pub train_samples: usize,
    pub val_samples: usize,
    /// None for single-label heads (nothing to learn) or without validation photos.
    pub val_accuracy: Option<f64>,
    pub epochs: usize,
}

/// Runs the whole training.
pub fn run(opts: &TrainOptions) -> Result<TrainReport, TrainError> {
    let mut data = Dataset::scan(&opts.data)?;
    data.split(opts.validation_fraction, opts.seed);
    for (path, why) in &data.skipped {
        tracing::warn!("skipping {}: {why}", path.display());
    }
    let backbone = Backbone::load(&opts.backbone, None, opts.placement)?;
    tracing::info!(
        "backbone {} (widths {:?}) on {}",
        opts.backbone.display(),
        backbone.spec().widths,
        opts.placement.describe()
    );
    let cache = FeatureCache::open(&opts.cache_dir, &backbone)?;

    let (features, flipped, mut skipped, cached, computed) = extract(&data, &backbone, &cache, opts)?;
    skipped.extend(data.skipped.iter().cloned());

    std::fs::create_dir_all(opts.out.join("heads"))
        .map_err(|source| TrainError::Io { path: opts.out.clone(), source })?;
    let mut entries = Vec::new();
    let mut reports = Vec::new();
    for (h, plan) in data.heads().into_iter().enumerate() {
        let usable: Vec<(usize, usize)> =
            plan.samples.iter().copied().filter(|(i, _)| features[*i].is_some()).collect();
        let (train_idx, val_idx): (Vec<_>, Vec<_>) = usable.iter().partition(|(i, _)| !data.photos[*i].validation);
        let mut report = HeadReport {
            id: plan.id.clone(),
            level: plan.level,
            labels: plan.labels.len(),
            train_samples: train_idx.len(),
            val_samples: val_idx.len(),
            val_accuracy: None,
            epochs: 0,
        };
        let weights = if plan.labels.len() > 1 {
            let samples = Samples { features: &features, flipped: &flipped, train: &train_idx, val: &val_idx };
            Some(fit_head(&plan, samples, h, opts, &mut report)?)
        } else {
            None
        };
        entries.push(HeadEntry {
            id: plan.id,
            level: plan.level,
            labels: plan.labels,
            weights,
            hidden: opts.fit.hidden,
            next: plan.next,
            validation_accuracy: report.val_accuracy.map(|a| (a * 1e4).round() / 1e4),
        });
        reports.push(report);
    }

    let mut manifest = Manifest {
        dir: opts.out.clone(),
        format: FORMAT,
        notice: opts.notice.clone(),
        root: "view".into(),
        backbone: BackboneEntry {
            file: backbone_reference(&opts.backbone, &opts.out)?,
            widths: backbone.spec(),
            int8: None,
            int8_agreement: None,
        },
        heads: entries,
    };
    manifest.save(&opts.out)?;
    let int8 = if opts.int8 { Some(make_int8(&data, opts, &mut manifest)?) } else { None };
    Ok(TrainReport {
        heads: reports,
        photos: data.photos.len(),
        cached,
        computed,
        skipped,
        manifest: opts.out.join(crate::model::manifest::MANIFEST_FILE),
        int8,
    })
}

/// One head's samples: features (and flipped features) by photo index, and which
/// photos train and which validate.
struct Samples<'a> {
    features: &'a [Option<Tensor>],
    flipped: &'a [Option<Tensor>],
    train: &'a [(usize, usize)],
    val: &'a [(usize, usize)],
}

/// Fits one head (the `h`-th) and writes its weights; returns their path relative to
/// the output directory, and fills in the report's accuracy and epochs.
fn fit_head(
    plan: &dataset::HeadPlan,
    samples: Samples,
    h: usize,
    opts: &TrainOptions,
    report: &mut HeadReport,
) -> Result<PathBuf, TrainError> {
    let Samples { features, flipped, train: train_idx, val: val_idx } = samples;
    let mut rows: Vec<&(usize, usize)> = train_idx.iter().collect();
    let flips: Vec<(usize, usize)> = train_idx.iter().filter(|(i, _)| flipped[*i].is_some()).copied().collect();
    rows.extend(flips.iter());
    let train = stack(&rows, |k, i| if k < train_idx.len() { &features[i] } else { &flipped[i] })?;
    let val = stack(&val_idx.iter().collect::<Vec<_>>(), |_, i| &features[i])?;
    let bar = bar(opts.progress, opts.fit.max_epochs as u64, &format!("head {}", plan.id));
    let fitted =
        fit::fit(&train, &val, plan.labels.len() as i64, &opts.fit, opts.seed as i64 + h as i64, |_| bar.inc(1))?;
    bar.finish_and_clear();
    report.val_accuracy = fitted.val_accuracy;
    report.epochs = fitted.epochs;
    let rel = PathBuf::from("heads").join(format!("{}.safetensors", plan.id));
    let path = opts.out.join(&rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| TrainError::Io { path: parent.to_path_buf(), source })?;
    }
    let named: Vec<(String, Tensor)> = fitted.vars.variables().into_iter().collect();
    write_atomic(&path, &named)?;
    Ok(rel)
}

/// Photos decoded and preprocessed on the CPU in fp32, `batch` at a time.
fn preprocessed<'a>(paths: &'a [&'a Path], batch: usize) -> impl Iterator<Item = Result<Tensor, TrainError>> + 'a {
    let cpu = Placement { device: Device::Cpu, precision: Precision::Fp32 };
    paths.chunks(batch.max(1)).map(move |chunk| {
        let images: Vec<image::RgbImage> =
            chunk.iter().filter_map(|p| crate::input::load(&p.display().to_string()).ok()).collect();
        let views = preprocess::whole(&images);
        Ok(preprocess::batch(&views, cpu)?)
    })
}

/// Training photos the int8 quantization is calibrated on (spread over the classes).
const CALIBRATION_PHOTOS: usize = 96;

/// Quantizes the backbone to int8, calibrated on training photos, and measures how
/// often the cascade answers as it does in fp32 on the validation photos.
fn make_int8(data: &Dataset, opts: &TrainOptions, manifest: &mut Manifest) -> Result<Int8Report, TrainError> {
    let spec = manifest.backbone.spec();
    let training: Vec<&Path> = data.photos.iter().filter(|p| !p.validation).map(|p| p.path.as_path()).collect();
    let step = (training.len() / CALIBRATION_PHOTOS).max(1);
    let calibration: Vec<&Path> = training.iter().step_by(step).take(CALIBRATION_PHOTOS).copied().collect();
    let calib = Tensor::f_cat(&preprocessed(&calibration, 32).collect::<Result<Vec<_>, _>>()?, 0)
        .map_err(ModelError::torch("calibration batch"))?;
    let stem = opts.backbone.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "backbone".into());
    let rel = PathBuf::from(format!("{stem}-int8.pt"));
    let out = opts.out.join(&rel);

    let mut check: Vec<&Path> = data.photos.iter().filter(|p| p.validation).map(|p| p.path.as_path()).collect();
    if check.is_empty() {
        check = training.clone();
    }
    check.truncate(400);
    let fp32 =
        Backbone::load(&opts.backbone, Some(spec), Placement { device: Device::Cpu, precision: Precision::Fp32 })?;
    let cascade =
        Cascade::load(manifest, spec.feature_len(), Placement { device: Device::Cpu, precision: Precision::Fp32 })?;
    let mut reference = Vec::new();
    for batch in preprocessed(&check, 16) {
        reference.extend(cascade.run(&fp32.features(&batch?)?)?);
    }
    drop(fp32);
    // The heads as they run next to the int8 backbone (bf16 where the CPU has it), so
    // the agreement recorded is that of what `watch` runs.
    let int8_placement = Placement { device: Device::Cpu, precision: Precision::Int8 };
    let int8_cascade = Cascade::load(manifest, spec.feature_len(), int8_placement)?;

    // All-int8 first (fastest); the fp32 first layer only when that disagrees too often.
    let mut best: Option<(FirstConv, f64, PathBuf)> = None;
    for first in [FirstConv::Int8, FirstConv::Fp32] {
        let candidate = opts.out.join(format!("{stem}-int8.{}.tmp", first.name()));
        tracing::info!(
            "quantizing the backbone to int8, first convolution {} ({} calibration photos)",
            first.name(),
            calibration.len()
        );
        crate::model::int8::quantize(&opts.backbone, spec, &calib, first, &candidate)?;
        let int8 = Backbone::load_int8(&candidate, spec)?;
        let mut answers = Vec::new();
        let bar = bar(opts.progress, check.len() as u64, "int8 agreement");
        for batch in preprocessed(&check, 16) {
            let batch = batch?;
            answers.extend(int8_cascade.run(&int8.features(&batch)?)?);
            bar.inc(batch.size()[0] as u64);
        }
        bar.finish_and_clear();
        let agreement = crate::model::int8::agreement(&reference, &answers);
        tracing::info!("int8 (first convolution {}): {:.1}% agreement with fp32", first.name(), agreement * 100.0);
        if best.as_ref().is_none_or(|(_, a, _)| agreement > *a) {
            if let Some((_, _, old)) = best.replace((first, agreement, candidate)) {
                let _ = std::fs::remove_file(old);
            }
        } else {
            let _ = std::fs::remove_file(&candidate);
        }
        if best.as_ref().is_some_and(|(_, a, _)| *a >= crate::model::int8::MIN_AGREEMENT) {
            break;
        }
    }
    let (first_conv, agreement, chosen) =
        best.ok_or_else(|| ModelError::Quantize("no int8 variant could be measured".into()))?;
    std::fs::rename(&chosen, &out).map_err(|source| ModelError::Io { path: out.clone(), source })?;
    let enabled = agreement >= crate::model::int8::MIN_AGREEMENT;
    if !enabled {
        tracing::warn!(
            "int8 backbone agrees with fp32 on only {:.1}% of {} photos (< {:.0}%): not used automatically",
            agreement * 100.0,
            reference.len(),
            crate::model::int8::MIN_AGREEMENT * 100.0
        );
    }
    manifest.backbone.int8 = Some(rel);
    manifest.backbone.int8_agreement = Some((agreement * 1e4).round() / 1e4);
    manifest.save(&opts.out)?;
    Ok(Int8Report { path: out, agreement, photos: reference.len(), enabled, first_conv })
}

type Extracted = (Vec<Option<Tensor>>, Vec<Option<Tensor>>, Vec<(PathBuf, String)>, usize, usize);

/// Features of every photo (and of its mirror image for training photos when flipping),
/// from the cache where possible. Photos that cannot be read are reported, not fatal.
fn extract(
    data: &Dataset,
    backbone: &Backbone,
    cache: &FeatureCache,
    opts: &TrainOptions,
) -> Result<Extracted, TrainError> {
    let n = data.photos.len();
    let mut features: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
    let mut flipped: Vec<Option<Tensor>> = (0..n).map(|_| None).collect();
    let mut skipped = Vec::new();
    let (mut cached, mut computed) = (0, 0);
    let bar = bar(opts.progress, n as u64, "features");
    // (photo, flipped, key, image) waiting for the backbone
    let mut pending: Vec<(usize, bool, ImageKey, image::RgbImage)> = Vec::new();
    for (i, photo) in data.photos.iter().enumerate() {
        bar.inc(1);
        let bytes = match std::fs::read(&photo.path) {
            Ok(b) => b,
            Err(e) => {
                skipped.push((photo.path.clone(), e.to_string()));
                continue;
            }
        };
        let want_flip = opts.flip && !photo.validation;
        let mut decoded: Option<image::RgbImage> = None;
        for flip in [false, true] {
            if flip && !want_flip {
                continue;
            }
            let key = ImageKey::of_bytes(&bytes, flip);
            if let Some(t) = cache.get(&key) {
                cached += 1;
                if flip {
                    flipped[i] = Some(t)
                } else {
                    features[i] = Some(t)
                }
                continue;
            }
            if decoded.is_none() {
                match crate::input::decode(&photo.path.display().to_string(), &bytes) {
                    Ok(img) => decoded = Some(img),
                    Err(e) => {
                        skipped.push((photo.path.clone(), e.to_string()));
                        break;
                    }
                }
            }
            let Some(img) = decoded.as_ref() else { break };
            let img = if flip { image::imageops::flip_horizontal(img) } else { img.clone() };
            pending.push((i, flip, key, img));
        }
        if pending.len() >= opts.batch_size || (i + 1 == n && !pending.is_empty()) {
            computed += pending.len();
            for (i, flip, t) in run_backbone(backbone, cache, std::mem::take(&mut pending))? {
                if flip { flipped[i] = Some(t) } else { features[i] = Some(t) }
            }
        }
    }
    if !pending.is_empty() {
        computed += pending.len();
        for (i, flip, t) in run_backbone(backbone, cache, pending)? {
            if flip { flipped[i] = Some(t) } else { features[i] = Some(t) }
        }
    }
    bar.finish_and_clear();
    Ok((features, flipped, skipped, cached, computed))
}

fn run_backbone(
    backbone: &Backbone,
    cache: &FeatureCache,
    items: Vec<(usize, bool, ImageKey, image::RgbImage)>,
) -> Result<Vec<(usize, bool, Tensor)>, TrainError> {
    let views = preprocess::whole(items.iter().map(|(_, _, _, img)| img));
    let batch = preprocess::batch(&views, backbone.placement())?;
    let flat = crate::model::cascade::flatten(&backbone.features(&batch)?)?
        .f_to_device(Device::Cpu)
        .map_err(ModelError::torch("copying features to the host"))?;
    let mut out = Vec::with_capacity(items.len());
    for (row, (i, flip, key, _)) in items.into_iter().enumerate() {
        let t = flat.get(row as i64).contiguous();
        cache.put(&key, &t)?;
        out.push((i, flip, t));
    }
    Ok(out)
}

/// Stacks the features of `rows` (photo, label) into a [`Split`]; `source(k, photo)`
/// picks which feature table row `k` comes from.
fn stack<'a>(
    rows: &[&(usize, usize)],
    source: impl Fn(usize, usize) -> &'a Option<Tensor>,
) -> Result<Split, TrainError> {
    if rows.is_empty() {
        return Ok(Split {
            x: Tensor::zeros([0, 1], (Kind::Float, Device::Cpu)),
            y: Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
        });
    }
    let mut xs = Vec::with_capacity(rows.len());
    let mut ys = Vec::with_capacity(rows.len());
    for (k, &&(i, label)) in rows.iter().enumerate() {
        if let Some(t) = source(k, i) {
            xs.push(t.shallow_clone());
            ys.push(label as i64);
        }
    }
    let x = Tensor::f_stack(&xs, 0).map_err(ModelError::torch("stacking features"))?;
    Ok(Split { x, y: Tensor::from_slice(&ys) })
}

/// How the manifest names the backbone: relative when it lies inside the output
/// directory (the pair can be moved together), else absolute.
fn backbone_reference(backbone: &Path, out: &Path) -> Result<PathBuf, TrainError> {
    let abs =
        std::fs::canonicalize(backbone).map_err(|source| TrainError::Io { path: backbone.to_path_buf(), source })?;
    let out_abs = std::fs::canonicalize(out).map_err(|source| TrainError::Io { path: out.to_path_buf(), source })?;
    Ok(abs.strip_prefix(&out_abs).map(Path::to_path_buf).unwrap_or(abs))
}

fn bar(enabled: bool, len: u64, what: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len).with_message(what.to_string());
    if let Ok(style) = ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
