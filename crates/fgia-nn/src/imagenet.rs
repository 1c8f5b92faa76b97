//! The ImageNet-1k class names (ILSVRC-2012 order, the index every ImageNet checkpoint's
//! classifier uses), one short WordNet name per class, for printing predictions.

const NAMES: &str = include_str!("imagenet_classes.txt");

/// The 1000 class names; index = the classifier's output index.
pub fn class_names() -> Vec<&'static str> {
    NAMES.lines().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_names_are_in_ilsvrc_order() {
        let n = super::class_names();
        assert_eq!(n.len(), 1000);
        assert_eq!((n[0], n[1], n[11], n[281], n[999]), ("tench", "goldfish", "goldfinch", "tabby cat", "toilet paper"));
    }
}
