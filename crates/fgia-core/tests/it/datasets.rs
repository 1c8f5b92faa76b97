//! Dataset readers: the real subsets where present, generated fixtures for Dogs, Aircraft and the
//! generic layouts, and bad input.

use std::collections::BTreeMap;
use std::path::Path;

use fgia_core::datasets::{AircraftSplit, DatasetKind, ReadOptions, read_aircraft, read_cars, read_cub, read_dogs, read_image_folder, read_list_files};
use fgia_core::mat::write::{cell_column, column, scalar, string, struct_row, to_bytes};
use fgia_core::testing::shared_data;

const STRICT: ReadOptions = ReadOptions { skip_bad: false };
const LENIENT: ReadOptions = ReadOptions { skip_bad: true };

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

fn tiny_jpeg(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 100]));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    img.save_with_format(path, image::ImageFormat::Jpeg).expect("save");
}

#[test]
fn cub_mini_has_the_documented_counts_and_annotations() {
    let Some(root) = shared_data(env!("CARGO_MANIFEST_DIR"), "cub_mini", "cub-mini") else { return };
    let ds = read_cub(&root, STRICT).expect("cub-mini reads");
    assert_eq!(ds.num_classes(), 40);
    assert_eq!(ds.train.len(), 600);
    assert_eq!(ds.test.len(), 595);
    assert!(ds.missing_files().is_empty());
    assert_eq!(ds.classes.ids.first(), Some(&1));
    assert_eq!(ds.classes.names[0], "001.Black_footed_Albatross");
    // Image ids are not contiguous: id 2 is a training image of class 1 in the official split.
    let r = ds.train.iter().find(|r| r.id == "2").expect("image 2 is in train");
    assert_eq!(r.label, 0);
    assert!(r.path.ends_with("001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg"));
    let b = r.bbox.expect("has a box");
    assert_eq!((b.x, b.y, b.w, b.h), (105.9, 22.9, 116.6, 201.1));
    assert_eq!(r.parts.len(), 15);
    // Per-class counts from the README: class 6 has 15 train / 11 test.
    let counts = ds.class_counts();
    assert_eq!(counts[ds.classes.index_of(6).expect("class 6")], (15, 11));
    // The smoke retrieval split: classes 1-20 train, 21-40 test, all images.
    let rs = ds.retrieval_split(1..=20).expect("split");
    assert_eq!(rs.train.len() + rs.test.len(), 1195);
    assert!(rs.train.iter().all(|r| r.label < 20) && rs.test.iter().all(|r| r.label >= 20));
}

#[test]
fn cars_mini_reads_the_mat_devkit() {
    let Some(root) = shared_data(env!("CARGO_MANIFEST_DIR"), "cars_mini", "cars-mini") else { return };
    let ds = read_cars(&root, STRICT).expect("cars-mini reads");
    assert_eq!(ds.num_classes(), 20);
    assert_eq!((ds.train.len(), ds.test.len()), (200, 200));
    assert!(ds.missing_files().is_empty());
    assert_eq!(ds.classes.names[0], "AM General Hummer SUV 2000");
    assert!(ds.split_note.contains("NOT the official"));
    let r = ds.train.iter().find(|r| r.id == "00001.jpg").expect("00001 is train");
    // Boxes are the frame of the pre-cropped image, 1-based in the file, 0-based here.
    let b = r.bbox.expect("box");
    assert_eq!((b.x, b.y), (0.0, 0.0));
    let img = image::image_dimensions(&r.path).expect("readable");
    assert_eq!((b.w as u32, b.h as u32), img);
    assert!(ds.classes.ids.iter().all(|&id| (1..=20).contains(&id)));
}

