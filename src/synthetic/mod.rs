//! Generated vehicles: the test data and the demo model's world.
//!
//! No real photos or ImageNet weights can ship with carwatch, yet its tests must show
//! that training, classification and the camera path really work. So we draw cars
//! whose classes differ in ways a broken pipeline would get wrong:
//!
//! - **view** is geometry: `front` (windscreen above, two round headlamps, grille),
//!   `rear` (rear window, red tail lamps in the upper corners, white plate) and `angled`
//!   (a skewed body with side windows and two wheels);
//! - **make** is the body colour (blue, red, yellow), so swapping RGB for BGR, or losing
//!   colour, changes the make;
//! - **model** is body proportion plus a texture (a low plain sedan, a tall striped SUV,
//!   a short dotted compact), so a wrong crop or resize changes the model.
//!
//! Every image gets random placement, scale, colour jitter, background and noise, so
//! memorising pixels does not work. Anything trained on these is labelled synthetic.
//!
//! [`video`] turns scenes of such vehicles into H.264 clips, and [`rtsp`] serves them
//! as live RTSP cameras on loopback: the sample camera of `make run`, the cameras of the
//! integration tests and of `bench pipeline`.

pub mod rtsp;
pub mod video;

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_circle_mut, draw_filled_rect_mut, draw_polygon_mut};
use imageproc::point::Point;
use imageproc::rect::Rect;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Views drawn, in catalogue order.
pub const VIEWS: [&str; 3] = ["front", "angled", "rear"];

/// Makes with their body colour and their three models (sedan, SUV, compact).
pub const MAKES: [(&str, [u8; 3], [&str; 3]); 3] = [
    ("bmw", [30, 70, 210], ["3-series", "x5", "i3"]),
    ("audi", [205, 35, 35], ["a4", "q7", "tt"]),
    ("volvo", [225, 200, 40], ["s60", "xc90", "c30"]),
];

/// One drawable class: a leaf of the cascade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub view: &'static str,
    pub make: &'static str,
    pub model: &'static str,
    colour: [u8; 3],
    shape: Shape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Sedan,
    Suv,
    Compact,
}

/// Every class: 3 views x 3 makes x 3 models.
pub fn catalogue() -> Vec<Class> {
    let shapes = [Shape::Sedan, Shape::Suv, Shape::Compact];
    let mut out = Vec::new();
    for view in VIEWS {
        for (make, colour, models) in MAKES {
            for (model, shape) in models.into_iter().zip(shapes) {
                out.push(Class { view, make, model, colour, shape });
            }
        }
    }
    out
}

/// The class `view/make/model`, if the catalogue has it.
pub fn class(view: &str, make: &str, model: &str) -> Option<Class> {
    catalogue().into_iter().find(|c| c.view == view && c.make == make && c.model == model)
}

/// A seeded random source, so generated data is reproducible.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// One `width` x `height` image of `class` on a random background.
pub fn render(class: &Class, rng: &mut StdRng, width: u32, height: u32) -> RgbImage {
    let mut img = RgbImage::new(width, height);
    draw_background(&mut img, rng);
    draw_vehicle(&mut img, Rect::at(0, 0).of_size(width, height), class, rng);
    img
}

/// `n` images, every class of the catalogue in turn, from `seed`: the stand-in for real
/// photos where only the cost of the model matters (benchmarks, batch sizing).
pub fn photos(n: usize, seed: u64, width: u32, height: u32) -> Vec<RgbImage> {
    let mut rng = rng(seed);
    catalogue().iter().cycle().take(n).map(|c| render(c, &mut rng, width, height)).collect()
}

/// Fills `img` with a grey scene: sky-ish top, darker road band at the bottom. Half the
/// scenes are noisy and plain; the other half are flatter, with the wide bands of
/// tarmac and blocks of building a street camera shows behind a vehicle, so that a
/// model trained on these knows a vehicle cropped from a street.
pub fn draw_background(img: &mut RgbImage, rng: &mut StdRng) {
    let base: i32 = rng.random_range(70..170);
    let road: i32 = base - rng.random_range(20..50);
    let horizon = img.height() * rng.random_range(55..75) / 100;
    let street = rng.random_bool(0.5);
    let noise: i32 = if street { rng.random_range(2..=8) } else { 12 };
    let band = rng.random_range(img.width() / 5..=img.width()).max(1);
    let shift = rng.random_range(0..band);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let mut level = if y > horizon { road } else { base };
        if street {
            let bx = (x + shift) / band;
            level += if y > horizon { (bx % 2) as i32 * 12 } else { ((bx + y / band) % 3) as i32 * 20 - 20 };
        }
        let n: i32 = rng.random_range(-noise..=noise);
        let v = (level + n).clamp(0, 255) as u8;
        *px = Rgb([v, v, v.saturating_add(4)]);
    }
}

