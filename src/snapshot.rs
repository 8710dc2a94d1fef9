//! The picture that goes with a hit: the frame as a JPEG with the matching region
//! outlined, so the person reading the alert sees what carwatch saw.
//!
//! Files are `{dir}/{camera}/{YYYY-MM-DD}/{hit_id}.jpg` (UTC date), written to a
//! temporary name and renamed, so a reader never sees half a file. Encoding happens on
//! the publisher thread, never on the inference path.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use imageproc::drawing::draw_hollow_rect_mut;
use imageproc::rect::Rect;
use serde::Deserialize;

use crate::camera::Frame;
use crate::model::Crop;

/// `[snapshots]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Where snapshots go [default: `<state_dir>/snapshots`].
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Also put the JPEG, base64-encoded, in the hit message.
    #[serde(default)]
    pub inline: bool,
    #[serde(default = "default_quality")]
    pub quality: u8,
    /// Publish each camera's last hit as a raw JPEG, retained, on
    /// `{prefix}/cameras/{name}/snapshot`: what dashboards (Home Assistant's MQTT camera
    /// and image, Node-RED) show without reading files on this host.
    #[serde(default = "yes")]
    pub mqtt: bool,
    /// Height the MQTT snapshot is scaled down to (never up) [default: the frame's].
    #[serde(default)]
    pub mqtt_height: Option<u32>,
    /// Send the vehicle (its box, with a margin) rather than the outlined frame.
    #[serde(default)]
    pub mqtt_crop: bool,
    /// Snapshot files older than this many days are removed (by their date folder),
    /// hourly and at start; 0 keeps them for ever.
    #[serde(default = "default_retain_days")]
    pub retain_days: u32,
}

fn default_quality() -> u8 {
    85
}

fn yes() -> bool {
    true
}

fn default_retain_days() -> u32 {
    30
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            dir: None,
            inline: false,
            quality: default_quality(),
            mqtt: true,
            mqtt_height: None,
            mqtt_crop: false,
            retain_days: default_retain_days(),
        }
    }
}

impl SnapshotConfig {
    /// Problems a start would otherwise meet later.
    pub fn check(&self) -> Result<(), String> {
        match self.mqtt_height {
            Some(h) if h < 16 => Err(format!("mqtt_height = {h} is too small to show a vehicle: give 16 or more")),
            _ => Ok(()),
        }
    }
}

/// The frame with `crop` outlined, as JPEG bytes.
pub fn encode(frame: &Frame, crop: Crop, quality: u8) -> Result<Vec<u8>, String> {
    jpeg(&outlined(frame, crop)?, quality)
}

/// The whole frame as an RGB image (converted from the camera's YUV here, per hit).
fn whole(frame: &Frame) -> Result<RgbImage, String> {
    let rgb = frame.rgb().into_owned();
    let bytes = rgb.len();
    RgbImage::from_raw(frame.width, frame.height, rgb)
        .ok_or_else(|| format!("frame of {bytes} bytes is not {}x{} RGB", frame.width, frame.height))
}

/// The frame as an image with `crop` outlined in red.
pub fn outlined(frame: &Frame, crop: Crop) -> Result<RgbImage, String> {
    let mut img = whole(frame)?;
    let thickness = (frame.width.min(frame.height) / 200).clamp(2, 6);
    for t in 0..thickness {
        if crop.width > 2 * t && crop.height > 2 * t {
            let r = Rect::at((crop.x + t) as i32, (crop.y + t) as i32).of_size(crop.width - 2 * t, crop.height - 2 * t);
            draw_hollow_rect_mut(&mut img, r, Rgb([255, 40, 40]));
        }
    }
    Ok(img)
}

/// `img` as JPEG bytes.
pub fn jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>, String> {
    let (w, h) = (u16::try_from(img.width()), u16::try_from(img.height()));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(format!("a {}x{} frame is too large for a JPEG snapshot", img.width(), img.height()));
    };
    // jpeg-encoder (AVX2) rather than image's encoder: several times faster on 1080p
    // frames, and the snapshot is encoded on the publisher's thread for every hit.
    let mut out = Vec::with_capacity(img.as_raw().len() / 8);
    jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
        .encode(img.as_raw(), w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| format!("JPEG encoding: {e}"))?;
    Ok(out)
}

