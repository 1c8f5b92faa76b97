//! `fgia ask`: the 20-questions game in the terminal (§5.3.3, `fgia_external::hitl`).
//!
//! The machine starts from a vision posterior (a trained run's classifier on an image) or, with no
//! image, from even odds over the dataset's classes, then asks the attribute question with the
//! largest expected information gain, updates the posterior with the answer (y / n; s skips a
//! question, q stops) and shows its five best guesses, until its budget of questions is spent or
//! it is sure. Answers are read from standard input line by line, so the game can be played by a
//! person or driven by a program.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use fgia_core::datasets::{ReadOptions, read_class_attributes, read_cub};
use fgia_core::imaging::load_batch;
use fgia_external::hitl::{Policy, UserModel, information_gain, update};

/// The game's options.
#[derive(clap::Args, Debug)]
pub struct AskArgs {
    /// A CUB-format root with `attributes/` (the classes and their attribute statistics).
    #[arg(long)]
    pub data_root: PathBuf,
    /// A trained run on the same classes, to start from its posterior on --image.
    #[arg(long, requires = "image")]
    pub run_dir: Option<PathBuf>,
    /// The image to recognise.
    #[arg(long, requires = "run_dir")]
    pub image: Option<PathBuf>,
    /// Largest number of questions.
    #[arg(long, default_value_t = 20)]
    pub questions: usize,
    /// Stop once the best class has this probability.
    #[arg(long, default_value_t = 0.95)]
    pub confident: f64,
    /// The chance that an answer is random, in the machine's model of the user.
    #[arg(long, default_value_t = 0.05)]
    pub noise: f64,
}

/// `has_bill_shape::dagger` as "bill shape: dagger".
fn question(name: &str) -> String {
    let (group, value) = name.split_once("::").unwrap_or((name, ""));
    let group = group.trim_start_matches("has_").replace('_', " ");
    format!("{group}: {}", value.replace('_', " "))
}

fn top(post: &[f64], classes: &[String], k: usize) -> String {
    let mut order: Vec<usize> = (0..post.len()).collect();
    order.sort_by(|&a, &b| post[b].total_cmp(&post[a]).then(a.cmp(&b)));
    order.iter().take(k).map(|&c| format!("{} {:.1}%", classes[c], 100.0 * post[c])).collect::<Vec<_>>().join(", ")
}

/// Plays one game on standard input and output.
pub fn ask<B: Backend>(a: AskArgs, device: B::Device) -> Result<()> {
    let ds = read_cub(&a.data_root, ReadOptions::default())?;
    let classes = ds.classes.names.clone();
    let attrs = read_class_attributes(&a.data_root, classes.len())?;
    if !(0.0..1.0).contains(&a.noise) || !(0.0..=1.0).contains(&a.confident) {
        bail!("--noise must be in [0, 1) and --confident in [0, 1]");
    }
    let model = UserModel::from_percent(&attrs.percent, a.noise, 0.02);
    let mut post = match (&a.run_dir, &a.image) {
        (Some(run), Some(image)) => {
            let m = crate::commands::load_for_inference::<B>(Some(run), None, None, &device)?;
            if m.classes != classes {
                bail!(
                    "{}: the run was trained on {} classes that are not the {} classes of {}",
                    run.display(),
                    m.classes.len(),
                    classes.len(),
                    a.data_root.display()
                );
            }
            let records = fgia_cbir::extract::records_for(std::slice::from_ref(image));
            let batch = load_batch(&records, &[0], &m.transform, 0, 0, false).with_context(|| image.display().to_string())?;
            let c = m.transform.crop as usize;
            let x = Tensor::<B, 4>::from_data(TensorData::new(batch.pixels, [1, 3, c, c]), &device);
            let p: Vec<f32> = softmax(m.network.forward(x), 1).into_data().to_vec().map_err(|e| anyhow::anyhow!("{e:?}"))?;
            p.into_iter().map(f64::from).collect()
        }
        _ => vec![1.0 / classes.len() as f64; classes.len()],
    };
    let mut out = std::io::stdout().lock();
    let start = if a.image.is_some() { "the image classifier's posterior" } else { "even odds" };
    writeln!(out, "{} classes, {} attribute questions; starting from {start}: {}", classes.len(), attrs.len(), top(&post, &classes, 5))?;
    writeln!(out, "Answer y (yes), n (no), s (skip: not visible / not sure) or q (quit).")?;
    let mut asked = vec![false; attrs.len()];
    let mut input = std::io::stdin().lock().lines();
    let mut rng = fgia_core::rng::SplitMix64::new(0);
    let mut t = 0;
    while t < a.questions && post.iter().copied().fold(0.0, f64::max) < a.confident {
        let Some(q) = Policy::InformationGain.next(&post, &model, &asked, &mut rng) else { break };
        asked[q] = true;
        t += 1;
        write!(out, "Q{t} (attribute {}, expected gain {:.3} nats): {}? [y/n/s/q] ", q + 1, information_gain(&post, &model, q), question(&attrs.names[q]))?;
        out.flush()?;
        let Some(line) = input.next() else {
            writeln!(out, "\n(end of input)")?;
            break;
        };
        match line?.trim().to_lowercase().as_str() {
            "y" | "yes" => update(&mut post, &model, q, true),
            "n" | "no" => update(&mut post, &model, q, false),
            "q" | "quit" => {
                writeln!(out, "(stopped)")?;
                break;
            }
            _ => {
                writeln!(out, "  skipped")?;
                continue;
            }
        }
        writeln!(out, "  now: {}", top(&post, &classes, 5))?;
    }
    let best = fgia_external::hitl::argmax(&post).unwrap_or(0);
    writeln!(out, "Answer after {t} questions: {} (p = {:.3})", classes[best], post[best])?;
    Ok(())
}
