//! A reader (and a small writer) for MATLAB level-5 MAT files, enough for the Stanford Dogs and
//! Stanford Cars annotation files: numeric, char, cell and struct arrays, in plain or
//! zlib-compressed (`miCOMPRESSED`, the MATLAB 7 default) elements, little- or big-endian.
//!
//! Format: "MAT-File Format", The MathWorks, sections 1-3 (level 5). Sparse and object arrays are
//! reported as [`MatValue::Unsupported`] rather than failing the whole file.
//!
//! A hostile header is an error, never an abort or a huge allocation ([`Limits`]):
//! - dimensions are non-negative and their product is computed with checked arithmetic;
//! - every element count is bounded by the bytes left in its element (each cell or struct
//!   element takes at least an 8-byte tag), before anything is allocated for it;
//! - a `miCOMPRESSED` element inflates to at most [`Limits::max_inflated`] bytes;
//! - cells and structs nest at most [`Limits::max_depth`] deep.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::error::{DataError, Result};

// Data types (table 1-1 of the format description).
const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;
const MI_UTF32: u32 = 18;

// Array classes (table 1-3).
const MX_CELL: u8 = 1;
const MX_STRUCT: u8 = 2;
const MX_CHAR: u8 = 4;
const MX_DOUBLE: u8 = 6;
const MX_UINT64: u8 = 15;

/// Bounds on what a MAT file may ask the reader for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes one `miCOMPRESSED` element may inflate to.
    pub max_inflated: usize,
    /// Deepest nesting of cells and structs.
    pub max_depth: usize,
    /// Most rows of an empty (`m x 0`) char array, which carries no bytes to bound it.
    pub max_empty_rows: usize,
}

impl Default for Limits {
    /// The largest annotation file (`cars_annos.mat`) is about 1 MB inflated and 3 levels deep.
    fn default() -> Self {
        Self { max_inflated: 256 << 20, max_depth: 32, max_empty_rows: 1 << 16 }
    }
}

/// One MATLAB array. Multi-element arrays keep MATLAB's column-major order.
#[derive(Debug, Clone, PartialEq)]
pub enum MatValue {
    /// A numeric or logical array, converted to `f64`.
    Numeric {
        /// Dimensions, as stored.
        dims: Vec<usize>,
        /// Values in column-major order.
        data: Vec<f64>,
    },
    /// A char array. A row vector becomes one string; an `m x n` array becomes `m` strings.
    Char {
        /// Dimensions, as stored.
        dims: Vec<usize>,
        /// One string per row.
        rows: Vec<String>,
    },
    /// A cell array.
    Cell {
        /// Dimensions, as stored.
        dims: Vec<usize>,
        /// Elements in column-major order.
        items: Vec<MatValue>,
    },
    /// A struct array.
    Struct {
        /// Dimensions, as stored.
        dims: Vec<usize>,
        /// Field names, in file order.
        fields: Vec<String>,
        /// One map per element (column-major order).
        items: Vec<BTreeMap<String, MatValue>>,
    },
    /// An empty element (a `[]` inside a cell, written with no content).
    Empty,
    /// A sparse or object array; the class id is kept for the error message.
    Unsupported(u8),
}

impl MatValue {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MatValue::Numeric { data, .. } => data.len(),
            MatValue::Char { rows, .. } => rows.len(),
            MatValue::Cell { items, .. } => items.len(),
            MatValue::Struct { items, .. } => items.len(),
            MatValue::Empty | MatValue::Unsupported(_) => 0,
        }
    }

    /// Whether the array has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text of a char row vector (or of a 1x1 cell holding one).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MatValue::Char { rows, .. } if rows.len() == 1 => Some(rows[0].as_str()),
            MatValue::Char { rows, .. } if rows.is_empty() => Some(""),
            MatValue::Cell { items, .. } if items.len() == 1 => items[0].as_str(),
            _ => None,
        }
    }

    /// The value of a 1x1 numeric array (or of a 1x1 cell holding one).
    pub fn as_scalar(&self) -> Option<f64> {
        match self {
            MatValue::Numeric { data, .. } if data.len() == 1 => Some(data[0]),
            MatValue::Cell { items, .. } if items.len() == 1 => items[0].as_scalar(),
            _ => None,
        }
    }

    /// A short name of the kind of array, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            MatValue::Numeric { .. } => "numeric",
            MatValue::Char { .. } => "char",
            MatValue::Cell { .. } => "cell",
            MatValue::Struct { .. } => "struct",
            MatValue::Empty => "empty",
            MatValue::Unsupported(_) => "unsupported",
        }
    }
}

