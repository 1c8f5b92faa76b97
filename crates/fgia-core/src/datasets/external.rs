//! Readers for the external information of §5.3 (Table 3), for users who have the data:
//!
//! - [`read_webfg`]: WebFG-496-style web-image sets (Sun et al., ICCV 2021): `train/<class>/`
//!   holds crawled images with noisy labels, `val/<class>/` the clean test images;
//! - [`read_captions`]: the caption layout of Reed et al. (CVPR 2016), `text_c10/<class>/<image
//!   stem>.txt`, ten sentences per image, one per line;
//! - [`read_inat_locations`]: iNaturalist-2021-style JSON (`images` with `latitude`, `longitude`
//!   and `date`; `annotations`; `categories`), the observations of the geographical prior;
//!   [`read_inat_locations_from`] takes them instead from a separate locations file, as the 2017
//!   and 2018 competitions released them (`train2018_locations.json`: a list of `{id, lat, lon,
//!   date, ...}`, read by [`read_location_file`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Dataset, Record, read_image_folder};
use crate::error::{DataError, Result};

/// A web-image set: the image-folder layout, with every class on both sides (a web class with no
/// clean test image, or the reverse, is an error naming it).
pub fn read_webfg(root: &Path) -> Result<Dataset> {
    let mut ds = read_image_folder(root)?;
    let has = |records: &[Record], label: usize| records.iter().any(|r| r.label == label);
    for (label, name) in ds.classes.names.iter().enumerate() {
        if !has(&ds.train, label) {
            return Err(DataError::format(root.join("train"), format!("class '{name}' has clean test images but no web training images")));
        }
        if !has(&ds.test, label) {
            return Err(DataError::format(root.join("val"), format!("class '{name}' has web images but no clean test image")));
        }
    }
    ds.name = format!("{} (web)", ds.name);
    ds.split_note = "crawled web images (noisy labels) for training, the clean val/ images for testing".into();
    Ok(ds)
}

/// The captions of `records`, read from `text_dir/<class folder>/<image stem>.txt` (the class
/// folder is the image's parent folder name): the sentences of each record, and how many records
/// had no caption file.
pub fn read_captions(text_dir: &Path, records: &[Record]) -> Result<(Vec<Vec<String>>, usize)> {
    let files = records
        .iter()
        .map(|r| {
            let class = r.path.parent().and_then(Path::file_name);
            let stem = r.path.file_stem();
            let (Some(class), Some(stem)) = (class, stem) else {
                return Err(DataError::format(&r.path, "an image path without a class folder or a file name"));
            };
            Ok(text_dir.join(class).join(stem).with_extension("txt"))
        })
        .collect::<Result<Vec<PathBuf>>>()?;
    read_caption_files(&files)
}

/// Reads caption files, one per record: the non-blank trimmed lines of each (an empty list for a
/// missing file), and how many were missing. A file that is not UTF-8 is an error at its line.
pub(crate) fn read_caption_files(files: &[PathBuf]) -> Result<(Vec<Vec<String>>, usize)> {
    let mut missing = 0;
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        match std::fs::read(file) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|e| {
                    let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count();
                    DataError::malformed(file, line, "not valid UTF-8")
                })?;
                out.push(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing += 1;
                out.push(Vec::new());
            }
            Err(e) => return Err(DataError::io(file, e)),
        }
    }
    Ok((out, missing))
}

/// One observation of the geographical prior.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoRecord {
    /// Image file.
    pub path: PathBuf,
    /// Contiguous class index (categories sorted by id).
    pub label: usize,
    /// Longitude and latitude in degrees, where known.
    pub location: Option<(f32, f32)>,
    /// Day of the year (1..=366), where the date is known.
    pub day_of_year: Option<u32>,
}

#[derive(Deserialize)]
struct InatFile {
    images: Vec<InatImage>,
    annotations: Vec<InatAnnotation>,
    categories: Vec<InatCategory>,
}

#[derive(Deserialize)]
struct InatImage {
    id: u64,
    file_name: String,
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
    #[serde(default)]
    date: Option<String>,
}

#[derive(Deserialize)]
struct InatAnnotation {
    image_id: u64,
    category_id: u64,
}

#[derive(Deserialize)]
struct InatCategory {
    id: u64,
    name: String,
}

/// Day of the year of a date written `YYYY-MM-DD...` (the rest, a time, is ignored).
pub fn day_of_year(date: &str) -> Option<u32> {
    let d = date.get(..10)?;
    let mut it = d.split('-');
    let (y, m, day): (i32, u32, u32) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || day == 0 || day > days[m as usize - 1] {
        return None;
    }
    Some(days[..m as usize - 1].iter().sum::<u32>() + day)
}

