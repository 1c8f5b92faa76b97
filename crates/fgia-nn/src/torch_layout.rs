//! Reads the memory layout (storage offset, shape, strides) of every tensor in a PyTorch `.pth`
//! file, legacy or zip, so that tensors saved as non-contiguous views load correctly.
//!
//! burn-store 0.21 reads each tensor's elements as if they were contiguous and ignores the strides
//! recorded in the pickle. Checkpoints converted from TensorFlow (the EfficientNet-Lite0 ImageNet
//! file among them) store convolution kernels as permuted views, which then load scrambled. The
//! loader uses this module to find such tensors and reorder their elements.
//!
//! This is a small pickle interpreter for the opcodes `torch.save` emits (protocols 2 to 5). It
//! rebuilds no data; it only records, for each `torch._utils._rebuild_tensor(_v2)` call, the
//! arguments that describe the view.
//!
//! A hostile pickle is an error, never an abort or a stack overflow:
//! - every value created, copied by `DUP` or fetched from the memo counts towards
//!   [`MAX_NODES`] (a `DUP`/`TUPLE2` doubling bomb stops there);
//! - containers nest at most [`MAX_DEPTH`] deep (a million nested lists would overflow the stack
//!   when dropped);
//! - lengths, including 8-byte ones, are checked against the bytes left.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// How one tensor sits in its storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLayout {
    /// Offset of the first element in its storage, in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

impl TensorLayout {
    /// Whether the elements are in row-major order with no gaps (dimensions of size 1 do not
    /// count).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.stride).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// Reorders `raw` (the `n = prod(shape)` storage elements starting at the tensor's offset,
    /// as a contiguous reader returns them) into row-major order. `None` when the view reaches
    /// beyond those `n` elements (a slice of a larger storage).
    pub fn to_row_major<T: Copy>(&self, raw: &[T]) -> Option<Vec<T>> {
        let n = self.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
        if raw.len() != n {
            return None;
        }
        let max = self.shape.iter().zip(&self.stride).try_fold(0usize, |acc, (&d, &s)| acc.checked_add(d.saturating_sub(1).checked_mul(s)?))?;
        if n > 0 && max >= n {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        let mut idx = vec![0usize; self.shape.len()];
        for _ in 0..n {
            let src: usize = idx.iter().zip(&self.stride).map(|(i, s)| i * s).sum();
            out.push(raw[src]);
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < self.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Some(out)
    }
}

/// Most values one pickle may create or copy.
pub const MAX_NODES: u64 = 10_000_000;
/// Deepest nesting of containers.
pub const MAX_DEPTH: u32 = 100;

/// The height and the number of values of a container, kept so that copying and nesting are
/// checked in constant time.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    height: u32,
    nodes: u64,
}

#[derive(Debug, Clone)]
enum V {
    None,
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<V>, Size),
    List(Vec<V>, Size),
    Dict(Vec<(V, V)>, Size),
    Global(String, String),
    Persistent,
    Tensor(TensorLayout),
    Mark,
    Opaque,
}

impl V {
    fn size(&self) -> Size {
        match self {
            V::Tuple(_, s) | V::List(_, s) | V::Dict(_, s) => *s,
            _ => Size { height: 0, nodes: 1 },
        }
    }
}

/// The size of a container of `children`, or an error when it nests too deep.
fn container_size<'v>(children: impl Iterator<Item = &'v V>) -> Result<Size, String> {
    let mut s = Size { height: 1, nodes: 1 };
    for c in children {
        let cs = c.size();
        s.height = s.height.max(cs.height + 1);
        s.nodes = s.nodes.saturating_add(cs.nodes);
    }
    if s.height > MAX_DEPTH {
        return Err(format!("pickle containers nest deeper than {MAX_DEPTH} levels"));
    }
    Ok(s)
}

fn tuple(items: Vec<V>) -> Result<V, String> {
    let s = container_size(items.iter())?;
    Ok(V::Tuple(items, s))
}

fn list(items: Vec<V>) -> Result<V, String> {
    let s = container_size(items.iter())?;
    Ok(V::List(items, s))
}

fn dict(pairs: Vec<(V, V)>) -> Result<V, String> {
    let s = container_size(pairs.iter().flat_map(|(k, v)| [k, v]))?;
    Ok(V::Dict(pairs, s))
}

