//! Images in: decoding with a size check before any pixel is read, SIMD resizing, centre crop,
//! normalisation into the model's layout and element type.

use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use ferroserve_core::{DataType, Error, Result, Signature, TensorSpec};
use image::{ImageFormat, ImageReader, Limits};

use crate::config::{ChannelOrder, Filter, ImageConfig, Layout, Resize, Size};

/// Preprocessing resolved against a model's input.
#[derive(Debug, Clone)]
pub(crate) struct ImagePipeline {
    /// Model input name.
    pub input: String,
    pub dtype: DataType,
    pub layout: Layout,
    /// Output height and width.
    pub height: u32,
    pub width: u32,
    resize: Resize,
    filter: Filter,
    bgr: bool,
    /// Per channel (model order): value = pixel * mul + add, i.e. (pixel*scale - mean) / std.
    mul: [f32; 3],
    add: [f32; 3],
    pub max_pixels: u64,
    pub max_request_pixels: u64,
}

impl ImagePipeline {
    pub fn new(config: &ImageConfig, model: &Signature) -> std::result::Result<Self, String> {
        let spec = pick_input(config.input.as_deref(), model)?;
        if !matches!(
            spec.datatype,
            DataType::Fp32 | DataType::Fp16 | DataType::Uint8
        ) {
            return Err(format!(
                "image input '{}' is {}; image-classification fills FP32, FP16 or UINT8 inputs",
                spec.name, spec.datatype
            ));
        }
        if spec.shape.len() != 4 {
            return Err(format!(
                "image input '{}' has shape {:?}; image-classification needs a rank-4 input (NCHW or NHWC)",
                spec.name, spec.shape
            ));
        }
        let layout = match config.layout {
            Some(l) => l,
            None if spec.shape[1] == 3 => Layout::Nchw,
            None if spec.shape[3] == 3 => Layout::Nhwc,
            None => {
                return Err(format!(
                    "cannot tell the layout of image input '{}' (shape {:?}): set image.layout to nchw or nhwc",
                    spec.name, spec.shape
                ))
            }
        };
        let (c, h, w) = match layout {
            Layout::Nchw => (spec.shape[1], spec.shape[2], spec.shape[3]),
            Layout::Nhwc => (spec.shape[3], spec.shape[1], spec.shape[2]),
        };
        if c != 3 && c != -1 {
            return Err(format!(
                "image input '{}' has {c} channels (shape {:?}); only 3-channel images are supported",
                spec.name, spec.shape
            ));
        }
        let (height, width) = match config.crop.map(Size::hw) {
            Some(hw) => hw,
            None if h > 0 && w > 0 => (h as u32, w as u32),
            None => {
                return Err(format!(
                    "image input '{}' has dynamic height or width (shape {:?}): set image.crop",
                    spec.name, spec.shape
                ))
            }
        };
        if height == 0 || width == 0 {
            return Err("image.crop must be at least 1 pixel".into());
        }
        for (dim, want) in [(h, height), (w, width)] {
            if dim > 0 && dim as u32 != want {
                return Err(format!(
                    "image.crop is {height}x{width} but the model input '{}' takes {h}x{w}",
                    spec.name
                ));
            }
        }
        let resize = config.resize.unwrap_or_else(|| {
            Resize::ShorterSide((height.min(width) as f32 / 0.875).round() as u32)
        });
        match resize {
            Resize::ShorterSide(s) if s < height.max(width) => {
                return Err(format!(
                    "image.resize shorter_side {s} is smaller than the crop {height}x{width}"
                ))
            }
            Resize::Exact([rh, rw]) if rh < height || rw < width => {
                return Err(format!(
                    "image.resize exact {rh}x{rw} is smaller than the crop {height}x{width}"
                ))
            }
            _ => {}
        }
        let bgr = config.channel_order == ChannelOrder::Bgr;
        let mut mul = [0.0; 3];
        let mut add = [0.0; 3];
        // A UINT8 input takes the raw pixels: value * 1 + 0.
        if spec.datatype != DataType::Uint8 {
            for i in 0..3 {
                mul[i] = config.scale / config.std[i];
                add[i] = -config.mean[i] / config.std[i];
            }
        } else {
            mul = [1.0; 3];
        }
        Ok(Self {
            input: spec.name.clone(),
            dtype: spec.datatype,
            layout,
            height,
            width,
            resize,
            filter: config.filter,
            bgr,
            mul,
            add,
            max_pixels: config.max_pixels,
            max_request_pixels: config.max_request_pixels,
        })
    }

    /// Values per image in the model's input.
    pub fn values_per_image(&self) -> usize {
        3 * self.height as usize * self.width as usize
    }

