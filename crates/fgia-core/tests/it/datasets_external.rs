//! The readers of the §5.3 datasets (NABirds, Oxford Flowers-102, iNaturalist 2017 / 2018 and
//! their locations and captions), on small generated files in the official layouts, and on
//! damaged copies of them: every fault is an error naming the file (and the line of a text
//! file), or a counted skip under `skip_bad`.

use std::path::Path;

use fgia_core::datasets::{
    DatasetKind, InatYear, ReadOptions, read_flowers, read_flowers_captions, read_inat, read_inat_locations, read_inat_locations_from, read_location_file,
    read_nabirds,
};
use fgia_core::mat::MatValue;
use fgia_core::mat::write::to_bytes;

const STRICT: ReadOptions = ReadOptions { skip_bad: false };
const LENIENT: ReadOptions = ReadOptions { skip_bad: true };

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

// ---------------------------------------------------------------------------------------------
// NABirds

const A: &str = "0000139e-21dc-4d0c-bfe1-4cae3c85c829";
const B: &str = "0000d9fc-4e02-4c06-a0af-a55cfb16b12b";
const C: &str = "00019306-9d83-4334-b255-a447742edce3";
const D: &str = "0001afd4-99a1-4a67-b940-d419413e23b3";

/// The NABirds files, by path under `nabirds/`: a root (0), two internal levels, three leaves
/// (10 and 11 under Finches under Perching Birds; 12 directly under Hawks, below the root), a
/// node with no image (13), four images with boxes and all 11 parts of image A.
pub(crate) fn nabirds_files() -> Vec<(&'static str, String)> {
    let parts: String = (0..11).map(|p| format!("{A} {p} {} {} {}\n", 10 + p, 20 + p, p % 2)).collect();
    vec![
        ("classes.txt", "0 Birds\n1 Perching Birds\n2 Finches\n3 Hawks and Eagles\n10 House Finch (Adult Male)\n11 House Finch (Female/immature)\n12 Red-tailed Hawk\n13 Unused Finch\n".into()),
        ("hierarchy.txt", "1 0\n2 1\n3 0\n10 2\n11 2\n12 3\n13 2\n".into()),
        (
            "images.txt",
            format!("{A} 0010/0000139e21dc4d0cbfe14cae3c85c829.jpg\n{B} 0010/0000d9fc4e024c06a0afa55cfb16b12b.jpg\n{C} 0011/000193069d834334b255a447742edce3.jpg\n{D} 0012/0001afd499a14a67b940d419413e23b3.jpg\n"),
        ),
        ("image_class_labels.txt", format!("{A} 10\n{B} 10\n{C} 11\n{D} 12\n")),
        ("train_test_split.txt", format!("{A} 1\n{B} 0\n{C} 1\n{D} 0\n")),
        ("bounding_boxes.txt", format!("{A} 83 59 128 228\n{B} 1 2 3 4\n{C} 5 5 10 10\n{D} 0 0 8 8\n")),
        (
            "parts/parts.txt",
            "0 bill\n1 crown\n2 nape\n3 left eye\n4 right eye\n5 belly\n6 breast\n7 back\n8 tail\n9 left wing\n10 right wing\n".into(),
        ),
        ("parts/part_locs.txt", parts),
    ]
}

fn nabirds_fixture(root: &Path) {
    for (name, text) in nabirds_files() {
        write(&root.join("nabirds").join(name), text);
    }
}

