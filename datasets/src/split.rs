//! Seeded, stratified index splits of an [`ImageSet`].
//!
//! Protection experiments need disjoint data for the model owner, the attacker and a held-out
//! evaluation part, each with the class balance of the whole set, and reproducible from a seed.
//! [`stratified_subset`] picks a class-balanced subset for quick runs (`--train-limit`).

use crate::{DataError, ImageSet, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Fractions of the set given to each party; each >= 0, summing to at most 1 (the rest is
/// unused).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitFractions {
    /// The model owner's training data.
    pub owner: f64,
    /// The attacker's data (e.g. for fine-tuning or extraction).
    pub attacker: f64,
    /// Data neither party trains on, for evaluation.
    pub held_out: f64,
}

/// Disjoint index lists into one set, each sorted ascending.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Splits {
    /// Indices for the model owner.
    pub owner: Vec<usize>,
    /// Indices for the attacker.
    pub attacker: Vec<usize>,
    /// Indices held out from both.
    pub held_out: Vec<usize>,
}

/// Indices of each class, in set order.
fn by_class(set: &ImageSet) -> Vec<Vec<usize>> {
    let mut classes = vec![Vec::new(); set.num_classes()];
    for (i, &l) in set.labels.iter().enumerate() {
        classes[l as usize].push(i);
    }
    classes
}

