//! The outputs the emulators make and the rules they judge inputs by: PNGs,
//! sizes, moderation, stable seeds.

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// The width and height in a PNG's header, if `bytes` starts like a PNG.
pub fn png_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    Some((word(16), word(20)))
}

/// The size of an image of about a megapixel with aspect ratio `ratio` (`"16:9"`),
/// sides multiples of 16; `None` if `ratio` is not `W:H` with W/H within 1:4..4:1.
pub fn aspect_size(ratio: &str) -> Option<(u32, u32)> {
    let (w, h) = ratio.split_once(':')?;
    let (w, h): (f64, f64) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    if !(w > 0.0 && h > 0.0 && (0.25..=4.0).contains(&(w / h))) {
        return None;
    }
    let scale = (1024.0 * 1024.0 / (w * h)).sqrt();
    let side = |x: f64| (((x * scale) / 16.0).round() as u32).max(1) * 16;
    Some((side(w), side(h)))
}

/// Whether a prompt should be refused as unsafe (the emulators' moderation rule).
pub fn flagged(text: &str) -> bool {
    text.to_ascii_lowercase().contains("nsfw")
}

/// A deterministic PNG of `width`×`height`: a gradient keyed by `seed`.
pub fn png(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().expect("png header");
        let [r, g, b, ..] = seed.to_le_bytes();
        let mut pixels = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                pixels.extend_from_slice(&[
                    r.wrapping_add((x * 255 / width.max(1)) as u8),
                    g.wrapping_add((y * 255 / height.max(1)) as u8),
                    b,
                ]);
            }
        }
        writer.write_image_data(&pixels).expect("png data");
    }
    out
}

/// FNV-1a: a stable seed from a prompt.
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