fn dogs_fixture(root: &Path, lists_in_subfolder: bool, compress: bool) {
    let entries = [
        ("n02085620-Chihuahua/n02085620_1.jpg", 1.0),
        ("n02085620-Chihuahua/n02085620_2.jpg", 1.0),
        ("n02085782-Japanese_spaniel/n02085782_7.jpg", 2.0),
        ("n02113978-Mexican_hairless/n02113978_3.jpg", 120.0),
    ];
    let list = |rows: &[(&str, f64)]| {
        to_bytes(
            &[
                ("file_list", cell_column(rows.iter().map(|(f, _)| string(f)).collect())),
                ("annotation_list", cell_column(rows.iter().map(|(f, _)| string(f.trim_end_matches(".jpg"))).collect())),
                ("labels", column(&rows.iter().map(|(_, l)| *l).collect::<Vec<_>>())),
            ],
            compress,
        )
    };
    let dir = if lists_in_subfolder { root.join("lists") } else { root.to_path_buf() };
    write(&dir.join("train_list.mat"), list(&entries[..3]));
    write(&dir.join("test_list.mat"), list(&entries[3..]));
    for (f, _) in entries {
        tiny_jpeg(&root.join("Images").join(f), 20, 16);
        let objects = if f.ends_with("_1.jpg") {
            // Two dogs in one image.
            "<object><name>Chihuahua</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>8</xmax><ymax>9</ymax></bndbox></object>\
             <object><name>Chihuahua</name><bndbox><xmin>10</xmin><ymin>1</ymin><xmax>19</xmax><ymax>5</ymax></bndbox></object>"
        } else {
            "<object><name>dog</name><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>20</xmax><ymax>16</ymax></bndbox></object>"
        };
        let xml = format!("<annotation><size><width>20</width><height>16</height></size>{objects}</annotation>");
        write(&root.join("Annotation").join(f.trim_end_matches(".jpg")), xml);
    }
}