/// The named top-level variables of a MAT file.
#[derive(Debug, Clone, Default)]
pub struct MatFile {
    /// Variables by name.
    pub vars: BTreeMap<String, MatValue>,
}

impl MatFile {
    /// Reads a MAT file from disk.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::parse(&bytes).map_err(|message| DataError::format(path, message))
    }

    /// Parses the bytes of a MAT file under the default [`Limits`]. Errors are plain messages;
    /// [`MatFile::open`] adds the path.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        Self::parse_with(bytes, Limits::default())
    }

    /// Parses the bytes of a MAT file under the given limits.
    pub fn parse_with(bytes: &[u8], limits: Limits) -> std::result::Result<Self, String> {
        if bytes.len() < 128 {
            return Err(format!("not a MAT-file: {} bytes, the header alone has 128", bytes.len()));
        }
        if bytes.get(512..516) == Some(b"\x89HDF".as_slice()) {
            return Err("MAT v7.3 (HDF5) files are not supported; re-save with -v7".into());
        }
        let big_endian = match &bytes[126..128] {
            b"IM" => false,
            b"MI" => true,
            other => return Err(format!("not a level-5 MAT-file (endian mark {other:?})")),
        };
        let mut out = MatFile::default();
        let mut cursor = Cursor { bytes, pos: 128, big_endian };
        while cursor.pos < bytes.len() {
            // Trailing zero padding at the end of a file is tolerated.
            if bytes[cursor.pos..].iter().all(|&b| b == 0) {
                break;
            }
            let (ty, data) = cursor.element()?;
            match ty {
                MI_COMPRESSED => {
                    let mut inflated = Vec::new();
                    flate2::read::ZlibDecoder::new(data)
                        .take(limits.max_inflated as u64 + 1)
                        .read_to_end(&mut inflated)
                        .map_err(|e| format!("bad compressed element at byte {}: {e}", cursor.pos))?;
                    if inflated.len() > limits.max_inflated {
                        return Err(format!("compressed element before byte {} inflates past the limit of {} bytes", cursor.pos, limits.max_inflated));
                    }
                    let mut inner = Cursor { bytes: &inflated, pos: 0, big_endian };
                    let (ity, idata) = inner.element()?;
                    if ity != MI_MATRIX {
                        return Err(format!("compressed element holds type {ity}, not a matrix"));
                    }
                    let (name, value) = parse_matrix(idata, big_endian, &limits, 0)?;
                    out.vars.insert(name, value);
                }
                MI_MATRIX => {
                    let (name, value) = parse_matrix(data, big_endian, &limits, 0)?;
                    out.vars.insert(name, value);
                }
                other => return Err(format!("unexpected top-level element type {other}")),
            }
        }
        Ok(out)
    }

    /// A variable by name, or a format error naming what is missing.
    pub fn get(&self, name: &str) -> std::result::Result<&MatValue, String> {
        self.vars.get(name).ok_or_else(|| {
            let have: Vec<&str> = self.vars.keys().map(String::as_str).collect();
            format!("variable '{name}' not found (have: {})", have.join(", "))
        })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    big_endian: bool,
}