#[test]
fn nabirds_leaves_levels_boxes_and_parts() {
    let dir = tempfile::tempdir().expect("tempdir");
    nabirds_fixture(dir.path());
    // The parent folder is accepted as root, like CUB's.
    let ds = read_nabirds(dir.path(), STRICT).expect("reads");
    assert_eq!(ds.root, dir.path().join("nabirds"));
    assert_eq!(ds.classes.ids, vec![10, 11, 12], "leaves are the classes with images");
    assert_eq!(ds.classes.names[1], "House Finch (Female/immature)");
    assert_eq!((ds.train.len(), ds.test.len()), (2, 2));
    assert_eq!(ds.train.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec![A, C]);
    let a = &ds.train[0];
    assert!(a.path.ends_with("nabirds/images/0010/0000139e21dc4d0cbfe14cae3c85c829.jpg"));
    let b = a.bbox.expect("box");
    assert_eq!((b.x, b.y, b.w, b.h), (83.0, 59.0, 128.0, 228.0));
    assert_eq!(a.parts.len(), 11);
    assert_eq!((a.parts[0].id, a.parts[0].x, a.parts[0].visible), (0, 10.0, false));
    assert_eq!((a.parts[10].id, a.parts[10].y, a.parts[10].visible), (10, 30.0, false));
    assert!(ds.train[1].parts.is_empty());
    // Levels: the immediate parent, and the node just below the root.
    let names: Vec<&str> = ds.levels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["parent", "top"]);
    assert_eq!(ds.levels[0].classes.names, vec!["Finches", "Hawks and Eagles"]);
    assert_eq!(ds.levels[1].classes.names, vec!["Perching Birds", "Hawks and Eagles"]);
    let hawk = &ds.test[1];
    assert_eq!(ds.classes.names[hawk.label], "Red-tailed Hawk");
    assert_eq!(hawk.levels, vec![1, 1]);
    assert_eq!(ds.train[1].levels, vec![0, 0], "House Finch (female) -> Finches -> Perching Birds");
    assert_eq!(ds.split_note, "official train_test_split.txt");
    assert_eq!(DatasetKind::Nabirds.read(&dir.path().join("nabirds"), STRICT).expect("by kind").train.len(), 2);
}

#[test]
fn nabirds_hostile_hierarchies_are_errors_at_their_line() {
    let cases: [(&str, &str, &str); 6] = [
        ("cycle", "1 2\n2 1\n3 0\n10 2\n11 2\n12 3\n", "cycle through class"),
        ("self loop", "1 0\n2 1\n3 3\n10 2\n11 2\n12 3\n", "hierarchy.txt:3: the hierarchy has a cycle through class 3"),
        ("two parents", "1 0\n2 1\n3 0\n10 2\n11 2\n12 3\n10 3\n", "hierarchy.txt:7: class 10 already has the parent 2 (line 4)"),
        ("unknown id", "1 0\n2 1\n3 0\n10 2\n11 99\n12 3\n", "hierarchy.txt:5: id class 99 is not listed in"),
        ("truncated line", "1 0\n2\n3 0\n10 2\n11 2\n12 3\n", "hierarchy.txt:2: expected 2 fields"),
        ("leaf without parent", "1 0\n2 1\n3 0\n11 2\n12 3\n", "leaf class 10 (it has images) has no parent"),
    ];
    for (what, hierarchy, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        nabirds_fixture(dir.path());
        write(&dir.path().join("nabirds/hierarchy.txt"), hierarchy);
        let e = read_nabirds(dir.path(), STRICT).expect_err(what).to_string();
        assert!(e.contains(want) && e.contains("hierarchy.txt"), "{what}: {e}");
    }
    // A cycle is an error even when skipping bad lines; a second parent is a counted skip.
    let dir = tempfile::tempdir().expect("tempdir");
    nabirds_fixture(dir.path());
    write(&dir.path().join("nabirds/hierarchy.txt"), "1 2\n2 1\n3 0\n10 2\n11 2\n12 3\n");
    assert!(read_nabirds(dir.path(), LENIENT).expect_err("cycle").to_string().contains("hierarchy.txt:"));
    write(&dir.path().join("nabirds/hierarchy.txt"), "1 0\n2 1\n3 0\n10 2\n11 2\n12 3\n10 3\n");
    let ds = read_nabirds(dir.path(), LENIENT).expect("lenient");
    assert_eq!(ds.skipped.len(), 1);
    assert_eq!(ds.levels[0].classes.names[ds.train[0].levels[0]], "Finches", "the first parent is kept");
}