#[test]
fn dogs_lists_with_or_without_lists_folder_compressed_or_not() {
    for (sub, compress) in [(true, true), (false, false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        dogs_fixture(dir.path(), sub, compress);
        let ds = read_dogs(dir.path(), STRICT).expect("dogs fixture reads");
        assert_eq!(ds.num_classes(), 3);
        assert_eq!(ds.classes.ids, vec![1, 2, 120]);
        assert_eq!(ds.classes.names, vec!["Chihuahua", "Japanese_spaniel", "Mexican_hairless"]);
        assert_eq!((ds.train.len(), ds.test.len()), (3, 1));
        assert_eq!(ds.test[0].label, 2);
        let two = &ds.train[0];
        assert_eq!(two.objects.len(), 2);
        let u = two.bbox.expect("union box");
        assert_eq!((u.x, u.y, u.w, u.h), (1.0, 1.0, 18.0, 8.0));
        assert!(ds.missing_files().is_empty());
    }
}

#[test]
fn dogs_bad_annotation_is_an_error_or_a_counted_skip() {
    let dir = tempfile::tempdir().expect("tempdir");
    dogs_fixture(dir.path(), true, true);
    write(&dir.path().join("Annotation/n02085620-Chihuahua/n02085620_2"), "<annotation><object>");
    let e = read_dogs(dir.path(), STRICT).expect_err("bad xml");
    assert!(e.to_string().contains("n02085620_2"), "{e}");
    let ds = read_dogs(dir.path(), LENIENT).expect("lenient");
    assert_eq!(ds.skipped.len(), 1);
    assert_eq!(ds.train.len(), 2);
    // A list that is not a MAT file names the file.
    write(&dir.path().join("lists/test_list.mat"), b"garbage");
    let e = read_dogs(dir.path(), STRICT).expect_err("bad mat");
    assert!(e.to_string().contains("test_list.mat"), "{e}");
}

fn aircraft_fixture(root: &Path) {
    let data = root.join("fgvc-aircraft-2013b").join("data");
    write(&data.join("variants.txt"), "707-320\nF/A-18\nFalcon 2000\n");
    write(&data.join("families.txt"), "Boeing 707\nF/A-18\nFalcon 2000\n");
    write(&data.join("manufacturers.txt"), "Boeing\nDassault Aviation\nMcDonnell Douglas\n");
    let train = [("1000001", "707-320", "Boeing 707", "Boeing"), ("1000002", "F/A-18", "F/A-18", "McDonnell Douglas")];
    let test = [("1000003", "Falcon 2000", "Falcon 2000", "Dassault Aviation"), ("1000004", "F/A-18", "F/A-18", "McDonnell Douglas")];
    for (side, rows) in [("trainval", &train[..]), ("test", &test[..])] {
        let v: String = rows.iter().map(|r| format!("{} {}\n", r.0, r.1)).collect();
        let f: String = rows.iter().map(|r| format!("{} {}\n", r.0, r.2)).collect();
        let m: String = rows.iter().map(|r| format!("{} {}\n", r.0, r.3)).collect();
        write(&data.join(format!("images_variant_{side}.txt")), v);
        write(&data.join(format!("images_family_{side}.txt")), f);
        write(&data.join(format!("images_manufacturer_{side}.txt")), m);
    }
    write(&data.join("images_box.txt"), "1000001 1 1 30 20\n1000002 5 5 10 10\n1000003 1 1 2 2\n1000004 3 3 40 30\n");
    for id in ["1000001", "1000002", "1000003", "1000004"] {
        tiny_jpeg(&data.join("images").join(format!("{id}.jpg")), 40, 50);
    }
}

#[test]
fn aircraft_names_with_spaces_and_slashes_levels_and_banner() {
    let dir = tempfile::tempdir().expect("tempdir");
    aircraft_fixture(dir.path());
    let root = dir.path().join("fgvc-aircraft-2013b");
    let ds = read_aircraft(&root, AircraftSplit::TrainvalTest, true, STRICT).expect("aircraft reads");
    assert_eq!(ds.classes.names, vec!["707-320", "F/A-18", "Falcon 2000"]);
    assert_eq!((ds.train.len(), ds.test.len()), (2, 2));
    let fa18 = &ds.test[1];
    assert_eq!(ds.classes.names[fa18.label], "F/A-18");
    assert_eq!(ds.levels[0].classes.names[fa18.levels[0]], "F/A-18");
    assert_eq!(ds.levels[1].classes.names[fa18.levels[1]], "McDonnell Douglas");
    assert_eq!(fa18.trim_bottom, 20);
    let b = fa18.bbox.expect("box");
    assert_eq!((b.x, b.y, b.w, b.h), (2.0, 2.0, 38.0, 28.0));
    assert!(ds.missing_files().is_empty());
    // The data/ folder itself is accepted as root too, and DatasetKind reads trainval/test.
    let ds2 = DatasetKind::Aircraft.read(&root.join("data"), STRICT).expect("data/ as root");
    assert_eq!(ds2.train.len(), 2);
    assert_eq!(ds2.train[0].trim_bottom, 0);
    // An unknown variant name is an error at its line.
    write(&root.join("data/images_variant_test.txt"), "1000003 Falcon 2000\n1000004 Concorde\n");
    let e = read_aircraft(&root, AircraftSplit::TrainvalTest, false, STRICT).expect_err("unknown name");
    assert!(e.to_string().contains("images_variant_test.txt:2"), "{e}");
}

fn cub_fixture(root: &Path) {
    write(&root.join("classes.txt"), "3 003.Sooty\n7 007.Parakeet\n");
    write(&root.join("images.txt"), "10 003.Sooty/a.jpg\n12 003.Sooty/b.jpg\n40 007.Parakeet/c.jpg\n");
    write(&root.join("image_class_labels.txt"), "10 3\n12 3\n40 7\n");
    write(&root.join("train_test_split.txt"), "10 1\r\n12 0\r\n40 1\r\n");
    write(&root.join("bounding_boxes.txt"), "10 1.0 2.0 3.0 4.0\n12 1 1 5 5\n40 0 0 8 8\n");
}

#[test]
fn cub_ids_with_gaps_and_crlf() {
    let dir = tempfile::tempdir().expect("tempdir");
    cub_fixture(dir.path());
    let ds = read_cub(dir.path(), STRICT).expect("reads");
    assert_eq!(ds.classes.ids, vec![3, 7]);
    assert_eq!(ds.train.iter().map(|r| (r.id.as_str(), r.label)).collect::<Vec<_>>(), vec![("10", 0), ("40", 1)]);
    assert_eq!(ds.test[0].id, "12");
    assert!(ds.train[0].parts.is_empty());
}

#[test]
fn cub_bad_lines_name_file_and_line() {
    let cases: [(&str, &str, &str); 5] = [
        ("image_class_labels.txt", "10 3\n12 x\n40 7\n", "image_class_labels.txt:2"),
        ("train_test_split.txt", "10 1\n12 2\n40 1\n", "train_test_split.txt:2"),
        ("image_class_labels.txt", "10 3\n12 3\n40 7\n99 3\n", "image_class_labels.txt:4: id 99"),
        ("bounding_boxes.txt", "10 1 2 3\n", "bounding_boxes.txt:1"),
        ("image_class_labels.txt", "10 3\n12 5\n40 7\n", "class 5"),
    ];
    for (file, content, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        cub_fixture(dir.path());
        write(&dir.path().join(file), content);
        let e = read_cub(dir.path(), STRICT).expect_err(want);
        assert!(e.to_string().contains(want), "{e} should mention {want}");
        let ds = read_cub(dir.path(), LENIENT).expect("lenient read continues");
        assert!(!ds.skipped.is_empty(), "{want}: skip counted");
    }
    // An image without a label is a missing entry.
    let dir = tempfile::tempdir().expect("tempdir");
    cub_fixture(dir.path());
    write(&dir.path().join("image_class_labels.txt"), "10 3\n40 7\n");
    let e = read_cub(dir.path(), STRICT).expect_err("missing label");
    assert!(e.to_string().contains("id 12"), "{e}");
    let ds = read_cub(dir.path(), LENIENT).expect("lenient");
    assert_eq!((ds.train.len() + ds.test.len(), ds.skipped.len()), (2, 1));
}

#[test]
fn cars_devkit_with_official_test_annotations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let names: Vec<_> = ["Car A 2012", "Car B 2001", "Car C 1994"].iter().map(|s| string(s)).collect();
    write(&root.join("devkit/cars_meta.mat"), to_bytes(&[("class_names", fgia_core::mat::MatValue::Cell { dims: vec![1, 3], items: names })], true));
    let anno = |class: f64, fname: &str| {
        let mut m = BTreeMap::new();
        for (k, v) in [("bbox_x1", 2.0), ("bbox_y1", 3.0), ("bbox_x2", 11.0), ("bbox_y2", 8.0)] {
            m.insert(k.to_string(), scalar(v));
        }
        m.insert("class".to_string(), scalar(class));
        m.insert("fname".to_string(), string(fname));
        m
    };
    let fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"];
    write(
        &root.join("devkit/cars_train_annos.mat"),
        to_bytes(&[("annotations", struct_row(&fields, vec![anno(1.0, "00001.jpg"), anno(3.0, "00002.jpg")]))], true),
    );
    write(&root.join("cars_test_annos_withlabels.mat"), to_bytes(&[("annotations", struct_row(&fields, vec![anno(3.0, "00001.jpg")]))], false));
    let ds = read_cars(root, STRICT).expect("reads");
    assert_eq!(ds.classes.ids, vec![1, 3]);
    assert_eq!(ds.test[0].label, 1);
    assert!(ds.test[0].path.ends_with("cars_test/00001.jpg"));
    let b = ds.train[0].bbox.expect("box");
    assert_eq!((b.x, b.y, b.w, b.h), (1.0, 2.0, 10.0, 6.0));
    assert!(ds.split_note.starts_with("official"));
    // A class id outside the meta file is a clear error.
    write(&root.join("cars_test_annos_withlabels.mat"), to_bytes(&[("annotations", struct_row(&fields, vec![anno(9.0, "x.jpg")]))], false));
    let e = read_cars(root, STRICT).expect_err("bad class");
    assert!(e.to_string().contains("cars_test_annos_withlabels.mat") && e.to_string().contains("class = 9"), "{e}");
}