impl<'a> Cursor<'a> {
    fn u32_at(&self, at: usize) -> std::result::Result<u32, String> {
        let b: [u8; 4] = self.bytes.get(at..at + 4).and_then(|s| s.try_into().ok()).ok_or_else(|| format!("truncated at byte {at}"))?;
        Ok(if self.big_endian { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    }

    /// Reads one data element (tag + data) and moves past it and its padding.
    fn element(&mut self) -> std::result::Result<(u32, &'a [u8]), String> {
        let first = self.u32_at(self.pos)?;
        // Small data element format: the byte count sits in the upper 16 bits.
        let small = first >> 16;
        if small != 0 {
            let ty = first & 0xffff;
            let n = small as usize;
            if n > 4 {
                return Err(format!("small element of {n} bytes at byte {}", self.pos));
            }
            let start = self.pos + 4;
            let data = self.bytes.get(start..start + n).ok_or("truncated small element")?;
            self.pos += 8;
            return Ok((ty, data));
        }
        let ty = first;
        let n = self.u32_at(self.pos + 4)? as usize;
        let start = self.pos + 8;
        let end = start.checked_add(n).ok_or("element size overflows")?;
        let data = self
            .bytes
            .get(start..end)
            .ok_or_else(|| format!("element at byte {} claims {n} bytes, {} remain", self.pos, self.bytes.len() - start.min(self.bytes.len())))?;
        // Compressed elements are not padded; all others are padded to 8 bytes.
        self.pos = if ty == MI_COMPRESSED { end } else { start + n.div_ceil(8) * 8 };
        Ok((ty, data))
    }
}

fn numbers(ty: u32, data: &[u8], big_endian: bool) -> std::result::Result<Vec<f64>, String> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            data.chunks_exact($n)
                .map(|c| {
                    let arr: [u8; $n] = c.try_into().expect("chunks_exact yields full chunks");
                    (if big_endian { <$t>::from_be_bytes(arr) } else { <$t>::from_le_bytes(arr) }) as f64
                })
                .collect()
        };
    }
    Ok(match ty {
        MI_INT8 => data.iter().map(|&b| b as i8 as f64).collect(),
        MI_UINT8 | MI_UTF8 => data.iter().map(|&b| b as f64).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 | MI_UTF16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 | MI_UTF32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        other => return Err(format!("data type {other} is not numeric")),
    })
}

/// The element count of `dims`, or an error for a negative dimension or an overflowing product.
fn element_count(raw: &[f64], name: &str) -> std::result::Result<(Vec<usize>, usize), String> {
    let mut dims = Vec::with_capacity(raw.len());
    let mut count: usize = 1;
    for &d in raw {
        if !(d >= 0.0 && d.fract() == 0.0 && d <= usize::MAX as f64) {
            return Err(format!("array '{name}' has the invalid dimension {d} (dims {raw:?})"));
        }
        let d = d as usize;
        count = count.checked_mul(d).ok_or_else(|| format!("array '{name}': the product of dims {raw:?} overflows"))?;
        dims.push(d);
    }
    Ok((dims, count))
}

/// Refuses `count` elements of at least 8 bytes each when fewer bytes than that remain.
fn fits(count: usize, per: usize, remaining: usize, what: &str, name: &str) -> std::result::Result<(), String> {
    match count.checked_mul(per).and_then(|n| n.checked_mul(8)) {
        Some(need) if need <= remaining => Ok(()),
        _ => Err(format!("{what} '{name}' claims {count} elements of {per} fields, but only {remaining} bytes remain")),
    }
}

