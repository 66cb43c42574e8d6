//! The attention kernels' AVX-512 forms, written with intrinsics: LLVM does not widen the
//! portable forms' 8-lane code to 16 lanes, and on the CPUs that have AVX-512 these run the
//! large products (the VAE's 65,536-token single head, SD 1.5's first level) up to twice as
//! fast. They are handed out only once the CPU is known to have AVX-512F ([`kernels`]); sizes
//! are the portable forms' (see `attention.rs`).

use std::arch::x86_64::*;

use super::attention::Kernels;

/// These kernels, where the CPU runs them.
pub(super) fn kernels() -> Option<Kernels> {
    if !std::is_x86_feature_detected!("avx512f") {
        return None;
    }
    // SAFETY (each closure): the feature was just detected, and the attention kernel calls
    // them with the portable forms' sizes, which these share (rows padded to 8, keys to 32,
    // the head to 16).
    Some(Kernels {
        scores_tile: |q, kt, scores, d, kp| unsafe { scores_tile(q, kt, scores, d, kp) },
        weighted_sum: |p, v, acc, keys, kp, dp| unsafe { weighted_sum(p, v, acc, keys, kp, dp) },
        row_max: |x| unsafe { row_max(x) },
        exp_shifted: |x, shift| unsafe { exp_shifted(x, shift) },
    })
}

/// `scores (rows, kp) = q (rows, d) @ kt (d, kp)` in 4 x 32 register tiles.
///
/// # Safety
/// The CPU must have AVX-512F; rows (`q.len() / d`) must be a multiple of 4 and `kp` of 32,
/// with `kt` holding (d, kp) values and `scores` (rows, kp).
#[target_feature(enable = "avx512f")]
unsafe fn scores_tile(q: &[f32], kt: &[f32], scores: &mut [f32], d: usize, kp: usize) {
    let rows = q.len() / d.max(1);
    debug_assert!(rows.is_multiple_of(4) && kp.is_multiple_of(32) && kt.len() >= d * kp);
    debug_assert!(scores.len() >= rows * kp);
    let (q, kt, out) = (q.as_ptr(), kt.as_ptr(), scores.as_mut_ptr());
    for r in (0..rows).step_by(4) {
        for j in (0..kp).step_by(32) {
            let mut acc = [[_mm512_setzero_ps(); 2]; 4];
            for c in 0..d {
                let k = kt.add(c * kp + j);
                let (k0, k1) = (_mm512_loadu_ps(k), _mm512_loadu_ps(k.add(16)));
                for (i, a) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*q.add((r + i) * d + c));
                    a[0] = _mm512_fmadd_ps(x, k0, a[0]);
                    a[1] = _mm512_fmadd_ps(x, k1, a[1]);
                }
            }
            for (i, a) in acc.iter().enumerate() {
                let dst = out.add((r + i) * kp + j);
                _mm512_storeu_ps(dst, a[0]);
                _mm512_storeu_ps(dst.add(16), a[1]);
            }
        }
    }
}

