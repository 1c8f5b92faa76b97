//! `cargo xtask reproduce <table>`: runs the release-built `fgia` CLI once per setting and seed,
//! skipping settings whose result already exists and resuming interrupted runs, then renders
//! the report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::Profile;
use crate::sweep::{Runner, Task};

/// One training run of a reproduction.
struct Setting {
    key: String,
    recipe: toml::Value,
}

fn set(v: &mut toml::Value, section: &str, key: &str, value: toml::Value) -> Result<()> {
    v.get_mut(section).and_then(|s| s.as_table_mut()).with_context(|| format!("recipe has no [{section}] table"))?.insert(key.to_string(), value);
    Ok(())
}

/// Applies a recipe's `[smoke]` table to the run's recipe `r` (for Tables 2 and 5): `mode` (default
/// `frozen`) goes to `[model]`, `epochs` (default `default_epochs`) to `[train]`, and every other
/// key but `params` overrides the `[train]` key of that name, each change recorded as a
/// deviation naming the paper's value. The paper's `lr_schedule` is replaced by cosine decay over
/// the smoke epochs unless `[smoke]` sets one. Returns the mode.
pub fn apply_smoke(r: &mut toml::Value, smoke: Option<&toml::Value>, default_epochs: i64, deviations: &mut Vec<String>) -> Result<String> {
    let smoke = smoke.and_then(toml::Value::as_table);
    let get = |k: &str| smoke.and_then(|s| s.get(k));
    let mode = get("mode").and_then(toml::Value::as_str).unwrap_or("frozen").to_string();
    set(r, "model", "mode", mode.clone().into())?;
    let epochs = get("epochs").and_then(toml::Value::as_integer).unwrap_or(default_epochs);
    let train = r.get_mut("train").and_then(|t| t.as_table_mut()).context("recipe has no [train] table")?;
    let paper_epochs = train.insert("epochs".into(), epochs.into()).and_then(|v| v.as_integer());
    if paper_epochs != Some(epochs) {
        deviations.push(format!("{epochs} epochs instead of the paper's {} (CPU budget)", paper_epochs.map(|e| e.to_string()).unwrap_or_else(|| "?".into())));
    }
    if get("lr_schedule").is_none()
        && let Some(paper) = train.remove("lr_schedule")
    {
        let decay = paper.get("decay").and_then(toml::Value::as_str).unwrap_or("?");
        if decay != "cosine" {
            deviations.push(format!("cosine decay over the smoke epochs instead of the paper's {decay} schedule ({paper})"));
        }
    }
    for (k, v) in smoke.into_iter().flatten() {
        if matches!(k.as_str(), "mode" | "epochs" | "params") {
            continue;
        }
        match train.insert(k.clone(), v.clone()) {
            Some(paper) if paper == *v => {}
            Some(paper) => deviations.push(format!("train.{k} = {v} instead of the paper's {paper} (CPU budget)")),
            None => deviations.push(format!("train.{k} = {v} (not set by the paper's recipe)")),
        }
    }
    Ok(mode)
}

