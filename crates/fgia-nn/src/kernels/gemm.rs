//! A safe, bounds-checked front to the `gemm` crate's strided matrix product.

/// A strided matrix view into a slice: element `(i, j)` sits at `i * rs + j * cs`.
#[derive(Clone, Copy, Debug)]
pub struct View {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride, in elements.
    pub rs: usize,
    /// Column stride, in elements.
    pub cs: usize,
}

impl View {
    /// A row-major `rows x cols` matrix.
    pub fn rows(rows: usize, cols: usize) -> Self {
        View { rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose of a row-major `rows x cols` matrix, read in place (`cols x rows`).
    pub fn transposed(rows: usize, cols: usize) -> Self {
        View { rows: cols, cols: rows, rs: 1, cs: cols }
    }

    /// One past the largest offset the view reads.
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 { 0 } else { (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1 }
    }
}

/// Whether `gemm` may split one product over the rayon pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only (the caller parallelises over a batch).
    One,
    /// Every thread of the pool.
    All,
}

/// `dst = (accumulate ? dst : 0) + scale * lhs · rhs`.
///
/// # Panics
/// When the shapes disagree or a view reaches past its slice.
#[allow(unsafe_code)]
#[allow(clippy::too_many_arguments)]
pub fn gemm(dst: &mut [f32], d: View, accumulate: bool, lhs: &[f32], l: View, rhs: &[f32], r: View, scale: f32, threads: Threads) {
    assert!(d.rows == l.rows && d.cols == r.cols && l.cols == r.rows, "gemm: shapes {d:?} = {l:?} x {r:?}");
    assert!(d.extent() <= dst.len() && l.extent() <= lhs.len() && r.extent() <= rhs.len(), "gemm: a view reaches past its slice");
    if d.rows == 0 || d.cols == 0 {
        return;
    }
    if l.cols == 0 {
        if !accumulate {
            for i in 0..d.rows {
                for j in 0..d.cols {
                    dst[i * d.rs + j * d.cs] = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::All => gemm::Parallelism::Rayon(0),
    };
    // SAFETY: the assertions above bound every offset the kernel touches, `(rows - 1) * rs +
    // (cols - 1) * cs`, inside each slice; `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            l.cols,
            dst.as_mut_ptr(),
            d.cs as isize,
            d.rs as isize,
            accumulate,
            lhs.as_ptr(),
            l.cs as isize,
            l.rs as isize,
            rhs.as_ptr(),
            r.cs as isize,
            r.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_product_matches_the_loops() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|v| (v as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|v| (v as f32 * 0.11).cos()).collect(); // [n, k], read transposed
        let mut c = vec![1.0f32; m * n];
        gemm(&mut c, View::rows(m, n), true, &a, View::rows(m, k), &b, View::transposed(n, k), 2.0, Threads::One);
        for i in 0..m {
            for j in 0..n {
                let want = 1.0 + 2.0 * (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum::<f32>();
                assert!((c[i * n + j] - want).abs() < 1e-4, "({i}, {j}): {} vs {want}", c[i * n + j]);
            }
        }
    }

    #[test]
    #[should_panic(expected = "past its slice")]
    fn a_view_past_its_slice_is_refused() {
        let mut c = vec![0.0f32; 4];
        gemm(&mut c, View::rows(2, 2), false, &[0.0; 3], View::rows(2, 2), &[0.0; 4], View::rows(2, 2), 1.0, Threads::One);
    }
}
