//! Choosing the authorised neurons of a stage: rank-weighted roulette over the top of the
//! activation ranking, as the paper and the authors' `select_authorized_neurons.py` do.

use harness_core::{Error, Result};
use rand::Rng;

/// How many neurons of a stage with `n` neurons form the candidate pool: the top
/// `pool_fraction` of the ranking.
///
/// Choice: `floor(pool_fraction x n) + 1` capped at `n`, the authors' `rank[:int(len*0.3)+1]`
/// (the paper's "top 30%" plus one, so even a tiny stage has a pool).
pub fn pool_size(n: usize, pool_fraction: f64) -> usize {
    (((pool_fraction * n as f64).floor() as usize) + 1).min(n)
}

/// How many neurons of a stage with `n` neurons are authorised: `floor(gamma x n) + 1` (paper
/// and code).
pub fn lock_count(n: usize, gamma: f64) -> usize {
    (gamma * n as f64).floor() as usize + 1
}

/// Draws the authorised neurons of one stage from `ranking` (neuron indices, most active
/// first): `lock_count(n, gamma)` distinct neurons from the pool of the `pool_size(n,
/// pool_fraction)` best, by roulette with weight `pool - r` for the neuron at rank `r` (the best
/// has weight `pool`, the last of the pool 1; [`harness_core::seeded::rank_roulette`]).
/// Returned in draw order.
///
/// Choice: sampling without replacement, each draw proportional to the weights of the neurons
/// not yet drawn, which is what the authors' loop (redraw on a duplicate) amounts to; their
/// roulette also silently rejects neuron index 0 (`if neuron and ...`), a slip not copied, and
/// quantises weights to integers, which we do not.
pub fn select_neurons<R: Rng + ?Sized>(
    ranking: &[usize],
    gamma: f64,
    pool_fraction: f64,
    rng: &mut R,
) -> Result<Vec<usize>> {
    let n = ranking.len();
    let pool = pool_size(n, pool_fraction);
    let count = lock_count(n, gamma);
    if n == 0 || count > pool {
        return Err(Error::Config(format!(
            "cannot draw {count} authorised neurons (gamma {gamma}) from a pool of {pool} of {n} \
             (pool_fraction {pool_fraction}); lower gamma or raise pool_fraction"
        )));
    }
    harness_core::seeded::rank_roulette(ranking, pool, count, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn sizes_follow_the_paper() {
        assert_eq!((pool_size(16, 0.3), lock_count(16, 0.1)), (5, 2));
        assert_eq!((pool_size(64, 0.3), lock_count(64, 0.1)), (20, 7));
        assert_eq!((pool_size(512, 0.3), lock_count(512, 0.1)), (154, 52));
        assert_eq!(pool_size(2, 1.0), 2);
    }

    #[test]
    fn better_ranked_neurons_are_drawn_more_often() -> Result<()> {
        let ranking: Vec<usize> = (0..100).rev().collect(); // neuron 99 is the most active
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut hits = [0usize; 100];
        for _ in 0..2000 {
            for n in select_neurons(&ranking, 0.0, 0.3, &mut rng)? {
                hits[n] += 1;
            }
        }
        // One neuron per draw from a pool of 31 (weights 31..1): the best about 31/496 of the
        // time, the last of the pool 1/496.
        assert!(hits[99] > 90 && hits[99] < 160, "{}", hits[99]);
        assert!(hits[69] < 15, "{}", hits[69]);
        assert_eq!(hits[..69].iter().sum::<usize>(), 0);
        Ok(())
    }

    #[test]
    fn impossible_sizes_are_errors() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let ranking: Vec<usize> = (0..10).collect();
        assert!(select_neurons(&ranking, 0.5, 0.3, &mut rng).is_err());
        assert!(select_neurons(&[], 0.1, 0.3, &mut rng).is_err());
    }
}