/// A still street, `width` x `height` tightly packed RGB: tarmac below the upper third
/// in wide bands, blocks of buildings above. Flat areas and hard edges, no noise: what
/// the motion locator's tests and benchmark run vehicles across.
pub fn street(width: u32, height: u32) -> Vec<u8> {
    let mut px = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let road = y > height / 3;
            let v = if road { 90 + ((x / 160) % 2) * 12 } else { 150 + ((x / 80 + y / 60) % 3) * 20 } as u8;
            px.extend_from_slice(&[v, v, v.saturating_add(8)]);
        }
    }
    px
}

/// Draws a vehicle of `class` inside `area` of `img`, with random placement and jitter;
/// returns the box it covers (cabin, body, wheels), which may reach past the image.
pub fn draw_vehicle(img: &mut RgbImage, area: Rect, class: &Class, rng: &mut StdRng) -> Rect {
    draw_vehicle_painted(img, area, class, class.colour, rng)
}

/// [`draw_vehicle`] in another paint than its make's (the colour estimator's tests).
pub fn draw_vehicle_painted(img: &mut RgbImage, area: Rect, class: &Class, paint: [u8; 3], rng: &mut StdRng) -> Rect {
    let (aw, ah) = (area.width() as f32, area.height() as f32);
    let (rel_w, rel_h) = match class.shape {
        Shape::Sedan => (0.86, 0.34),
        Shape::Suv => (0.78, 0.56),
        Shape::Compact => (0.52, 0.46),
    };
    let scale: f32 = rng.random_range(0.82..1.0);
    // The angled body leans right by up to half its height: leave room for it.
    let lean = if class.view == "angled" { 0.8 } else { 1.0 };
    let bw = (aw * rel_w * scale * lean).max(8.0);
    let bh = (ah * rel_h * scale).max(6.0);
    let cabin = bh * 0.55; // glass above the body
    let slack_x = (aw - bw).max(0.0);
    let slack_y = (ah - bh - cabin).max(0.0);
    let x0 = area.left() as f32 + slack_x * rng.random_range(0.2..0.8);
    let y0 = area.top() as f32 + cabin + slack_y * rng.random_range(0.3..0.9);
    let jitter = |c: u8, r: &mut StdRng| (c as i32 + r.random_range(-18..=18)).clamp(0, 255) as u8;
    let body = Rgb([jitter(paint[0], rng), jitter(paint[1], rng), jitter(paint[2], rng)]);
    let sketch = Sketch { x0, y0, bw, bh, cabin, body };
    let (extra_w, below) = if class.view == "angled" { (bh * 0.45, bh * 1.32) } else { (0.0, bh * 1.15) };
    let extent = rect(x0, y0 - cabin, bw + extra_w, cabin + below);
    match class.view {
        "angled" => sketch.angled(img, class, rng),
        "rear" => {
            sketch.upright_chassis(img, class, rng);
            sketch.rear(img);
        }
        _ => {
            sketch.upright_chassis(img, class, rng);
            sketch.front(img);
        }
    }
    extent
}

/// Where and how one vehicle is drawn: body box, cabin height, paint.
struct Sketch {
    x0: f32,
    y0: f32,
    bw: f32,
    bh: f32,
    cabin: f32,
    body: Rgb<u8>,
}

const DARK: Rgb<u8> = Rgb([25, 28, 35]);
const GLASS: Rgb<u8> = Rgb([60, 80, 100]);
const TYRE: Rgb<u8> = Rgb([15, 15, 15]);

fn p(x: f32, y: f32) -> Point<i32> {
    Point::new(x.round() as i32, y.round() as i32)
}

fn rect(x: f32, y: f32, w: f32, h: f32) -> Rect {
    Rect::at(x.round() as i32, y.round() as i32).of_size(w.max(1.0) as u32, h.max(1.0) as u32)
}

