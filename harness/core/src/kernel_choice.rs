//! How a family of runtime-dispatched kernels (the fixed-numerics f32 products, the int8 dot
//! products) picks its member: an environment variable may name one, to compare paths or to
//! reproduce another machine's choice; otherwise the fastest the CPU has.

/// The kernel named by the environment variable `var` when it is one of `available`, else the
/// fastest of `available` (the greatest; kernels are ordered slowest first). A name the CPU
/// lacks is warned about, naming the ones it has, and the fastest is used.
pub(crate) fn from_env<K: Copy + Ord>(
    var: &str,
    family: &str,
    available: &[K],
    name: fn(K) -> &'static str,
) -> Option<K> {
    let fastest = available.iter().copied().max()?;
    let Ok(want) = std::env::var(var) else {
        return Some(fastest);
    };
    if let Some(k) = available.iter().copied().find(|k| name(*k) == want) {
        return Some(k);
    }
    let names: Vec<_> = available.iter().map(|k| name(*k)).collect();
    eprintln!(
        "warning: {var}={want} is not one of this CPU's {family} kernels ({}); using {}",
        names.join(", "),
        name(fastest)
    );
    Some(fastest)
}
