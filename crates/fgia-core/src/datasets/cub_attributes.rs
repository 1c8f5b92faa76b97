//! CUB-200-2011's class-level attributes (Wah et al. 2011), as the official archive lays them
//! out under `attributes/`:
//!
//! - `attributes.txt`: `<id> <group>::<value>`, ids 1..=312 in order (`has_bill_shape::dagger`);
//! - `class_attribute_labels_continuous.txt`: one row per class, in the order of `classes.txt`,
//!   of 312 percentages: the share of the class's images whose annotators said the attribute is
//!   present.
//!
//! A subset (cub-mini) keeps the rows of its own classes, in its `classes.txt` order.

use std::path::Path;

use super::text::TextFile;
use crate::error::{DataError, Result};

/// The class-level attributes of a CUB root.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassAttributes {
    /// `group::value` names, by attribute index (id − 1).
    pub names: Vec<String>,
    /// Percent of each class's images showing each attribute: `percent[class][attribute]`, in
    /// `[0, 100]`, classes in `classes.txt` order.
    pub percent: Vec<Vec<f32>>,
}

impl ClassAttributes {
    /// The attribute's group (`has_bill_shape`), the part of its name before `::`.
    pub fn group(&self, a: usize) -> &str {
        self.names[a].split_once("::").map_or(self.names[a].as_str(), |(g, _)| g)
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Reads `root/attributes/` for a dataset of `classes` classes (its `classes.txt` rows).
pub fn read_class_attributes(root: &Path, classes: usize) -> Result<ClassAttributes> {
    let dir = root.join("attributes");
    let names_file = TextFile::read(&dir.join("attributes.txt"), "the attribute names (attributes.txt: '<id> <group>::<value>')")?;
    let mut names = Vec::new();
    for line in names_file.lines() {
        let (id, name) = line.head_rest("<id> <group>::<value>")?;
        let id: usize = line.parse(id, "attribute id")?;
        if id != names.len() + 1 {
            return Err(line.error(format!("attribute id {id} out of order (expected {})", names.len() + 1)));
        }
        names.push(name.to_string());
    }
    if names.is_empty() {
        return Err(DataError::format(&names_file.path, "no attributes"));
    }
    let table = TextFile::read(&dir.join("class_attribute_labels_continuous.txt"), "the class-level attribute percentages (one row per class)")?;
    let mut percent = Vec::new();
    for line in table.lines() {
        let fields = line.fields(names.len(), "one percentage per attribute")?;
        let mut row = Vec::with_capacity(fields.len());
        for (a, f) in fields.iter().enumerate() {
            let v = line.float(f, &format!("attribute {}", a + 1))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(line.error(format!("attribute {} is {v}, not a percentage in [0, 100]", a + 1)));
            }
            row.push(v);
        }
        percent.push(row);
    }
    if percent.len() != classes {
        return Err(DataError::format(&table.path, format!("{} class rows for {classes} classes in classes.txt", percent.len())));
    }
    Ok(ClassAttributes { names, percent })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, names: &str, table: &str) {
        std::fs::create_dir_all(dir.join("attributes")).expect("mkdir");
        std::fs::write(dir.join("attributes/attributes.txt"), names).expect("write");
        std::fs::write(dir.join("attributes/class_attribute_labels_continuous.txt"), table).expect("write");
    }

    #[test]
    fn reads_names_groups_and_percentages_and_names_the_bad_line() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "1 has_bill_shape::dagger\n2 has_wing_color::blue\n", "0.0 59.8\r\n100 2.5\n");
        let a = read_class_attributes(dir.path(), 2).expect("reads");
        assert_eq!((a.len(), a.group(0), a.percent[1][0]), (2, "has_bill_shape", 100.0));
        for (table, needle) in [
            ("0.0 59.8\n100\n", ":2: expected 2 fields"),
            ("0.0 nan\n1 2\n", ":1: attribute 2 'nan' is not"),
            ("0.0 101\n1 2\n", "not a percentage"),
            ("0.0 1\n", "1 class rows for 2 classes"),
        ] {
            write(dir.path(), "1 a::b\n2 c::d\n", table);
            let e = read_class_attributes(dir.path(), 2).expect_err(table).to_string();
            assert!(e.contains(needle) && e.contains("class_attribute_labels_continuous.txt"), "{e}");
        }
        write(dir.path(), "1 a::b\n3 c::d\n", "0 0\n0 0\n");
        assert!(read_class_attributes(dir.path(), 2).expect_err("gap").to_string().contains("attributes.txt:2: attribute id 3 out of order"));
    }

    #[test]
    fn reads_the_shared_cub_mini_attributes() {
        let Some(root) = crate::datasets::shared_data_dir(Path::new(env!("CARGO_MANIFEST_DIR")).parent().and_then(Path::parent).expect("ws")) else {
            eprintln!("skipped: no shared data");
            return;
        };
        let root = root.join("cub-mini");
        if !root.join("attributes").is_dir() {
            eprintln!("skipped: no cub-mini attributes");
            return;
        }
        let a = read_class_attributes(&root, 40).expect("reads");
        assert_eq!((a.len(), a.percent.len()), (312, 40));
        assert_eq!(a.names[0], "has_bill_shape::curved_(up_or_down)");
    }
}
