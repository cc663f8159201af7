//! The two-sided p-values `/admin/experiments` reports between a variant and the first one:
//! a two-proportion z-test on error rates and Welch's t-test on feedback scores. The normal and
//! Student-t distributions are statrs'; `None` when a test is not defined for the data (a
//! variant without requests, fewer than two scores, or no variation at all).

use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Names of the tests, as the JSON says them.
pub const ERROR_RATE_TEST: &str = "two-proportion z-test";
pub const SCORE_TEST: &str = "Welch t-test";

/// Two-sided p-value of the difference between `e1 / n1` and `e2 / n2` (pooled standard
/// error). `None` when either side has no trials or both rates are 0 or both are 1.
pub fn two_proportion(e1: u64, n1: u64, e2: u64, n2: u64) -> Option<f64> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (e1 + e2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se.is_nan() || se <= 0.0 {
        return None;
    }
    let z = (e2 as f64 / n2f - e1 as f64 / n1f) / se;
    let normal = Normal::new(0.0, 1.0).ok()?;
    Some(clamp(2.0 * normal.sf(z.abs())))
}

/// Count, sum and sum of squares of one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Moments {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_sq += x * x;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// The unbiased sample variance (n - 1).
    fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        Some(((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0))
    }
}

/// Two-sided p-value of Welch's t-test for a difference of means, with the Welch–Satterthwaite
/// degrees of freedom. `None` with fewer than two values on a side, or no variance at all.
pub fn welch(a: &Moments, b: &Moments) -> Option<f64> {
    let (va, vb) = (a.variance()?, b.variance()?);
    let (qa, qb) = (va / a.n as f64, vb / b.n as f64);
    let se2 = qa + qb;
    if se2.is_nan() || se2 <= 0.0 {
        return None;
    }
    let t = (b.mean()? - a.mean()?) / se2.sqrt();
    let df = se2 * se2 / (qa * qa / (a.n - 1) as f64 + qb * qb / (b.n - 1) as f64);
    if !df.is_finite() || df <= 0.0 {
        return None;
    }
    let student = StudentsT::new(0.0, 1.0, df).ok()?;
    Some(clamp(2.0 * student.sf(t.abs())))
}

fn clamp(p: f64) -> f64 {
    p.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() < tol
    }

    #[test]
    fn two_proportion_matches_a_textbook_case() {
        // 10/100 vs 20/100: z = 1.980, p = 0.0477.
        let p = two_proportion(10, 100, 20, 100).unwrap();
        assert!(close(p, 0.0477, 1e-3), "{p}");
        assert!(close(two_proportion(5, 50, 5, 50).unwrap(), 1.0, 1e-12));
        assert_eq!(two_proportion(0, 0, 1, 2), None);
        assert_eq!(two_proportion(0, 10, 0, 10), None);
    }

    #[test]
    fn welch_matches_a_reference_value() {
        // a = [1, 2, 3, 4], b = [2, 4, 6, 8, 10]: t = 2.2514, df = 5.5208, p ≈ 0.0691 (the
        // t density integrated numerically, independently of statrs).
        let mut a = Moments::default();
        let mut b = Moments::default();
        for x in [1.0, 2.0, 3.0, 4.0] {
            a.add(x);
        }
        for x in [2.0, 4.0, 6.0, 8.0, 10.0] {
            b.add(x);
        }
        let p = welch(&a, &b).unwrap();
        assert!(close(p, 0.0691, 1e-3), "{p}");
        let mut flat = Moments::default();
        flat.add(1.0);
        flat.add(1.0);
        assert_eq!(welch(&flat, &flat), None);
        let mut one = Moments::default();
        one.add(0.5);
        assert_eq!(welch(&one, &b), None);
        assert_eq!(a.mean(), Some(2.5));
    }
}
