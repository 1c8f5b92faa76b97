//! `cargo xtask reproduce <table>`: runs the release-built `fgia` CLI once per setting and seed,
//! skipping settings whose result already exists and resuming interrupted runs, then renders
//! the report.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{Profile, cli_binary, git_revision};

/// One training run of a reproduction.
struct Setting {
    key: String,
    recipe: toml::Value,
}

fn set(v: &mut toml::Value, section: &str, key: &str, value: toml::Value) -> Result<()> {
    v.get_mut(section)
        .and_then(|s| s.as_table_mut())
        .with_context(|| format!("recipe has no [{section}] table"))?
        .insert(key.to_string(), value);
    Ok(())
}

/// Runs every setting of Table 4 for `profile`.
pub fn table4(ws: &Path, profile: Profile, seeds: usize, device: &str, data_root: &Path) -> Result<()> {
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
    let fgia = cli_binary(ws, device)?;
    let results = ws.join("results").join("table4");
    let runs = ws.join("results").join("runs").join("table4");
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
        let mut cmd = Command::new(&fgia);
        cmd.arg("--device").arg(device).arg("train").arg("--run-dir").arg(&run_dir).arg("--data-root").arg(data_root).arg("--result").arg(&result);
        if run_dir.join("recipe.toml").exists() {
            println!("[{}/{total}] {}: resuming {}", i + 1, s.key, run_dir.display());
            cmd.arg("--resume");
        } else {
            if run_dir.exists() {
                // Created but killed before its recipe was written: nothing to keep.
                std::fs::remove_dir_all(&run_dir)?;
            }
            let recipe_path = runs.join(format!("{}.recipe.toml", s.key));
            fgia_core::record::write_atomic(&recipe_path, toml::to_string_pretty(&s.recipe)?.as_bytes())?;
            println!("[{}/{total}] {}: training", i + 1, s.key);
            cmd.arg("--recipe").arg(&recipe_path);
        }
        cmd.env("FGIA_GIT_REV", git_revision(ws));
        let status = cmd.status().with_context(|| format!("running {}", fgia.display()))?;
        if !status.success() {
            bail!("{} failed ({status}); rerun the same command to resume it", s.key);
        }
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
