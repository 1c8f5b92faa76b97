//! Writes `.npy` files (NumPy format 1.0), so embeddings open with `numpy.load`.

use std::path::Path;

/// Serialises a row-major `[rows, cols]` f32 matrix as NPY bytes.
pub fn npy_f32(data: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(data.len(), rows * cols, "matrix size");
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to 64 bytes and
    // ended by a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes an f32 matrix as `.npy`, atomically.
pub fn write_npy(path: &Path, data: &[f32], rows: usize, cols: usize) -> anyhow::Result<()> {
    fgia_core::record::write_atomic(path, &npy_f32(data, rows, cols))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_data_follows() {
        let b = npy_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3);
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + hlen]).expect("ascii");
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'));
        assert_eq!(f32::from_le_bytes(b[10 + hlen..14 + hlen].try_into().expect("4 bytes")), 1.0);
        assert_eq!(b.len(), 10 + hlen + 24);
    }
}