impl Sketch {
    /// Seen at an angle: a leaning body on two round wheels, two side windows.
    fn angled(&self, img: &mut RgbImage, class: &Class, rng: &mut StdRng) {
        let Sketch { x0, y0, bw, bh, cabin, body } = *self;
        let (glass, tyre) = (GLASS, TYRE);
        let skew = bh * 0.45;
        // Wheels first so the body overlaps their tops.
        let r = (bh * 0.32).max(2.0) as i32;
        draw_filled_circle_mut(img, ((x0 + bw * 0.22) as i32, (y0 + bh) as i32), r, tyre);
        draw_filled_circle_mut(img, ((x0 + bw * 0.78 + skew * 0.5) as i32, (y0 + bh) as i32), r, tyre);
        let body_poly = [p(x0, y0), p(x0 + bw, y0), p(x0 + bw + skew, y0 + bh), p(x0 + skew, y0 + bh)];
        draw_polygon_mut(img, &body_poly, body);
        texture(img, class.shape, rect(x0 + skew * 0.5, y0, bw, bh), body, rng);
        let top = y0 - cabin;
        let roof = [p(x0 + bw * 0.15, top), p(x0 + bw * 0.8, top), p(x0 + bw * 0.92, y0), p(x0 + bw * 0.05, y0)];
        draw_polygon_mut(img, &roof, body);
        let win1 = [
            p(x0 + bw * 0.2, top + cabin * 0.2),
            p(x0 + bw * 0.45, top + cabin * 0.2),
            p(x0 + bw * 0.45, y0 - 1.0),
            p(x0 + bw * 0.12, y0 - 1.0),
        ];
        let win2 = [
            p(x0 + bw * 0.5, top + cabin * 0.2),
            p(x0 + bw * 0.76, top + cabin * 0.2),
            p(x0 + bw * 0.86, y0 - 1.0),
            p(x0 + bw * 0.5, y0 - 1.0),
        ];
        draw_polygon_mut(img, &win1, glass);
        draw_polygon_mut(img, &win2, glass);
        draw_filled_circle_mut(
            img,
            ((x0 + skew * 0.3) as i32, (y0 + bh * 0.35) as i32),
            (bh * 0.12).max(1.0) as i32,
            Rgb([250, 245, 200]),
        );
    }

    /// From the front or the rear: square tyres under a box body with the model's texture.
    fn upright_chassis(&self, img: &mut RgbImage, class: &Class, rng: &mut StdRng) {
        let Sketch { x0, y0, bw, bh, body, .. } = *self;
        let tyre = TYRE;
        draw_filled_rect_mut(img, rect(x0 + bw * 0.08, y0 + bh * 0.8, bw * 0.14, bh * 0.35), tyre);
        draw_filled_rect_mut(img, rect(x0 + bw * 0.78, y0 + bh * 0.8, bw * 0.14, bh * 0.35), tyre);
        draw_filled_rect_mut(img, rect(x0, y0, bw, bh), body);
        texture(img, class.shape, rect(x0, y0, bw, bh), body, rng);
    }

    /// Rear window, tail lights, number plate.
    fn rear(&self, img: &mut RgbImage) {
        let Sketch { x0, y0, bw, bh, cabin, body } = *self;
        let glass = GLASS;
        let win = [
            p(x0 + bw * 0.18, y0 - cabin),
            p(x0 + bw * 0.82, y0 - cabin),
            p(x0 + bw * 0.95, y0),
            p(x0 + bw * 0.05, y0),
        ];
        draw_polygon_mut(img, &win, body);
        let inner = [
            p(x0 + bw * 0.24, y0 - cabin * 0.8),
            p(x0 + bw * 0.76, y0 - cabin * 0.8),
            p(x0 + bw * 0.86, y0 - 1.0),
            p(x0 + bw * 0.14, y0 - 1.0),
        ];
        draw_polygon_mut(img, &inner, glass);
        let red = Rgb([235, 20, 20]);
        draw_filled_rect_mut(img, rect(x0 + bw * 0.03, y0 + bh * 0.1, bw * 0.2, bh * 0.22), red);
        draw_filled_rect_mut(img, rect(x0 + bw * 0.77, y0 + bh * 0.1, bw * 0.2, bh * 0.22), red);
        draw_filled_rect_mut(img, rect(x0 + bw * 0.38, y0 + bh * 0.55, bw * 0.24, bh * 0.22), Rgb([245, 245, 245]));
    }

