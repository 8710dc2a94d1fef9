//! A vehicle's colour, from its own pixels: what every AMBER alert gives first.
//!
//! The estimator samples the box on a grid in CIELAB. The box's outer ring is mostly
//! what is behind the vehicle: samples inside that differ from the ring's median are
//! the vehicle. Each votes for the nearest of ten reference paints (lightness weighted
//! half as much as hue and chroma, so that an exposure change does not turn red into
//! brown); the body panels are the largest part of a vehicle and outvote its glass,
//! tyres, lamps and plate. The share of the winning votes is the probability.
//!
//! Limits, honestly: the box is a box, not a mask, so a vehicle much smaller than its
//! box (a motion box swollen by a shadow) is read partly from the road; metallic and
//! two-tone paint, strong coloured light (sodium street lamps turn everything orange)
//! and white balance drift shift the answer; silver reads as grey. Greyscale and
//! infrared night frames carry no colour at all: the answer is `unknown`.

use serde::Serialize;

/// The colours carwatch names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Black,
    White,
    Grey,
    Red,
    Orange,
    Yellow,
    Green,
    Blue,
    Brown,
    Purple,
    /// No colour in the picture (greyscale, infrared).
    Unknown,
}

impl Colour {
    pub const NAMED: [Colour; 10] = [
        Colour::Black,
        Colour::White,
        Colour::Grey,
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Blue,
        Colour::Brown,
        Colour::Purple,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Colour::Black => "black",
            Colour::White => "white",
            Colour::Grey => "grey",
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Brown => "brown",
            Colour::Purple => "purple",
            Colour::Unknown => "unknown",
        }
    }

    /// A colour as an operator writes it (`silver` and `gray` are grey).
    pub fn parse(text: &str) -> Option<Colour> {
        let t = text.trim().to_ascii_lowercase();
        match t.as_str() {
            "silver" | "gray" => Some(Colour::Grey),
            _ => Colour::NAMED.into_iter().find(|c| c.name() == t),
        }
    }

    /// A typical paint of this colour, sRGB.
    pub fn paint(self) -> [u8; 3] {
        match self {
            Colour::Black => [22, 22, 24],
            Colour::White => [225, 225, 222],
            Colour::Grey => [128, 128, 128],
            Colour::Red => [200, 30, 30],
            Colour::Orange => [235, 120, 20],
            Colour::Yellow => [225, 200, 40],
            Colour::Green => [40, 150, 60],
            Colour::Blue => [30, 70, 210],
            Colour::Brown => [110, 70, 40],
            Colour::Purple => [110, 40, 150],
            Colour::Unknown => [128, 128, 128],
        }
    }
}

/// An estimate: the colour and how sure (0-1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub colour: Colour,
    pub p: f32,
}

