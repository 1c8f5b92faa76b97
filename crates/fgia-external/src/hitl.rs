//! Humans in the loop: the 20-questions game.
//!
//! Branson, Wah, Schroff, Babenko, Welinder, Perona and Belongie, "Visual Recognition with
//! Humans in the Loop", ECCV 2010; Wah, Branson, Perona and Belongie, "Multiclass Recognition
//! and Part Localization with Humans in the Loop", ICCV 2011 (survey §5.3.3).
//!
//! A computer-vision posterior `p(c | x)` is refined by a user's answers `U_t = (u_1..u_t)` to
//! attribute questions ("is the bill dagger-shaped?"), answers independent given the class:
//!
//! ```text
//! p(c | x, U_t) ∝ p(c | x) · Π_{s ≤ t} p(u_s | c)                                   (1)
//! ```
//!
//! At each step the machine asks the attribute `a` not asked yet with the largest expected
//! information gain,
//!
//! ```text
//! IG(a) = H(p(c | x, U_t)) − Σ_{u ∈ {yes, no}} p(u | x, U_t) · H(p(c | x, U_t, u)),      (2)
//! p(u | x, U_t) = Σ_c p(u | c) p(c | x, U_t),
//! ```
//!
//! and stops after a budget of questions; the answer is the arg-max of (1).
//!
//! **User model.** `p(yes | c, a) = (1 − η) π_ca + η / 2`, with `π_ca` the share of class `c`'s
//! images whose annotators marked attribute `a` (CUB's class-level percentages), clamped to
//! `[floor, 1 − floor]` so that one unexpected answer never zeroes a class, and `η` the chance
//! that a user answers at random. Simulated users draw their answers from the same model for
//! their image's true class.
//!
//! **Deviations.** Binary answers (the papers also record the user's certainty: guessing,
//! probably, definitely); class-level attribute statistics, since per-image answers are not part
//! of the data used here, which makes the simulated users agree with the machine's model (an
//! optimistic setting, stated in the record); no part-click questions (Wah et al. 2011).
//!
//! Recipe: `recipes/table3/twenty-questions.toml` (the vision posterior from a cross-entropy head
//! on the frozen backbone's pooled feature; all three policies on the same simulated users).

use fgia_core::rng::SplitMix64;

/// How a user answers: `p(yes | c, a)` for every class and attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct UserModel {
    /// `yes[c][a]`.
    yes: Vec<Vec<f64>>,
    /// The chance `η` of a random answer.
    pub noise: f64,
}

impl UserModel {
    /// From class-level attribute percentages (`percent[c][a]` in `[0, 100]`), the chance `noise`
    /// of a random answer and the clamp `floor`.
    pub fn from_percent(percent: &[Vec<f32>], noise: f64, floor: f64) -> Self {
        let yes =
            percent.iter().map(|row| row.iter().map(|&p| (1.0 - noise) * (f64::from(p) / 100.0).clamp(floor, 1.0 - floor) + noise / 2.0).collect()).collect();
        UserModel { yes, noise }
    }

    /// From `p(yes | c, a)` directly.
    pub fn from_probabilities(yes: Vec<Vec<f64>>) -> Self {
        UserModel { yes, noise: 0.0 }
    }

    /// `p(u | c, a)`.
    pub fn p(&self, c: usize, a: usize, yes: bool) -> f64 {
        let y = self.yes[c][a];
        if yes { y } else { 1.0 - y }
    }

    /// Classes.
    pub fn classes(&self) -> usize {
        self.yes.len()
    }

    /// Attributes (questions).
    pub fn attributes(&self) -> usize {
        self.yes.first().map_or(0, Vec::len)
    }

    /// A simulated user's answer about attribute `a` of an image of class `c`.
    pub fn answer(&self, c: usize, a: usize, rng: &mut SplitMix64) -> bool {
        rng.next_f64() < self.yes[c][a]
    }
}

/// Shannon entropy in nats.
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter().filter(|&&x| x > 0.0).map(|&x| x * x.ln()).sum::<f64>()
}

fn normalise(p: &mut [f64]) {
    let s: f64 = p.iter().sum();
    if s > 0.0 {
        p.iter_mut().for_each(|x| *x /= s);
    }
}

