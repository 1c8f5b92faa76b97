//! `cargo xtask reproduce table2`: the localization-classification methods of §5.1 and the
//! feature-encoding methods of §5.2 (Table 2).
//!
//! One recipe per method (`recipes/table2/<method>.toml`, the paper's backbone and input size).
//! Recipes with `[method] family = "localization"` run in one `fgia localization` process per
//! dataset, the others in one `fgia encoding` process; a recipe with `requires_parts = true`
//! (Part-based R-CNN) runs on CUB only.
//! The smoke profile swaps in EfficientNet-Lite0 at 224 px on cub-mini and cars-mini, applies the
//! recipe's own `[smoke]` table (smaller sketch or projection sizes, learning rate) and the
//! common shortening (epochs, cached views), and records every change as a deviation. Each
//! dataset's recipes run in one `fgia encoding` process so the backbone runs once per image and
//! view for all of them. Finished runs (a readable result record) are skipped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::Profile;
use crate::reproduce::{apply_smoke, recipe_names, stage_recipe};
use crate::sweep::Runner;

/// Smoke epochs when a recipe's `[smoke]` table sets none.
const SMOKE_EPOCHS: i64 = 20;

/// The survey's name of a dataset format.
pub fn survey_dataset(format: &str) -> &'static str {
    match format {
        "cars" => "Stanford-Cars",
        "dogs" => "Stanford-Dogs",
        "aircraft" => "FGVC-Aircraft",
        _ => "CUB-200-2011",
    }
}

fn table<'a>(v: &'a mut toml::Value, section: &str) -> Result<&'a mut toml::map::Map<String, toml::Value>> {
    v.get_mut(section).and_then(|s| s.as_table_mut()).with_context(|| format!("recipe has no [{section}] table"))
}

/// The recipe of one run, as TOML, from a method's recipe file.
pub fn setting(template: &toml::Value, method: &str, format: &str, profile: Profile, seed: u64) -> Result<toml::Value> {
    let mut r = template.clone();
    let smoke = r.as_table_mut().context("recipe is not a table")?.remove("smoke");
    r.as_table_mut().context("recipe is not a table")?.remove("requires_parts");
    let localization = is_localization(template);
    let mut deviations: Vec<String> = Vec::new();
    table(&mut r, "data")?.insert("format".into(), format.into());
    table(&mut r, "report")?.insert("dataset".into(), survey_dataset(format).into());
    table(&mut r, "train")?.insert("seed".into(), (seed as i64).into());
    let paper_backbone = template
        .get("report")
        .and_then(|m| m.get("paper_backbone"))
        .or_else(|| template.get("model").and_then(|m| m.get("backbone")))
        .and_then(|b| b.as_str())
        .unwrap_or("?")
        .to_string();
    table(&mut r, "report")?.insert("paper_backbone".into(), paper_backbone.clone().into());
    if profile == Profile::Smoke {
        let paper_bb = paper_backbone;
        let paper_crop = template.get("data").and_then(|d| d.get("crop")).and_then(toml::Value::as_integer).unwrap_or(0);
        let model = table(&mut r, "model")?;
        model.insert("backbone".into(), "efficientnet-lite0".into());
        if !localization {
            model.insert("feature_stage".into(), 7.into());
        }
        deviations.push(format!("EfficientNet-Lite0 (ImageNet) instead of {paper_bb}: the feature map is its last MBConv stage (320 channels, 7x7 at 224 px)"));
        if method == "hbp" {
            table(&mut r, "method")?.insert("hbp_stages".into(), toml::Value::Array(vec![6.into(), 7.into(), 8.into()]));
            deviations.push("HBP layers: EfficientNet-Lite0 stages 6, 7 and the 1x1 head convolution (all 7x7) instead of VGG-16 relu5_1-5_3".into());
        }
        let data = table(&mut r, "data")?;
        data.insert("resize".into(), 256.into());
        data.insert("crop".into(), 224.into());
        if paper_crop != 224 {
            deviations.push(format!("224 px input instead of the paper's {paper_crop} px"));
        }
        let (desc, subset) = if format == "cars" {
            ("cars-mini (20 classes, 200 train / 200 test images)", "cars-mini: 20 of 196 classes, 10 train and 10 test images per class")
        } else {
            (
                "cub-mini (40 classes, 600 train / 595 test images)",
                "cub-mini: 40 of 200 classes, official train/test split, images downscaled to a 256 px shorter side",
            )
        };
        data.insert("description".into(), desc.into());
        deviations.push(subset.into());
        let smoke_t = smoke.as_ref().and_then(|s| s.as_table());
        let mode = apply_smoke(&mut r, smoke.as_ref(), SMOKE_EPOCHS, &mut deviations)?;
        if mode == "frozen" && !localization {
            let train = table(&mut r, "train")?;
            train.insert("views".into(), 3.into());
            train.insert("edited_views".into(), 2.into());
            // The run records the cached views itself, with the frozen backbone.
        }
        if let Some(p) = smoke_t.and_then(|s| s.get("params")).and_then(|p| p.as_table()) {
            let method_t = table(&mut r, "method")?;
            let params = method_t.entry("params").or_insert_with(|| toml::Value::Table(Default::default()));
            let params = params.as_table_mut().context("method.params is not a table")?;
            for (k, v) in p {
                let full = params.get(k).map(|x| x.to_string()).unwrap_or_else(|| "default".into());
                deviations.push(format!("{k} = {v} instead of {full} (CPU budget)"));
                params.insert(k.clone(), v.clone());
            }
        }
    }
    let report = table(&mut r, "report")?;
    let list = report.entry("deviations").or_insert_with(|| toml::Value::Array(Vec::new()));
    if let Some(a) = list.as_array_mut() {
        a.extend(deviations.into_iter().map(toml::Value::String));
    }
    Ok(r)
}

