//! 2-D convolution as im2col into a bounded tile and one matrix product per tile.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::{threads, values, Out};

/// im2col tile size in values (1 MiB of f32), so large images never need a full patch matrix.
const TILE_VALUES: usize = 1 << 18;
/// Fewest output columns of a tile, whatever its size: each tile's matrix product packs the
/// whole weight matrix again, so a tile of one 64-pixel row under a deep layer (SD 1.5's
/// 320-2,880 weights) would spend more on packing than on arithmetic.
const MIN_COLUMNS: usize = 512;
/// Largest tile a thread keeps between convolutions, in values (32 MiB of f32).
const KEPT_VALUES: usize = 1 << 23;

thread_local! {
    /// Each thread's im2col tile, kept between convolutions: every value of it is overwritten
    /// before use, so it only grows.
    static PATCHES: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

pub(super) struct Conv2d {
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub(super) fn new(stride: usize, padding: usize) -> Self {
        Self { stride, padding }
    }
}

/// Sizes of one convolution, in candle's NCHW layout.
#[derive(Clone, Copy)]
struct ConvShape {
    c_in: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    padding: usize,
}

impl ConvShape {
    /// Rows of the patch matrix: one per input channel and kernel position.
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// Writes the patch matrix for output rows `rows` of one image: (k, rows.len() * ow), zero
    /// where the kernel reaches into the padding.
    fn im2col(&self, image: &[f32], rows: std::ops::Range<usize>, col: &mut [f32]) {
        let (s, p) = (self.stride, self.padding);
        let n = rows.len() * self.ow;
        for ci in 0..self.c_in {
            let plane = &image[ci * self.h * self.w..][..self.h * self.w];
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = &mut col[((ci * self.kh + i) * self.kw + j) * n..][..n];
                    for (r, oy) in rows.clone().enumerate() {
                        let dst = &mut row[r * self.ow..][..self.ow];
                        let y = (oy * s + i) as isize - p as isize;
                        if y < 0 || y >= self.h as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        let src = &plane[y as usize * self.w..][..self.w];
                        if s == 1 {
                            // Output column ox reads input column ox + j - p.
                            let lo = p.saturating_sub(j).min(self.ow);
                            let hi = (self.w + p).saturating_sub(j).clamp(lo, self.ow);
                            dst[..lo].fill(0.0);
                            if hi > lo {
                                // lo was not cut to ow here, so lo + j >= p.
                                dst[lo..hi].copy_from_slice(&src[lo + j - p..hi + j - p]);
                            }
                            dst[hi..].fill(0.0);
                        } else {
                            for (ox, d) in dst.iter_mut().enumerate() {
                                let x = (ox * s + j) as isize - p as isize;
                                *d = if x >= 0 && x < self.w as isize {
                                    src[x as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `dst (m, n) += lhs (m, k) @ rhs (k, n)`, all row-major with the given row strides.
///
/// # Safety
/// The pointers must cover the matrices their sizes and strides describe, and no other thread
/// may write `dst`'s elements meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_acc(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    threads: usize,
) {
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        true,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        1,
        rhs_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    )
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "ferroserve-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, bias) = (
            values("conv2d", s1, l1)?,
            values("conv2d", s2, l2)?,
            values("conv2d", s3, l3)?,
        );
        let (batch, c_in, h, wd) = l1.shape().dims4()?;
        let (c_out, c_in_w, kh, kw) = l2.shape().dims4()?;
        if c_in != c_in_w || bias.len() != c_out {
            bail!(
                "conv2d: input {:?}, weight {:?} and bias {:?} do not fit",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let (s, p) = (self.stride, self.padding);
        if s == 0 || h + 2 * p < kh || wd + 2 * p < kw {
            bail!("conv2d: kernel {kh}x{kw} does not fit input {h}x{wd} with padding {p}")
        }
        let c = ConvShape {
            c_in,
            h,
            w: wd,
            kh,
            kw,
            oh: (h + 2 * p - kh) / s + 1,
            ow: (wd + 2 * p - kw) / s + 1,
            stride: s,
            padding: p,
        };
        let plane = c.oh * c.ow;
        let mut out = Vec::with_capacity(batch * c_out * plane);
        for _ in 0..batch {
            for &b in bias {
                out.extend(std::iter::repeat_n(b, plane));
            }
        }
        let dst = Out(out.as_mut_ptr());
        let threads = threads();
        if c.pointwise() {
            for b in 0..batch {
                // SAFETY: image b's output block (c_out, plane) and input block (c_in, plane)
                // lie inside `out` and `x`; nothing else writes the block.
                unsafe {
                    gemm_acc(
                        (c_out, plane, c_in),
                        dst.at(b * c_out * plane),
                        plane,
                        w.as_ptr(),
                        c_in,
                        x.as_ptr().add(b * c_in * h * wd),
                        plane,
                        threads,
                    )
                }
            }
        } else {
            let k = c.k();
            let rows_per_tile = (TILE_VALUES / (k * c.ow).max(1))
                .max(MIN_COLUMNS.div_ceil(c.ow.max(1)))
                .clamp(1, c.oh);
            let tiles_per_image = c.oh.div_ceil(rows_per_tile);
            let tasks = batch * tiles_per_image;
            // Either tiles run side by side with a single-threaded gemm each, or one after the
            // other with a parallel gemm: never both, so the pool is not oversubscribed.
            let side_by_side = threads > 1 && tasks >= threads;
            let run = |task: usize, gemm_threads: usize| {
                let (b, tile) = (task / tiles_per_image, task % tiles_per_image);
                let rows = tile * rows_per_tile..((tile + 1) * rows_per_tile).min(c.oh);
                let n = rows.len() * c.ow;
                // Taken out rather than borrowed: a parallel gemm may run another convolution
                // on this thread while it waits, and that one must find the slot free.
                let mut col = PATCHES.take();
                if col.len() < k * n {
                    col.resize(k * n, 0.0);
                }
                c.im2col(
                    &x[b * c_in * h * wd..][..c_in * h * wd],
                    rows.clone(),
                    &mut col[..k * n],
                );
                // SAFETY: this task's output columns (rows of image b) are written by no other
                // task; `col` holds (k, n) values and `w` (c_out, k).
                unsafe {
                    gemm_acc(
                        (c_out, n, k),
                        dst.at(b * c_out * plane + rows.start * c.ow),
                        plane,
                        w.as_ptr(),
                        k,
                        col.as_ptr(),
                        n,
                        gemm_threads,
                    )
                }
                // Kept for the next convolution unless it is unusually large: allocating (and
                // the kernel zeroing) a deep layer's tile for every tile costs more than its
                // copy. SD 1.5's deepest layer needs 23 MiB.
                if col.capacity() <= KEPT_VALUES {
                    PATCHES.set(col);
                }
            };
            if side_by_side {
                (0..tasks).into_par_iter().for_each(|task| run(task, 1));
            } else {
                for task in 0..tasks {
                    run(task, threads);
                }
            }
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, c_out, c.oh, c.ow)),
        ))
    }
}