    /// Decodes, resizes and crops one image, and writes its normalised values into `out` (one
    /// image's worth of the model's input, in f32 before the final element-type conversion).
    pub fn process(
        &self,
        index: usize,
        encoded: &[u8],
        head: Header,
        out: &mut [f32],
    ) -> Result<()> {
        let rgb = decode(index, encoded, head)?;
        let (w, h) = rgb.dimensions();
        // The resized size (torchvision's rule for a shorter side: it becomes `s`, the longer
        // one scales and is truncated). It is never allocated: only the crop window is computed.
        let (rh, rw) = match self.resize {
            Resize::Exact([rh, rw]) => (rh as u64, rw as u64),
            Resize::ShorterSide(s) if w <= h => ((s as u64 * h as u64) / w as u64, s as u64),
            Resize::ShorterSide(s) => (s as u64, (s as u64 * w as u64) / h as u64),
        };
        let (ch, cw) = (self.height, self.width);
        if rh < ch as u64 || rw < cw as u64 {
            return Err(Error::invalid(format!(
                "input {index} is {w}x{h}, too narrow to resize and crop to {cw}x{ch}"
            )));
        }
        // The centre crop, rounded as torchvision does (Python's round: half to even), and the
        // box of the source image it covers.
        let top = ((rh - ch as u64) as f64 / 2.0).round_ties_even();
        let left = ((rw - cw as u64) as f64 / 2.0).round_ties_even();
        let (sx, sy) = (w as f64 / rw as f64, h as f64 / rh as f64);
        let (bx, bw) = (left * sx, cw as f64 * sx);
        let (by, bh) = (top * sy, ch as f64 * sy);
        let (alg, reach) = match self.filter {
            Filter::Nearest => (ResizeAlg::Nearest, 1.0),
            Filter::Bilinear => (ResizeAlg::Convolution(FilterType::Bilinear), 1.0),
            Filter::Bicubic => (ResizeAlg::Convolution(FilterType::CatmullRom), 2.0),
            Filter::Lanczos3 => (ResizeAlg::Convolution(FilterType::Lanczos3), 3.0),
        };
        // Width first, then height, each pass rounding to 8 bits, as Pillow does: the reference
        // numbers of models trained with torchvision depend on it (one pass in the other order
        // moves a fifth of the pixels by one level). The first pass covers only the rows the
        // second one reads: the box and the filter's reach around it.
        let reach = reach * sy.max(1.0) + 1.0;
        let r0 = (by - reach).floor().max(0.0) as u32;
        let r1 = ((by + bh + reach).ceil() as u32).min(h);
        let failed = |e: fast_image_resize::ResizeError| {
            Error::internal(format!("image {index}: resizing failed: {e}"))
        };
        let src = Image::from_vec_u8(w, h, rgb.into_raw(), PixelType::U8x3)
            .map_err(|e| Error::internal(format!("image {index}: {e}")))?;
        let mut resizer = Resizer::new();
        let mut rows = Image::new(cw, r1 - r0, PixelType::U8x3);
        let across = ResizeOptions::new()
            .resize_alg(alg)
            .crop(bx, r0 as f64, bw, (r1 - r0) as f64);
        resizer.resize(&src, &mut rows, &across).map_err(failed)?;
        let mut dst = Image::new(cw, ch, PixelType::U8x3);
        let down = ResizeOptions::new()
            .resize_alg(alg)
            .crop(0.0, by - r0 as f64, cw as f64, bh);
        resizer.resize(&rows, &mut dst, &down).map_err(failed)?;
        let pixels = dst.buffer();
        let (ch, cw) = (ch as usize, cw as usize);
        // Where channel c of pixel p goes: c * channel_stride + p * pixel_stride.
        let (channel_stride, pixel_stride) = match self.layout {
            Layout::Nchw => (ch * cw, 1),
            Layout::Nhwc => (1, 3),
        };
        let source = if self.bgr { [2, 1, 0] } else { [0, 1, 2] };
        for (p, px) in pixels.chunks_exact(3).take(ch * cw).enumerate() {
            for c in 0..3 {
                let value = px[source[c]] as f32;
                out[c * channel_stride + p * pixel_stride] = value * self.mul[c] + self.add[c];
            }
        }
        Ok(())
    }
}

/// The model input that takes the pixels: the named one, or the only one.
fn pick_input<'a>(
    name: Option<&str>,
    model: &'a Signature,
) -> std::result::Result<&'a TensorSpec, String> {
    match name {
        Some(n) => model.input(n).ok_or_else(|| {
            format!(
                "image.input names '{n}', which is not an input of the model (inputs: {})",
                names(&model.inputs)
            )
        }),
        None => match model.inputs.as_slice() {
            [one] => Ok(one),
            _ => Err(format!(
                "the model has inputs {}; set image.input to the one that takes the pixels",
                names(&model.inputs)
            )),
        },
    }
}

