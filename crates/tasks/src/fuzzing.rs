//! Entry points for `cargo fuzz` (the repository's `fuzz/` folder), built with the `fuzzing`
//! feature only. A panic, a hang or an allocation far beyond the input's size is a bug.

/// An uploaded image: its header is checked as a request's is, and an image small enough to
/// decode quickly is decoded within what its header declared.
pub fn image(data: &[u8]) {
    const MAX_PIXELS: u64 = 40_000_000;
    if let Ok(header) = crate::image::header(0, data, MAX_PIXELS) {
        if header.pixels() <= 1 << 20 {
            let _ = crate::image::decode(0, data, header);
        }
    }
}