/// Runs every setting of Table 4 for `profile`.
pub fn table4(ws: &Path, runner: &mut Runner, results_root: &Path, profile: Profile, seeds: usize, device: &str, data_root: &Path) -> Result<()> {
    let (recipe_file, ours): (&str, [u32; 4]) = match profile {
        Profile::Smoke => ("recipes/table4/smoke-cub-mini.toml", [112, 140, 168, 196]),
        Profile::Full => ("recipes/table4/resnet50-cub.toml", [224, 280, 336, 392]),
    };
    let paper = [224u32, 280, 336, 392];
    let template: toml::Value = toml::from_str(&std::fs::read_to_string(ws.join(recipe_file))?).with_context(|| format!("{recipe_file}: invalid TOML"))?;
    let backbone = template.get("model").and_then(|m| m.get("backbone")).and_then(|b| b.as_str()).unwrap_or("model").to_string();
    let mut settings = Vec::new();
    for (res, paper_res) in ours.iter().zip(paper) {
        for seed in 0..seeds as u64 {
            let mut r = template.clone();
            set(&mut r, "data", "crop", toml::Value::Integer(*res as i64))?;
            set(&mut r, "data", "resize", toml::Value::Integer((*res as i64 * 8) / 7))?;
            set(&mut r, "train", "seed", toml::Value::Integer(seed as i64))?;
            set(&mut r, "report", "paper_resolution", toml::Value::Integer(paper_res as i64))?;
            settings.push(Setting { key: format!("{}-{backbone}-{res}px-seed{seed}", profile.name()), recipe: r });
        }
    }
    let results = results_root.join("table4");
    let runs = results_root.join("runs").join("table4");
    std::fs::create_dir_all(&results)?;
    std::fs::create_dir_all(&runs)?;
    let total = settings.len();
    for (i, s) in settings.iter().enumerate() {
        let result = results.join(format!("{}.json", s.key));
        if fgia_core::record::ResultRecord::read(&result).is_ok() {
            println!("[{}/{total}] {}: finished earlier ({}), skipped", i + 1, s.key, result.display());
            continue;
        }
        let run_dir = runs.join(&s.key);
        let mut args: Vec<std::ffi::OsString> = vec!["--device".into(), device.into(), "train".into(), "--run-dir".into(), run_dir.clone().into()];
        args.extend(["--data-root".into(), data_root.into(), "--result".into(), result.clone().into()]);
        if run_dir.join("recipe.toml").exists() {
            println!("[{}/{total}] {}: resuming {}", i + 1, s.key, run_dir.display());
            args.push("--resume".into());
        } else {
            if run_dir.exists() {
                // Created but killed before its recipe was written: nothing to keep, unless
                // another invocation holds it (then this is an error naming the folder).
                fgia_core::runlock::remove_run_dir(&run_dir)?;
            }
            let recipe_path = runs.join(format!("{}.recipe.toml", s.key));
            fgia_core::record::write_atomic(&recipe_path, toml::to_string_pretty(&s.recipe)?.as_bytes())?;
            println!("[{}/{total}] {}: {}", i + 1, s.key, if runner.is_slurm() { "to submit" } else { "training" });
            args.extend(["--recipe".into(), recipe_path.into()]);
        }
        runner.run(Task { key: s.key.clone(), args, result, run_dir })?;
    }
    if runner.is_slurm() {
        return Ok(());
    }
    println!("\nTable 4 ({}):", profile.name());
    println!("{:>8} {:>8} {:>10}  record", "paper px", "ours px", "top-1 %");
    for (res, paper_res) in ours.iter().zip(paper) {
        for seed in 0..seeds {
            let p = results.join(format!("{}-{backbone}-{res}px-seed{seed}.json", profile.name()));
            if let Ok(r) = fgia_core::record::ResultRecord::read(&p) {
                println!("{paper_res:>8} {res:>8} {:>10.2}  {}", r.metrics.get("top1").copied().unwrap_or(f64::NAN), p.display());
            }
        }
    }
    Ok(())
}

/// Finds the smoke data: `--root`, else `$FGIA_DATA/cub-mini` or `../shared/data/cub-mini`, else
/// a subset built from a full CUB download.
pub fn smoke_root(ws: &Path, root: Option<&Path>) -> Result<PathBuf> {
    if let Some(r) = root {
        return Ok(r.to_path_buf());
    }
    if let Some(shared) = fgia_core::datasets::shared_data_dir(ws) {
        let p = shared.join("cub-mini");
        if p.join("images.txt").is_file() {
            println!("smoke data: {}", p.display());
            return Ok(p);
        }
    }
    let downloads = ws.join("datasets").join("downloads");
    let built = downloads.join("cub-mini-built");
    if built.join("images.txt").is_file() {
        return Ok(built);
    }
    println!("no cub-mini found: downloading CUB-200-2011 to build the same 40-class subset");
    let cub = crate::download::download_dataset(ws, "cub", &downloads, &[])?;
    let n = crate::subset::build_cub_subset(&cub, &built)?;
    println!("built {} ({n} images)", built.display());
    Ok(built)
}