/// The JPEG for `{prefix}/cameras/{name}/snapshot`: `file` (the outlined frame, already
/// encoded) when it needs no change, else the outlined frame or the vehicle with a
/// margin of a quarter of its size, scaled down to `mqtt_height`.
pub fn for_mqtt(config: &SnapshotConfig, frame: &Frame, crop: Crop, file: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let img = if config.mqtt_crop {
        let whole = whole(frame)?;
        let (mx, my) = (crop.width / 4, crop.height / 4);
        let (x0, y0) = (crop.x.saturating_sub(mx), crop.y.saturating_sub(my));
        let x1 = (crop.x + crop.width + mx).min(frame.width);
        let y1 = (crop.y + crop.height + my).min(frame.height);
        if x1 <= x0 || y1 <= y0 {
            return Err(format!("the box {crop:?} is outside the {}x{} frame", frame.width, frame.height));
        }
        image::imageops::crop_imm(&whole, x0, y0, x1 - x0, y1 - y0).to_image()
    } else {
        match (file, config.mqtt_height) {
            (Some(bytes), None) => return Ok(bytes.to_vec()),
            (Some(bytes), Some(h)) if h >= frame.height => return Ok(bytes.to_vec()),
            _ => outlined(frame, crop)?,
        }
    };
    let img = match config.mqtt_height {
        Some(h) if h < img.height() => {
            let w = ((img.width() as u64 * h as u64) / img.height() as u64).max(1) as u32;
            image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle)
        }
        _ => img,
    };
    jpeg(&img, config.quality)
}

/// Where the snapshot of hit `hit_id` goes.
pub fn path(dir: &Path, camera: &str, date: &str, hit_id: &str) -> PathBuf {
    dir.join(camera).join(date).join(format!("{hit_id}.jpg"))
}

/// Writes `jpeg` to `path` (its folder created as needed), atomically.
pub fn write(path: &Path, jpeg: &[u8]) -> Result<(), String> {
    let folder = path.parent().ok_or_else(|| format!("{} has no folder", path.display()))?;
    std::fs::create_dir_all(folder).map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
    let tmp = path.with_extension("jpg.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = BufWriter::new(std::fs::File::create(&tmp)?);
        std::io::Write::write_all(&mut f, jpeg)?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the folder is.
        std::fs::File::open(folder)?.sync_all()
    };
    write().map_err(|e| {
        // A full disk leaves a partial temporary file: do not keep it.
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write snapshot {}: {e}", path.display())
    })
}

/// Removes the date folders (`camera/YYYY-MM-DD/`) under `dir` older than `retain_days`
/// before `today` (UTC), with their snapshots; returns how many files went. Folders
/// that are not dates are left alone: they are not ours.
pub fn prune(dir: &Path, today: jiff::civil::Date, retain_days: u32) -> usize {
    if retain_days == 0 {
        return 0;
    }
    let Ok(cutoff) = today.checked_sub(jiff::Span::new().days(i64::from(retain_days))) else { return 0 };
    let mut removed = 0;
    let entries = |d: &Path| std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()).collect::<Vec<_>>();
    for camera in entries(dir) {
        for folder in entries(&camera) {
            let date = folder.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<jiff::civil::Date>().ok());
            if date.is_none_or(|d| d >= cutoff) {
                continue;
            }
            let files = entries(&folder).len();
            match std::fs::remove_dir_all(&folder) {
                Ok(()) => removed += files,
                Err(e) => tracing::warn!("cannot remove old snapshots in {}: {e}", folder.display()),
            }
        }
    }
    removed
}