/// Equation (1), one answer: multiplies the posterior by `p(u | c)` and renormalises.
pub fn update(posterior: &mut [f64], model: &UserModel, a: usize, yes: bool) {
    for (c, p) in posterior.iter_mut().enumerate() {
        *p *= model.p(c, a, yes);
    }
    normalise(posterior);
}

/// Equation (2): the expected drop of the posterior's entropy from asking `a`.
pub fn information_gain(posterior: &[f64], model: &UserModel, a: usize) -> f64 {
    let mut expected = 0.0;
    for yes in [true, false] {
        let mut after: Vec<f64> = posterior.iter().enumerate().map(|(c, &p)| p * model.p(c, a, yes)).collect();
        let p_u: f64 = after.iter().sum();
        if p_u > 0.0 {
            normalise(&mut after);
            expected += p_u * entropy(&after);
        }
    }
    entropy(posterior) - expected
}

/// How the next question is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// No questions: the vision posterior alone.
    VisionOnly,
    /// A question drawn uniformly from those not asked.
    Random,
    /// The question with the largest expected information gain (2).
    InformationGain,
}

impl Policy {
    /// Every policy, in the order of the chart.
    pub const ALL: [Policy; 3] = [Policy::VisionOnly, Policy::Random, Policy::InformationGain];

    /// Name in records and charts.
    pub fn name(self) -> &'static str {
        match self {
            Policy::VisionOnly => "computer vision only",
            Policy::Random => "random questions",
            Policy::InformationGain => "information gain",
        }
    }

    /// The next question, or `None` (vision only, or every attribute asked).
    pub fn next(self, posterior: &[f64], model: &UserModel, asked: &[bool], rng: &mut SplitMix64) -> Option<usize> {
        let open: Vec<usize> = (0..model.attributes()).filter(|&a| !asked[a]).collect();
        match self {
            Policy::VisionOnly => None,
            Policy::Random => (!open.is_empty()).then(|| open[rng.below(open.len() as u64) as usize]),
            Policy::InformationGain => {
                open.into_iter().map(|a| (a, information_gain(posterior, model, a))).max_by(|x, y| x.1.total_cmp(&y.1).then(y.0.cmp(&x.0))).map(|(a, _)| a)
            }
        }
    }
}

/// The most probable class (the first on ties).
pub fn argmax(p: &[f64]) -> Option<usize> {
    p.iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f64)>, (i, &x)| match best {
            Some((_, b)) if b >= x => best,
            _ => Some((i, x)),
        })
        .map(|(i, _)| i)
}