/// Grows a container's size by one more child, checking the depth.
fn grow(size: &mut Size, child: &V) -> Result<(), String> {
    let cs = child.size();
    size.height = size.height.max(cs.height + 1);
    size.nodes = size.nodes.saturating_add(cs.nodes);
    if size.height > MAX_DEPTH {
        return Err(format!("pickle containers nest deeper than {MAX_DEPTH} levels"));
    }
    Ok(())
}

fn as_usizes(v: &V) -> Option<Vec<usize>> {
    match v {
        V::Tuple(xs, _) | V::List(xs, _) => xs.iter().map(|x| if let V::Int(i) = x { usize::try_from(*i).ok() } else { None }).collect(),
        _ => None,
    }
}

fn call(func: &V, args: V) -> V {
    let V::Global(module, name) = func else { return V::Opaque };
    let args = match args {
        V::Tuple(a, _) => a,
        _ => return V::Opaque,
    };
    match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor") | ("torch._utils", "_rebuild_tensor_v2") if args.len() >= 4 => {
            let offset = match args[1] {
                V::Int(o) => usize::try_from(o).unwrap_or(0),
                _ => 0,
            };
            match (as_usizes(&args[2]), as_usizes(&args[3])) {
                (Some(shape), Some(stride)) if shape.len() == stride.len() => V::Tensor(TensorLayout { offset, shape, stride }),
                _ => V::Opaque,
            }
        }
        ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") if !args.is_empty() => {
            args.into_iter().next().unwrap_or(V::Opaque)
        }
        ("torch._tensor", "_rebuild_from_type_v2") if args.len() >= 3 => {
            let inner = args[2].clone();
            call(&args[0], inner)
        }
        ("collections", "OrderedDict") => V::Dict(Vec::new(), Size { height: 1, nodes: 1 }),
        _ => V::Opaque,
    }
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<V>,
    memo: HashMap<u32, V>,
    /// Values created or copied so far.
    nodes: u64,
}

