//! Order statistics of run times: median and 90th percentile.
//!
//! Percentiles interpolate linearly between closest ranks (the common
//! "type 7" definition, as numpy's default), so the median of an even number
//! of runs is the mean of the two middle ones.

use serde::Serialize;

/// Median and p90 (and extremes) of one set of samples, in the samples' unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
}

/// The `q`-quantile (0..=1) of `xs`; `None` for no samples.
pub fn quantile(xs: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// Summarize samples; `None` for no samples.
pub fn summarize(xs: &[f64]) -> Option<Summary> {
    Some(Summary {
        median: quantile(xs, 0.5)?,
        p90: quantile(xs, 0.9)?,
        min: quantile(xs, 0.0)?,
        max: quantile(xs, 1.0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(quantile(&[4.0, 1.0, 2.0, 3.0], 0.5), Some(2.5));
    }

    #[test]
    fn p90_interpolates() {
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!((quantile(&xs, 0.9).unwrap() - 9.1).abs() < 1e-9);
        assert_eq!(quantile(&[7.0], 0.9), Some(7.0));
    }

    #[test]
    fn empty_and_nan() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(quantile(&[f64::NAN, 1.0], 0.5), Some(1.0));
        let s = summarize(&[5.0, 1.0, 9.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 5.0, 9.0));
    }
}
