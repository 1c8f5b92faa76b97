//! Fuzz target of the pickle reader ([`fgia_core::fuzz`]): every mutated `data.pkl` is a value
//! or an error, never a panic, an abort or a stack overflow.

use std::io::Read;

use fgia_core::fuzz;
use fgia_nn::torch_layout::parse_layouts;

/// `{'a.w': rebuild(storage, 0, (2, 3), (1, 2)), 'b': {'c': rebuild(storage, 4, (5,), (1,))}}`
/// in the opcodes `torch.save` uses, with memo puts and gets.
fn state_dict_pickle() -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', 0x94, b'('];
    let rebuild = |p: &mut Vec<u8>, offset: u8, shape: &[u8], stride: &[u8]| {
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n");
        p.extend_from_slice(&[0x94, b'(', b'(', 0x8c, 7]);
        p.extend_from_slice(b"storage");
        p.extend_from_slice(&[b't', b'Q', b'K', offset, b'(']);
        for &d in shape {
            p.extend_from_slice(&[b'K', d]);
        }
        p.extend_from_slice(&[b't', b'(']);
        for &s in stride {
            p.extend_from_slice(&[b'K', s]);
        }
        p.extend_from_slice(&[b't', 0x89, b'N', b't', b'R']);
    };
    p.extend_from_slice(&[0x8c, 3]);
    p.extend_from_slice(b"a.w");
    rebuild(&mut p, 0, &[2, 3], &[1, 2]);
    p.extend_from_slice(&[0x8c, 1, b'b', b'}', b'q', 1, 0x8c, 1, b'c']);
    rebuild(&mut p, 4, &[5], &[1]);
    p.extend_from_slice(&[b's', b'u', b'.']);
    p
}

#[test]
fn fuzz_the_pickle_reader() {
    let seed = state_dict_pickle();
    let layouts = parse_layouts(&seed).expect("the seed is valid");
    assert_eq!(layouts["a.w"].shape, [2, 3]);
    assert_eq!(layouts["b.c"].offset, 4);
    let mut seeds = vec![seed];
    // The real checkpoint's pickle, where the weights have been fetched.
    if let Some(bytes) = std::fs::read(fgia_core::paths::weights_dir().join("efficientnet-lite0-57934424.pth")).ok().filter(|b| b.starts_with(b"PK\x03\x04")) {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("zip");
        let name = (0..zip.len()).filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string())).find(|n| n.ends_with("data.pkl")).expect("data.pkl");
        let mut v = Vec::new();
        zip.by_name(&name).expect("member").read_to_end(&mut v).expect("read");
        parse_layouts(&v).expect("the real pickle reads");
        seeds.push(v);
    }
    let crashes = fuzz::crash_dir(env!("CARGO_MANIFEST_DIR"));
    let r = fuzz::run("pickle", &seeds, fuzz::budget(20_000), 21, false, &crashes, |b| parse_layouts(b).map(|_| ()));
    assert!(r.panics.is_empty(), "{} panics, first {:?}", r.panics.len(), r.panics.first());
    assert!(r.accepted > 0, "{r:?}");
}