/// The recipe names (file stems) of `recipes/<table>/`, sorted.
pub fn recipe_names(ws: &Path, table: &str) -> Result<Vec<String>> {
    let dir = ws.join("recipes").join(table);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            names.push(path.file_stem().and_then(|s| s.to_str()).context("recipe file name")?.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// The recipe of one Table 5 run, as TOML, from a method's recipe file.
pub fn table5_setting(template: &toml::Value, dataset: &str, profile: Profile, seed: u64) -> Result<toml::Value> {
    let mut r = template.clone();
    let smoke = r.as_table_mut().context("recipe is not a table")?.remove("smoke");
    let mut deviations: Vec<toml::Value> = Vec::new();
    set(&mut r, "data", "format", toml::Value::String(dataset.to_string()))?;
    let survey_name = if dataset == "cars" { "Stanford-Cars" } else { "CUB-200-2011" };
    set(&mut r, "report", "dataset", toml::Value::String(survey_name.into()))?;
    if let Some(t) = r.get_mut("train").and_then(|t| t.as_table_mut()) {
        t.insert("seed".into(), toml::Value::Integer(seed as i64));
    }
    let paper_bb = template.get("model").and_then(|m| m.get("backbone")).and_then(|b| b.as_str()).unwrap_or("?").to_string();
    set(&mut r, "report", "paper_backbone", toml::Value::String(paper_bb.clone()))?;
    if profile == Profile::Smoke {
        set(&mut r, "model", "backbone", toml::Value::String("efficientnet-lite0".into()))?;
        deviations.push(format!("EfficientNet-Lite0 (ImageNet) instead of {paper_bb}").into());
        let (desc, subset) = if dataset == "cars" {
            ("cars-mini (20 classes: 10 train / 10 test classes)", "cars-mini: 20 of 196 classes, 20 images per class")
        } else {
            (
                "cub-mini (40 classes: 20 train / 20 test classes)",
                "cub-mini: 40 of 200 classes (classes 1-20 train, 21-40 test), images downscaled to a 256 px shorter side",
            )
        };
        set(&mut r, "data", "description", toml::Value::String(desc.into()))?;
        deviations.push(subset.into());
        if r.get("train").is_some() {
            let mut notes = Vec::new();
            let mode = apply_smoke(&mut r, smoke.as_ref(), 30, &mut notes)?;
            if mode == "frozen" {
                // The run records the cached views itself, with the frozen backbone.
                set(&mut r, "train", "views", toml::Value::Integer(3))?;
            }
            deviations.extend(notes.into_iter().map(toml::Value::String));
        }
    }
    if let Some(d) = r.get_mut("report").and_then(|t| t.as_table_mut()).and_then(|t| t.get_mut("deviations")).and_then(|d| d.as_array_mut()) {
        d.extend(deviations);
    }
    Ok(r)
}

/// Runs Table 5 (content-based retrieval) on CUB-200-2011 and Stanford Cars, or on cub-mini and
/// cars-mini for the smoke profile. Each dataset's recipes run in one `fgia retrieval` process
/// so the methods share the backbone's cached feature maps.
pub fn table5(ws: &Path, runner: &mut Runner, results_root: &Path, profile: Profile, seeds: usize, device: &str, roots: &[(&str, PathBuf)]) -> Result<()> {
    let results = results_root.join("table5");
    let runs = results_root.join("runs").join("table5");
    std::fs::create_dir_all(&results)?;
    std::fs::create_dir_all(&runs)?;
    for (dataset, root) in roots {
        let mut pending = Vec::new();
        for method in recipe_names(ws, "table5")? {
            let file = format!("recipes/table5/{method}.toml");
            let template: toml::Value = toml::from_str(&std::fs::read_to_string(ws.join(&file))?).with_context(|| format!("{file}: invalid TOML"))?;
            for seed in 0..seeds as u64 {
                let r = table5_setting(&template, dataset, profile, seed)?;
                let key = format!("{}-{dataset}-{method}-seed{seed}", profile.name());
                pending.extend(stage_recipe(&runs, &results, &key, &r)?);
            }
        }
        if pending.is_empty() {
            continue;
        }
        println!("Table 5 ({}), {dataset}: {} runs on {}", profile.name(), pending.len(), root.display());
        runner.run_recipes(device, "retrieval", &runs, &results, root, &pending).with_context(|| format!("Table 5 on {dataset}"))?;
    }
    Ok(())
}

/// Writes the recipe of run `key` for the CLI, unless its result record exists (then `None`,
/// said on stdout). A run folder with its recipe but no result (a killed run) is kept: the CLI
/// resumes it from its newest checkpoint. A folder killed before its recipe was written holds
/// nothing to keep and is removed.
pub fn stage_recipe(runs: &Path, results: &Path, key: &str, recipe: &toml::Value) -> Result<Option<PathBuf>> {
    let result = results.join(format!("{key}.json"));
    if fgia_core::record::ResultRecord::read(&result).is_ok() {
        println!("{key}: finished earlier ({}), skipped", result.display());
        return Ok(None);
    }
    let run_dir = runs.join(key);
    if run_dir.join("recipe.toml").is_file() {
        println!("{key}: resuming {}", run_dir.display());
    } else if run_dir.exists() {
        // Never a folder that another invocation is writing: that is an error naming it.
        fgia_core::runlock::remove_run_dir(&run_dir)?;
    }
    let recipe_path = runs.join(format!("{key}.recipe.toml"));
    fgia_core::record::write_atomic(&recipe_path, toml::to_string_pretty(recipe)?.as_bytes())?;
    Ok(Some(recipe_path))
}

/// The recipe of one Table 6 run from a recipe file: the seed; for the full profile the whole
/// trunk trains end to end (`model.mode`, recorded by the run); for the smoke profile the
/// recipe's `[smoke]` changes (`epochs`, `train_views`), each recorded as a deviation naming the
/// recipe's value. The `[smoke]` table itself never reaches the CLI.
pub fn table6_setting(template: &toml::Value, profile: Profile, seed: u64) -> Result<toml::Value> {
    let mut r = template.clone();
    let smoke = r.as_table_mut().context("recipe is not a table")?.remove("smoke");
    set(&mut r, "train", "seed", toml::Value::Integer(seed as i64))?;
    if profile == Profile::Full {
        set(&mut r, "model", "mode", toml::Value::String("end-to-end".into()))?;
    }
    let mut deviations: Vec<toml::Value> = Vec::new();
    if profile == Profile::Smoke
        && let Some(smoke) = smoke.as_ref().and_then(toml::Value::as_table)
    {
        for (k, v) in smoke {
            let section = match k.as_str() {
                "epochs" => "train",
                "train_views" => "data",
                other => bail!("[smoke].{other}: Table 6 recipes may change epochs and train_views only"),
            };
            let table = r.get_mut(section).and_then(|t| t.as_table_mut()).with_context(|| format!("recipe has no [{section}] table"))?;
            if let Some(old) = table.insert(k.clone(), v.clone())
                && old != *v
            {
                deviations.push(format!("{section}.{k} = {v} instead of the recipe's {old} (CPU budget of the smoke profile)").into());
            }
        }
    }
    if let Some(d) = r.get_mut("report").and_then(|t| t.as_table_mut()).and_then(|t| t.get_mut("deviations")).and_then(|d| d.as_array_mut()) {
        d.extend(deviations);
    }
    Ok(r)
}

/// The QMUL sets of Table 6 and their shared folders.
pub const TABLE6_SETS: [(&str, &str); 2] = [("shoes", "qmul-shoes-v1"), ("chairs", "qmul-chairs-v1")];

/// Runs Table 6 (sketch-based retrieval) on QMUL-Shoe and QMUL-Chair: every recipe of
/// `recipes/table6/` on its set, `seeds` times. The recipes of one set run in one `fgia sbir`
/// process, so they share the trunk's pass over the views.
pub fn table6(ws: &Path, runner: &mut Runner, results_root: &Path, profile: Profile, seeds: usize, device: &str, data: &Path) -> Result<()> {
    let results = results_root.join("table6");
    let runs = results_root.join("runs").join("table6");
    std::fs::create_dir_all(&results)?;
    std::fs::create_dir_all(&runs)?;
    let started = std::time::Instant::now();
    for (set_name, folder) in TABLE6_SETS {
        let root = data.join(folder);
        if !root.join("train.txt").is_file() {
            bail!("{}: no QMUL set here (train.txt missing); place {folder} under {} or pass --root", root.display(), data.display());
        }
        let mut pending = Vec::new();
        for method in recipe_names(ws, "table6")?.into_iter().filter(|m| m.ends_with(&format!("-{set_name}"))) {
            let file = format!("recipes/table6/{method}.toml");
            let template: toml::Value = toml::from_str(&std::fs::read_to_string(ws.join(&file))?).with_context(|| format!("{file}: invalid TOML"))?;
            for seed in 0..seeds as u64 {
                let r = table6_setting(&template, profile, seed)?;
                pending.extend(stage_recipe(&runs, &results, &format!("{}-{method}-seed{seed}", profile.name()), &r)?);
            }
        }
        if pending.is_empty() {
            continue;
        }
        println!("Table 6 ({}), {set_name}: {} runs on {}", profile.name(), pending.len(), root.display());
        runner.run_recipes(device, "sbir", &runs, &results, &root, &pending).with_context(|| format!("Table 6 on {set_name}"))?;
    }
    if !runner.is_slurm() {
        println!("Table 6 ({}): {:.0} s", profile.name(), started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The noise rates of Table 3's noisy-label rows (percent), each run with both kinds of noise
/// (0 % once).
pub const TABLE3_NOISE: [u32; 3] = [0, 20, 40];

/// The noise kinds of Table 3's noisy-label rows, by their recipe names.
pub const TABLE3_NOISE_KINDS: [&str; 2] = ["pair", "symmetric"];

/// Whether `root` is a WebFG-style folder of crawled web images (`train/<class>/` with a clean
/// `val/<class>/`) rather than a CUB-format root.
pub fn is_webfg_root(root: &Path) -> bool {
    root.join("train").is_dir() && root.join("val").is_dir() && !root.join("images.txt").is_file()
}

/// The settings of one Table 3 recipe: `(key, recipe)`. A recipe with a `[noise]` section runs
/// with clean labels and at every other rate of [`TABLE3_NOISE`] with each kind of
/// [`TABLE3_NOISE_KINDS`] (its noise seed kept); the others once. The full profile runs the same
/// heads on the full dataset and says so in the record. On crawled web images (`web`, full
/// profile only) the noisy-label recipes run once on the web labels as they are (their noise is
/// real, so no synthetic noise is added) and the others, which need CUB's attributes, not at all.
pub fn table3_settings(name: &str, template: &toml::Value, profile: Profile, seed: u64, web: bool) -> Result<Vec<(String, toml::Value)>> {
    let mut base = template.clone();
    set(&mut base, "train", "seed", toml::Value::Integer(seed as i64))?;
    if profile == Profile::Full {
        set(&mut base, "data", "description", toml::Value::String("CUB-200-2011 full".into()))?;
    }
    let key = |suffix: &str| format!("{}-{name}{suffix}-seed{seed}", profile.name());
    if web {
        let Some(table) = base.as_table_mut() else { bail!("{name}: the recipe is not a TOML table") };
        if table.remove("noise").is_none() {
            return Ok(Vec::new());
        }
        set(&mut base, "data", "format", toml::Value::String("webfg".into()))?;
        set(&mut base, "data", "description", toml::Value::String("WebFG-style crawled web images (real label noise), clean test images".into()))?;
        return Ok(vec![(key("-web"), base)]);
    }
    if base.get("noise").is_none() {
        return Ok(vec![(key(""), base)]);
    }
    let mut out = Vec::new();
    for rate in TABLE3_NOISE {
        for kind in TABLE3_NOISE_KINDS {
            if rate == 0 && kind != TABLE3_NOISE_KINDS[0] {
                continue;
            }
            let mut r = base.clone();
            set(&mut r, "noise", "rate", toml::Value::Float(f64::from(rate) / 100.0))?;
            set(&mut r, "noise", "kind", toml::Value::String(kind.into()))?;
            out.push((key(&if rate == 0 { "-clean".to_string() } else { format!("-{kind}{rate}") }), r));
        }
    }
    Ok(out)
}

/// Runs Table 3 (external information) on `root` (cub-mini for the smoke profile): every recipe
/// of `recipes/table3/`, the noisy-label ones at every noise rate, in one `fgia external`
/// process so that they share the backbone's pooled features.
pub fn table3(ws: &Path, runner: &mut Runner, results_root: &Path, profile: Profile, seeds: usize, device: &str, root: &Path) -> Result<()> {
    let results = results_root.join("table3");
    let runs = results_root.join("runs").join("table3");
    std::fs::create_dir_all(&results)?;
    std::fs::create_dir_all(&runs)?;
    let started = std::time::Instant::now();
    let web = profile == Profile::Full && is_webfg_root(root);
    if web {
        println!(
            "{} holds crawled web images: the noisy-label recipes train on its web labels; the attribute, knowledge, location and 20-questions recipes need CUB's attributes and are not run",
            root.display()
        );
    }
    let mut pending = Vec::new();
    for name in recipe_names(ws, "table3")? {
        let file = format!("recipes/table3/{name}.toml");
        let template: toml::Value = toml::from_str(&std::fs::read_to_string(ws.join(&file))?).with_context(|| format!("{file}: invalid TOML"))?;
        for seed in 0..seeds as u64 {
            for (key, r) in table3_settings(&name, &template, profile, seed, web)? {
                pending.extend(stage_recipe(&runs, &results, &key, &r)?);
            }
        }
    }
    if !pending.is_empty() {
        println!("Table 3 ({}): {} runs on {}", profile.name(), pending.len(), root.display());
        runner.run_recipes(device, "external", &runs, &results, root, &pending).context("Table 3")?;
    }
    if !runner.is_slurm() {
        println!("Table 3 ({}): {:.0} s", profile.name(), started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The smoke data of Table 5: cub-mini (as for Table 4) and, when present, cars-mini.
pub fn table5_smoke_roots(ws: &Path, root: Option<&Path>) -> Result<Vec<(&'static str, PathBuf)>> {
    let mut roots = vec![("cub", smoke_root(ws, root)?)];
    match fgia_core::datasets::shared_data_dir(ws).map(|d| d.join("cars-mini")).filter(|p| p.join("devkit").is_dir()) {
        Some(p) => roots.push(("cars", p)),
        None => println!("cars-mini not found (set FGIA_DATA or place ../shared/data/cars-mini): the smoke runs use cub-mini only"),
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table5_settings_train_end_to_end_in_full_and_record_every_smoke_change() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace");
        for m in recipe_names(ws, "table5").expect("recipes/table5") {
            let text = std::fs::read_to_string(ws.join(format!("recipes/table5/{m}.toml"))).expect("recipe present");
            let t: toml::Value = toml::from_str(&text).expect("valid TOML");
            let trained = t.get("train").is_some();
            let own = t["report"]["deviations"].as_array().map_or(0, Vec::len);
            for profile in [Profile::Smoke, Profile::Full] {
                let r = table5_setting(&t, "cars", profile, 2).expect("setting");
                assert!(r.get("smoke").is_none(), "{m}: [smoke] must not reach the CLI");
                assert_eq!(r["report"]["dataset"].as_str(), Some("Stanford-Cars"));
                let devs = r["report"]["deviations"].as_array().expect("deviations").len();
                match profile {
                    Profile::Full => {
                        assert_eq!(devs, own, "{m}: the full profile adds no deviation");
                        if trained {
                            assert_eq!(r["model"]["mode"].as_str(), Some("end-to-end"), "{m}: full runs fine-tune end to end");
                            assert_eq!(r["train"]["seed"].as_integer(), Some(2));
                        }
                    }
                    Profile::Smoke => {
                        assert_eq!(r["model"]["backbone"].as_str(), Some("efficientnet-lite0"));
                        if trained {
                            assert_eq!(r["model"]["mode"].as_str(), Some("frozen"), "{m}");
                            assert!(r["train"].get("lr_schedule").is_none(), "{m}: smoke decays by cosine");
                            assert!(devs >= own + 3, "{m}: smoke changes recorded ({devs})");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn table6_smoke_settings_apply_the_recipes_smoke_table_and_record_it() {
        let ws = crate::workspace();
        let names = recipe_names(&ws, "table6").expect("recipes");
        assert!(names.len() >= 4, "{names:?}");
        for name in names {
            let template: toml::Value = toml::from_str(&std::fs::read_to_string(ws.join(format!("recipes/table6/{name}.toml"))).expect("read")).expect("toml");
            let smoke = table6_setting(&template, Profile::Smoke, 2).expect("smoke");
            let full = table6_setting(&template, Profile::Full, 2).expect("full");
            for r in [&smoke, &full] {
                assert!(r.get("smoke").is_none(), "{name}: [smoke] stays in xtask");
                assert_eq!(r["train"]["seed"].as_integer(), Some(2));
                for section in ["method", "model", "data", "train", "report"] {
                    assert!(r.get(section).is_some_and(toml::Value::is_table), "{name}: [{section}]");
                }
            }
            assert_eq!(full["train"]["epochs"], template["train"]["epochs"], "{name}: full keeps the recipe");
            assert_eq!(full["model"]["mode"].as_str(), Some("end-to-end"), "{name}: full trains the trunk");
            assert!(smoke["model"].get("mode").is_none_or(|m| m.as_str() == Some("frozen")), "{name}: smoke keeps it frozen");
            if let Some(e) = template.get("smoke").and_then(|s| s.get("epochs")) {
                assert_eq!(&smoke["train"]["epochs"], e);
                let devs = smoke["report"]["deviations"].as_array().expect("deviations");
                assert!(devs.iter().any(|d| d.as_str().is_some_and(|d| d.contains("train.epochs") && d.contains("CPU budget"))), "{name}: {devs:?}");
            }
        }
        let mut bad: toml::Value = toml::from_str("[model]\n[train]\nseed = 0\n[smoke]\nlr = 1.0\n").expect("toml");
        assert!(table6_setting(&bad, Profile::Smoke, 0).is_err());
        bad.as_table_mut().expect("table").remove("smoke");
        assert!(table6_setting(&bad, Profile::Smoke, 0).is_ok());
    }

    #[test]
    fn table3_runs_the_noisy_label_recipes_at_every_rate_and_kind_and_the_others_once() {
        let ws = crate::workspace();
        let names = recipe_names(&ws, "table3").expect("recipes");
        let mut keys = Vec::new();
        for name in &names {
            let template: toml::Value = toml::from_str(&std::fs::read_to_string(ws.join(format!("recipes/table3/{name}.toml"))).expect("read")).expect("toml");
            let settings = table3_settings(name, &template, Profile::Smoke, 1, false).expect("settings");
            // On web images: the noisy-label recipes once, without synthetic noise; no other.
            let web = table3_settings(name, &template, Profile::Full, 1, true).expect("web settings");
            if template.get("noise").is_some() {
                assert_eq!(web.len(), 1, "{name}");
                assert!(web[0].1.get("noise").is_none() && web[0].1["data"]["format"].as_str() == Some("webfg") && web[0].0.ends_with("-web-seed1"));
            } else {
                assert!(web.is_empty(), "{name}");
            }
            let noisy = template.get("noise").is_some();
            assert_eq!(settings.len(), if noisy { 1 + 2 * (TABLE3_NOISE.len() - 1) } else { 1 }, "{name}");
            for (key, r) in &settings {
                assert_eq!(r["train"]["seed"].as_integer(), Some(1));
                if noisy {
                    let rate = (r["noise"]["rate"].as_float().expect("rate") * 100.0).round() as u32;
                    let kind = r["noise"]["kind"].as_str().expect("kind");
                    let suffix = if rate == 0 { "-clean-seed1".to_string() } else { format!("-{kind}{rate}-seed1") };
                    assert!(key.ends_with(&suffix), "{key}");
                    assert_eq!(r["noise"]["seed"], template["noise"]["seed"], "{name}: the noise seed is kept");
                }
                keys.push(key.clone());
            }
        }
        for m in ["cross-entropy", "co-teaching", "peer-learning"] {
            for k in ["pair40", "symmetric40", "clean"] {
                assert!(keys.contains(&format!("smoke-{m}-{k}-seed1")), "{keys:?}");
            }
        }
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
        let full = table3_settings("sje", &toml::from_str("[data]\n[train]\n").expect("toml"), Profile::Full, 0, false).expect("full");
        let dir = tempfile::tempdir().expect("tmp");
        assert!(!is_webfg_root(dir.path()));
        std::fs::create_dir_all(dir.path().join("train/a")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("val/a")).expect("mkdir");
        assert!(is_webfg_root(dir.path()));
        std::fs::write(dir.path().join("images.txt"), "").expect("write");
        assert!(!is_webfg_root(dir.path()), "a CUB root is not a web folder");
        assert_eq!(full[0].1["data"]["description"].as_str(), Some("CUB-200-2011 full"));
    }

    #[test]
    fn smoke_overrides_name_the_papers_values() {
        let mut r: toml::Value = toml::from_str(
            "[model]\nbackbone = \"resnet50\"\nmode = \"end-to-end\"\n[train]\nepochs = 180\nlr = 0.008\nbatch_size = 16\nlr_schedule = { decay = \"step\", step_size = 60 }",
        )
        .expect("toml");
        let smoke: toml::Value = toml::from_str("mode = \"frozen\"\nepochs = 10\nlr = 0.01\nbatch_size = 16").expect("toml");
        let mut devs = Vec::new();
        assert_eq!(apply_smoke(&mut r, Some(&smoke), 20, &mut devs).expect("applies"), "frozen");
        assert_eq!(r["model"]["mode"].as_str(), Some("frozen"));
        assert_eq!(r["train"]["epochs"].as_integer(), Some(10));
        assert_eq!(r["train"]["lr"].as_float(), Some(0.01));
        assert!(r["train"].get("lr_schedule").is_none());
        let all = devs.join(" | ");
        assert!(all.contains("10 epochs instead of the paper's 180"), "{all}");
        assert!(all.contains("train.lr = 0.01 instead of the paper's 0.008"), "{all}");
        assert!(all.contains("instead of the paper's step schedule"), "{all}");
        assert!(!all.contains("batch_size"), "an unchanged value is no deviation: {all}");
    }
}