#[test]
fn nabirds_damaged_lists_name_file_and_line() {
    let cases: Vec<(&str, String, &str)> = vec![
        ("images.txt", format!("{A}\n{B} 0010/b.jpg\n{C} 0011/c.jpg\n{D} 0012/d.jpg\n"), "images.txt:1: expected"),
        ("images.txt", format!("{A} ../../etc/passwd\n{B} 0010/b.jpg\n{C} 0011/c.jpg\n{D} 0012/d.jpg\n"), "images.txt:1: path '../../etc/passwd' leaves"),
        ("images.txt", format!("{A} 0010/a.jpg\nnot/a*uuid 0010/b.jpg\n{C} 0011/c.jpg\n{D} 0012/d.jpg\n"), "images.txt:2: image id 'not/a*uuid'"),
        ("bounding_boxes.txt", format!("{A} 83 59 128 228\n{B} 1 x 3 4\n"), "bounding_boxes.txt:2: y 'x'"),
        ("image_class_labels.txt", format!("{A} 10\n{B} 10\n{C} 11\n{D} 12\nffff-0000 10\n"), "image_class_labels.txt:5: id ffff-0000 is not listed"),
        ("image_class_labels.txt", format!("{A} 10\n{B} 77\n{C} 11\n{D} 12\n"), "image_class_labels.txt:2: id class 77"),
        ("train_test_split.txt", format!("{A} 1\n{B} 2\n{C} 1\n{D} 0\n"), "train_test_split.txt:2: is_training_image"),
        ("parts/part_locs.txt", format!("{A} 0 1 2 1\n{A} 11 1 2 1\n"), "part_locs.txt:2: id part 11 is not listed in"),
        ("parts/part_locs.txt", format!("{A} 0 1 2 yes\n"), "part_locs.txt:1: visible"),
    ];
    for (file, content, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        nabirds_fixture(dir.path());
        write(&dir.path().join("nabirds").join(file), &content);
        let e = read_nabirds(dir.path(), STRICT).expect_err(want).to_string();
        assert!(e.contains(want), "{e} should mention {want}");
        let ds = read_nabirds(dir.path(), LENIENT).expect("lenient read continues");
        assert!(!ds.skipped.is_empty(), "{want}: skip counted");
    }
    // A missing required file is named; an image without a label is a missing entry.
    let dir = tempfile::tempdir().expect("tempdir");
    nabirds_fixture(dir.path());
    std::fs::remove_file(dir.path().join("nabirds/hierarchy.txt")).expect("rm");
    let e = read_nabirds(dir.path(), STRICT).expect_err("no hierarchy").to_string();
    assert!(e.contains("hierarchy.txt: not found"), "{e}");
    nabirds_fixture(dir.path());
    write(&dir.path().join("nabirds/image_class_labels.txt"), format!("{A} 10\n{C} 11\n{D} 12\n"));
    let e = read_nabirds(dir.path(), STRICT).expect_err("no label").to_string();
    assert!(e.contains(&format!("id {B}")) && e.contains("image_class_labels.txt"), "{e}");
    let ds = read_nabirds(dir.path(), LENIENT).expect("lenient");
    assert_eq!((ds.train.len() + ds.test.len(), ds.skipped.len()), (3, 1));
}

// ---------------------------------------------------------------------------------------------
// Oxford Flowers-102

fn row(values: &[f64]) -> MatValue {
    MatValue::Numeric { dims: vec![1, values.len()], data: values.to_vec() }
}

const LABELS: [f64; 10] = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 102.0, 102.0, 102.0, 2.0];

fn flowers_mats(root: &Path, labels: &[f64], trn: &[f64], val: &[f64], tst: &[f64]) {
    write(&root.join("imagelabels.mat"), to_bytes(&[("labels", row(labels))], true));
    write(&root.join("setid.mat"), to_bytes(&[("trnid", row(trn)), ("valid", row(val)), ("tstid", row(tst))], false));
}

fn flowers_fixture(root: &Path) {
    flowers_mats(root, &LABELS, &[1.0, 4.0, 7.0], &[2.0, 5.0, 8.0], &[3.0, 6.0, 9.0, 10.0]);
}

