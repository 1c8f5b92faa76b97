//! Learning-rate schedules with linear warm-up, evaluated per iteration.

use crate::recipe::{Schedule, TrainSection};

/// Scale factor of the base learning rate at iteration `it` (0-based, over the whole run) of a
/// run with `iters_per_epoch` iterations per epoch.
///
/// - Warm-up: linear from `1/warmup_iters` to 1 over the first `warmup_epochs`.
/// - Cosine: `0.5 (1 + cos(pi t))`, `t` going from 0 after warm-up to 1 at the last iteration.
/// - Step: `gamma^k`, `k` the number of milestones (epochs) already reached.
pub fn lr_factor(train: &TrainSection, iters_per_epoch: usize, it: usize) -> f64 {
    let total = (train.epochs * iters_per_epoch).max(1);
    let warm = (train.warmup_epochs * iters_per_epoch as f64).round() as usize;
    if it < warm {
        return (it + 1) as f64 / warm as f64;
    }
    match train.schedule {
        Schedule::Constant => 1.0,
        Schedule::Cosine => {
            let span = (total - warm).max(1) as f64;
            let t = ((it - warm) as f64 / span).min(1.0);
            0.5 * (1.0 + (std::f64::consts::PI * t).cos())
        }
        Schedule::Step => {
            let epoch = it / iters_per_epoch.max(1);
            let k = train.milestones.iter().filter(|&&m| epoch >= m).count();
            train.gamma.powi(k as i32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(schedule: Schedule, warmup: f64) -> TrainSection {
        TrainSection {
            epochs: 4,
            batch_size: 1,
            lr: 0.1,
            head_lr: 1.0,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule,
            warmup_epochs: warmup,
            milestones: vec![2, 3],
            gamma: 0.1,
            clip_grad_norm: 0.0,
            label_smoothing: 0.0,
            seed: 0,
        }
    }

    #[test]
    fn warmup_then_cosine() {
        let t = section(Schedule::Cosine, 1.0);
        // 10 iterations per epoch: warm-up over 10, cosine over 30.
        assert!((lr_factor(&t, 10, 0) - 0.1).abs() < 1e-12);
        assert!((lr_factor(&t, 10, 9) - 1.0).abs() < 1e-12);
        assert!((lr_factor(&t, 10, 10) - 1.0).abs() < 1e-12);
        assert!((lr_factor(&t, 10, 25) - 0.5).abs() < 1e-12);
        assert!(lr_factor(&t, 10, 39) < 0.01);
    }

    #[test]
    fn step_decay_at_milestones() {
        let t = section(Schedule::Step, 0.0);
        assert_eq!(lr_factor(&t, 10, 19), 1.0);
        assert!((lr_factor(&t, 10, 20) - 0.1).abs() < 1e-12);
        assert!((lr_factor(&t, 10, 35) - 0.01).abs() < 1e-12);
    }
}