/// Splits `set` into disjoint owner / attacker / held-out index lists. Each part gets
/// `round(fraction * len)` images in total, spread over classes in proportion to their sizes
/// (largest remainders, ties broken by a seeded class order). Which images of a class go where
/// is a seeded shuffle. The same set, fractions and seed always give the same splits.
pub fn disjoint_splits(set: &ImageSet, fractions: &SplitFractions, seed: u64) -> Result<Splits> {
    let f = [fractions.owner, fractions.attacker, fractions.held_out];
    if f.iter().any(|x| !x.is_finite() || *x < 0.0) {
        return Err(DataError::InvalidOption(format!(
            "split fractions must be finite and >= 0, got owner {}, attacker {}, held-out {}",
            f[0], f[1], f[2]
        )));
    }
    let total: f64 = f.iter().sum();
    if total > 1.0 + 1e-9 {
        return Err(DataError::InvalidOption(format!(
            "split fractions sum to {total}, more than 1 (owner {}, attacker {}, held-out {})",
            f[0], f[1], f[2]
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut classes = by_class(set);
    for members in &mut classes {
        members.shuffle(&mut rng);
    }
    let sizes: Vec<usize> = classes.iter().map(Vec::len).collect();
    let mut tie_order: Vec<usize> = (0..sizes.len()).collect();
    tie_order.shuffle(&mut rng);

    let n = set.len();
    // Cumulative boundaries per class: part k of class c is members[bounds[k][c]..bounds[k+1][c]].
    let mut bounds = vec![vec![0usize; sizes.len()]];
    let mut cumulative = 0.0;
    for frac in f {
        cumulative += frac;
        let target = ((cumulative * n as f64).round() as usize).min(n);
        let alloc = apportion(target, &sizes, &tie_order);
        let prev = &bounds[bounds.len() - 1];
        // Keep boundaries monotone so parts never overlap.
        let next: Vec<usize> = alloc.iter().zip(prev).map(|(a, p)| (*a).max(*p)).collect();
        bounds.push(next);
    }
    let part = |k: usize| {
        let mut v: Vec<usize> = classes
            .iter()
            .enumerate()
            .flat_map(|(c, members)| members[bounds[k][c]..bounds[k + 1][c]].iter().copied())
            .collect();
        v.sort_unstable();
        v
    };
    Ok(Splits {
        owner: part(0),
        attacker: part(1),
        held_out: part(2),
    })
}

/// Splits `total` items over groups in proportion to `sizes` (Hamilton / largest remainder),
/// never exceeding a group's size; equal remainders are served in `tie_order`.
fn apportion(total: usize, sizes: &[usize], tie_order: &[usize]) -> Vec<usize> {
    let n: usize = sizes.iter().sum();
    if n == 0 {
        return vec![0; sizes.len()];
    }
    let total = total.min(n) as u128;
    let mut alloc: Vec<usize> = Vec::with_capacity(sizes.len());
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(sizes.len());
    for (c, &s) in sizes.iter().enumerate() {
        let q = total * s as u128;
        alloc.push((q / n as u128) as usize);
        remainders.push((q % n as u128, c));
    }
    let mut left = total as usize - alloc.iter().sum::<usize>();
    let rank: Vec<usize> = {
        let mut r = vec![0; sizes.len()];
        for (pos, &c) in tie_order.iter().enumerate() {
            r[c] = pos;
        }
        r
    };
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(rank[a.1].cmp(&rank[b.1])));
    for &(rem, c) in &remainders {
        if left == 0 {
            break;
        }
        if rem > 0 && alloc[c] < sizes[c] {
            alloc[c] += 1;
            left -= 1;
        }
    }
    alloc
}

/// `n` indices of `set` with the classes as balanced as possible (each class contributes
/// equally until it runs out), chosen and ordered by a seeded shuffle. `n >= len` gives every
/// index, shuffled.
pub fn stratified_subset(set: &ImageSet, n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if n >= set.len() {
        let mut all: Vec<usize> = (0..set.len()).collect();
        all.shuffle(&mut rng);
        return all;
    }
    let mut classes = by_class(set);
    for members in &mut classes {
        members.shuffle(&mut rng);
    }
    let mut tie_order: Vec<usize> = (0..classes.len()).collect();
    tie_order.shuffle(&mut rng);

    // Water-filling: raise every class's quota together until n images are taken.
    let mut quota = vec![0usize; classes.len()];
    let mut left = n;
    while left > 0 {
        let open: Vec<usize> = tie_order
            .iter()
            .copied()
            .filter(|&c| quota[c] < classes[c].len())
            .collect();
        if open.is_empty() {
            break;
        }
        let share = left / open.len();
        if share == 0 {
            for &c in open.iter().take(left) {
                quota[c] += 1;
            }
            break;
        }
        for &c in &open {
            let take = share.min(classes[c].len() - quota[c]);
            quota[c] += take;
            left -= take;
        }
    }
    let mut picked: Vec<usize> = classes
        .iter()
        .zip(&quota)
        .flat_map(|(members, &q)| members[..q].iter().copied())
        .collect();
    picked.shuffle(&mut rng);
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with_counts(counts: &[usize]) -> ImageSet {
        let labels: Vec<u32> = counts
            .iter()
            .enumerate()
            .flat_map(|(c, &k)| std::iter::repeat_n(c as u32, k))
            .collect();
        let names = (0..counts.len()).map(|c| format!("c{c}")).collect();
        ImageSet::new(vec![0; labels.len()], labels, (1, 1, 1), names).unwrap()
    }

    #[test]
    fn apportion_is_exact_and_bounded() {
        let sizes = [10, 1, 1, 5];
        for total in 0..=17 {
            let a = apportion(total, &sizes, &[0, 1, 2, 3]);
            assert_eq!(a.iter().sum::<usize>(), total);
            assert!(a.iter().zip(&sizes).all(|(x, s)| x <= s));
        }
    }

    #[test]
    fn splits_are_disjoint_stratified_and_seeded() {
        let set = set_with_counts(&[100, 100, 50]);
        let f = SplitFractions {
            owner: 0.5,
            attacker: 0.3,
            held_out: 0.2,
        };
        let s = disjoint_splits(&set, &f, 7).unwrap();
        assert_eq!(
            (s.owner.len(), s.attacker.len(), s.held_out.len()),
            (125, 75, 50)
        );
        let mut all: Vec<usize> = [&s.owner[..], &s.attacker[..], &s.held_out[..]].concat();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 250);
        let count = |idx: &[usize], c: u32| idx.iter().filter(|&&i| set.labels[i] == c).count();
        assert_eq!(
            [count(&s.owner, 0), count(&s.owner, 1), count(&s.owner, 2)],
            [50, 50, 25]
        );
        assert_eq!(s, disjoint_splits(&set, &f, 7).unwrap());
        assert_ne!(s, disjoint_splits(&set, &f, 8).unwrap());
    }

    #[test]
    fn tiny_sets_still_split() {
        // One image per class: a 50/50 split must not give everything to the owner.
        let set = set_with_counts(&[1; 10]);
        let f = SplitFractions {
            owner: 0.5,
            attacker: 0.5,
            held_out: 0.0,
        };
        let s = disjoint_splits(&set, &f, 0).unwrap();
        assert_eq!(
            (s.owner.len(), s.attacker.len(), s.held_out.len()),
            (5, 5, 0)
        );
    }

    #[test]
    fn bad_fractions() {
        let set = set_with_counts(&[3]);
        for f in [
            SplitFractions {
                owner: 0.6,
                attacker: 0.5,
                held_out: 0.0,
            },
            SplitFractions {
                owner: -0.1,
                attacker: 0.5,
                held_out: 0.0,
            },
            SplitFractions {
                owner: f64::NAN,
                attacker: 0.5,
                held_out: 0.0,
            },
        ] {
            assert!(matches!(
                disjoint_splits(&set, &f, 0),
                Err(DataError::InvalidOption(_))
            ));
        }
    }

    #[test]
    fn subset_is_balanced() {
        let set = set_with_counts(&[100, 3, 50]);
        let s = stratified_subset(&set, 30, 1);
        assert_eq!(s.len(), 30);
        let counts = set.select(&s).class_counts();
        assert_eq!(counts.iter().sum::<usize>(), 30);
        assert_eq!(counts[1], 3);
        assert!(counts[0].abs_diff(counts[2]) <= 1);
        let mut dedup = s.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), 30);
        assert_eq!(s, stratified_subset(&set, 30, 1));
        assert_ne!(s, stratified_subset(&set, 30, 2));
        let all = stratified_subset(&set, 1000, 1);
        assert_eq!(all.len(), 153);
    }
}