#[test]
fn flowers_train_plus_val_and_captions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    flowers_fixture(root);
    let ds = read_flowers(root, STRICT).expect("reads");
    assert_eq!(ds.classes.ids, vec![1, 2, 102]);
    assert_eq!(ds.classes.names, vec!["class 001", "class 002", "class 102"]);
    assert_eq!((ds.train.len(), ds.test.len()), (6, 4));
    assert_eq!(
        ds.train.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["image_00001", "image_00004", "image_00007", "image_00002", "image_00005", "image_00008"]
    );
    assert_eq!(ds.train.iter().map(|r| r.label).collect::<Vec<_>>(), [0, 1, 2, 0, 1, 2]);
    assert!(ds.test[3].path.ends_with("jpg/image_00010.jpg"));
    assert!(ds.split_note.contains("trnid + valid (6 images)") && ds.split_note.contains("tstid (4)"), "{}", ds.split_note);
    assert_eq!(DatasetKind::Flowers.read(root, STRICT).expect("by kind").test.len(), 4);
    // Captions: the class folder comes from the label, not from the image's folder.
    let text = root.join("text_c10");
    write(&text.join("class_00001/image_00001.txt"), "this flower has white petals\n\n a yellow center \n");
    write(&text.join("class_00102/image_00007.txt"), "a red flower\n");
    write(&text.join("class_00001/image_00004.txt"), "in the wrong class folder\n");
    let (caps, missing) = read_flowers_captions(&text, &ds.classes, &ds.train).expect("captions");
    assert_eq!(caps[0], vec!["this flower has white petals", "a yellow center"]);
    assert!(caps[1].is_empty(), "image 4 is class 2: its file would be in class_00002");
    assert_eq!((caps[2].clone(), missing), (vec!["a red flower".to_string()], 4));
    write(&text.join("class_00002/image_00005.txt"), b"ok\n\xff broken\n");
    let e = read_flowers_captions(&text, &ds.classes, &ds.train).expect_err("not UTF-8").to_string();
    assert!(e.contains("image_00005.txt:2") && e.contains("UTF-8"), "{e}");
}

#[test]
fn flowers_damaged_mats_are_clear_errors() {
    type Case = (&'static str, fn(&Path), &'static str);
    let cases: [Case; 9] = [
        ("out of range", |r| flowers_mats(r, &LABELS, &[1.0, 4.0, 7.0], &[2.0, 5.0, 8.0], &[3.0, 6.0, 9.0, 11.0]), "tstid(4) = 11 is out of range"),
        ("two splits", |r| flowers_mats(r, &LABELS, &[1.0, 4.0, 7.0], &[2.0, 5.0, 8.0, 1.0], &[3.0, 6.0, 9.0, 10.0]), "valid(4): image 1 is already in trnid"),
        (
            "count mismatch",
            |r| flowers_mats(r, &[LABELS.as_slice(), &[3.0]].concat(), &[1.0, 4.0, 7.0], &[2.0, 5.0, 8.0], &[3.0, 6.0, 9.0, 10.0]),
            "setid.mat lists 10 images but imagelabels.mat labels 11",
        ),
        ("fractional id", |r| flowers_mats(r, &LABELS, &[1.5, 4.0, 7.0], &[2.0, 5.0, 8.0], &[3.0, 6.0, 9.0, 10.0]), "trnid(1) = 1.5 is not a positive integer"),
        (
            "zero label",
            |r| flowers_mats(r, &[0.0, 1.0, 1.0, 2.0, 2.0, 2.0, 102.0, 102.0, 102.0, 2.0], &[1.0, 4.0, 7.0], &[2.0, 5.0, 8.0], &[3.0, 6.0, 9.0, 10.0]),
            "labels(1) = 0 is not a positive integer",
        ),
        ("wrong variable", |r| write(&r.join("imagelabels.mat"), to_bytes(&[("label", row(&LABELS))], false)), "variable 'labels' not found"),
        (
            "text for numbers",
            |r| {
                write(
                    &r.join("setid.mat"),
                    to_bytes(&[("trnid", fgia_core::mat::write::string("1 4 7")), ("valid", row(&[2.0])), ("tstid", row(&[3.0]))], false),
                )
            },
            "'trnid' is a char array",
        ),
        ("not a MAT file", |r| write(&r.join("setid.mat"), b"<html>moved</html>"), "setid.mat"),
        ("missing file", |r| std::fs::remove_file(r.join("imagelabels.mat")).expect("rm"), "imagelabels.mat: not found"),
    ];
    for (what, damage, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        flowers_fixture(dir.path());
        damage(dir.path());
        let e = read_flowers(dir.path(), STRICT).expect_err(what).to_string();
        assert!(e.contains(want), "{what}: {e}");
        let file = if what == "wrong variable" || what == "zero label" || what == "missing file" { "imagelabels.mat" } else { "setid.mat" };
        assert!(e.contains(file), "{what}: {e} should name {file}");
    }
    // Entry-level faults are counted skips under skip_bad.
    let dir = tempfile::tempdir().expect("tempdir");
    flowers_mats(dir.path(), &LABELS, &[1.0, 4.0, 7.0, 42.0], &[2.0, 5.0, 8.0, 1.0], &[3.0, 6.0, 9.0, 10.0]);
    let ds = read_flowers(dir.path(), LENIENT).expect("lenient");
    assert_eq!((ds.train.len(), ds.test.len(), ds.skipped.len()), (6, 4, 2));
}