#[test]
fn list_files_and_image_folders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    write(&root.join("train.txt"), "2 img/a b.jpg\n10 img/c.jpg\n");
    write(&root.join("test.txt"), "10 img/d.jpg\n");
    let ds = read_list_files(root, &root.join("train.txt"), &root.join("test.txt"), STRICT).expect("list");
    assert_eq!(ds.classes.ids, vec![2, 10]);
    assert!(ds.train[0].path.ends_with("img/a b.jpg"));
    assert_eq!(ds.test[0].label, 1);
    write(&root.join("bad.txt"), "cat ../../etc/passwd\n");
    let e = read_list_files(root, &root.join("bad.txt"), &root.join("test.txt"), STRICT).expect_err("escape");
    assert!(e.to_string().contains("bad.txt:1"), "{e}");
    // Named labels are sorted.
    write(&root.join("named.txt"), "zebra z.jpg\nant a.jpg\n");
    let ds = read_list_files(root, &root.join("named.txt"), &root.join("named.txt"), STRICT).expect("named");
    assert_eq!(ds.classes.names, vec!["ant", "zebra"]);

    for (split, class, file) in [("train", "b_class", "1.jpg"), ("train", "a_class", "2.png"), ("val", "a_class", "3.jpg")] {
        tiny_jpeg(&root.join("folder").join(split).join(class).join(file), 4, 4);
    }
    write(&root.join("folder/train/a_class/notes.txt"), "not an image");
    let ds = read_image_folder(&root.join("folder")).expect("folder");
    assert_eq!(ds.classes.names, vec!["a_class", "b_class"]);
    assert_eq!((ds.train.len(), ds.test.len()), (2, 1));
    assert_eq!(ds.test[0].label, 0);
}

