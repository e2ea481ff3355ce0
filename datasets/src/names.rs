//! "Did you mean ...?" for every id the harness accepts (datasets here; models, defences and
//! attacks in the crates above), so that all unknown-name errors answer the same way.

/// Lowercase with `_` read as `-`, the spelling differences ids forgive.
pub fn normalise(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('_', "-")
}

/// The valid ids closest to `name`, best first: the one id that differs only in case, `_` or `-`
/// when there is one, else up to three ids with a Jaro-Winkler similarity above 0.7 (ids are
/// compared without `-`, so `cifar-10` finds `cifar10`).
pub fn suggest<'a>(name: &str, valid: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let valid: Vec<&str> = valid.into_iter().collect();
    let squash = |s: &str| normalise(s).replace('-', "");
    let wanted = squash(name);
    if let Some(same) = valid.iter().find(|v| squash(v) == wanted) {
        return vec![same.to_string()];
    }
    let mut scored: Vec<(f64, &str)> = valid
        .iter()
        .map(|v| (strsim::jaro_winkler(&wanted, &squash(v)), *v))
        .filter(|(score, _)| *score > 0.7)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    scored
        .into_iter()
        .take(3)
        .map(|(_, v)| v.to_string())
        .collect()
}

/// Formats " (did you mean `x`?)" for a list of suggestions, or nothing when there are none.
pub fn did_you_mean(suggestions: &[String]) -> String {
    match suggestions {
        [] => String::new(),
        [one] => format!(" (did you mean `{one}`?)"),
        many => format!(" (did you mean one of `{}`?)", many.join("`, `")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelling_variants_get_exactly_one_answer() {
        assert_eq!(
            suggest("CIFAR_10", ["cifar10", "cifar100"]),
            vec!["cifar10"]
        );
        assert_eq!(
            suggest("cifar-10", ["cifar10", "cifar100"]),
            vec!["cifar10"]
        );
    }

    #[test]
    fn typos_get_the_closest_ids_and_nonsense_gets_none() {
        assert_eq!(
            suggest("resnet2", ["resnet20", "resnet56", "vgg11"])[0],
            "resnet20"
        );
        assert!(suggest("mnist", ["resnet20", "vgg11"]).is_empty());
    }

    #[test]
    fn did_you_mean_reads_naturally() {
        assert_eq!(did_you_mean(&[]), "");
        assert_eq!(did_you_mean(&["a".into()]), " (did you mean `a`?)");
        assert_eq!(
            did_you_mean(&["a".into(), "b".into()]),
            " (did you mean one of `a`, `b`?)"
        );
    }
}
