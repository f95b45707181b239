//! Samples of a Prometheus text exposition.

/// The sum of the samples of `name` whose labels contain `labels` in a
/// Prometheus text exposition; 0 when absent.
pub fn metric_in(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .fold(0.0, |sum, v| sum + v)
}
