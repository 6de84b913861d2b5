//! Int8 codes of vectors and the integer dot product over them (see the crate docs for why).

/// A vector as int8 codes and the scale that maps them back: `v_i ~ codes_i * scale`.
#[derive(Debug, Clone)]
pub struct Code {
    pub codes: Vec<i8>,
    pub scale: f32,
}

/// Quantizes `v` (see the module docs). A zero or non-finite vector gets scale 0, which makes
/// it equally dissimilar to everything rather than poisoning the arithmetic.
pub fn quantize(v: &[f32]) -> Code {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        return Code {
            codes: vec![0; v.len()],
            scale: 0.0,
        };
    }
    let inv = 127.0 / max;
    Code {
        codes: v
            .iter()
            .map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8)
            .collect(),
        scale: max / 127.0,
    }
}

/// Integer dot product of two code rows, on AVX2 where the CPU has it.
#[inline]
pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { dot_i8_avx2(a, b) };
        }
    }
    dot_i8_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_portable(a, b)
}

/// Sixteen independent i32 lanes, which LLVM turns into widening multiply-adds (`pmaddwd`).
#[inline(always)]
pub(crate) fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| x as i32 * y as i32)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] as i32 * y[i] as i32;
        }
    }
    acc.iter().sum::<i32>() + tail
}