/// Runs [`prune`] at once and then hourly until `stop` closes: the `snapshots` thread.
pub fn run_pruner(dir: PathBuf, retain_days: u32, stop: crossbeam_channel::Receiver<()>) {
    loop {
        // The folders are named by the hits' UTC dates, written the same way.
        let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string().parse::<jiff::civil::Date>();
        let removed = today.map_or(0, |today| prune(&dir, today, retain_days));
        if removed > 0 {
            tracing::info!("removed {removed} snapshot(s) older than {retain_days} days from {}", dir.display());
        }
        match stop.recv_timeout(std::time::Duration::from_secs(3600)) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// Removes temporary files (`*.tmp`) a crash or a full disk left under `dir`, two levels
/// down (`camera/date/`); returns how many. Called at start-up.
pub fn remove_temporaries(dir: &Path) -> usize {
    let mut removed = 0;
    let entries = |d: &Path| std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()).collect::<Vec<_>>();
    for camera in entries(dir) {
        for date in entries(&camera) {
            for file in entries(&date) {
                if file.extension().is_some_and(|e| e == "tmp") && std::fs::remove_file(&file).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::{Camera, CameraConfig, CameraShared};
    use std::time::{Instant, SystemTime};

    #[test]
    fn temporaries_left_by_a_crash_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let day = d.path().join("gate/2026-11-30");
        write(&path(d.path(), "gate", "2026-11-30", "a"), b"jpeg").unwrap();
        std::fs::write(day.join("b.jpg.tmp"), b"half").unwrap();
        assert_eq!(remove_temporaries(d.path()), 1);
        assert!(day.join("a.jpg").exists() && !day.join("b.jpg.tmp").exists());
    }

    #[test]
    fn old_date_folders_are_pruned_and_others_left() {
        let d = tempfile::tempdir().unwrap();
        for day in ["2026-10-01", "2026-11-06", "2026-11-07", "2026-12-07"] {
            write(&path(d.path(), "gate", day, "a"), b"jpeg").unwrap();
        }
        std::fs::create_dir_all(d.path().join("gate/keep-me")).unwrap();
        let today: jiff::civil::Date = "2026-12-07".parse().unwrap();
        assert_eq!(prune(d.path(), today, 0), 0, "0 keeps everything");
        assert_eq!(prune(d.path(), today, 30), 2);
        let left: Vec<_> = ["2026-10-01", "2026-11-06", "2026-11-07", "2026-12-07", "keep-me"]
            .iter()
            .map(|f| d.path().join("gate").join(f).exists())
            .collect();
        assert_eq!(left, [false, false, true, true, true]);
    }

    #[test]
    fn mqtt_snapshots_are_scaled_down_or_cropped_to_the_vehicle() {
        let frame = frame(640, 360);
        let crop = Crop { x: 100, y: 50, width: 200, height: 100 };
        let file = encode(&frame, crop, 90).unwrap();
        let size = |c: &SnapshotConfig| {
            let j = for_mqtt(c, &frame, crop, Some(&file)).unwrap();
            image::load_from_memory(&j).unwrap().to_rgb8().dimensions()
        };
        let mut c = SnapshotConfig::default();
        assert_eq!(for_mqtt(&c, &frame, crop, Some(&file)).unwrap(), file, "unchanged: the file's bytes");
        c.mqtt_height = Some(180);
        assert_eq!(size(&c), (320, 180));
        c.mqtt_crop = true;
        c.mqtt_height = None;
        assert_eq!(size(&c), (300, 150), "the box and a quarter of it on each side");
        c.mqtt_height = Some(75);
        assert_eq!(size(&c), (150, 75));
        c.mqtt_height = Some(8);
        assert!(c.check().is_err());
    }

    fn frame(width: u32, height: u32) -> Frame {
        let cfg: CameraConfig = toml::from_str("name = \"gate\"\nurl = \"rtsp://h/\"").unwrap();
        let camera = CameraShared::new(Camera::from_config(&cfg).unwrap());
        Frame {
            camera,
            captured_at: SystemTime::now(),
            seen: Instant::now(),
            pts: None,
            width,
            height,
            pixels: crate::pixels::Pixels::Rgb(vec![40; (width * height * 3) as usize]),
            boxes: None,
        }
    }

    #[test]
    fn snapshots_decode_to_the_frame_with_the_crop_outlined() {
        let (width, height) = (640u32, 360u32);
        let frame = frame(width, height);
        let crop = Crop { x: 100, y: 50, width: 200, height: 100 };
        let jpeg = encode(&frame, crop, 90).unwrap();
        let img = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (width, height));
        let edge = img.get_pixel(200, 51);
        assert!(edge[0] > 200 && edge[1] < 90, "outline pixel {edge:?} is not red");
        let inside = img.get_pixel(200, 100);
        assert!(inside.0.iter().all(|&c| c.abs_diff(40) < 8), "inside pixel {inside:?} changed");
    }
}
