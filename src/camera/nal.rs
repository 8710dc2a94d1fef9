//! Which coded H.264 frames no other frame refers to, read from NAL unit headers.
//!
//! A decoder has to decode every frame that later frames are predicted from, but a
//! picture nothing refers to (`nal_ref_idc` 0: the B-frames of most encoders, the
//! non-reference P-frames some cameras send) can be left out without harming any other.
//! Telling which takes the first byte of each NAL unit: no bit-level parsing, so the
//! decode gate can afford it on every buffer between parser and decoder.

/// How NAL units are delimited in a parsed H.264 stream (`stream-format` in its caps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Annex B start codes (`00 00 01`), `stream-format=byte-stream`.
    ByteStream,
    /// Each unit preceded by its length in this many big-endian bytes (1, 2 or 4),
    /// `stream-format=avc` or `avc3`; the size is in the caps' `codec_data`.
    Length(usize),
}

impl Framing {
    /// The length size from an `avcC` record (`codec_data`): its fifth byte's low two
    /// bits plus one. `None` when the record is too short or says 3 (not allowed).
    pub fn from_avcc(record: &[u8]) -> Option<Framing> {
        let size = (*record.get(4)? & 0x03) as usize + 1;
        (size != 3).then_some(Framing::Length(size))
    }
}

/// The header byte of the first NAL unit in `data` for which `wanted` holds.
fn first_header(data: &[u8], framing: Framing, wanted: impl Fn(u8) -> bool) -> Option<u8> {
    let mut i = 0;
    match framing {
        Framing::ByteStream => {
            while i + 3 < data.len() {
                if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
                    if wanted(data[i + 3]) {
                        return Some(data[i + 3]);
                    }
                    i += 3;
                } else {
                    i += 1;
                }
            }
        }
        Framing::Length(size) => {
            while i + size < data.len() {
                let len = data[i..i + size].iter().fold(0usize, |n, &b| (n << 8) | b as usize);
                if wanted(data[i + size]) {
                    return Some(data[i + size]);
                }
                i = i.saturating_add(size).saturating_add(len);
            }
        }
    }
    None
}

/// Whether the access unit in `data` is a reference picture, from its first slice's
/// `nal_ref_idc` (the standard makes every slice of a picture agree, so the scan stops
/// there); `None` when it holds no slice (parameter sets alone, or framing that does
/// not fit), which callers treat as a reference: when in doubt, decode.
pub fn h264_reference(data: &[u8], framing: Framing) -> Option<bool> {
    first_header(data, framing, |h| (1..=5).contains(&(h & 0x1f))).map(|h| h & 0x60 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NAL unit header bytes: nal_ref_idc in bits 5-6, type in bits 0-4.
    const SPS: u8 = 0x67;
    const IDR: u8 = 0x65;
    const P_REF: u8 = 0x41;
    const B_NONREF: u8 = 0x01;
    const SEI: u8 = 0x06;

    fn annex_b(units: &[&[u8]]) -> Vec<u8> {
        units.iter().flat_map(|u| [0u8, 0, 0, 1].iter().chain(u.iter()).copied().collect::<Vec<_>>()).collect()
    }

    fn length_prefixed(units: &[&[u8]], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for u in units {
            out.extend_from_slice(&(u.len() as u32).to_be_bytes()[4 - size..]);
            out.extend_from_slice(u);
        }
        out
    }

    #[test]
    fn a_picture_is_a_reference_unless_every_slice_says_nal_ref_idc_0() {
        for framing in [Framing::ByteStream, Framing::Length(4), Framing::Length(2)] {
            let frame = |units: &[&[u8]]| match framing {
                Framing::ByteStream => annex_b(units),
                Framing::Length(n) => length_prefixed(units, n),
            };
            let (sei, idr) = ([SEI, 5, 1, 2][..].to_vec(), [IDR, 0x88, 0, 0, 1, 7][..].to_vec());
            assert_eq!(h264_reference(&frame(&[&[SPS, 1, 2], &sei, &idr]), framing), Some(true), "{framing:?}");
            assert_eq!(h264_reference(&frame(&[&[P_REF, 0x9a, 0, 0, 2]]), framing), Some(true));
            assert_eq!(
                h264_reference(&frame(&[&sei, &[B_NONREF, 0x9e, 1], &[B_NONREF, 0x9e, 2]]), framing),
                Some(false)
            );
            // The first slice decides (every slice of a picture has the same nal_ref_idc).
            assert_eq!(h264_reference(&frame(&[&sei, &[P_REF, 1], &[P_REF, 2]]), framing), Some(true));
            // No slice at all: nothing to decide.
            assert_eq!(h264_reference(&frame(&[&[SPS, 1], &sei]), framing), None);
        }
        // Framing that does not fit the data reads no slice rather than running off.
        assert_eq!(h264_reference(&[0, 0, 0, 200, B_NONREF], Framing::Length(4)), Some(false));
        assert_eq!(h264_reference(&[0xff, 0xff, 0xff, 0xff, 0x41], Framing::Length(4)), Some(true));
        assert_eq!(h264_reference(&[0xff, 0xff], Framing::Length(4)), None);
        assert_eq!(h264_reference(&[1, 2, 3, 4, 5], Framing::ByteStream), None);
    }

    #[test]
    fn the_length_size_comes_from_the_avcc_record() {
        assert_eq!(Framing::from_avcc(&[1, 0x64, 0, 0x1f, 0xff, 0xe1]), Some(Framing::Length(4)));
        assert_eq!(Framing::from_avcc(&[1, 0x64, 0, 0x1f, 0xfd]), Some(Framing::Length(2)));
        assert_eq!(Framing::from_avcc(&[1, 0x64, 0, 0x1f, 0xfe]), None);
        assert_eq!(Framing::from_avcc(&[1, 0x64]), None);
    }
}
