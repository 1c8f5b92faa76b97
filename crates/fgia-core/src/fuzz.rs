//! A small mutation fuzzer for the readers of untrusted files, run by the test suites with a
//! fixed, deterministic budget (`FGIA_FUZZ_EXECS` executions per target; more for a long run).
//!
//! Each execution takes one valid seed input and applies one to eight random mutations: bit
//! flips, random bytes, "interesting" 16/32/64-bit values (0, 1, −1, powers of two near the
//! limits) written over the input, inserted or deleted runs, a run copied elsewhere, and
//! truncation. Text targets also get line-level mutations (duplicated, dropped, swapped lines and
//! fields). A panic is caught, its input saved under `target/fuzz-crashes/`, and reported; the
//! readers must answer every input with a value or an error. Aborts (stack overflow, failed
//! allocation) end the test process, which fails the run just as loudly.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use crate::rng::SplitMix64;

/// Executions per target: `FGIA_FUZZ_EXECS`, or `default`.
pub fn budget(default: usize) -> usize {
    std::env::var("FGIA_FUZZ_EXECS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What one fuzzing run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Target name.
    pub target: String,
    /// Inputs tried.
    pub executions: usize,
    /// Inputs the reader accepted (the rest were errors).
    pub accepted: usize,
    /// Panics: the saved input and the message.
    pub panics: Vec<(PathBuf, String)>,
}

const INTERESTING: [u64; 12] = [0, 1, 2, 0x7f, 0xff, 0x7fff, 0xffff, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x7fff_ffff_ffff_ffff, u64::MAX];

/// Mutates `input` in place (binary mutations).
pub fn mutate_bytes(rng: &mut SplitMix64, input: &mut Vec<u8>) {
    let ops = 1 + rng.below(8);
    for _ in 0..ops {
        let len = input.len() as u64;
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len) as usize;
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len) as usize;
                input[i] = rng.next_u64() as u8;
            }
            2 if len >= 8 => {
                let width = [2usize, 4, 8][rng.below(3) as usize];
                let i = rng.below(len - width as u64 + 1) as usize;
                let v = INTERESTING[rng.below(INTERESTING.len() as u64) as usize];
                let v = if rng.coin() { v } else { v.wrapping_neg() };
                input[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            3 => {
                let i = rng.below(len + 1) as usize;
                let n = 1 + rng.below(16) as usize;
                let fill: Vec<u8> = (0..n).map(|_| if rng.coin() { 0 } else { rng.next_u64() as u8 }).collect();
                input.splice(i..i, fill);
            }
            4 if len > 0 => {
                let i = rng.below(len) as usize;
                let n = (1 + rng.below(16) as usize).min(input.len() - i);
                input.drain(i..i + n);
            }
            5 if len > 1 => {
                let from = rng.below(len) as usize;
                let n = (1 + rng.below(64) as usize).min(input.len() - from);
                let chunk = input[from..from + n].to_vec();
                let to = rng.below(len + 1) as usize;
                input.splice(to..to, chunk);
            }
            6 if len > 0 => input.truncate(rng.below(len) as usize),
            _ => {}
        }
    }
}

/// Mutates text in place: line-level edits, then occasionally a binary mutation.
pub fn mutate_text(rng: &mut SplitMix64, input: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(input).into_owned();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let ops = 1 + rng.below(4);
    for _ in 0..ops {
        let n = lines.len() as u64;
        match rng.below(7) {
            0 if n > 0 => {
                let i = rng.below(n) as usize;
                let l = lines[i].clone();
                lines.insert(rng.below(n + 1) as usize, l);
            }
            1 if n > 0 => {
                lines.remove(rng.below(n) as usize);
            }
            2 if n > 1 => {
                let (a, b) = (rng.below(n) as usize, rng.below(n) as usize);
                lines.swap(a, b);
            }
            3 if n > 0 => {
                // Replace one field with a hostile token.
                let i = rng.below(n) as usize;
                let mut fields: Vec<String> = lines[i].split(' ').map(str::to_string).collect();
                let f = rng.below(fields.len() as u64) as usize;
                let tokens = ["", "-1", "0", "18446744073709551616", "4294967295", "NaN", "inf", "1e308", "../../etc/passwd", "/dev/zero", "\u{0}", "é", " "];
                fields[f] = tokens[rng.below(tokens.len() as u64) as usize].to_string();
                lines[i] = fields.join(" ");
            }
            4 if n > 0 => {
                let i = rng.below(n) as usize;
                lines[i].push_str(" extra");
            }
            5 => lines.push(String::new()),
            _ => {}
        }
    }
    *input = (lines.join(if rng.below(4) == 0 { "\r\n" } else { "\n" }) + "\n").into_bytes();
    if rng.below(8) == 0 {
        mutate_bytes(rng, input);
    }
}

/// Runs `target` on `executions` mutations of `seeds` (drawn from `seed`) and returns what
/// happened; `Ok` from the target counts as accepted, `Err` as refused. Panicking inputs are
/// saved under `crash_dir`.
pub fn run<E>(
    name: &str,
    seeds: &[Vec<u8>],
    executions: usize,
    seed: u64,
    text: bool,
    crash_dir: &std::path::Path,
    mut target: impl FnMut(&[u8]) -> Result<(), E>,
) -> Report {
    assert!(!seeds.is_empty(), "a fuzz target needs at least one seed input");
    let mut rng = SplitMix64::new(seed);
    let mut report = Report { target: name.to_string(), ..Report::default() };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..executions {
        let mut input = seeds[rng.below(seeds.len() as u64) as usize].clone();
        if text {
            mutate_text(&mut rng, &mut input);
        } else {
            mutate_bytes(&mut rng, &mut input);
        }
        report.executions += 1;
        match catch_unwind(AssertUnwindSafe(|| target(&input))) {
            Ok(Ok(())) => report.accepted += 1,
            Ok(Err(_)) => {}
            Err(p) => {
                let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                let _ = std::fs::create_dir_all(crash_dir);
                let path = crash_dir.join(format!("{name}-{i}.bin"));
                let _ = std::fs::write(&path, &input);
                report.panics.push((path, msg));
            }
        }
    }
    std::panic::set_hook(hook);
    eprintln!("fuzz {name}: {} executions, {} accepted, {} panics", report.executions, report.accepted, report.panics.len());
    report
}

/// Where fuzz crashes of a crate's tests are saved.
pub fn crash_dir(manifest_dir: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| crate::testing::workspace_root(manifest_dir).join("target"));
    target.join("fuzz-crashes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_target_is_caught_and_its_input_saved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = run("demo", &[b"abcdef".to_vec()], 200, 1, false, dir.path(), |b: &[u8]| -> Result<(), ()> {
            if b.len() > 8 {
                panic!("too long: {}", b.len());
            }
            Ok(())
        });
        assert_eq!(r.executions, 200);
        assert!(!r.panics.is_empty() && r.panics[0].1.starts_with("too long"));
        assert!(r.panics[0].0.is_file());
        assert_eq!(r.accepted + r.panics.len(), 200);
    }
}
