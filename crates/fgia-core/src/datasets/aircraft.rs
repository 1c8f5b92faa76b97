//! FGVC-Aircraft 2013b (Maji et al., 2013): `data/images_variant_{train,val,trainval,test}.txt`
//! (`<image_id> <variant name>`, names contain spaces and slashes), `variants.txt`,
//! `families.txt`, `manufacturers.txt`, the matching `images_family_*` and
//! `images_manufacturer_*` lists, `images_box.txt` (`<id> <xmin> <ymin> <xmax> <ymax>`, 1-based)
//! and `images/<id>.jpg`.
//!
//! The standard protocol trains on `trainval` and tests on `test`. The images carry a 20-pixel
//! copyright banner at the bottom; `remove_banner` drops those rows (and clips the boxes).

use std::collections::HashMap;
use std::path::Path;

use super::text::TextFile;
use super::{BBox, ClassTable, Dataset, Level, ReadOptions, Record, Strictness, compact_classes};
use crate::error::{DataError, Result};

/// Height of the copyright banner at the bottom of every FGVC-Aircraft image.
pub const AIRCRAFT_BANNER_ROWS: u32 = 20;

/// Which lists form the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AircraftSplit {
    /// `trainval` / `test`: the standard protocol.
    TrainvalTest,
    /// `train` / `val`: for model selection without touching the test set.
    TrainVal,
}

fn names(root: &Path, file: &str, what: &str) -> Result<ClassTable> {
    let f = TextFile::read(&root.join(file), what)?;
    let pairs: Vec<(u32, String)> = f.lines().enumerate().map(|(i, l)| (i as u32 + 1, l.text.to_string())).collect();
    ClassTable::from_pairs(pairs).map_err(|m| DataError::format(&f.path, m))
}

/// Reads `<id> <name with spaces>` lines and maps names through `table`.
fn labelled(root: &Path, file: &str, table: &ClassTable, strict: &mut Strictness) -> Result<Vec<(String, usize)>> {
    let f = TextFile::read(&root.join(file), "FGVC-Aircraft image list")?;
    let by_name: HashMap<&str, usize> = table.names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let mut out = Vec::new();
    for line in f.lines() {
        let r = line.head_rest("<image_id> <class name>").and_then(|(id, name)| {
            // The id names the file `images/<id>.jpg`: it must be one plain file name.
            if !super::stays_inside(id) || id.contains(['/', '\\']) {
                return Err(line.error(format!("image id '{id}' is not a plain file name; it would leave the images folder")));
            }
            by_name.get(name).map(|&i| (id.to_string(), i)).ok_or_else(|| line.error(format!("'{name}' is not a known class name")))
        });
        match r {
            Ok(v) => out.push(v),
            Err(e) => strict.bad(e)?,
        }
    }
    Ok(out)
}

/// Reads FGVC-Aircraft at the variant level from `root` (the `fgvc-aircraft-2013b` folder or its
/// `data/` folder).
pub fn read_aircraft(root: &Path, split: AircraftSplit, remove_banner: bool, opts: ReadOptions) -> Result<Dataset> {
    let data = if root.join("data").join("variants.txt").exists() { root.join("data") } else { root.to_path_buf() };
    let mut strict = Strictness::new(opts);
    let variants = names(&data, "variants.txt", "FGVC-Aircraft variant names")?;
    let families = names(&data, "families.txt", "FGVC-Aircraft family names")?;
    let manufacturers = names(&data, "manufacturers.txt", "FGVC-Aircraft manufacturer names")?;

    let mut boxes: HashMap<String, BBox> = HashMap::new();
    if let Some(f) = TextFile::read_optional(&data.join("images_box.txt"), "boxes")? {
        for line in f.lines() {
            let r = (|| {
                let v = line.fields(5, "<image_id> <xmin> <ymin> <xmax> <ymax>")?;
                let (x0, y0, x1, y1) = (line.float(v[1], "xmin")?, line.float(v[2], "ymin")?, line.float(v[3], "xmax")?, line.float(v[4], "ymax")?);
                if x1 < x0 || y1 < y0 {
                    return Err(line.error("empty box"));
                }
                // 1-based inclusive pixel coordinates.
                Ok((v[0].to_string(), BBox { x: x0 - 1.0, y: y0 - 1.0, w: x1 - x0 + 1.0, h: y1 - y0 + 1.0 }))
            })();
            match r {
                Ok((id, b)) => {
                    boxes.insert(id, b);
                }
                Err(e) => strict.bad(e)?,
            }
        }
    }

    let (a, b) = match split {
        AircraftSplit::TrainvalTest => ("trainval", "test"),
        AircraftSplit::TrainVal => ("train", "val"),
    };
    let mut sides = Vec::new();
    for side in [a, b] {
        let variant = labelled(&data, &format!("images_variant_{side}.txt"), &variants, &mut strict)?;
        let family: HashMap<String, usize> = labelled(&data, &format!("images_family_{side}.txt"), &families, &mut strict)?.into_iter().collect();
        let manufacturer: HashMap<String, usize> =
            labelled(&data, &format!("images_manufacturer_{side}.txt"), &manufacturers, &mut strict)?.into_iter().collect();
        let mut records = Vec::with_capacity(variant.len());
        for (id, label) in variant {
            let (Some(&fam), Some(&man)) = (family.get(&id), manufacturer.get(&id)) else {
                strict.bad(DataError::MissingEntry {
                    path: data.join(format!("images_family_{side}.txt")),
                    id: id.clone(),
                    defined_in: data.join(format!("images_variant_{side}.txt")),
                })?;
                continue;
            };
            let mut rec = Record::new(data.join("images").join(format!("{id}.jpg")), label, id.clone());
            rec.levels = vec![fam, man];
            rec.bbox = boxes.get(&id).copied();
            if remove_banner {
                rec.trim_bottom = AIRCRAFT_BANNER_ROWS;
            }
            rec.objects = rec.bbox.into_iter().collect();
            records.push(rec);
        }
        sides.push(records);
    }
    let mut test = sides.pop().expect("two sides were pushed");
    let mut train = sides.pop().expect("two sides were pushed");
    let classes = compact_classes(&variants, &mut train, &mut test);
    Ok(Dataset {
        name: "aircraft".into(),
        root: root.to_path_buf(),
        classes,
        train,
        test,
        levels: vec![Level { name: "family".into(), classes: families }, Level { name: "manufacturer".into(), classes: manufacturers }],
        skipped: strict.into_skipped(),
        split_note: format!("official images_variant_{a}.txt / images_variant_{b}.txt"),
    })
}
