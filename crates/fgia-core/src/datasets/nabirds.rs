//! NABirds (Van Horn et al., "Building a bird recognition app and large scale dataset with
//! citizen scientists: the fine print in fine-grained dataset collection", CVPR 2015), official
//! `nabirds/` layout:
//!
//! - `classes.txt` (`<class_id> <name with spaces>`) names every node of the taxonomy;
//! - `hierarchy.txt` (`<child_id> <parent_id>`) gives each node but the root its parent;
//! - `images.txt`, `image_class_labels.txt`, `train_test_split.txt`, `bounding_boxes.txt`,
//!   `parts/parts.txt` (11 parts, ids from 0) and `parts/part_locs.txt`: the CUB files, with UUID
//!   image ids (`0000139e-21dc-4d0c-bfe1-4cae3c85c829`); read by the CUB code.
//!
//! The leaf classes are those with images (555 in the release). Two coarser levels come from the
//! hierarchy: `parent`, each leaf's immediate parent, and `top`, the ancestor just below the root
//! (a leaf directly under the root is its own `top`). A hierarchy with a cycle, an unknown id or
//! a node with two parents is an error at the offending line of `hierarchy.txt`.

use std::collections::HashMap;
use std::path::Path;

use super::cub::{CubStyle, IdForm, layout_root, read_cub_style};
use super::text::TextFile;
use super::{ClassTable, Dataset, Level, ReadOptions, compact_classes};
use crate::error::{DataError, Result};

/// Reads NABirds from its root (the folder holding `images.txt`; a parent holding `nabirds/`
/// is accepted too). [`Dataset::levels`] are `parent` and `top`, and every record's
/// [`super::Record::levels`] holds its indices into them.
pub fn read_nabirds(root: &Path, opts: ReadOptions) -> Result<Dataset> {
    let root = layout_root(root, "nabirds");
    let CubStyle { classes_path, all_classes, mut train, mut test, mut strict } = read_cub_style(&root, "NABirds", IdForm::Token, opts)?;

    // child id -> (parent id, line), every id checked against classes.txt.
    let hierarchy = TextFile::read(&root.join("hierarchy.txt"), "NABirds class hierarchy")?;
    let mut parent_of: HashMap<u32, (u32, usize)> = HashMap::new();
    for line in hierarchy.lines() {
        let r = (|| {
            let f = line.fields(2, "<child_id> <parent_id>")?;
            let (child, parent): (u32, u32) = (line.parse(f[0], "child id")?, line.parse(f[1], "parent id")?);
            for id in [child, parent] {
                if all_classes.index_of(id).is_none() {
                    return Err(DataError::UnknownId {
                        path: line.path.to_path_buf(),
                        line: line.number,
                        id: format!("class {id}"),
                        other: classes_path.clone(),
                    });
                }
            }
            if let Some((other, at)) = parent_of.get(&child) {
                return Err(line.error(format!("class {child} already has the parent {other} (line {at}); a node has one parent")));
            }
            Ok((child, parent))
        })();
        match r {
            Ok((child, parent)) => {
                parent_of.insert(child, (parent, line.number));
            }
            Err(e) => strict.bad(e)?,
        }
    }

    // For each leaf with images: its chain of ancestors up to the root.
    let mut used = vec![false; all_classes.len()];
    for r in train.iter().chain(&test) {
        used[r.label] = true;
    }
    // Per leaf index: (parent index, top index) into all_classes.
    let mut above: HashMap<usize, (usize, usize)> = HashMap::new();
    for (leaf, _) in used.iter().enumerate().filter(|(_, u)| **u) {
        let leaf_id = all_classes.ids[leaf];
        let chain = ancestors(leaf_id, &parent_of, all_classes.len()).map_err(|(id, line)| {
            DataError::malformed(&hierarchy.path, line, format!("the hierarchy has a cycle through class {id} (reached from leaf class {leaf_id})"))
        })?;
        let Some(&parent) = chain.get(1) else {
            return Err(DataError::format(&hierarchy.path, format!("leaf class {leaf_id} (it has images) has no parent")));
        };
        // chain = [leaf, parent, ..., root]; top is the node just below the root.
        let top = chain[chain.len() - 2];
        let index = |id: u32| all_classes.index_of(id).expect("hierarchy ids were checked against classes.txt");
        above.insert(leaf, (index(parent), index(top)));
    }

    let (parents, tops) = (level_table(&all_classes, above.values().map(|a| a.0)), level_table(&all_classes, above.values().map(|a| a.1)));
    for r in train.iter_mut().chain(test.iter_mut()) {
        let (p, t) = above[&r.label];
        let pos = |table: &ClassTable, i: usize| table.index_of(all_classes.ids[i]).expect("every parent and top is in its level table");
        r.levels = vec![pos(&parents, p), pos(&tops, t)];
    }
    let classes = compact_classes(&all_classes, &mut train, &mut test);
    Ok(Dataset {
        name: "nabirds".into(),
        root,
        classes,
        train,
        test,
        levels: vec![Level { name: "parent".into(), classes: parents }, Level { name: "top".into(), classes: tops }],
        skipped: strict.into_skipped(),
        split_note: "official train_test_split.txt".into(),
    })
}

/// The chain `[id, parent, grandparent, ..., root]`. A walk longer than the number of classes has
/// met a cycle: the error is the repeated id and the `hierarchy.txt` line of its parent edge.
fn ancestors(id: u32, parent_of: &HashMap<u32, (u32, usize)>, classes: usize) -> std::result::Result<Vec<u32>, (u32, usize)> {
    let mut chain = vec![id];
    let mut seen = std::collections::HashSet::from([id]);
    let mut at = id;
    while let Some(&(parent, line)) = parent_of.get(&at) {
        if !seen.insert(parent) || chain.len() > classes {
            let repeated = parent_of.get(&parent).map(|&(_, l)| l).unwrap_or(line);
            return Err((parent, repeated));
        }
        chain.push(parent);
        at = parent;
    }
    Ok(chain)
}

/// The classes of `all` at the given indices, ordered by id.
fn level_table(all: &ClassTable, indices: impl Iterator<Item = usize>) -> ClassTable {
    let mut idx: Vec<usize> = indices.collect();
    idx.sort_unstable();
    idx.dedup();
    ClassTable { ids: idx.iter().map(|&i| all.ids[i]).collect(), names: idx.iter().map(|&i| all.names[i].clone()).collect() }
}
