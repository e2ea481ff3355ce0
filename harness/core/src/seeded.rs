//! Reproducible randomness shared by defences and attacks: one way to derive a stream's seed
//! from a cell's seed, one way to sample images, one rank-weighted draw. Defences and attacks
//! that must agree on a procedure (an attack replaying a protection's published selection rule
//! with its own randomness) call the same code, so neither crate imports the other.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// A seed for one `purpose` of one component, derived from a cell's `seed`. Streams for
/// different purposes never coincide with each other nor with the cell seed itself (which the
/// owner's training uses), so an attacker's model trained from scratch does not start from the
/// victim's initial weights.
pub fn derive_seed(seed: u64, purpose: &str) -> u64 {
    // 64-bit FNV-1a of the purpose, mixed into the seed with a splitmix64 finaliser.
    let tag = purpose.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut z = seed ^ tag;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `min(k, n)` distinct indices of `0..n`, chosen by `seed` (a seeded shuffle, truncated).
pub fn sample_indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    all.truncate(k.min(n));
    all
}

/// Draws `count` distinct items from the first `pool` of `ranking` (best first) by roulette
/// without replacement: the item at rank `r` has weight `pool - r`, and each draw is
/// proportional to the weights of the items not yet drawn. Returned in draw order.
pub fn rank_roulette<R: Rng + ?Sized>(
    ranking: &[usize],
    pool: usize,
    count: usize,
    rng: &mut R,
) -> Result<Vec<usize>> {
    if pool > ranking.len() || count > pool || ranking.is_empty() {
        return Err(Error::Config(format!(
            "cannot draw {count} of a pool of {pool} from a ranking of {}",
            ranking.len()
        )));
    }
    let mut candidates: Vec<(usize, f64)> = ranking[..pool]
        .iter()
        .enumerate()
        .map(|(r, &item)| (item, (pool - r) as f64))
        .collect();
    let mut chosen = Vec::with_capacity(count);
    while chosen.len() < count {
        let total: f64 = candidates.iter().map(|c| c.1).sum();
        let mut ball = rng.random::<f64>() * total;
        let mut pick = candidates.len() - 1;
        for (i, c) in candidates.iter().enumerate() {
            if ball < c.1 {
                pick = i;
                break;
            }
            ball -= c.1;
        }
        chosen.push(candidates.remove(pick).0);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_differ_by_purpose_and_seed() {
        let a = derive_seed(1, "scratch/init");
        assert_eq!(a, derive_seed(1, "scratch/init"));
        assert_ne!(a, derive_seed(1, "scratch/data"));
        assert_ne!(a, derive_seed(2, "scratch/init"));
        assert_ne!(a, 1);
    }

    #[test]
    fn samples_are_seeded_distinct_and_capped() {
        assert_eq!(sample_indices(10, 3, 1), sample_indices(10, 3, 1));
        assert_ne!(sample_indices(100, 10, 1), sample_indices(100, 10, 2));
        let s = sample_indices(10, 10, 4);
        let mut sorted = s.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(sample_indices(2, 5, 1).len(), 2);
    }

    #[test]
    fn roulette_draws_distinct_items_from_the_pool_favouring_the_top() -> Result<()> {
        let ranking: Vec<usize> = (0..20).rev().collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut first = vec![0usize; 20];
        for _ in 0..2000 {
            let d = rank_roulette(&ranking, 5, 3, &mut rng)?;
            let mut u = d.clone();
            u.sort_unstable();
            u.dedup();
            assert_eq!(u.len(), 3);
            assert!(d.iter().all(|x| ranking[..5].contains(x)));
            first[d[0]] += 1;
        }
        // Weights 5:4:3:2:1 for the first draw: the best item is drawn first about a third of
        // the time, the fifth about a fifteenth.
        assert!(first[19] > first[15] * 3, "{first:?}");
        assert!(rank_roulette(&ranking, 5, 6, &mut rng).is_err());
        assert!(rank_roulette(&ranking, 21, 1, &mut rng).is_err());
        Ok(())
    }
}