/// Whether a Table 2 recipe is one of §5.1 (`[method] family = "localization"`).
pub fn is_localization(recipe: &toml::Value) -> bool {
    recipe.get("method").and_then(|m| m.get("family")).and_then(|f| f.as_str()) == Some("localization")
}

/// Whether a recipe needs part annotations (`requires_parts = true`), which only CUB has here.
pub fn requires_parts(recipe: &toml::Value) -> bool {
    recipe.get("requires_parts").and_then(toml::Value::as_bool) == Some(true)
}

/// Runs Table 2 for `profile` on `roots` (`(format, root)`), restricted to `methods`: every
/// recipe of `recipes/table2/`.
#[allow(clippy::too_many_arguments)]
pub fn table2(
    ws: &Path,
    runner: &mut Runner,
    results_root: &Path,
    profile: Profile,
    seeds: usize,
    device: &str,
    roots: &[(&str, PathBuf)],
    methods: &[String],
) -> Result<()> {
    let all = recipe_names(ws, "table2")?;
    for m in methods {
        if !all.contains(m) {
            bail!("unknown Table 2 method '{m}' (recipes/table2 has: {})", all.join(", "));
        }
    }
    let results = results_root.join("table2");
    let runs = results_root.join("runs").join("table2");
    std::fs::create_dir_all(&results)?;
    std::fs::create_dir_all(&runs)?;
    for (format, root) in roots {
        let (mut encoding, mut localization) = (Vec::new(), Vec::new());
        for method in all.iter().filter(|m| methods.is_empty() || methods.contains(m)) {
            let file = format!("recipes/table2/{method}.toml");
            let template: toml::Value =
                toml::from_str(&std::fs::read_to_string(ws.join(&file)).with_context(|| file.clone())?).with_context(|| format!("{file}: invalid TOML"))?;
            if requires_parts(&template) && *format != "cub" {
                println!("{method}: needs part annotations, which {format} does not have; not run on it");
                continue;
            }
            let pending = if is_localization(&template) { &mut localization } else { &mut encoding };
            for seed in 0..seeds as u64 {
                let r = setting(&template, method, format, profile, seed)?;
                let key = format!("{}-{format}-{method}-seed{seed}", profile.name());
                pending.extend(stage_recipe(&runs, &results, &key, &r)?);
            }
        }
        for (command, pending) in [("localization", &localization), ("encoding", &encoding)] {
            if pending.is_empty() {
                continue;
            }
            println!("Table 2 ({}), {format}: {} {command} runs on {}", profile.name(), pending.len(), root.display());
            runner.run_recipes(device, command, &runs, &results, root, pending).with_context(|| format!("Table 2 on {format}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipe_parses_and_the_smoke_setting_records_its_changes() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
        let names = recipe_names(ws, "table2").expect("recipes/table2");
        assert_eq!(names.len(), 30, "one recipe per registered method (17 of §5.2, 13 of §5.1)");
        for m in names.iter().map(String::as_str) {
            let text = std::fs::read_to_string(ws.join(format!("recipes/table2/{m}.toml"))).expect("recipe present");
            let t: toml::Value = toml::from_str(&text).expect("valid TOML");
            for profile in [Profile::Smoke, Profile::Full] {
                let r = setting(&t, m, "cars", profile, 1).expect("setting");
                assert!(r.get("smoke").is_none(), "{m}: [smoke] must not reach the CLI");
                assert!(r.get("requires_parts").is_none(), "{m}: requires_parts must not reach the CLI");
                if is_localization(&t) {
                    assert!(r["model"].get("feature_stage").is_none() && r["train"].get("edited_views").is_none(), "{m}: no §5.2 keys in a §5.1 recipe");
                    assert!(r["report"]["paper_backbone"].as_str() == t["report"]["paper_backbone"].as_str(), "{m}: the paper's backbone is kept");
                }
                assert_eq!(r["data"]["format"].as_str(), Some("cars"));
                assert_eq!(r["report"]["dataset"].as_str(), Some("Stanford-Cars"));
                assert_eq!(r["train"]["seed"].as_integer(), Some(1));
                let devs = r["report"]["deviations"].as_array().expect("deviations").len();
                let own = t["report"]["deviations"].as_array().map_or(0, Vec::len);
                if profile == Profile::Smoke {
                    assert_eq!(r["model"]["backbone"].as_str(), Some("efficientnet-lite0"), "{m}");
                    assert!(devs >= own + 3, "{m}: smoke changes recorded ({devs})");
                    assert!(
                        r["train"].get("lr_schedule").is_none() || t.get("smoke").and_then(|s| s.get("lr_schedule")).is_some(),
                        "{m}: smoke decays by cosine"
                    );
                } else {
                    assert_eq!(devs, own, "{m}: the full profile adds no deviation to the recipe's own");
                    assert_eq!(r["model"]["mode"].as_str(), Some("end-to-end"), "{m}: the full profile fine-tunes end to end");
                }
            }
        }
    }
}
