//! Default locations of caches, resolved from the environment.
//!
//! Libraries never call these: binaries (the CLI, xtask) and tests resolve the folders and pass
//! them down, so library code never reads `$HOME` or the environment by itself.

use std::path::PathBuf;

fn home_cache() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x);
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")).unwrap_or_else(|| PathBuf::from(".cache"))
}

/// The toolkit's cache: `$FGIA_CACHE`, else `$XDG_CACHE_HOME/fgia`, else `~/.cache/fgia`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("FGIA_CACHE").map(PathBuf::from).unwrap_or_else(|| home_cache().join("fgia"))
}

/// Weights fetched by `cargo xtask weights fetch` (non-hub sources): `<cache>/weights`.
pub fn weights_dir() -> PathBuf {
    cache_dir().join("weights")
}

/// The Hugging Face hub cache, as `huggingface_hub` resolves it: `$HF_HUB_CACHE`, else
/// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    home_cache().join("huggingface").join("hub")
}
