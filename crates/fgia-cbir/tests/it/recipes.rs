//! The repository's Table 5 recipes.

use fgia_cbir::Method;
use fgia_cbir::recipe::CbirRecipe;
use fgia_core::record::FeatureMode;

#[test]
fn every_table5_recipe_is_valid_and_the_trained_ones_fine_tune_end_to_end() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/table5");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("recipes/table5") {
        let path = entry.expect("entry").path();
        let mut v: toml::Value = toml::from_str(&std::fs::read_to_string(&path).expect("read")).expect("TOML");
        // The [smoke] table is read by xtask, not by the CLI.
        let smoke = v.as_table_mut().expect("table").remove("smoke");
        let r = CbirRecipe::parse(&toml::to_string(&v).expect("serialise")).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(path.file_stem().and_then(|s| s.to_str()), Some(r.method.name.name()), "file named after its method");
        assert_eq!(r.report.table, "table5");
        if r.method.name.is_trained() {
            assert_eq!(r.model.mode, FeatureMode::EndToEnd, "{}: the full profile fine-tunes every layer", path.display());
            let smoke = smoke.unwrap_or_else(|| panic!("{}: a trained method states its smoke settings", path.display()));
            assert_eq!(smoke.get("mode").and_then(toml::Value::as_str), Some("frozen"), "{}", path.display());
        }
        seen.push(r.method.name);
    }
    for m in Method::ALL {
        assert!(seen.contains(&m), "{m} has no recipe");
    }
}