#[test]
fn annotation_paths_cannot_leave_the_dataset_root() {
    // CUB images.txt: a parent path and an absolute device path, each named by file and line.
    for bad in ["../../../etc/passwd", "/dev/zero", "003.Sooty/../../x.jpg"] {
        let dir = tempfile::tempdir().expect("tempdir");
        cub_fixture(dir.path());
        write(&dir.path().join("images.txt"), format!("10 003.Sooty/a.jpg\n12 {bad}\n40 007.Parakeet/c.jpg\n"));
        let e = read_cub(dir.path(), STRICT).expect_err(bad).to_string();
        assert!(e.contains("images.txt:2") && e.contains("leaves the dataset root"), "{bad}: {e}");
        let ds = read_cub(dir.path(), LENIENT).expect("lenient");
        assert!(ds.train.iter().chain(&ds.test).all(|r| r.path.starts_with(dir.path()) && !r.path.to_string_lossy().contains("..")));
        assert!(!ds.skipped.is_empty());
    }
    // FGVC-Aircraft: the image id names `images/<id>.jpg`.
    let dir = tempfile::tempdir().expect("tempdir");
    aircraft_fixture(dir.path());
    let root = dir.path().join("fgvc-aircraft-2013b");
    write(&root.join("data/images_variant_test.txt"), "1000003 Falcon 2000\n../../../../etc/passwd F/A-18\n");
    let e = read_aircraft(&root, AircraftSplit::TrainvalTest, false, STRICT).expect_err("escaping id").to_string();
    assert!(e.contains("images_variant_test.txt:2") && e.contains("plain file name"), "{e}");
    // Stanford Dogs: the file and annotation lists inside the .mat file.
    for (file, annotation) in [("../../etc/passwd", "n02085620-Chihuahua/n02085620_1"), ("n02085620-Chihuahua/n02085620_1.jpg", "/etc/passwd")] {
        let dir = tempfile::tempdir().expect("tempdir");
        dogs_fixture(dir.path(), true, false);
        let list = to_bytes(
            &[("file_list", cell_column(vec![string(file)])), ("annotation_list", cell_column(vec![string(annotation)])), ("labels", column(&[1.0]))],
            false,
        );
        write(&dir.path().join("lists/test_list.mat"), list);
        let e = read_dogs(dir.path(), STRICT).expect_err("escaping dogs entry").to_string();
        assert!(e.contains("test_list.mat") && e.contains("leaves the dataset folder"), "{e}");
    }
}