pub(crate) fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What an encoded image's header says, read before any pixel is decoded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl Header {
    pub fn pixels(&self) -> u64 {
        self.width as u64 * self.height as u64
    }
}

/// Reads image `index`'s header, refusing unknown formats and images over `max_pixels`.
pub(crate) fn header(index: usize, bytes: &[u8], max_pixels: u64) -> Result<Header> {
    let format = image::guess_format(bytes).map_err(|_| {
        Error::invalid(format!(
            "input {index} is not an image: its bytes start like none of JPEG, PNG, WebP, GIF or BMP"
        ))
    })?;
    if !matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
    ) {
        return Err(Error::invalid(format!(
            "input {index} is a {format:?} image; accepted formats are JPEG, PNG, WebP, GIF and BMP"
        )));
    }
    let name = format_name(format);
    let dims = ImageReader::with_format(Cursor::new(bytes), format).into_dimensions();
    // The WebP decoder reports a canvas it refuses to decode (over 16383 pixels a side) as
    // 0x0 or an error; the size the file declares is what the limit is about.
    let unusable = !matches!(dims, Ok((w, h)) if w > 0 && h > 0);
    let declared = (format == ImageFormat::WebP && unusable)
        .then(|| webp_declared_size(bytes))
        .flatten()
        .filter(|&(w, h)| w as u64 * h as u64 > max_pixels);
    let (w, h) = match declared {
        Some(wh) => wh,
        None => dims.map_err(|e| corrupt(index, name.clone(), e))?,
    };
    if w as u64 * h as u64 > max_pixels {
        return Err(Error::too_large(format!(
            "input {index} is a {w}x{h} {name} image, over the limit of {max_pixels} pixels (image.max_pixels)"
        )));
    }
    if w == 0 || h == 0 {
        return Err(Error::invalid(format!(
            "input {index} is an empty {w}x{h} image"
        )));
    }
    if format == ImageFormat::Jpeg && !jpeg_complete(bytes) {
        return Err(Error::invalid(format!(
            "input {index} is a truncated JPEG image: it has no end-of-image marker"
        )));
    }
    Ok(Header {
        format,
        width: w,
        height: h,
    })
}

fn format_name(format: ImageFormat) -> String {
    format!("{format:?}").to_uppercase()
}

fn corrupt(index: usize, name: String, e: image::ImageError) -> Error {
    Error::invalid(format!(
        "input {index} is not a readable {name} image: {}",
        e.to_string().trim_end()
    ))
}

/// Decodes image `index`, whose header was checked, into RGB; the decoder may not allocate
/// for more than the header said.
pub(crate) fn decode(index: usize, bytes: &[u8], header: Header) -> Result<image::RgbImage> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), header.format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(header.width);
    limits.max_image_height = Some(header.height);
    reader.limits(limits);
    // The decoders are third-party code fed hostile bytes: one that panics on them (zune-jpeg
    // 0.5.15 overflows on some scans, found by fuzzing) has met a broken image, not broken
    // server state.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode()));
    let name = format_name(header.format);
    match decoded {
        Ok(image) => Ok(image.map_err(|e| corrupt(index, name, e))?.into_rgb8()),
        Err(_) => Err(Error::invalid(format!(
            "input {index} is not a readable {name} image: the decoder failed on it"
        ))),
    }
}

/// The canvas size a WebP file declares in its first chunk (VP8X, VP8L or VP8), read by hand
/// because the decoder will not report sizes it does not decode.
fn webp_declared_size(b: &[u8]) -> Option<(u32, u32)> {
    let le24 = |i: usize| {
        Some(u32::from_le_bytes([
            *b.get(i)?,
            *b.get(i + 1)?,
            *b.get(i + 2)?,
            0,
        ]))
    };
    match b.get(12..16)? {
        b"VP8X" => Some((le24(24)? + 1, le24(27)? + 1)),
        b"VP8L" => {
            // After the 0x2f signature: 14 bits of width-1, then 14 bits of height-1.
            let v = u32::from_le_bytes(b.get(21..25)?.try_into().ok()?);
            Some(((v & 0x3fff) + 1, ((v >> 14) & 0x3fff) + 1))
        }
        b"VP8 " => {
            // A key frame: 3 bytes of frame tag, 3 of start code, then 14-bit width and height.
            let w = u16::from_le_bytes(b.get(26..28)?.try_into().ok()?) & 0x3fff;
            let h = u16::from_le_bytes(b.get(28..30)?.try_into().ok()?) & 0x3fff;
            Some((w.into(), h.into()))
        }
        _ => None,
    }
}

/// Whether a JPEG stream ends with its end-of-image marker (allowing trailing padding, which
/// some cameras add). The decoder fills a truncated scan with grey rather than failing, and a
/// half-grey photo classified with confidence is worse than an error.
fn jpeg_complete(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(1024)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}