/// Top-1 accuracy after `t = 0..=questions` questions for simulated users of `labels`, starting
/// from the vision posteriors `vision[i]`. The answers of image `i` are drawn from
/// `(seed, i)`, so every policy meets the same users.
pub fn simulate(vision: &[Vec<f64>], labels: &[usize], model: &UserModel, policy: Policy, questions: usize, seed: u64) -> Vec<f64> {
    let mut right = vec![0usize; questions + 1];
    for (i, (p0, &y)) in vision.iter().zip(labels).enumerate() {
        let mut post = p0.clone();
        normalise(&mut post);
        let mut asked = vec![false; model.attributes()];
        let mut choose = SplitMix64::for_item(seed, 1, i as u64);
        let mut user = SplitMix64::for_item(seed, 2, i as u64);
        for (t, r) in right.iter_mut().enumerate() {
            if argmax(&post) == Some(y) {
                *r += 1;
            }
            if t == questions {
                break;
            }
            if let Some(a) = policy.next(&post, model, &asked, &mut choose) {
                asked[a] = true;
                let yes = model.answer(y, a, &mut user);
                update(&mut post, model, a, yes);
            }
        }
    }
    right.iter().map(|&r| 100.0 * r as f64 / labels.len().max(1) as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes, two questions. Attribute 0 separates class 2 from classes 0 and 1;
    /// attribute 1 separates class 0 from class 1 and leaves class 2 at even odds.
    fn three() -> UserModel {
        UserModel::from_probabilities(vec![vec![0.9, 0.9], vec![0.9, 0.1], vec![0.1, 0.5]])
    }

    #[test]
    fn information_gain_on_a_hand_made_three_class_example() {
        let m = three();
        let prior = [1.0 / 3.0; 3];
        // By hand, as the mutual information I(C; U) = Σ_c Σ_u p(c) p(u|c) ln(p(u|c) / p(u)):
        // attribute 0: p(yes) = 1.9 / 3;
        let py: f64 = 1.9 / 3.0;
        let i0 = (2.0 * (0.9 * (0.9 / py).ln() + 0.1 * (0.1 / (1.0 - py)).ln()) + 0.1 * (0.1 / py).ln() + 0.9 * (0.9 / (1.0 - py)).ln()) / 3.0;
        // attribute 1: p(yes) = 0.5.
        let i1 = (0.9 * (0.9f64 / 0.5).ln() + 0.1 * (0.1f64 / 0.5).ln()) * 2.0 / 3.0;
        assert!((information_gain(&prior, &m, 0) - i0).abs() < 1e-12, "{} vs {i0}", information_gain(&prior, &m, 0));
        assert!((information_gain(&prior, &m, 1) - i1).abs() < 1e-12);
        assert!((i0 - 0.3322).abs() < 1e-3 && (i1 - 0.2453).abs() < 1e-3, "{i0} {i1}");
        let mut rng = SplitMix64::new(0);
        assert_eq!(Policy::InformationGain.next(&prior, &m, &[false, false], &mut rng), Some(0));
        // Once class 2 is ruled out, attribute 1 is the informative one.
        let p = [0.5, 0.5, 0.0];
        assert!(information_gain(&p, &m, 0) < 1e-12);
        assert_eq!(Policy::InformationGain.next(&p, &m, &[false, false], &mut rng), Some(1));
        assert_eq!(Policy::InformationGain.next(&p, &m, &[false, true], &mut rng), Some(0));
        assert_eq!(Policy::VisionOnly.next(&p, &m, &[false, false], &mut rng), None);
        assert_eq!(Policy::Random.next(&p, &m, &[true, true], &mut rng), None);
        // (1): a "no" to attribute 0 moves the mass to class 2.
        let mut post = prior;
        update(&mut post, &m, 0, false);
        assert!((post[2] - 0.9 / 1.1).abs() < 1e-12 && (post.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn clamping_keeps_one_surprising_answer_from_ruling_a_class_out() {
        let m = UserModel::from_percent(&[vec![0.0], vec![100.0]], 0.1, 0.02);
        assert!((m.p(0, 0, true) - (0.9 * 0.02 + 0.05)).abs() < 1e-12);
        let mut post = vec![0.5, 0.5];
        update(&mut post, &m, 0, true);
        assert!(post[0] > 0.0 && post[1] > post[0]);
    }

    #[test]
    fn information_gain_beats_random_questions_on_simulated_users() {
        // 12 classes, 40 attributes with class-specific rates, a flat vision posterior.
        let mut g = SplitMix64::new(3);
        let percent: Vec<Vec<f32>> = (0..12).map(|_| (0..40).map(|_| if g.coin() { 90.0 } else { 8.0 }).collect()).collect();
        let m = UserModel::from_percent(&percent, 0.05, 0.02);
        let labels: Vec<usize> = (0..240).map(|i| i % 12).collect();
        let vision = vec![vec![1.0; 12]; labels.len()];
        let ig = simulate(&vision, &labels, &m, Policy::InformationGain, 8, 7);
        let random = simulate(&vision, &labels, &m, Policy::Random, 8, 7);
        let none = simulate(&vision, &labels, &m, Policy::VisionOnly, 8, 7);
        assert_eq!(none.iter().copied().fold(f64::NAN, f64::max), none[0], "no questions, no change");
        let first = |curve: &[f64], level: f64| curve.iter().position(|&a| a >= level);
        assert!(first(&ig, 80.0) < first(&random, 80.0).or(Some(usize::MAX)), "ig {ig:?} random {random:?}");
        assert!(ig[8] > random[8], "ig {ig:?} random {random:?}");
    }
}