/// sRGB (0-255) to CIELAB (D65).
pub fn lab(rgb: [u8; 3]) -> [f32; 3] {
    let lin = |c: u8| {
        let c = c as f32 / 255.0;
        if c <= 0.04045 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
    };
    let (r, g, b) = (lin(rgb[0]), lin(rgb[1]), lin(rgb[2]));
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f32| if t > 0.008856 { t.cbrt() } else { 7.787 * t + 16.0 / 116.0 };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// The colour of the vehicle in `bounds` (x, y, width, height) of a tightly packed RGB
/// frame `width` pixels wide.
pub fn estimate(rgb: &[u8], width: u32, bounds: (u32, u32, u32, u32)) -> Estimate {
    let (bx, by, bw, bh) = bounds;
    let height = (rgb.len() / 3) as u32 / width.max(1);
    let px = |x: u32, y: u32| -> Option<[u8; 3]> {
        (x < width && y < height).then(|| {
            let i = ((y * width + x) * 3) as usize;
            [rgb[i], rgb[i + 1], rgb[i + 2]]
        })
    };
    // Greyscale or infrared: every pixel of the box without colour.
    let mut coloured = 0u32;
    let mut total = 0u32;
    let step = (bw.max(bh) / 48).max(1);
    for y in (by..by + bh).step_by(step as usize) {
        for x in (bx..bx + bw).step_by(step as usize) {
            if let Some([r, g, b]) = px(x, y) {
                total += 1;
                let spread = r.max(g).max(b) - r.min(g).min(b);
                coloured += u32::from(spread > 3);
            }
        }
    }
    if total == 0 || coloured * 50 < total {
        return Estimate { colour: Colour::Unknown, p: 1.0 };
    }
    // Samples of the box; its outer ring is mostly what is behind the vehicle.
    let n = 48u32;
    let (sx, sy) = ((bw / n).max(1), (bh / n).max(1));
    let mut ring: Vec<[f32; 3]> = Vec::new();
    let mut inner: Vec<[f32; 3]> = Vec::new();
    for y in (by..by + bh).step_by(sy as usize) {
        for x in (bx..bx + bw).step_by(sx as usize) {
            let Some(p) = px(x, y) else { continue };
            let edge = (x - bx) * 16 < bw || (bx + bw - x) * 16 < bw || (y - by) * 16 < bh || (by + bh - y) * 16 < bh;
            if edge { ring.push(lab(p)) } else { inner.push(lab(p)) }
        }
    }
    if inner.is_empty() {
        return Estimate { colour: Colour::Unknown, p: 1.0 };
    }
    let background = median(&ring);
    // The vehicle: what differs from the background. A vehicle the colour of the road
    // leaves little: then every inner sample counts.
    let differs = |s: &[f32; 3]| background.is_none_or(|b| distance(s, &b) > 15.0);
    let mut body: Vec<[f32; 3]> = inner.iter().copied().filter(differs).collect();
    if body.len() * 100 < inner.len() * 35 {
        body = inner;
    }
    // Each sample votes for its nearest paint; glass, tyres and lamps are smaller than
    // the body panels, which win.
    let mut votes = [0u32; 10];
    for s in &body {
        votes[nearest(*s)] += 1;
    }
    let (best, n) = votes.iter().enumerate().max_by_key(|(_, v)| **v).map(|(i, v)| (i, *v)).unwrap_or((2, 0));
    Estimate { colour: Colour::NAMED[best], p: n as f32 / body.len().max(1) as f32 }
}

/// Per-channel median, if any.
fn median(v: &[[f32; 3]]) -> Option<[f32; 3]> {
    if v.is_empty() {
        return None;
    }
    let m = |k: usize| {
        let mut c: Vec<f32> = v.iter().map(|s| s[k]).collect();
        c.sort_by(f32::total_cmp);
        c[c.len() / 2]
    };
    Some([m(0), m(1), m(2)])
}

/// Distance in CIELAB, lightness weighted half: exposure moves lightness most.
fn distance(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    ((0.5 * (a[0] - b[0])).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// The index in [`Colour::NAMED`] of the paint nearest `lab_value`.
fn nearest(lab_value: [f32; 3]) -> usize {
    Colour::NAMED
        .iter()
        .enumerate()
        .map(|(i, c)| (i, distance(&lab_value, &lab(c.paint()))))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(2, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{catalogue, draw_vehicle_painted, rng, street};
    use image::RgbImage;
    use imageproc::rect::Rect;

    #[test]
    fn generated_vehicles_of_ten_colours_are_named_under_brightness_changes() {
        let (w, h) = (640u32, 360u32);
        let classes = catalogue();
        let (mut right, mut total) = (0, 0);
        let mut wrong = Vec::new();
        for (k, colour) in Colour::NAMED.into_iter().enumerate() {
            for (j, gain) in [0.8f32, 1.0, 1.2].into_iter().enumerate() {
                for v in 0..3 {
                    let class = &classes[(k * 7 + j * 3 + v * 11) % classes.len()];
                    let mut img = RgbImage::from_raw(w, h, street(w, h)).unwrap();
                    let mut r = rng((k * 100 + j * 10 + v) as u64);
                    let area = Rect::at(200, 150).of_size(200, 160);
                    let drawn = draw_vehicle_painted(&mut img, area, class, colour.paint(), &mut r);
                    for p in img.iter_mut() {
                        *p = (*p as f32 * gain).min(255.0) as u8;
                    }
                    // Located boxes carry a margin around the vehicle (motion: 10% a side).
                    let (mx, my) = (drawn.width() / 8, drawn.height() / 8);
                    let b = (
                        drawn.left() as u32 - mx,
                        drawn.top() as u32 - my,
                        drawn.width() + 2 * mx,
                        drawn.height() + 2 * my,
                    );
                    let e = estimate(img.as_raw(), w, b);
                    total += 1;
                    if e.colour == colour {
                        right += 1;
                    } else {
                        wrong.push(format!("{} {} x{gain}: {}", colour.name(), class.view, e.colour.name()));
                    }
                }
            }
        }
        assert!(right * 10 >= total * 9, "{right} of {total} right; wrong: {wrong:?}");
    }

    #[test]
    fn greyscale_frames_are_unknown_and_names_parse() {
        let (w, h) = (320u32, 180u32);
        let mut img = RgbImage::from_raw(w, h, street(w, h)).unwrap();
        let d = draw_vehicle_painted(
            &mut img,
            Rect::at(100, 60).of_size(120, 90),
            &catalogue()[0],
            [200, 30, 30],
            &mut rng(1),
        );
        let (mx, my) = (d.width() / 8, d.height() / 8);
        let b = (d.left() as u32 - mx, d.top() as u32 - my, d.width() + 2 * mx, d.height() + 2 * my);
        let grey: Vec<u8> = img
            .pixels()
            .flat_map(|p| {
                let l = ((p[0] as u32 * 77 + p[1] as u32 * 150 + p[2] as u32 * 29) >> 8) as u8;
                [l, l, l]
            })
            .collect();
        assert_eq!(estimate(&grey, w, b).colour, Colour::Unknown);
        assert_eq!(estimate(img.as_raw(), w, b).colour, Colour::Red);
        assert_eq!(Colour::parse("Silver"), Some(Colour::Grey));
        assert_eq!(Colour::parse("blue"), Some(Colour::Blue));
        assert_eq!(Colour::parse("teal"), None);
    }
}