fn parse_matrix(data: &[u8], big_endian: bool, limits: &Limits, depth: usize) -> std::result::Result<(String, MatValue), String> {
    if data.is_empty() {
        return Ok((String::new(), MatValue::Empty));
    }
    if depth >= limits.max_depth {
        return Err(format!("cells and structs nest deeper than {} levels", limits.max_depth));
    }
    let mut c = Cursor { bytes: data, pos: 0, big_endian };
    let (_, flags) = c.element()?;
    let flags = numbers(MI_UINT32, flags, big_endian)?;
    let class = (*flags.first().ok_or("missing array flags")? as u32 & 0xff) as u8;
    let complex = (*flags.first().unwrap_or(&0.0) as u32) & 0x800 != 0;
    let (dty, raw_dims) = c.element()?;
    let raw_dims = numbers(dty, raw_dims, big_endian)?;
    let (_, name) = c.element()?;
    let name = String::from_utf8_lossy(name).into_owned();
    let (dims, count) = element_count(&raw_dims, &name)?;
    let value = match class {
        MX_CELL => {
            fits(count, 1, data.len().saturating_sub(c.pos), "cell", &name)?;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let (ty, d) = c.element()?;
                if ty != MI_MATRIX {
                    return Err(format!("cell element of type {ty}"));
                }
                items.push(parse_matrix(d, big_endian, limits, depth + 1)?.1);
            }
            MatValue::Cell { dims, items }
        }
        MX_STRUCT => {
            let (lty, len) = c.element()?;
            let len = *numbers(lty, len, big_endian)?.first().ok_or("missing field name length")?;
            let (_, names) = c.element()?;
            if !(len >= 1.0 && len <= names.len().max(1) as f64) {
                return Err(format!("struct '{name}': field name length {len} for {} bytes of names", names.len()));
            }
            let len = len as usize;
            let fields: Vec<String> = names.chunks(len).map(|n| String::from_utf8_lossy(n.split(|&b| b == 0).next().unwrap_or(&[])).into_owned()).collect();
            // With no field, each element takes no byte: bound the count like an empty char array.
            if fields.is_empty() && count > limits.max_empty_rows {
                return Err(format!("struct '{name}' has {count} elements and no field"));
            }
            fits(count, fields.len(), data.len().saturating_sub(c.pos), "struct", &name)?;
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                let mut item = BTreeMap::new();
                for field in &fields {
                    let (ty, d) = c.element()?;
                    if ty != MI_MATRIX {
                        return Err(format!("struct field '{field}' of type {ty}"));
                    }
                    item.insert(field.clone(), parse_matrix(d, big_endian, limits, depth + 1)?.1);
                }
                items.push(item);
            }
            MatValue::Struct { dims, fields, items }
        }
        MX_CHAR => {
            let (ty, d) = c.element()?;
            let codes: Vec<u32> = if ty == MI_UTF8 {
                String::from_utf8_lossy(d).chars().map(|ch| ch as u32).collect()
            } else {
                numbers(ty, d, big_endian)?.into_iter().map(|v| v as u32).collect()
            };
            // The product of all dims did not overflow, so neither does this one.
            let (m, n) = (dims.first().copied().unwrap_or(0), dims.iter().skip(1).product::<usize>());
            if codes.len() < count {
                return Err(format!("char array '{name}' has {} codes for {m}x{n}", codes.len()));
            }
            if n == 0 && m > limits.max_empty_rows {
                return Err(format!("char array '{name}' has {m} empty rows"));
            }
            // Column-major: code (i, j) sits at j * m + i.
            let rows = (0..m).map(|i| (0..n).filter_map(|j| char::from_u32(codes[j * m + i])).collect::<String>()).collect();
            MatValue::Char { dims, rows }
        }
        MX_DOUBLE..=MX_UINT64 => {
            let (ty, d) = c.element()?;
            let data = numbers(ty, d, big_endian)?;
            if complex {
                // The imaginary part follows; the annotation files never use it.
                let _ = c.element()?;
            }
            if data.len() != count {
                return Err(format!("numeric array '{name}' has {} values for dims {dims:?}", data.len()));
            }
            MatValue::Numeric { dims, data }
        }
        other => MatValue::Unsupported(other),
    };
    Ok((name, value))
}

/// Writes level-5 MAT files. Enough to produce Dogs and Cars style annotation files for tests and
/// tooling; numbers are written as doubles and text as UTF-16 code units, like MATLAB does.
pub mod write {
    use super::*;
    use std::io::Write;

    /// Serialises variables to MAT bytes; with `compress`, each one in its own `miCOMPRESSED`
    /// element (as MATLAB's default `-v7` does).
    pub fn to_bytes(vars: &[(&str, MatValue)], compress: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut header = b"MATLAB 5.0 MAT-file, written by fgia-core".to_vec();
        header.resize(116, b' ');
        out.extend_from_slice(&header);
        out.extend_from_slice(&[0u8; 8]);
        out.extend_from_slice(&0x0100u16.to_le_bytes());
        out.extend_from_slice(b"IM");
        for (name, value) in vars {
            let matrix = matrix_element(name, value);
            if compress {
                let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(&matrix).expect("writing to a Vec cannot fail");
                let z = enc.finish().expect("writing to a Vec cannot fail");
                out.extend_from_slice(&MI_COMPRESSED.to_le_bytes());
                out.extend_from_slice(&(z.len() as u32).to_le_bytes());
                out.extend_from_slice(&z);
            } else {
                out.extend_from_slice(&matrix);
            }
        }
        out
    }

