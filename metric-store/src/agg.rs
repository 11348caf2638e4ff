//! A statistic set over some values: what one stored point holds and what
//! every statistic CloudWatch offers is computed from.
//!
//! Besides count, sum, minimum and maximum, it keeps the values themselves
//! (with their counts) for percentiles, up to [`MAX_VALUES`] of them; past
//! that the two closest are merged (a weighted mean), so a point stays small
//! and percentiles over many values are close rather than exact.

/// Most distinct values a point keeps for percentiles.
pub const MAX_VALUES: usize = 64;

/// Count, sum, min, max and the values (value, count), sorted by value.
#[derive(Clone, Debug, PartialEq)]
pub struct Agg {
    pub count: f64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub values: Vec<(f64, f64)>,
}

/// A statistic CloudWatch computes (`Statistics` or `ExtendedStatistics`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Statistic {
    Average,
    Sum,
    Minimum,
    Maximum,
    SampleCount,
    /// pNN: the value below which NN percent of the values fall.
    Percentile(f64),
}

impl Statistic {
    /// `Average`, ... or `p90`, `p99.9` (as ExtendedStatistics names them).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "Average" => Self::Average,
            "Sum" => Self::Sum,
            "Minimum" => Self::Minimum,
            "Maximum" => Self::Maximum,
            "SampleCount" => Self::SampleCount,
            _ => {
                let n: f64 = s.strip_prefix('p')?.parse().ok()?;
                if !(0.0..=100.0).contains(&n) || s.len() > 7 {
                    return None;
                }
                Self::Percentile(n)
            }
        })
    }

    /// Whether it is one of the five basic statistics.
    pub fn is_basic(&self) -> bool {
        !matches!(self, Self::Percentile(_))
    }
}

impl Agg {
    /// One value, `count` times.
    pub fn of(value: f64, count: f64) -> Self {
        Self {
            count,
            sum: value * count,
            min: value,
            max: value,
            values: vec![(value, count)],
        }
    }

    /// A statistic set published as such (no values: no percentiles unless
    /// all its values are one).
    pub fn set(count: f64, sum: f64, min: f64, max: f64) -> Self {
        Self {
            count,
            sum,
            min,
            max,
            values: if min == max {
                vec![(min, count)]
            } else {
                vec![]
            },
        }
    }