    /// Windscreen, headlamps, grille.
    fn front(&self, img: &mut RgbImage) {
        let Sketch { x0, y0, bw, bh, cabin, .. } = *self;
        let (glass, dark) = (GLASS, DARK);
        let win = [
            p(x0 + bw * 0.12, y0 - cabin),
            p(x0 + bw * 0.88, y0 - cabin),
            p(x0 + bw * 0.98, y0),
            p(x0 + bw * 0.02, y0),
        ];
        draw_polygon_mut(img, &win, glass);
        let r = (bh.min(bw) * 0.14).max(1.5) as i32;
        let lamp = Rgb([250, 245, 200]);
        draw_filled_circle_mut(img, ((x0 + bw * 0.15) as i32, (y0 + bh * 0.35) as i32), r, lamp);
        draw_filled_circle_mut(img, ((x0 + bw * 0.85) as i32, (y0 + bh * 0.35) as i32), r, lamp);
        draw_filled_rect_mut(img, rect(x0 + bw * 0.32, y0 + bh * 0.55, bw * 0.36, bh * 0.3), dark);
    }
}

/// The model's texture on the body rectangle `r`: none, stripes or dots.
fn texture(img: &mut RgbImage, shape: Shape, r: Rect, body: Rgb<u8>, rng: &mut StdRng) {
    let shade = Rgb([body[0] / 3, body[1] / 3, body[2] / 3]);
    match shape {
        Shape::Sedan => {}
        Shape::Suv => {
            let n = 3;
            let band = (r.height() / (2 * n + 1)).max(1);
            for i in 0..n {
                let y = r.top() + (band * (2 * i + 1)) as i32;
                draw_filled_rect_mut(img, Rect::at(r.left(), y).of_size(r.width(), band), shade);
            }
        }
        Shape::Compact => {
            let step = (r.width().min(r.height()) / 4).max(3) as i32;
            let radius = (step / 4).max(1);
            let off: i32 = rng.random_range(0..step.max(1));
            let mut y = r.top() + step / 2;
            while y < r.bottom() {
                let mut x = r.left() + step / 2 + off % step;
                while x < r.right() {
                    draw_filled_circle_mut(img, (x, y), radius, Rgb([245, 245, 245]));
                    x += step;
                }
                y += step;
            }
        }
    }
}

/// A labelled image written by [`write_dataset`].
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: PathBuf,
    pub class: Class,
}

/// Writes `per_class` PNG images of every class to `dir/<view>/<make>/<model>/`, the
/// layout `carwatch train` reads. Different seeds give disjoint-looking sets.
pub fn write_dataset(dir: &Path, per_class: usize, seed: u64, side: u32) -> std::io::Result<Vec<Sample>> {
    let mut rng = rng(seed);
    let mut out = Vec::new();
    for class in catalogue() {
        let folder = dir.join(class.view).join(class.make).join(class.model);
        std::fs::create_dir_all(&folder)?;
        for i in 0..per_class {
            let w = side + rng.random_range(0..side / 4 + 1);
            let img = render(&class, &mut rng, w, side);
            let path = folder.join(format!("{seed}-{i:04}.png"));
            img.save(&path).map_err(std::io::Error::other)?;
            out.push(Sample { path, class: class.clone() });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_has_27_distinct_leaves() {
        let c = catalogue();
        assert_eq!(c.len(), 27);
        for (i, a) in c.iter().enumerate() {
            for b in &c[i + 1..] {
                assert!((a.view, a.make, a.model) != (b.view, b.make, b.model));
            }
        }
    }

    #[test]
    fn makes_differ_by_body_colour() {
        // The pixels the vehicle changed lean toward its make's colour channel.
        for (seed, (make, colour, _)) in MAKES.into_iter().enumerate() {
            let class = class("front", make, MAKES.iter().find(|m| m.0 == make).unwrap().2[0]).unwrap();
            let mut background = RgbImage::new(128, 96);
            draw_background(&mut background, &mut rng(seed as u64));
            let img = render(&class, &mut rng(seed as u64), 128, 96);
            let mut sum = [0u64; 3];
            for (px, bg) in img.pixels().zip(background.pixels()) {
                if px != bg {
                    for c in 0..3 {
                        sum[c] += px[c] as u64;
                    }
                }
            }
            let strongest = (0..3).max_by_key(|&c| sum[c]).unwrap();
            let expected = (0..3).max_by_key(|&c| colour[c]).unwrap();
            assert_eq!(strongest, expected, "{make}: {sum:?}");
        }
    }

    #[test]
    fn same_seed_same_images() {
        let c = &catalogue()[5];
        let a = render(c, &mut rng(7), 64, 48);
        let b = render(c, &mut rng(7), 64, 48);
        assert_eq!(a.as_raw(), b.as_raw());
    }
}
