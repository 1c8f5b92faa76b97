//! A small radix-2 FFT on host memory, for sketch products whose values burn's autodiff cannot
//! compute (its `rfft` is unimplemented there, forward included). Used by kernel pooling's
//! orders `k ≥ 3`, which carry no gradient to their input (see [`super::kernel_pooling`]).

/// In-place iterative radix-2 FFT of `(re, im)` (length a power of two); `inverse` computes the
/// unscaled inverse transform.
pub fn fft(re: &mut [f64], im: &mut [f64], inverse: bool) {
    let n = re.len();
    assert!(n.is_power_of_two() && im.len() == n, "FFT length must be a power of two");
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let sign = if inverse { 1.0 } else { -1.0 };
    let mut len = 2;
    while len <= n {
        let ang = sign * 2.0 * std::f64::consts::PI / len as f64;
        let (wr, wi) = (ang.cos(), ang.sin());
        for start in (0..n).step_by(len) {
            let (mut cr, mut ci) = (1.0, 0.0);
            for k in 0..len / 2 {
                let (a, b) = (start + k, start + k + len / 2);
                let (tr, ti) = (re[b] * cr - im[b] * ci, re[b] * ci + im[b] * cr);
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
                let nr = cr * wr - ci * wi;
                ci = cr * wi + ci * wr;
                cr = nr;
            }
        }
        len <<= 1;
    }
}

/// Adds the spectrum of the circular convolution of several real vectors (one power-of-two
/// length) to `(sum_re, sum_im)`: convolutions summed in the Fourier domain need one inverse
/// transform in all.
pub fn add_convolution_spectrum(vectors: &[Vec<f64>], sum_re: &mut [f64], sum_im: &mut [f64]) {
    let n = vectors[0].len();
    let (mut acc_re, mut acc_im) = (vec![1.0; n], vec![0.0; n]);
    for v in vectors {
        let (mut re, mut im) = (v.clone(), vec![0.0; n]);
        fft(&mut re, &mut im, false);
        for k in 0..n {
            let r = acc_re[k] * re[k] - acc_im[k] * im[k];
            acc_im[k] = acc_re[k] * im[k] + acc_im[k] * re[k];
            acc_re[k] = r;
        }
    }
    for k in 0..n {
        sum_re[k] += acc_re[k];
        sum_im[k] += acc_im[k];
    }
}

/// The real inverse of a summed spectrum.
pub fn inverse_real(mut re: Vec<f64>, mut im: Vec<f64>) -> Vec<f64> {
    let n = re.len();
    fft(&mut re, &mut im, true);
    re.iter().map(|x| x / n as f64).collect()
}

/// The circular convolution of several real vectors of one power-of-two length.
pub fn circular_convolution_many(vectors: &[Vec<f64>]) -> Vec<f64> {
    let n = vectors[0].len();
    let (mut re, mut im) = (vec![0.0; n], vec![0.0; n]);
    add_convolution_spectrum(vectors, &mut re, &mut im);
    inverse_real(re, im)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_direct_circular_convolution() {
        let a: Vec<f64> = (0..16).map(|i| ((i * 7 + 3) % 11) as f64 - 5.0).collect();
        let b: Vec<f64> = (0..16).map(|i| ((i * 5 + 1) % 9) as f64 * 0.5 - 2.0).collect();
        let c: Vec<f64> = (0..16).map(|i| if i % 3 == 0 { 1.0 } else { -0.25 }).collect();
        let direct = |x: &[f64], y: &[f64]| -> Vec<f64> { (0..16).map(|m| (0..16).map(|i| x[i] * y[(16 + m - i) % 16]).sum()).collect() };
        let want = direct(&direct(&a, &b), &c);
        let got = circular_convolution_many(&[a, b, c]);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-9, "{g} vs {w}");
        }
    }
}