/// Reads an iNaturalist-style JSON file; image paths are joined to `image_root`. Returns the
/// records (images without an annotation are left out) and the category names by label.
/// A location outside the globe, half a location, or a date that is not a calendar date is an
/// error naming the image id; a missing location or date is kept as `None`.
pub fn read_inat_locations(json: &Path, image_root: &Path) -> Result<(Vec<GeoRecord>, Vec<String>)> {
    read_inat_locations_from(json, image_root, None)
}

/// [`read_inat_locations`], with the locations and dates taken from a separate `locations` file
/// (see [`read_location_file`]) when one is given, matched by image id. An image the locations
/// file does not list has neither (`None`: no prior is used for it); the fields embedded in the
/// image entries are then ignored.
pub fn read_inat_locations_from(json: &Path, image_root: &Path, locations: Option<&Path>) -> Result<(Vec<GeoRecord>, Vec<String>)> {
    let text = std::fs::read_to_string(json).map_err(|e| DataError::io(json, e))?;
    let file: InatFile = serde_json::from_str(&text).map_err(|e| DataError::malformed(json, e.line(), e.to_string()))?;
    let fixes = locations.map(read_location_file).transpose()?;
    let mut cats: Vec<(u64, String)> = file.categories.into_iter().map(|c| (c.id, c.name)).collect();
    cats.sort();
    if cats.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(DataError::format(json, "a category id appears twice"));
    }
    let label_of: HashMap<u64, usize> = cats.iter().enumerate().map(|(i, (id, _))| (*id, i)).collect();
    let mut class_of: HashMap<u64, usize> = HashMap::new();
    for a in &file.annotations {
        let label = *label_of
            .get(&a.category_id)
            .ok_or_else(|| DataError::format(json, format!("image {}: category {} is not in categories", a.image_id, a.category_id)))?;
        class_of.insert(a.image_id, label);
    }
    let mut out = Vec::new();
    for im in file.images {
        let Some(&label) = class_of.get(&im.id) else { continue };
        let rel = Path::new(&im.file_name);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(DataError::format(json, format!("image {}: file name '{}' leaves the image root", im.id, im.file_name)));
        }
        let fix = match &fixes {
            Some(map) => map.get(&im.id).copied().unwrap_or_default(),
            None => GeoFix::checked(json, im.id, im.longitude, im.latitude, im.date.as_deref())?,
        };
        out.push(GeoRecord { path: image_root.join(rel), label, location: fix.location, day_of_year: fix.day_of_year });
    }
    Ok((out, cats.into_iter().map(|(_, n)| n).collect()))
}

/// Where and when one image was taken, as far as known.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GeoFix {
    /// Longitude and latitude in degrees.
    pub location: Option<(f32, f32)>,
    /// Day of the year (1..=366).
    pub day_of_year: Option<u32>,
}

impl GeoFix {
    /// Validates raw fields of image `id` read from `file`: a location on the globe (both or
    /// neither coordinate) and a `YYYY-MM-DD` date; an empty date counts as none.
    fn checked(file: &Path, id: u64, lon: Option<f64>, lat: Option<f64>, date: Option<&str>) -> Result<GeoFix> {
        let location = match (lon, lat) {
            (Some(lon), Some(lat)) => {
                if !(lon.is_finite() && lat.is_finite() && (-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat)) {
                    return Err(DataError::format(file, format!("image {id}: location ({lon}, {lat}) is not on the globe")));
                }
                Some((lon as f32, lat as f32))
            }
            (None, None) => None,
            _ => return Err(DataError::format(file, format!("image {id}: a longitude without a latitude, or the reverse"))),
        };
        let day_of_year = match date.map(str::trim).filter(|d| !d.is_empty()) {
            Some(d) => Some(day_of_year(d).ok_or_else(|| DataError::format(file, format!("image {id}: date '{d}' is not YYYY-MM-DD")))?),
            None => None,
        };
        Ok(GeoFix { location, day_of_year })
    }
}

#[derive(Deserialize)]
struct LocationEntry {
    id: u64,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
    #[serde(default)]
    date: Option<String>,
}