// ---------------------------------------------------------------------------------------------
// iNaturalist 2017 / 2018

fn category(id: u64, name: &str, sup: &str, ranks: bool) -> String {
    let extra = if ranks {
        format!(r#", "kingdom": "Animalia", "phylum": "Chordata", "class": "{sup}", "order": "O{id}", "family": "F{id}", "genus": "G{id}""#)
    } else {
        String::new()
    };
    format!(r#"{{"id": {id}, "name": "{name}", "supercategory": "{sup}"{extra}}}"#)
}

/// A COCO-style iNat file: `(image id, category id)` pairs, images under `folder`.
pub(crate) fn inat_json(folder: &str, images: &[(u64, u64)], ranks: bool) -> String {
    let ims: Vec<String> =
        images.iter().map(|(i, c)| format!(r#"{{"id": {i}, "file_name": "{folder}/S/{c}/{i}.jpg", "width": 800, "height": 600}}"#)).collect();
    let anns: Vec<String> = images.iter().enumerate().map(|(k, (i, c))| format!(r#"{{"id": {k}, "image_id": {i}, "category_id": {c}}}"#)).collect();
    let cats =
        [category(7, "Turdus migratorius", "Aves", ranks), category(2, "Quercus alba", "Plantae", ranks), category(5, "Danaus plexippus", "Insecta", ranks)];
    format!(
        "{{\"info\": {{}}, \"images\": [\n{}\n], \"annotations\": [\n{}\n], \"categories\": [\n{}\n]}}",
        ims.join(",\n"),
        anns.join(",\n"),
        cats.join(",\n")
    )
}

fn inat_fixture(root: &Path, year: InatYear) {
    let (folder, ranks) = match year {
        InatYear::Y2017 => ("train_val_images", false),
        InatYear::Y2018 => ("train_val2018", true),
    };
    let y = year.number();
    write(&root.join(format!("train{y}.json")), inat_json(folder, &[(100, 7), (101, 2), (102, 2), (103, 5)], ranks));
    write(&root.join(format!("val{y}.json")), inat_json(folder, &[(200, 7), (201, 5)], ranks));
}

pub(crate) const LOCATIONS_VAL: &str = r#"[{"id": 200, "lat": 40.7, "lon": -74.0, "loc_uncert": 10, "date": "2017-05-20 14:03:00+00:00", "user_id": 3, "valid": true},
 {"id": 201, "lat": null, "lon": null, "date": "", "valid": true}]"#;

#[test]
fn inat_both_years_splits_and_levels() {
    for year in [InatYear::Y2017, InatYear::Y2018] {
        let dir = tempfile::tempdir().expect("tempdir");
        inat_fixture(dir.path(), year);
        let ds = read_inat(dir.path(), year, STRICT).expect("reads");
        assert_eq!(ds.name, format!("inat{}", year.number()));
        assert_eq!(ds.classes.ids, vec![2, 5, 7]);
        assert_eq!(ds.classes.names[2], "Turdus migratorius");
        assert_eq!((ds.train.len(), ds.test.len()), (4, 2));
        assert_eq!(ds.test[0].id, "200");
        assert_eq!(ds.classes.names[ds.test[0].label], "Turdus migratorius");
        let folder = if year == InatYear::Y2017 { "train_val_images" } else { "train_val2018" };
        assert!(ds.train[0].path.ends_with(format!("{folder}/S/7/100.jpg")));
        assert!(ds.split_note.contains("test images have no public labels") && ds.split_note.contains("val"), "{}", ds.split_note);
        assert_eq!(ds.levels[0].name, "supercategory");
        assert_eq!(ds.levels[0].classes.names, vec!["Aves", "Insecta", "Plantae"]);
        assert_eq!(ds.levels[0].classes.names[ds.train[1].levels[0]], "Plantae");
        let levels: Vec<&str> = ds.levels.iter().map(|l| l.name.as_str()).collect();
        if year == InatYear::Y2018 {
            assert_eq!(levels, ["supercategory", "kingdom", "phylum", "class", "order", "family", "genus"]);
            assert_eq!(ds.levels[6].classes.names[ds.train[3].levels[6]], "G5");
        } else {
            assert_eq!(levels, ["supercategory"]);
        }
        let kind = if year == InatYear::Y2017 { DatasetKind::Inat2017 } else { DatasetKind::Inat2018 };
        assert_eq!(kind.read(dir.path(), STRICT).expect("by kind").train.len(), 4);
    }
}

#[test]
fn inat_damaged_json_names_the_file() {
    let y = InatYear::Y2018;
    let good = inat_json("train_val2018", &[(100, 7), (101, 2), (102, 2), (103, 5)], true);
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad json", good.replacen("\"images\": [", "\"images\": [[", 1), "train2018.json:"),
        ("truncated", good[..good.len() / 2].to_string(), "train2018.json:"),
        ("unknown image", good.replace(r#""image_id": 103"#, r#""image_id": 999"#), "annotations[3] (image 999): the image id is not in images"),
        ("unknown category", good.replace(r#""image_id": 103, "category_id": 5"#, r#""image_id": 103, "category_id": 99"#), "category 99 is not in categories"),
        ("escaping path", good.replace("train_val2018/S/2/101.jpg", "../../etc/passwd"), "images[1] (id 101): file name '../../etc/passwd' leaves"),
        (
            "id twice",
            good.replacen("\"images\": [\n", "\"images\": [\n{\"id\": 100, \"file_name\": \"train_val2018/S/7/x.jpg\"},\n", 1),
            "images[1] (id 100): the id appears twice",
        ),
        ("second annotation", good.replace(r#""image_id": 103"#, r#""image_id": 100"#), "annotations[3] (image 100): the image has a second annotation"),
        ("id as text", good.replace(r#""id": 101, "file_name""#, r#""id": "a", "file_name""#), "train2018.json:"),
        ("half the ranks", good.replacen(r#", "kingdom": "Animalia""#, "", 1), "has no 'kingdom' while others have one"),
    ];
    for (what, text, want) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        inat_fixture(dir.path(), y);
        write(&dir.path().join("train2018.json"), &text);
        let e = read_inat(dir.path(), y, STRICT).expect_err(what).to_string();
        assert!(e.contains(want) && e.contains("train2018.json"), "{what}: {e}");
    }
    // An image without an annotation: an error, or a counted skip.
    let dir = tempfile::tempdir().expect("tempdir");
    inat_fixture(dir.path(), y);
    let text = good.replace(",\n{\"id\": 3, \"image_id\": 103, \"category_id\": 5}", "");
    assert!(text.len() < good.len());
    write(&dir.path().join("train2018.json"), &text);
    let e = read_inat(dir.path(), y, STRICT).expect_err("unannotated").to_string();
    assert!(e.contains("images[3] (id 103): the image has no annotation"), "{e}");
    let ds = read_inat(dir.path(), y, LENIENT).expect("lenient");
    assert_eq!((ds.train.len(), ds.skipped.len()), (3, 1));
    // Validation categories that differ from training's, and a missing file.
    inat_fixture(dir.path(), y);
    write(&dir.path().join("val2018.json"), inat_json("train_val2018", &[(200, 7)], true).replace("Turdus migratorius", "Turdus merula"));
    let e = read_inat(dir.path(), y, STRICT).expect_err("categories differ").to_string();
    assert!(e.contains("val2018.json") && e.contains("category 7 ('Turdus merula') is not the same"), "{e}");
    std::fs::remove_file(dir.path().join("val2018.json")).expect("rm");
    let e = read_inat(dir.path(), y, STRICT).expect_err("no val").to_string();
    assert!(e.contains("val2018.json: not found"), "{e}");
}

#[test]
fn inat_locations_release_is_matched_by_image_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    inat_fixture(root, InatYear::Y2018);
    assert_eq!(InatYear::Y2018.location_files(root), None);
    let sub = root.join("inat2018_locations");
    write(&sub.join("train2018_locations.json"), r#"[{"id": 100, "lat": 1.0, "lon": 2.0, "date": "2018-01-01"}]"#);
    write(&sub.join("val2018_locations.json"), LOCATIONS_VAL);
    let (train_loc, val_loc) = InatYear::Y2018.location_files(root).expect("found in the subfolder");
    assert!(val_loc.ends_with("inat2018_locations/val2018_locations.json") && train_loc.is_file());
    let fixes = read_location_file(&val_loc).expect("reads");
    assert_eq!(fixes[&200].location, Some((-74.0, 40.7)));
    assert_eq!(fixes[&200].day_of_year, Some(140));
    assert_eq!((fixes[&201].location, fixes[&201].day_of_year), (None, None));
    // The per-image records: located from the file, an image it does not list has no prior.
    let (recs, names) = read_inat_locations_from(&root.join("val2018.json"), root, Some(&val_loc)).expect("reads");
    assert_eq!(names, vec!["Quercus alba", "Danaus plexippus", "Turdus migratorius"]);
    assert_eq!((recs[0].label, recs[0].location, recs[0].day_of_year), (2, Some((-74.0, 40.7)), Some(140)));
    assert_eq!((recs[1].location, recs[1].day_of_year), (None, None));
    let (recs, _) = read_inat_locations_from(&root.join("train2018.json"), root, Some(&train_loc)).expect("reads");
    assert_eq!((recs[0].location, recs[1].location), (Some((2.0, 1.0)), None));
    // Without a locations file the embedded fields are read, as before (none here).
    let (recs, _) = read_inat_locations(&root.join("val2018.json"), root).expect("reads");
    assert!(recs.iter().all(|r| r.location.is_none()));
    // Damaged locations files name the file and the image.
    for (text, want) in [
        (LOCATIONS_VAL.replace("40.7", "140.7"), "image 200: location (-74, 140.7) is not on the globe"),
        (LOCATIONS_VAL.replace(r#""lat": null"#, r#""lat": 5.0"#), "image 201: a longitude without a latitude"),
        (LOCATIONS_VAL.replace("2017-05-20", "2017-02-30"), "image 200: date '2017-02-30 14:03:00+00:00' is not YYYY-MM-DD"),
        (LOCATIONS_VAL.replace(r#""id": 201"#, r#""id": 200"#), "image 200 is listed twice"),
        (LOCATIONS_VAL.replace("}]", "}"), "val2018_locations.json:"),
        (r#"{"id": 200}"#.to_string(), "val2018_locations.json:1"),
    ] {
        write(&val_loc, &text);
        let e = read_location_file(&val_loc).expect_err(want).to_string();
        assert!(e.contains(want) && e.contains("val2018_locations.json"), "{want}: {e}");
        let e = read_inat_locations_from(&root.join("val2018.json"), root, Some(&val_loc)).expect_err(want).to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}