    /// Adds `other`'s values to this one's.
    pub fn merge(&mut self, other: &Agg) {
        if self.count == 0.0 {
            *self = other.clone();
            return;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        for &(v, c) in &other.values {
            match self.values.binary_search_by(|(x, _)| x.total_cmp(&v)) {
                Ok(i) => self.values[i].1 += c,
                Err(i) => self.values.insert(i, (v, c)),
            }
        }
        while self.values.len() > MAX_VALUES {
            // Merge the two closest neighbours.
            let mut best = 0;
            let mut gap = f64::INFINITY;
            for i in 0..self.values.len() - 1 {
                let g = self.values[i + 1].0 - self.values[i].0;
                if g < gap {
                    gap = g;
                    best = i;
                }
            }
            let (a, ca) = self.values[best];
            let (b, cb) = self.values.remove(best + 1);
            let c = ca + cb;
            self.values[best] = ((a * ca + b * cb) / c, c);
        }
    }

    /// The statistic, if it can be computed from what the point holds.
    pub fn get(&self, s: Statistic) -> Option<f64> {
        if self.count <= 0.0 {
            return None;
        }
        Some(match s {
            Statistic::Average => self.sum / self.count,
            Statistic::Sum => self.sum,
            Statistic::Minimum => self.min,
            Statistic::Maximum => self.max,
            Statistic::SampleCount => self.count,
            Statistic::Percentile(p) => {
                let total: f64 = self.values.iter().map(|(_, c)| c).sum();
                if total <= 0.0 {
                    return None;
                }
                let want = total * p / 100.0;
                let mut seen = 0.0;
                let mut out = self.values.last()?.0;
                for &(v, c) in &self.values {
                    seen += c;
                    if seen >= want {
                        out = v;
                        break;
                    }
                }
                out
            }
        })
    }

    /// The bytes it is stored as: 9 for a single value (most points), 17
    /// for one value several times, else the whole set.
    pub fn encode(&self) -> Vec<u8> {
        if let [(v, c)] = self.values[..] {
            if v == self.min && v == self.max && c == self.count && v * c == self.sum {
                let mut out = Vec::with_capacity(17);
                out.push(if c == 1.0 { 1 } else { 2 });
                out.extend_from_slice(&v.to_le_bytes());
                if c != 1.0 {
                    out.extend_from_slice(&c.to_le_bytes());
                }
                return out;
            }
        }
        let mut out = Vec::with_capacity(34 + 16 * self.values.len());
        out.push(0);
        for f in [self.count, self.sum, self.min, self.max] {
            out.extend_from_slice(&f.to_le_bytes());
        }
        out.push(self.values.len() as u8);
        for (v, c) in &self.values {
            out.extend_from_slice(&v.to_le_bytes());
            out.extend_from_slice(&c.to_le_bytes());
        }
        out
    }

    /// Reads what [`Agg::encode`] wrote.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let (tag, b) = b.split_first()?;
        let f = |i: usize| -> Option<f64> {
            Some(f64::from_le_bytes(
                b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        match tag {
            1 if b.len() == 8 => return Some(Agg::of(f(0)?, 1.0)),
            2 if b.len() == 16 => return Some(Agg::of(f(0)?, f(1)?)),
            0 => {}
            _ => return None,
        }
        let n = *b.get(32)? as usize;
        let rest = b.get(33..)?;
        if rest.len() != n * 16 {
            return None;
        }
        let values = rest
            .chunks_exact(16)
            .map(|c| {
                let (v, k) = c.split_at(8);
                Some((
                    f64::from_le_bytes(v.try_into().ok()?),
                    f64::from_le_bytes(k.try_into().ok()?),
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            count: f(0)?,
            sum: f(1)?,
            min: f(2)?,
            max: f(3)?,
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_merged_values() {
        let mut a = Agg::of(1.0, 1.0);
        for v in [2.0, 3.0, 4.0] {
            a.merge(&Agg::of(v, 1.0));
        }
        a.merge(&Agg::of(10.0, 4.0));
        assert_eq!(a.get(Statistic::Sum), Some(50.0));
        assert_eq!(a.get(Statistic::SampleCount), Some(8.0));
        assert_eq!(a.get(Statistic::Average), Some(6.25));
        assert_eq!(a.get(Statistic::Minimum), Some(1.0));
        assert_eq!(a.get(Statistic::Maximum), Some(10.0));
        assert_eq!(a.get(Statistic::Percentile(50.0)), Some(4.0));
        assert_eq!(a.get(Statistic::Percentile(90.0)), Some(10.0));
        assert_eq!(Agg::decode(&a.encode()), Some(a));
        let one = Agg::of(2.5, 1.0);
        assert_eq!(one.encode().len(), 9);
        assert_eq!(Agg::decode(&one.encode()), Some(one));
        let thrice = Agg::of(-1.5, 3.0);
        assert_eq!(thrice.encode().len(), 17);
        assert_eq!(Agg::decode(&thrice.encode()), Some(thrice));
        assert_eq!(Agg::decode(&[9, 0]), None);
    }

    #[test]
    fn many_values_stay_bounded_and_percentiles_close() {
        let mut a = Agg::of(0.0, 1.0);
        for v in 1..1000 {
            a.merge(&Agg::of(v as f64, 1.0));
        }
        assert!(a.values.len() <= MAX_VALUES);
        assert_eq!(a.get(Statistic::Sum), Some(499_500.0));
        let p90 = a.get(Statistic::Percentile(90.0)).unwrap_or(0.0);
        assert!((p90 - 900.0).abs() < 25.0, "p90 {p90}");
    }

    #[test]
    fn statistic_names() {
        assert_eq!(Statistic::parse("p99.9"), Some(Statistic::Percentile(99.9)));
        assert_eq!(Statistic::parse("p101"), None);
        assert_eq!(Statistic::parse("Median"), None);
        assert_eq!(Statistic::parse("Sum"), Some(Statistic::Sum));
    }
}