/// Reads a locations file of the iNaturalist 2017 / 2018 release (`val2018_locations.json`): a
/// JSON list of objects with the image `id`, `lat`, `lon` and `date` (any may be null; other
/// fields are ignored). Returns each image's [`GeoFix`] by id. An id listed twice, a location
/// off the globe or a date that is not a calendar date is an error naming the file and the id.
pub fn read_location_file(path: &Path) -> Result<HashMap<u64, GeoFix>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let entries: Vec<LocationEntry> = serde_json::from_str(&text).map_err(|e| DataError::malformed(path, e.line(), e.to_string()))?;
    let mut out = HashMap::with_capacity(entries.len());
    for e in entries {
        let fix = GeoFix::checked(path, e.id, e.lon, e.lat, e.date.as_deref())?;
        if out.insert(e.id, fix).is_some() {
            return Err(DataError::format(path, format!("image {} is listed twice", e.id)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_become_days_of_the_year() {
        assert_eq!(day_of_year("2018-01-01 10:00:00+00:00"), Some(1));
        assert_eq!(day_of_year("2020-12-31"), Some(366));
        assert_eq!(day_of_year("2019-03-01"), Some(60));
        for bad in ["2019-02-29", "2019-13-01", "19-1-1", "", "2019-00-10"] {
            assert_eq!(day_of_year(bad), None, "{bad}");
        }
    }

    #[test]
    fn inat_json_with_damaged_entries_is_an_error_naming_the_image() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("train.json");
        let good = r#"{"images": [
            {"id": 1, "file_name": "train/a/1.jpg", "latitude": 37.7, "longitude": -122.4, "date": "2019-06-01 10:00:00"},
            {"id": 2, "file_name": "train/b/2.jpg"},
            {"id": 3, "file_name": "train/b/3.jpg", "latitude": 1.0, "longitude": 2.0}],
          "annotations": [{"image_id": 1, "category_id": 20}, {"image_id": 2, "category_id": 10}],
          "categories": [{"id": 20, "name": "b"}, {"id": 10, "name": "a"}]}"#;
        std::fs::write(&p, good).expect("write");
        let (recs, names) = read_inat_locations(&p, Path::new("/data")).expect("reads");
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(recs.len(), 2, "image 3 has no annotation");
        assert_eq!((recs[0].label, recs[0].location, recs[0].day_of_year), (1, Some((-122.4, 37.7)), Some(152)));
        assert_eq!((recs[1].location, recs[1].day_of_year), (None, None));
        for (bad, needle) in [
            (good.replace("37.7", "97.7"), "image 1: location"),
            (good.replace(", \"longitude\": -122.4", ""), "image 1: a longitude without a latitude"),
            (good.replace("2019-06-01", "2019-06-31"), "image 1: date"),
            (good.replace("\"category_id\": 10", "\"category_id\": 11"), "category 11 is not in categories"),
            (good.replace("train/a/1.jpg", "../../etc/passwd"), "leaves the image root"),
            (good.replace("\"images\": [", "\"images\": [[").to_string(), "train.json:"),
        ] {
            std::fs::write(&p, &bad).expect("write");
            let e = read_inat_locations(&p, Path::new("/data")).expect_err(needle).to_string();
            assert!(e.contains(needle) && e.contains("train.json"), "{needle}: {e}");
        }
    }

    #[test]
    fn captions_and_web_folders_on_damaged_input() {
        let dir = tempfile::tempdir().expect("tmp");
        let text = dir.path().join("text_c10");
        std::fs::create_dir_all(text.join("001.Albatross")).expect("mkdir");
        std::fs::write(text.join("001.Albatross/img1.txt"), "a large white bird\n\n  with long wings \n").expect("write");
        std::fs::write(text.join("001.Albatross/img3.txt"), b"ok\n\xff\xfe broken\n").expect("write");
        let rec = |name: &str| Record::new(dir.path().join("images/001.Albatross").join(name), 0, name.to_string());
        let (caps, missing) = read_captions(&text, &[rec("img1.jpg"), rec("img2.jpg")]).expect("reads");
        assert_eq!((caps[0].clone(), missing), (vec!["a large white bird".to_string(), "with long wings".to_string()], 1));
        let e = read_captions(&text, &[rec("img3.jpg")]).expect_err("not UTF-8").to_string();
        assert!(e.contains("img3.txt:2") && e.contains("UTF-8"), "{e}");
        // Web folders: a class with web images but no clean test image is named.
        let web = dir.path().join("web");
        for (side, class) in [("train", "a"), ("train", "b"), ("val", "a")] {
            std::fs::create_dir_all(web.join(side).join(class)).expect("mkdir");
            std::fs::write(web.join(side).join(class).join("x.jpg"), b"jpg").expect("write");
        }
        let e = read_webfg(&web).expect_err("b has no test image").to_string();
        assert!(e.contains("class 'b' has web images but no clean test image"), "{e}");
        std::fs::create_dir_all(web.join("val/b")).expect("mkdir");
        std::fs::write(web.join("val/b/y.jpg"), b"jpg").expect("write");
        let ds = read_webfg(&web).expect("reads");
        assert_eq!((ds.train.len(), ds.test.len(), ds.num_classes()), (2, 2, 2));
        assert!(ds.split_note.contains("noisy labels"));
    }
}