/// `acc (rows, dp) += p (rows, kp)[.., ..keys] @ v (keys, dp)`: 4 x 32 tiles while 32 columns
/// remain, then 8 x 16 (eight sums either way, enough to keep both FMA units busy).
///
/// # Safety
/// The CPU must have AVX-512F; rows (`acc.len() / dp`) must be a multiple of 8 and `dp` of 16,
/// with `p` holding (rows, kp) values and `v` (keys, dp).
#[target_feature(enable = "avx512f")]
unsafe fn weighted_sum(p: &[f32], v: &[f32], acc: &mut [f32], keys: usize, kp: usize, dp: usize) {
    let rows = acc.len() / dp.max(1);
    debug_assert!(rows.is_multiple_of(8) && dp.is_multiple_of(16) && keys <= kp);
    debug_assert!(p.len() >= rows * kp && v.len() >= keys * dp);
    let (p, v, out) = (p.as_ptr(), v.as_ptr(), acc.as_mut_ptr());
    for r in (0..rows).step_by(8) {
        let mut c = 0;
        while c + 32 <= dp {
            for r in [r, r + 4] {
                let mut sum = [[_mm512_setzero_ps(); 2]; 4];
                for (i, s) in sum.iter_mut().enumerate() {
                    let at = out.add((r + i) * dp + c);
                    *s = [_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16))];
                }
                for j in 0..keys {
                    let at = v.add(j * dp + c);
                    let (v0, v1) = (_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16)));
                    for (i, s) in sum.iter_mut().enumerate() {
                        let w = _mm512_set1_ps(*p.add((r + i) * kp + j));
                        s[0] = _mm512_fmadd_ps(w, v0, s[0]);
                        s[1] = _mm512_fmadd_ps(w, v1, s[1]);
                    }
                }
                for (i, s) in sum.iter().enumerate() {
                    let at = out.add((r + i) * dp + c);
                    _mm512_storeu_ps(at, s[0]);
                    _mm512_storeu_ps(at.add(16), s[1]);
                }
            }
            c += 32;
        }
        if c < dp {
            let mut sum = [_mm512_setzero_ps(); 8];
            for (i, s) in sum.iter_mut().enumerate() {
                *s = _mm512_loadu_ps(out.add((r + i) * dp + c));
            }
            for j in 0..keys {
                let vv = _mm512_loadu_ps(v.add(j * dp + c));
                for (i, s) in sum.iter_mut().enumerate() {
                    *s = _mm512_fmadd_ps(_mm512_set1_ps(*p.add((r + i) * kp + j)), vv, *s);
                }
            }
            for (i, s) in sum.iter().enumerate() {
                _mm512_storeu_ps(out.add((r + i) * dp + c), *s);
            }
        }
    }
}

/// The mask of the first `n` (< 16) lanes.
fn first(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// The largest value of `x`.
///
/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn row_max(x: &[f32]) -> f32 {
    let (ptr, n) = (x.as_ptr(), x.len());
    let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
    let whole = n / 16 * 16;
    for i in (0..whole).step_by(16) {
        max = _mm512_max_ps(max, _mm512_loadu_ps(ptr.add(i)));
    }
    if whole < n {
        let tail = _mm512_mask_loadu_ps(
            _mm512_set1_ps(f32::NEG_INFINITY),
            first(n - whole),
            ptr.add(whole),
        );
        max = _mm512_max_ps(max, tail);
    }
    _mm512_reduce_max_ps(max)
}

/// `e^x` per lane for `x <= 0` (scores less their row's maximum), as `math::exp` computes it.
#[target_feature(enable = "avx512f")]
unsafe fn exp_lanes(x_in: __m512) -> __m512 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0;
    let x = _mm512_max_ps(x_in, _mm512_set1_ps(-87.0));
    let shifted = _mm512_fmadd_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
        _mm512_set1_ps(ROUND),
    );
    let k = _mm512_sub_ps(shifted, _mm512_set1_ps(ROUND));
    let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_sub_epi32(
            _mm512_castps_si512(shifted),
            _mm512_set1_epi32(ROUND.to_bits() as i32),
        ),
        _mm512_set1_epi32(127),
    ));
    let y = _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
    // Below the clamp (and for -inf) the value is 0, as in `math::exp`.
    let live = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x_in, _mm512_set1_ps(-87.0));
    _mm512_maskz_mov_ps(live, y)
}

/// `x = e^(x - shift)`, returning the sum of the new values.
///
/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
    let (ptr, n) = (x.as_mut_ptr(), x.len());
    let shift = _mm512_set1_ps(shift);
    let mut sum = _mm512_setzero_ps();
    let whole = n / 16 * 16;
    for i in (0..whole).step_by(16) {
        let e = exp_lanes(_mm512_sub_ps(_mm512_loadu_ps(ptr.add(i)), shift));
        _mm512_storeu_ps(ptr.add(i), e);
        sum = _mm512_add_ps(sum, e);
    }
    if whole < n {
        let mask = first(n - whole);
        let e = exp_lanes(_mm512_sub_ps(
            _mm512_maskz_loadu_ps(mask, ptr.add(whole)),
            shift,
        ));
        _mm512_mask_storeu_ps(ptr.add(whole), mask, e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(mask, e));
    }
    _mm512_reduce_add_ps(sum)
}
