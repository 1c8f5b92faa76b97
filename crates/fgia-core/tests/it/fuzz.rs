//! Fuzz targets of the MAT reader, the CUB, NABirds and FGVC-Aircraft list parsers, CUB's
//! attribute tables, the Flowers-102 MAT files, and the iNaturalist JSON and locations readers
//! ([`fgia_core::fuzz`]): every mutated input is a value or an error, never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use fgia_core::datasets::{
    AircraftSplit, InatYear, ReadOptions, read_aircraft, read_class_attributes, read_cub, read_flowers, read_inat, read_inat_locations, read_location_file,
    read_nabirds,
};
use fgia_core::fuzz;
use fgia_core::mat::MatFile;
use fgia_core::mat::write::{cell_column, column, string, struct_row, to_bytes};

fn assert_clean(r: &fuzz::Report) {
    assert!(r.panics.is_empty(), "{}: {} panics, first {:?}", r.target, r.panics.len(), r.panics.first());
}

#[test]
fn fuzz_the_mat_reader() {
    let mut item = BTreeMap::new();
    item.insert("class".to_string(), column(&[3.0]));
    item.insert("fname".to_string(), string("00001.jpg"));
    let vars = vec![
        ("labels", column(&[1.0, 2.0, 120.0])),
        ("file_list", cell_column(vec![string("n02085620-Chihuahua/a.jpg"), string("b.jpg")])),
        ("annotations", struct_row(&["class", "fname"], vec![item])),
    ];
    let seeds = vec![to_bytes(&vars, false), to_bytes(&vars, true), to_bytes(&vars[..1], false)];
    let crashes = fuzz::crash_dir(env!("CARGO_MANIFEST_DIR"));
    let r = fuzz::run("mat", &seeds, fuzz::budget(20_000), 11, false, &crashes, |b| MatFile::parse(b).map(|_| ()));
    assert_clean(&r);
    assert!(r.accepted > 0 && r.accepted < r.executions, "the mutations reach both outcomes: {r:?}");
}

fn write_all(root: &Path, files: &[(&str, Vec<u8>)]) {
    for (name, bytes) in files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }
}

/// One fuzz target per file of a list-based layout: that file mutated, the others valid, read
/// strictly and leniently by `read`.
fn fuzz_lists(prefix: &str, files: &[(&str, Vec<u8>)], seed: u64, read: impl Fn(&Path, ReadOptions) -> fgia_core::Result<()>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let crashes = fuzz::crash_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, (name, bytes)) in files.iter().enumerate() {
        let r = fuzz::run(
            &format!("{prefix}-{}", name.replace('/', "-")),
            std::slice::from_ref(bytes),
            fuzz::budget(20_000) / 40,
            seed + k as u64,
            true,
            &crashes,
            |b| {
                write_all(dir.path(), files);
                std::fs::write(dir.path().join(name), b).expect("write");
                for options in [ReadOptions { skip_bad: false }, ReadOptions { skip_bad: true }] {
                    read(dir.path(), options)?;
                }
                Ok::<(), fgia_core::DataError>(())
            },
        );
        assert_clean(&r);
        assert!(r.executions > 0);
    }
}

#[test]
fn fuzz_the_cub_lists() {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("classes.txt", b"3 003.Sooty\n7 007.Parakeet\n".to_vec()),
        ("images.txt", b"10 003.Sooty/a.jpg\n12 003.Sooty/b.jpg\n40 007.Parakeet/c.jpg\n".to_vec()),
        ("image_class_labels.txt", b"10 3\n12 3\n40 7\n".to_vec()),
        ("train_test_split.txt", b"10 1\n12 0\n40 1\n".to_vec()),
        ("bounding_boxes.txt", b"10 1.0 2.0 3.0 4.0\n12 1 1 5 5\n40 0 0 8 8\n".to_vec()),
        ("parts/parts.txt", b"1 back\n2 beak\n".to_vec()),
        ("parts/part_locs.txt", b"10 1 5.0 6.0 1\n10 2 0 0 0\n12 1 3 3 1\n".to_vec()),
    ];
    fuzz_lists("cub", &files, 100, |root, options| read_cub(root, options).map(|_| ()));
}