impl<'a> Machine<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Machine { bytes, pos: 0, stack: Vec::new(), memo: HashMap::new(), nodes: 0 }
    }

    /// Counts `n` more values against [`MAX_NODES`].
    fn spend(&mut self, n: u64) -> Result<(), String> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(format!("pickle builds more than {MAX_NODES} values (at byte {})", self.pos));
        }
        Ok(())
    }

    fn push(&mut self, v: V) -> Result<(), String> {
        self.spend(1)?;
        self.stack.push(v);
        Ok(())
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let end = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n));
        let s = end.and_then(|end| self.bytes.get(self.pos..end)).ok_or_else(|| format!("pickle truncated at byte {} (a length of {n})", self.pos))?;
        self.pos += s.len();
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn le(&mut self, n: u64) -> Result<u64, String> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64))
    }

    fn line(&mut self) -> Result<String, String> {
        let start = self.pos;
        let end = self.bytes.get(start..).unwrap_or_default().iter().position(|&b| b == b'\n').ok_or("unterminated text line in pickle")? + start;
        self.pos = end + 1;
        Ok(String::from_utf8_lossy(&self.bytes[start..end]).into_owned())
    }

    fn pop(&mut self) -> Result<V, String> {
        self.stack.pop().ok_or_else(|| format!("pickle stack underflow at byte {}", self.pos))
    }

    fn pop_mark(&mut self) -> Result<Vec<V>, String> {
        let at = self.stack.iter().rposition(|v| matches!(v, V::Mark)).ok_or("pickle MARK missing")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top_mut(&mut self) -> Result<&mut V, String> {
        self.stack.last_mut().ok_or_else(|| "pickle stack empty".to_string())
    }

    fn run(&mut self) -> Result<V, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'}' => self.push(dict(Vec::new())?)?,
                b']' => self.push(list(Vec::new())?)?,
                b')' => self.push(tuple(Vec::new())?)?,
                b'(' => self.push(V::Mark)?,
                b'N' => self.push(V::None)?,
                0x88 | 0x89 => self.push(V::Bool)?,
                b'q' | b'r' | 0x94 => {
                    let k = match op {
                        b'q' => self.u8()? as u32,
                        b'r' => self.le(4)? as u32,
                        _ => self.memo.len() as u32,
                    };
                    let size = self.stack.last().map(V::size).ok_or("pickle stack empty")?;
                    self.spend(size.nodes)?;
                    let top = self.stack.last().cloned().unwrap_or(V::None);
                    self.memo.insert(k, top);
                }
                b'h' | b'j' => {
                    let k = if op == b'h' { self.u8()? as u32 } else { self.le(4)? as u32 };
                    let size = self.memo.get(&k).map(V::size).ok_or_else(|| format!("pickle memo {k} unset"))?;
                    self.spend(size.nodes)?;
                    let v = self.memo[&k].clone();
                    self.stack.push(v);
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.le(4)?,
                        0x8c => self.u8()? as u64,
                        _ => self.le(8)?,
                    };
                    let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                    self.push(V::Str(s))?;
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'T' | b'B' => self.le(4)?,
                        0x8e => self.le(8)?,
                        _ => self.u8()? as u64,
                    };
                    let b = self.take(n)?;
                    let v = if op == b'T' || op == b'U' { V::Str(String::from_utf8_lossy(b).into_owned()) } else { V::Bytes };
                    self.push(v)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(V::Global(module, name))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (V::Str(m), V::Str(n)) => self.push(V::Global(m, n))?,
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'J' => {
                    let v = self.le(4)? as u32 as i32 as i64;
                    self.push(V::Int(v))?;
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.push(V::Int(v))?;
                }
                b'M' => {
                    let v = self.le(2)? as i64;
                    self.push(V::Int(v))?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n as u64)?;
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate().take(8) {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(V::Int(v))?;
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l.as_str() {
                        "00" | "01" => V::Bool,
                        s => V::Int(s.parse().map_err(|_| format!("bad INT '{s}'"))?),
                    };
                    self.push(v)?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push(V::Float)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(tuple(items)?)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let at = self.stack.len().checked_sub(n).ok_or("pickle stack underflow in TUPLEn")?;
                    let items = self.stack.split_off(at);
                    self.push(tuple(items)?)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(list(items)?)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let mut pairs = Vec::new();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    self.push(dict(pairs)?)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    if let V::List(l, size) = self.top_mut()? {
                        grow(size, &v)?;
                        l.push(v);
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    if let V::List(l, size) = self.top_mut()? {
                        for v in items {
                            grow(size, &v)?;
                            l.push(v);
                        }
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    if let V::Dict(d, size) = self.top_mut()? {
                        grow(size, &k)?;
                        grow(size, &v)?;
                        d.push((k, v));
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if let V::Dict(d, size) = self.top_mut()? {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            grow(size, &k)?;
                            grow(size, &v)?;
                            d.push((k, v));
                        }
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.push(call(&func, args))?;
                }
                0x81 => {
                    let _args = self.pop()?;
                    let _cls = self.pop()?;
                    self.push(V::Opaque)?;
                }
                b'b' => {
                    // Object state (e.g. an OrderedDict's `_metadata`): not needed.
                    self.pop()?;
                }
                b'Q' => {
                    self.pop()?;
                    self.push(V::Persistent)?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let size = self.stack.last().map(V::size).ok_or("pickle stack empty")?;
                    self.spend(size.nodes)?;
                    let top = self.stack.last().cloned().unwrap_or(V::None);
                    self.stack.push(top);
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", self.pos - 1)),
            }
        }
    }
}

fn collect(v: &V, prefix: &str, out: &mut HashMap<String, TensorLayout>) {
    if let V::Dict(pairs, _) = v {
        for (k, val) in pairs {
            let V::Str(k) = k else { continue };
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match val {
                V::Tensor(t) => {
                    out.insert(key, t.clone());
                }
                V::Dict(..) => collect(val, &key, out),
                _ => {}
            }
        }
    }
}

/// Layouts of every tensor of a `.pth` file (keys of nested dicts joined with `.`).
pub fn read_layouts(path: &Path) -> Result<HashMap<String, TensorLayout>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let pickle = if bytes.starts_with(b"PK\x03\x04") {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).map_err(|e| format!("bad zip: {e}"))?;
        let name = (0..zip.len())
            .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
            .find(|n| n.ends_with("data.pkl"))
            .ok_or("zip checkpoint has no data.pkl")?;
        let mut f = zip.by_name(&name).map_err(|e| e.to_string())?;
        let mut v = Vec::new();
        f.read_to_end(&mut v).map_err(|e| e.to_string())?;
        v
    } else {
        // Legacy: magic number, protocol version and system info pickles, then the object.
        let mut m = Machine::new(&bytes);
        for _ in 0..3 {
            m.run()?;
            m.stack.clear();
            m.memo.clear();
        }
        bytes[m.pos..].to_vec()
    };
    parse_layouts(&pickle)
}