#[test]
fn qmul_shoes_and_chairs_have_their_documented_pairs_and_triplets() {
    for (name, sizes, triplets_per_train_sketch) in [("qmul-shoes-v1", (304, 115), None), ("qmul-chairs-v1", (200, 97), Some(135))] {
        let Some(root) = shared_data(env!("CARGO_MANIFEST_DIR"), "qmul_shoes_and_chairs_have_their_documented_pairs_and_triplets", name) else { return };
        let ds = fgia_core::datasets::read_qmul(&root).expect("reads");
        assert_eq!((ds.train.len(), ds.test.len()), sizes, "{name}");
        assert_eq!(ds.train.triplets.len(), sizes.0);
        assert!(ds.train.triplets.iter().chain(&ds.test.triplets).flatten().flatten().all(|&i| i < sizes.0.max(sizes.1)));
        if let Some(t) = triplets_per_train_sketch {
            assert!(ds.train.triplets.iter().all(|x| x.len() == t), "{name}");
        }
        // Sketch k and photo k share their stem.
        for (s, p) in ds.test.sketches.iter().zip(&ds.test.photos) {
            assert_eq!(s.file_name(), p.file_name());
            assert!(s.parent().expect("A").ends_with("testA") && p.parent().expect("B").ends_with("testB"));
        }
        let sampler = fgia_core::datasets::TripletSampler::new(&ds.train.triplets, 0.75).expect("every sketch has triplets and easy negatives");
        assert!(!sampler.easy_negatives(0).is_empty());
    }
}

/// A damaged copy of the QMUL layout: each fault is an error naming the file and the index.
#[test]
fn qmul_damaged_copies_are_errors_naming_file_and_index() {
    let write_set = |root: &Path| {
        let ann = r#"{"train": {"images": ["1.jpg", "2.jpg", "3.jpg"], "sketches": ["1.png", "2.png", "3.png"], "triplets": [[[1, 2]], [[0, 2]], [[0, 1]]]},
                      "test": {"images": ["4.jpg", "5.jpg"], "sketches": ["4.png", "5.png"], "triplets": [[[1, 0]], [[0, 1]]]}}"#;
        write(&root.join("toys_annotation.json"), ann);
        write(&root.join("train.txt"), "1\n2\n3\n");
        write(&root.join("test.txt"), "4\n5\n");
        for (split, stems) in [("train", &["1", "2", "3"][..]), ("test", &["4", "5"][..])] {
            for s in stems {
                for side in ["A", "B"] {
                    tiny_jpeg(&root.join(format!("{split}{side}/{s}.png")), 8, 8);
                }
            }
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    write_set(dir.path());
    let ds = fgia_core::datasets::read_qmul(dir.path()).expect("the intact copy reads");
    assert_eq!((ds.name.as_str(), ds.train.len(), ds.test.len()), ("toys", 3, 2));
    assert_eq!(ds.test.triplets[0], [[1, 0]]);
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 5] = [
        ("missing photo", |r| std::fs::remove_file(r.join("trainB/2.png")).expect("rm"), "trainB/2.png"),
        (
            "index out of range",
            |r| {
                let t = std::fs::read_to_string(r.join("toys_annotation.json")).expect("read").replace("[[0, 2]], [[0, 1]]]", "[[0, 2]], [[0, 7]]]");
                std::fs::write(r.join("toys_annotation.json"), t).expect("write")
            },
            "triplets[2][0] = [0, 7]",
        ),
        ("stem order", |r| std::fs::write(r.join("test.txt"), "5\n4\n").expect("write"), "sketches[0] is '4.png', but row 1 of test.txt is '5'"),
        ("escaping stem", |r| std::fs::write(r.join("train.txt"), "1\n../2\n3\n").expect("write"), "train.txt:2"),
        ("broken json", |r| std::fs::write(r.join("toys_annotation.json"), "{\"train\": [").expect("write"), "toys_annotation.json"),
    ];
    for (what, damage, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        write_set(dir.path());
        damage(dir.path());
        let e = fgia_core::datasets::read_qmul(dir.path()).expect_err(what).to_string();
        assert!(e.contains(want), "{what}: {e}");
    }
}
