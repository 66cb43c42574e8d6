//! Element-wise math the kernels share: a polynomial `exp` and `erf` that vectorise, and the
//! row functions built on them, each compiled for AVX2 and FMA where the CPU has them.

/// Runs `$body` compiled for AVX2 and FMA when the CPU has them, else for the baseline.
/// (AVX-512 builds of the same kernels measured no faster on this project's machines.)
macro_rules! vectorised {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        pub(super) fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features it was compiled for were just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(super) use vectorised;

vectorised! {
    /// Mean and (biased) variance.
    fn mean_var(x: &[f32]) -> (f32, f32) {
        let n = x.len().max(1) as f32;
        let mean = sum(x) / n;
        let mut lanes = [0f32; 8];
        let chunks = x.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
        for c in chunks {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += (v - mean) * (v - mean);
            }
        }
        (mean, (lanes.iter().sum::<f32>() + tail) / n)
    }
}

vectorised! {
    /// `dst = src * scale + shift`, then SiLU if asked.
    fn affine(src: &[f32], dst: &mut [f32], scale: f32, shift: f32, silu: bool) {
        if silu {
            for (d, s) in dst.iter_mut().zip(src) {
                let y = s * scale + shift;
                *d = y / (1.0 + exp(-y));
            }
        } else {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s * scale + shift;
            }
        }
    }
}

/// The sum of `x` in eight lanes (inlined into the vectorised callers).
#[inline(always)]
pub(super) fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

vectorised! {
    /// `dst = a * gelu(gate)` with the exact (erf) GELU.
    fn geglu_row(a: &[f32], gate: &[f32], dst: &mut [f32]) {
        for ((d, a), g) in dst.iter_mut().zip(a).zip(gate) {
            *d = a * 0.5 * g * (1.0 + erf(g * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

/// `e^x` to about 2 ulp for the f32 range, without a library call so loops over it vectorise.
#[inline(always)]
pub(super) fn exp(x_in: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits: the integer k and
    // 2^k come from bit operations, where a float-to-int cast would be a scalar, saturating one.
    const ROUND: f32 = 12_582_912.0;
    let x = x_in.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    // Taylor terms to r^7 on |r| <= ln2 / 2.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let k_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let y = p * f32::from_bits(k_bits.wrapping_add(127) << 23);
    // Below the clamp the true value is under f32's smallest normal: 0, as for -inf (a
    // masked score), rather than the clamp's 1.6e-38.
    if x_in < -87.0 {
        0.0
    } else {
        y
    }
}

/// The error function to within 1.5e-7 (Abramowitz and Stegun 7.1.26).
#[inline(always)]
pub(super) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}