    fn element(ty: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + data.len() + 8);
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        while out.len() % 8 != 0 {
            out.push(0);
        }
        out
    }

    fn matrix_element(name: &str, value: &MatValue) -> Vec<u8> {
        let mut body = Vec::new();
        let (class, dims): (u8, Vec<usize>) = match value {
            MatValue::Numeric { dims, .. } => (MX_DOUBLE, dims.clone()),
            MatValue::Char { dims, .. } => (MX_CHAR, dims.clone()),
            MatValue::Cell { dims, .. } => (MX_CELL, dims.clone()),
            MatValue::Struct { dims, .. } => (MX_STRUCT, dims.clone()),
            MatValue::Empty | MatValue::Unsupported(_) => (MX_DOUBLE, vec![0, 0]),
        };
        let mut flags = Vec::new();
        flags.extend_from_slice(&(class as u32).to_le_bytes());
        flags.extend_from_slice(&0u32.to_le_bytes());
        body.extend(element(MI_UINT32, &flags));
        let dim_bytes: Vec<u8> = dims.iter().flat_map(|&d| (d as i32).to_le_bytes()).collect();
        body.extend(element(MI_INT32, &dim_bytes));
        body.extend(element(MI_INT8, name.as_bytes()));
        match value {
            MatValue::Numeric { data, .. } => {
                let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                body.extend(element(MI_DOUBLE, &bytes));
            }
            MatValue::Char { dims, rows } => {
                let (m, n) = (dims[0], dims.iter().skip(1).product::<usize>());
                let chars: Vec<Vec<u16>> = rows.iter().map(|r| r.encode_utf16().collect()).collect();
                let mut bytes = Vec::with_capacity(m * n * 2);
                for j in 0..n {
                    for row in chars.iter().take(m) {
                        bytes.extend_from_slice(&row.get(j).copied().unwrap_or(b' ' as u16).to_le_bytes());
                    }
                }
                body.extend(element(MI_UINT16, &bytes));
            }
            MatValue::Cell { items, .. } => {
                for item in items {
                    body.extend(matrix_element("", item));
                }
            }
            MatValue::Struct { fields, items, .. } => {
                let len = fields.iter().map(|f| f.len() + 1).max().unwrap_or(1).max(8);
                body.extend(element(MI_INT32, &(len as i32).to_le_bytes()));
                let mut names = Vec::new();
                for f in fields {
                    let mut b = f.as_bytes().to_vec();
                    b.resize(len, 0);
                    names.extend(b);
                }
                body.extend(element(MI_INT8, &names));
                for item in items {
                    for f in fields {
                        body.extend(matrix_element("", item.get(f).unwrap_or(&MatValue::Empty)));
                    }
                }
            }
            MatValue::Empty | MatValue::Unsupported(_) => {
                body.extend(element(MI_DOUBLE, &[]));
            }
        }
        element(MI_MATRIX, &body)
    }

    /// A char row vector.
    pub fn string(s: &str) -> MatValue {
        MatValue::Char { dims: vec![1, s.encode_utf16().count()], rows: vec![s.to_string()] }
    }

    /// A 1x1 double.
    pub fn scalar(v: f64) -> MatValue {
        MatValue::Numeric { dims: vec![1, 1], data: vec![v] }
    }

    /// An `n x 1` double column.
    pub fn column(values: &[f64]) -> MatValue {
        MatValue::Numeric { dims: vec![values.len(), 1], data: values.to_vec() }
    }

    /// An `n x 1` cell column of the given values.
    pub fn cell_column(items: Vec<MatValue>) -> MatValue {
        MatValue::Cell { dims: vec![items.len(), 1], items }
    }

    /// A `1 x n` struct array with the given fields.
    pub fn struct_row(fields: &[&str], items: Vec<BTreeMap<String, MatValue>>) -> MatValue {
        MatValue::Struct { dims: vec![1, items.len()], fields: fields.iter().map(|s| s.to_string()).collect(), items }
    }
}

#[cfg(test)]
mod tests {
    use super::write::*;
    use super::*;

    fn sample() -> Vec<(&'static str, MatValue)> {
        let mut item = BTreeMap::new();
        item.insert("class".to_string(), scalar(3.0));
        item.insert("fname".to_string(), string("00001.jpg"));
        vec![
            ("labels", column(&[1.0, 2.0, 120.0])),
            ("file_list", cell_column(vec![string("n0208-Chihuahua/a.jpg"), string("b é.jpg")])),
            ("annotations", struct_row(&["class", "fname"], vec![item])),
        ]
    }