/// Layouts of every tensor of one pickle (the `data.pkl` of a zip checkpoint).
pub fn parse_layouts(pickle: &[u8]) -> Result<HashMap<String, TensorLayout>, String> {
    let mut m = Machine::new(pickle);
    let top = m.run()?;
    let mut out = HashMap::new();
    collect(&top, "", &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguity_and_reordering() {
        let c = TensorLayout { offset: 0, shape: vec![2, 3], stride: vec![3, 1] };
        assert!(c.is_contiguous());
        // The transpose of a row-major [3, 2] buffer: element (i, j) sits at j * 2 + i.
        let t = TensorLayout { offset: 0, shape: vec![2, 3], stride: vec![1, 2] };
        assert!(!t.is_contiguous());
        let raw = [0, 1, 2, 3, 4, 5];
        assert_eq!(t.to_row_major(&raw), Some(vec![0, 2, 4, 1, 3, 5]));
        // Size-1 dimensions carry arbitrary strides.
        assert!(TensorLayout { offset: 0, shape: vec![1, 4], stride: vec![99, 1] }.is_contiguous());
        // A view that reaches beyond its own elements cannot be rebuilt from them.
        assert_eq!(TensorLayout { offset: 0, shape: vec![2], stride: vec![5] }.to_row_major(&[1, 2]), None);
    }

    /// A protocol-2 pickle of `body`, ending with STOP.
    fn pickle(body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 2];
        p.extend_from_slice(body);
        p.push(b'.');
        p
    }

    #[test]
    fn a_dup_tuple2_doubling_bomb_stops_at_the_value_limit() {
        // ( ) then 64 times DUP, TUPLE2: 2⁶⁴ leaves if every copy were made.
        let mut body = vec![b')'];
        for _ in 0..64 {
            body.extend_from_slice(&[b'2', 0x86]);
        }
        let e = parse_layouts(&pickle(&body)).expect_err("bomb");
        assert!(e.contains("more than"), "{e}");
        // The same through the memo: BINPUT 0, BINGET 0, TUPLE2.
        let mut body = vec![b')'];
        for _ in 0..64 {
            body.extend_from_slice(&[b'q', 0, b'h', 0, 0x86]);
        }
        let e = parse_layouts(&pickle(&body)).expect_err("memo bomb");
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn a_million_nested_lists_is_an_error_not_a_stack_overflow() {
        let n = 1_000_000;
        let mut body = vec![b']'; n];
        body.extend(std::iter::repeat_n(b'a', n - 1));
        let e = parse_layouts(&pickle(&body)).expect_err("deep");
        assert!(e.contains("deeper than"), "{e}");
        // Through MARK ... LIST as well.
        let mut body = Vec::new();
        for _ in 0..n {
            body.push(b'(');
        }
        body.extend(std::iter::repeat_n(b'l', n));
        let e = parse_layouts(&pickle(&body)).expect_err("deep marks");
        assert!(e.contains("deeper than"), "{e}");
    }

    #[test]
    fn an_eight_byte_length_near_the_maximum_is_an_error() {
        for op in [0x8du8, 0x8e] {
            let mut body = vec![op];
            body.extend_from_slice(&(u64::MAX - 3).to_le_bytes());
            body.extend_from_slice(b"abcd");
            let e = parse_layouts(&pickle(&body)).expect_err("length");
            assert!(e.contains("truncated"), "{e}");
        }
        // Strides whose products overflow are refused rather than wrapped.
        let t = TensorLayout { offset: 0, shape: vec![2, 2], stride: vec![usize::MAX, 1] };
        assert_eq!(t.to_row_major(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn an_ordinary_state_dict_pickle_still_reads() {
        // {'w': _rebuild_tensor_v2(storage, 0, (2, 3), (1, 2))} with a memoised global.
        let mut body = vec![b'}', 0x94, b'('];
        body.extend_from_slice(&[0x8c, 1, b'w']);
        body.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n");
        body.extend_from_slice(&[0x94, b'(', b'N', b'Q', b'K', 0, b'K', 2, b'K', 3, 0x86, b'K', 1, b'K', 2, 0x86, b't', b'R', b'u']);
        let layouts = parse_layouts(&pickle(&body)).expect("reads");
        assert_eq!(layouts["w"], TensorLayout { offset: 0, shape: vec![2, 3], stride: vec![1, 2] });
    }
}
