//! A relay's counters as the lab reads them: the ingress's `/metrics`,
//! fetched through its admin API from inside the testbed, and sums of a
//! counter over its label sets.

use crate::testbed::Testbed;

/// The Prometheus text of the ingress relay (host 1) whose admin API
/// listens on `127.0.0.1:port`; `None` if it did not answer.
pub fn ingress_metrics(tb: &Testbed, port: u16) -> Option<String> {
    let out = tb
        .command(tb.host_name(1), "curl")
        .args([
            "-s",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sum of the counter `name` over all its label sets.
pub fn sum(text: &str, name: &str) -> f64 {
    sum_where(text, name, "")
}

/// Sum of the counter `name` over the label sets that contain `label`
/// (e.g. `what="wire_in"`; empty: all of them).
pub fn sum_where(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name).is_some_and(|rest| {
                (rest.starts_with('{')
                    && rest.split('}').next().is_some_and(|ls| ls.contains(label)))
                    || (label.is_empty() && rest.starts_with(' '))
            })
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE splitway_pool_misses_total counter\n\
        splitway_pool_misses_total{peer=\"a\"} 4\n\
        splitway_pool_misses_total{peer=\"b\"} 6\n\
        splitway_pool_misses_total_other 100\n\
        splitway_pool_hits_total 4\n\
        splitway_module_bytes_total{chain=\"dedup\",what=\"wire_in\"} 10\n\
        splitway_module_bytes_total{chain=\"compress\",what=\"wire_in\"} 5\n\
        splitway_module_bytes_total{chain=\"dedup\",what=\"plain_out\"} 70\n";

    #[test]
    fn sums_over_label_sets_and_only_the_named_counter() {
        assert_eq!(sum(TEXT, "splitway_pool_misses_total"), 10.0);
        assert_eq!(sum(TEXT, "splitway_pool_hits_total"), 4.0);
        assert_eq!(sum(TEXT, "nothing"), 0.0);
    }

    #[test]
    fn sums_only_label_sets_with_the_label() {
        let m = "splitway_module_bytes_total";
        assert_eq!(sum_where(TEXT, m, "what=\"wire_in\""), 15.0);
        assert_eq!(sum_where(TEXT, m, "what=\"plain_out\""), 70.0);
        assert_eq!(
            sum_where(TEXT, "splitway_pool_hits_total", "peer=\"a\""),
            0.0
        );
    }
}
