//! The hierarchy: M nested sets of a layer's selected kernels, most important first, and the
//! tiers (set differences) that each get their own key.
//!
//! Set m (m = 0..M-1) holds the top floor((0.6 + 0.4 (m+1)/M) x Size) selected kernels, so the
//! last set is the whole selection (which is what gets encrypted). Level 0 decrypts nothing,
//! level m decrypts set m-1, level M everything. Tier 0 = set 0, tier j = set j minus set j-1.

/// Sizes of the M nested sets of a selection of `size` kernels, smallest first.
///
/// Computed in integers, floor((3M + 2(m+1)) x Size / 5M), which is the paper's
/// floor((0.6 + 0.4 (m+1)/M) x Size) without the float rounding that would make the last set
/// miss a kernel.
pub fn set_sizes(size: usize, levels: usize) -> Vec<usize> {
    (0..levels)
        .map(|m| (3 * levels + 2 * (m + 1)) * size / (5 * levels))
        .collect()
}

/// The tier of the kernel ranked `rank` (0 = most important) in a selection with `sizes`.
pub fn tier_of_rank(rank: usize, sizes: &[usize]) -> Option<usize> {
    sizes.iter().position(|&s| rank < s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_nested_and_the_last_is_everything() {
        for size in [1usize, 2, 7, 13, 100, 1001] {
            for levels in [1usize, 2, 5, 8] {
                let s = set_sizes(size, levels);
                assert_eq!(s.len(), levels);
                assert_eq!(s[levels - 1], size, "size {size} levels {levels}");
                assert!(s.windows(2).all(|w| w[0] <= w[1]));
                for (m, &got) in s.iter().enumerate() {
                    let paper = ((0.6 + 0.4 * (m + 1) as f64 / levels as f64) * size as f64).floor()
                        as usize;
                    // The float formula may land one below an exact integer boundary.
                    assert!(got == paper || got == paper + 1, "{size} {levels} {m}");
                }
            }
        }
        assert_eq!(set_sizes(100, 5), vec![68, 76, 84, 92, 100]);
        let s = set_sizes(100, 5);
        assert_eq!(tier_of_rank(0, &s), Some(0));
        assert_eq!(tier_of_rank(67, &s), Some(0));
        assert_eq!(tier_of_rank(68, &s), Some(1));
        assert_eq!(tier_of_rank(99, &s), Some(4));
        assert_eq!(tier_of_rank(100, &s), None);
    }
}