    #[test]
    fn round_trip_plain_and_compressed() {
        for compress in [false, true] {
            let bytes = to_bytes(&sample(), compress);
            let f = MatFile::parse(&bytes).expect("parses");
            let labels = f.get("labels").expect("labels");
            assert_eq!(labels, &column(&[1.0, 2.0, 120.0]));
            let files = f.get("file_list").expect("file_list");
            match files {
                MatValue::Cell { items, .. } => {
                    assert_eq!(items[0].as_str(), Some("n0208-Chihuahua/a.jpg"));
                    assert_eq!(items[1].as_str(), Some("b é.jpg"));
                }
                other => panic!("expected cell, got {other:?}"),
            }
            match f.get("annotations").expect("annotations") {
                MatValue::Struct { items, fields, .. } => {
                    assert_eq!(fields, &["class", "fname"]);
                    assert_eq!(items[0]["class"].as_scalar(), Some(3.0));
                    assert_eq!(items[0]["fname"].as_str(), Some("00001.jpg"));
                }
                other => panic!("expected struct, got {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_file_is_an_error_not_a_panic() {
        let bytes = to_bytes(&sample(), false);
        for cut in [0, 10, 127, 140, bytes.len() / 2, bytes.len() - 3] {
            assert!(MatFile::parse(&bytes[..cut]).is_err(), "cut at {cut} should fail");
        }
        // The header alone is a valid file with no variable.
        assert!(MatFile::parse(&bytes[..128]).expect("header only").vars.is_empty());
        let z = to_bytes(&sample(), true);
        assert!(MatFile::parse(&z[..z.len() - 5]).is_err());
    }

    #[test]
    fn small_element_format_is_read() {
        // A 1x1 uint8 stored in the small data element format, as MATLAB writes short arrays.
        let mut body = Vec::new();
        let el = |ty: u32, data: &[u8]| {
            let mut v = ty.to_le_bytes().to_vec();
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(data);
            while !v.len().is_multiple_of(8) {
                v.push(0);
            }
            v
        };
        body.extend(el(MI_UINT32, &[9, 0, 0, 0, 0, 0, 0, 0])); // mxUINT8
        body.extend(el(MI_INT32, &[1, 0, 0, 0, 1, 0, 0, 0]));
        // Name "x" as a small element: type miINT8, 1 byte.
        body.extend_from_slice(&((1u32 << 16) | MI_INT8).to_le_bytes());
        body.extend_from_slice(&[b'x', 0, 0, 0]);
        body.extend_from_slice(&((1u32 << 16) | MI_UINT8).to_le_bytes());
        body.extend_from_slice(&[200, 0, 0, 0]);
        let mut bytes = to_bytes(&[], false);
        bytes.extend(el(MI_MATRIX, &body));
        let f = MatFile::parse(&bytes).expect("parses");
        assert_eq!(f.get("x").expect("x").as_scalar(), Some(200.0));
    }

    /// A data element with an 8-byte tag, padded to 8 bytes.
    fn el(ty: u32, data: &[u8]) -> Vec<u8> {
        let mut v = ty.to_le_bytes().to_vec();
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        while !v.len().is_multiple_of(8) {
            v.push(0);
        }
        v
    }

    /// The head of a matrix (flags, dims, name) with dims stored as `dims_ty`.
    fn head(class: u8, dims_ty: u32, dims: &[u8], name: &str) -> Vec<u8> {
        let mut b = el(MI_UINT32, &[class, 0, 0, 0, 0, 0, 0, 0]);
        b.extend(el(dims_ty, dims));
        b.extend(el(MI_INT8, name.as_bytes()));
        b
    }

    fn file_of(matrix_body: &[u8]) -> Vec<u8> {
        let mut bytes = to_bytes(&[], false);
        bytes.extend(el(MI_MATRIX, matrix_body));
        bytes
    }

    fn i32s(v: &[i32]) -> Vec<u8> {
        v.iter().flat_map(|d| d.to_le_bytes()).collect()
    }

    #[test]
    fn hostile_dimensions_are_errors_not_aborts() {
        let f64s = |v: &[f64]| -> Vec<u8> { v.iter().flat_map(|d| d.to_le_bytes()).collect() };
        let i64s = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|d| d.to_le_bytes()).collect() };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            // A cell of 10¹² elements in under 200 bytes: would reserve 10¹² values.
            ("cell 1x1e12", file_of(&head(MX_CELL, MI_DOUBLE, &f64s(&[1.0, 1e12]), "c")), "only"),
            // 2³¹-1 empty rows: would build two billion strings.
            (
                "char 2147483647x0",
                {
                    let mut b = head(MX_CHAR, MI_INT32, &i32s(&[i32::MAX, 0]), "s");
                    b.extend(el(MI_UINT16, &[]));
                    file_of(&b)
                },
                "empty rows",
            ),
            // 2⁶⁴: wraps to 0, an empty cell.
            ("dims wrap to 0", file_of(&head(MX_CELL, MI_INT32, &i32s(&[65536, 65536, 65536, 65536]), "w")), "overflows"),
            // 274177 × 67280421310721 = 2⁶⁴ + 1: wraps to 1, a 1-value array that looks valid.
            (
                "dims wrap to 1",
                {
                    let mut b = head(MX_DOUBLE, MI_INT64, &i64s(&[274_177, 67_280_421_310_721]), "v");
                    b.extend(el(MI_DOUBLE, &1.0f64.to_le_bytes()));
                    file_of(&b)
                },
                "overflows",
            ),
            (
                "struct 1e12 elements",
                file_of(&{
                    let mut b = head(MX_STRUCT, MI_DOUBLE, &f64s(&[1.0, 1e12]), "st");
                    b.extend(el(MI_INT32, &8i32.to_le_bytes()));
                    b.extend(el(MI_INT8, b"field\0\0\0"));
                    b
                }),
                "only",
            ),
            ("negative dim", file_of(&head(MX_DOUBLE, MI_INT32, &i32s(&[-3, 1]), "n")), "invalid dimension -3"),
        ];
        for (what, bytes, expect) in cases {
            assert!(bytes.len() < 256, "{what}: {} bytes", bytes.len());
            let e = MatFile::parse(&bytes).expect_err(what);
            assert!(e.contains(expect), "{what}: {e}");
        }
    }