#[test]
fn fuzz_the_aircraft_lists() {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("data/variants.txt", b"707-320\nF/A-18\nFalcon 2000\n".to_vec()),
        ("data/families.txt", b"Boeing 707\nF/A-18\nFalcon 2000\n".to_vec()),
        ("data/manufacturers.txt", b"Boeing\nDassault Aviation\nMcDonnell Douglas\n".to_vec()),
        ("data/images_variant_trainval.txt", b"1000001 707-320\n1000002 F/A-18\n".to_vec()),
        ("data/images_family_trainval.txt", b"1000001 Boeing 707\n1000002 F/A-18\n".to_vec()),
        ("data/images_manufacturer_trainval.txt", b"1000001 Boeing\n1000002 McDonnell Douglas\n".to_vec()),
        ("data/images_variant_test.txt", b"1000003 Falcon 2000\n".to_vec()),
        ("data/images_family_test.txt", b"1000003 Falcon 2000\n".to_vec()),
        ("data/images_manufacturer_test.txt", b"1000003 Dassault Aviation\n".to_vec()),
        ("data/images_box.txt", b"1000001 1 1 30 20\n1000002 5 5 10 10\n1000003 1 1 2 2\n".to_vec()),
    ];
    fuzz_lists("aircraft", &files, 200, |root, options| read_aircraft(root, AircraftSplit::TrainvalTest, true, options).map(|_| ()));
}

#[test]
fn fuzz_the_attribute_and_inat_readers() {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("attributes/attributes.txt", b"1 has_bill_shape::dagger\n2 has_wing_color::blue\n".to_vec()),
        ("attributes/class_attribute_labels_continuous.txt", b"0.0 59.8\n100 2.5\n".to_vec()),
    ];
    fuzz_lists("cub-attributes", &files, 300, |root, _| read_class_attributes(root, 2).map(|_| ()));
    let json = br#"{"images": [{"id": 1, "file_name": "a/1.jpg", "latitude": 37.7, "longitude": -122.4, "date": "2019-06-01 10:00:00"}, {"id": 2, "file_name": "b/2.jpg"}], "annotations": [{"image_id": 1, "category_id": 20}, {"image_id": 2, "category_id": 10}], "categories": [{"id": 20, "name": "b"}, {"id": 10, "name": "a"}]}"#;
    fuzz_lists("inat-json", &[("train.json", json.to_vec())], 400, |root, _| read_inat_locations(&root.join("train.json"), root).map(|_| ()));
}

#[test]
fn fuzz_the_nabirds_lists() {
    let files: Vec<(&str, Vec<u8>)> = crate::datasets_external::nabirds_files().into_iter().map(|(n, t)| (n, t.into_bytes())).collect();
    fuzz_lists("nabirds", &files, 500, |root, options| read_nabirds(root, options).map(|_| ()));
}

#[test]
fn fuzz_the_inat_files_and_locations() {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("train2018.json", crate::datasets_external::inat_json("train_val2018", &[(100, 7), (101, 2), (102, 5)], true).into_bytes()),
        ("val2018.json", crate::datasets_external::inat_json("train_val2018", &[(200, 7), (201, 5)], true).into_bytes()),
        ("val2018_locations.json", crate::datasets_external::LOCATIONS_VAL.as_bytes().to_vec()),
    ];
    fuzz_lists("inat2018", &files, 600, |root, options| {
        read_inat(root, InatYear::Y2018, options)?;
        read_location_file(&root.join("val2018_locations.json")).map(|_| ())
    });
}

#[test]
fn fuzz_the_flowers_mat_files() {
    let row = |v: &[f64]| fgia_core::mat::MatValue::Numeric { dims: vec![1, v.len()], data: v.to_vec() };
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("imagelabels.mat", to_bytes(&[("labels", row(&[1.0, 1.0, 2.0, 2.0, 102.0, 102.0]))], true)),
        ("setid.mat", to_bytes(&[("trnid", row(&[1.0, 3.0])), ("valid", row(&[5.0])), ("tstid", row(&[2.0, 4.0, 6.0]))], false)),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let crashes = fuzz::crash_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, (name, bytes)) in files.iter().enumerate() {
        let r = fuzz::run(&format!("flowers-{name}"), std::slice::from_ref(bytes), fuzz::budget(20_000) / 10, 700 + k as u64, false, &crashes, |b| {
            write_all(dir.path(), &files);
            std::fs::write(dir.path().join(name), b).expect("write");
            for options in [ReadOptions { skip_bad: false }, ReadOptions { skip_bad: true }] {
                read_flowers(dir.path(), options)?;
            }
            Ok::<(), fgia_core::DataError>(())
        });
        assert_clean(&r);
        assert!(r.accepted > 0 && r.accepted < r.executions, "the mutations reach both outcomes: {r:?}");
    }
}