    #[test]
    fn an_error_names_the_mat_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("cars_annos.mat");
        std::fs::write(&p, file_of(&head(MX_DOUBLE, MI_INT32, &i32s(&[-3, 1]), "n"))).expect("write");
        let e = MatFile::open(&p).expect_err("negative").to_string();
        assert!(e.contains("cars_annos.mat") && e.contains("invalid dimension -3"), "{e}");
    }

    #[test]
    fn a_compressed_bomb_stops_at_the_inflate_limit() {
        use std::io::Write;
        // 64 MiB of zeros deflate to about 64 KiB; with a 1 MiB limit the reader stops there.
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut inner = MI_MATRIX.to_le_bytes().to_vec();
        inner.extend_from_slice(&(64u32 << 20).to_le_bytes());
        enc.write_all(&inner).expect("zlib");
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).expect("zlib");
        }
        let z = enc.finish().expect("zlib");
        let mut bytes = to_bytes(&[], false);
        bytes.extend_from_slice(&MI_COMPRESSED.to_le_bytes());
        bytes.extend_from_slice(&(z.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&z);
        assert!(bytes.len() < 1 << 20);
        let limits = Limits { max_inflated: 1 << 20, ..Limits::default() };
        let e = MatFile::parse_with(&bytes, limits).expect_err("bomb");
        assert!(e.contains("inflates past the limit"), "{e}");
        // The real annotation files are far below the default.
        assert!(MatFile::parse(&to_bytes(&sample(), true)).is_ok());
    }

    #[test]
    fn deep_nesting_stops_at_the_depth_limit() {
        // 100 000 cells, each the only element of the one outside it, written from the outside in
        // (each tag carries the size of everything inside it).
        let levels = 100_000usize;
        let h = head(MX_CELL, MI_INT32, &i32s(&[1, 1]), "");
        let mut bytes = to_bytes(&[], false);
        // The innermost cell is 1x1 and holds an empty matrix (an 8-byte tag of length 0).
        // Level k holds its head and level k + 1; the innermost element is a bare 8-byte tag.
        let content = |k: usize| -> usize { (levels - k) * (h.len() + 8) };
        for k in 0..levels {
            bytes.extend_from_slice(&MI_MATRIX.to_le_bytes());
            bytes.extend_from_slice(&(content(k) as u32).to_le_bytes());
            bytes.extend_from_slice(&h);
        }
        bytes.extend_from_slice(&MI_MATRIX.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        let e = MatFile::parse(&bytes).expect_err("deep");
        assert!(e.contains("nest deeper than 32"), "{e}");
        // Shallow nesting of the same shape still reads.
        let mut v = MatValue::Empty;
        for _ in 0..10 {
            v = cell_column(vec![v]);
        }
        assert!(MatFile::parse(&to_bytes(&[("deep", v)], false)).is_ok());
    }
}
