//! The series and their points, in one sled tree, with CloudWatch's
//! retention schedule.
//!
//! Keys, by their first byte:
//! - `s` account `\0` namespace `\0` name `\0` (dimension `\x01` value `\0`)*:
//!   the series ([`SeriesMeta`], JSON).
//! - `p` series id (8) resolution (1) bucket start (8): a point ([`Agg`]).
//!   A moment lives in one table at a time: the finest that keeps its age
//!   (1-second points, of high-resolution series only, 3 hours; 1-minute
//!   15 days; 5-minute 63 days; 1-hour 455 days, CloudWatch's schedule).
//!   A write touches one key; [`MetricStore::sweep`] rolls points up into
//!   the next table as they age and drops what is past 455 days. Queries
//!   read every table (no moment is in two).
//! - `m` name: a high-water mark the writer keeps with its points (which
//!   node samples are already stored), so a batch sent twice counts once.
//! - `a` and `h`: alarms and their history ([`crate::alarm`]).
//!
//! A write is one atomic batch, flushed before it returns: what
//! [`MetricStore::put`] acknowledged survives a kill -9.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use crate::{agg::Agg, MetricId};

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metric store: {0}")]
    Sled(#[from] sled::Error),
    #[error("metric store: a damaged record under {0}")]
    Damaged(String),
}

/// How finely points are kept, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    tag: u8,
    /// Seconds a point covers.
    pub secs: i64,
    /// Seconds a point is kept.
    pub keep_secs: i64,
}

const DAY: i64 = 86_400;
/// CloudWatch's schedule: 1-second points (high-resolution metrics only)
/// for 3 hours, 1-minute for 15 days, 5-minute for 63 days, 1-hour for
/// 455 days.
pub const RESOLUTIONS: [Resolution; 4] = [
    Resolution {
        tag: 0,
        secs: 1,
        keep_secs: 3 * 3600,
    },
    Resolution {
        tag: 1,
        secs: 60,
        keep_secs: 15 * DAY,
    },
    Resolution {
        tag: 2,
        secs: 300,
        keep_secs: 63 * DAY,
    },
    Resolution {
        tag: 3,
        secs: 3600,
        keep_secs: 455 * DAY,
    },
];

/// What the store knows of a series besides its points.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SeriesMeta {
    pub id: u64,
    /// The unit of its latest datapoint (`None` when published without).
    pub unit: String,
    /// Published with StorageResolution 1 at least once.
    pub high_res: bool,
    /// When its newest datapoint was stored (Unix ms).
    pub last_ms: i64,
}

/// A datapoint to store: `agg` at `at_secs` of `metric`.
#[derive(Clone, Debug)]
pub struct Point {
    pub metric: MetricId,
    /// CloudWatch's unit name; `None` when not given.
    pub unit: String,
    pub at_secs: i64,
    pub agg: Agg,
    /// StorageResolution 1: also kept per second (for 3 hours).
    pub high_res: bool,
}

/// What a query covers: from `start` to `end` (Unix seconds, end
/// excluded) in periods of `period` seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    pub start: i64,
    pub end: i64,
    pub period: i64,
}

/// One period of a query's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    /// The period's start (Unix seconds).
    pub at: i64,
    pub agg: Agg,
}

/// A listed series.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    pub metric: MetricId,
    pub meta: SeriesMeta,
}

/// Which series ListMetrics wants.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Each must be among the series' dimensions (any value when `None`).
    pub dimensions: Vec<(String, Option<String>)>,
    /// Only series with a datapoint since then (Unix ms).
    pub since_ms: Option<i64>,
}

/// The store: one sled database of its own (its cache bounds its memory).
#[derive(Debug)]
pub struct MetricStore {
    db: sled::Db,
    tree: sled::Tree,
    /// One writer at a time: a write reads points, adds to them, writes.
    write: Mutex<()>,
}

fn series_key(account: &str, m: &MetricId) -> Vec<u8> {
    let mut k = Vec::with_capacity(64);
    k.push(b's');
    for part in [account, &m.namespace, &m.name] {
        k.extend_from_slice(part.as_bytes());
        k.push(0);
    }
    for d in &m.dimensions {
        k.extend_from_slice(d.name.as_bytes());
        k.push(1);
        k.extend_from_slice(d.value.as_bytes());
        k.push(0);
    }
    k
}

fn parse_series_key(k: &[u8]) -> Option<(String, MetricId)> {
    let body = k.strip_prefix(b"s")?;
    let mut parts = body.split(|b| *b == 0);
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
    let account = text(parts.next()?)?;
    let namespace = text(parts.next()?)?;
    let name = text(parts.next()?)?;
    let mut dimensions = Vec::new();
    for p in parts {
        if p.is_empty() {
            continue;
        }
        let i = p.iter().position(|b| *b == 1)?;
        dimensions.push(crate::Dimension {
            name: text(&p[..i])?,
            value: text(&p[i + 1..])?,
        });
    }
    Some((
        account,
        MetricId {
            namespace,
            name,
            dimensions,
        },
    ))
}

fn point_key(id: u64, res: Resolution, at: i64) -> [u8; 18] {
    let mut k = [0u8; 18];
    k[0] = b'p';
    k[1..9].copy_from_slice(&id.to_be_bytes());
    k[9] = res.tag;
    // Flip the sign bit so negative times sort before positive ones.
    k[10..18].copy_from_slice(&((at as u64) ^ (1 << 63)).to_be_bytes());
    k
}

fn point_time(k: &[u8]) -> Option<i64> {
    let b: [u8; 8] = k.get(10..18)?.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

impl MetricStore {
    /// Opens (or makes) the store at `path`, caching at most `cache_bytes`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()?;
        Self::on(db)
    }

    /// A store that vanishes when dropped (tests, benchmarks).
    pub fn temporary() -> Result<Self, StoreError> {
        Self::on(sled::Config::new().temporary(true).open()?)
    }

    fn on(db: sled::Db) -> Result<Self, StoreError> {
        let tree = db.open_tree("metrics")?;
        Ok(Self {
            db,
            tree,
            write: Mutex::new(()),
        })
    }

    /// The tree alarms are kept in too.
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// A number never handed out before.
    pub(crate) fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// Flushes to disk (what every write does before it returns).
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The series `metric` of `account`, if it has ever had a point.
    pub fn series(
        &self,
        account: &str,
        metric: &MetricId,
    ) -> Result<Option<SeriesMeta>, StoreError> {
        let k = series_key(account, metric);
        match self.tree.get(&k)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| StoreError::Damaged("a series".into())),
        }
    }

    /// The high-water mark `name` (see [`MetricStore::put`]).
    pub fn mark(&self, name: &str) -> Result<Option<i64>, StoreError> {
        let mut k = vec![b'm'];
        k.extend_from_slice(name.as_bytes());
        Ok(self.tree.get(k)?.and_then(|v| {
            let b: [u8; 8] = v.as_ref().try_into().ok()?;
            Some(i64::from_be_bytes(b))
        }))
    }

    /// Stores `points` of `account`, and with them (in the same atomic
    /// batch) the high-water `marks`; flushed when it returns. Points older
    /// than a resolution keeps are not stored at that resolution.
    pub fn put(
        &self,
        account: &str,
        points: &[Point],
        marks: &[(String, i64)],
        now_secs: i64,
    ) -> Result<(), StoreError> {
        self.put_many(&[(account, points)], marks, now_secs)
    }

    /// [`MetricStore::put`] for several accounts' points in one batch.
    pub fn put_many(
        &self,
        batches: &[(&str, &[Point])],
        marks: &[(String, i64)],
        now_secs: i64,
    ) -> Result<(), StoreError> {
        let _one = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut metas: HashMap<Vec<u8>, (SeriesMeta, bool)> = HashMap::new();
        let mut sums: HashMap<[u8; 18], Agg> = HashMap::new();
        for (account, p) in batches
            .iter()
            .flat_map(|(a, ps)| ps.iter().map(move |p| (*a, p)))
        {
            let sk = series_key(account, &p.metric);
            let (meta, changed) = match metas.get_mut(&sk) {
                Some(m) => m,
                None => {
                    let found = match self.tree.get(&sk)? {
                        Some(v) => Some(
                            serde_json::from_slice::<SeriesMeta>(&v)
                                .map_err(|_| StoreError::Damaged("a series".into()))?,
                        ),
                        None => None,
                    };
                    let entry = match found {
                        Some(m) => (m, false),
                        None => (
                            SeriesMeta {
                                id: self.db.generate_id()?,
                                unit: p.unit.clone(),
                                high_res: false,
                                last_ms: 0,
                            },
                            true,
                        ),
                    };
                    metas.entry(sk).or_insert(entry)
                }
            };
            let at_ms = p.at_secs * 1000;
            if meta.unit != p.unit || (p.high_res && !meta.high_res) {
                meta.unit = p.unit.clone();
                meta.high_res |= p.high_res;
                *changed = true;
            }
            // The mark moves on a minute at a time (fewer rewrites).
            if at_ms > meta.last_ms + 60_000 || (meta.last_ms == 0 && at_ms > 0) {
                meta.last_ms = at_ms.max(meta.last_ms);
                *changed = true;
            }
            // One table holds a point: the finest that keeps its age.
            let Some(res) = home_of(p.at_secs, now_secs, p.high_res) else {
                continue;
            };
            let at = p.at_secs.div_euclid(res.secs) * res.secs;
            let pk = point_key(meta.id, res, at);
            let agg = match sums.get_mut(&pk) {
                Some(a) => a,
                None => {
                    let now = match self.tree.get(pk)? {
                        Some(v) => {
                            Agg::decode(&v).ok_or_else(|| StoreError::Damaged("a point".into()))?
                        }
                        None => Agg::set(0.0, 0.0, 0.0, 0.0),
                    };
                    sums.entry(pk).or_insert(now)
                }
            };
            agg.merge(&p.agg);
        }
        let mut batch = sled::Batch::default();
        for (k, (meta, changed)) in &metas {
            if *changed {
                let v =
                    serde_json::to_vec(meta).map_err(|_| StoreError::Damaged("a series".into()))?;
                batch.insert(k.as_slice(), v);
            }
        }
        for (k, agg) in &sums {
            batch.insert(&k[..], agg.encode());
        }
        for (name, at) in marks {
            let mut k = vec![b'm'];
            k.extend_from_slice(name.as_bytes());
            batch.insert(k, &at.to_be_bytes()[..]);
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// The points of `metric` over `span`, as CloudWatch answers
    /// GetMetricStatistics: from the finest resolution still kept for
    /// `start`, periods counted from `start` rounded down to it; none if
    /// `period` is not a multiple of it. With `unit`, only a series of that
    /// unit answers.
    pub fn statistics(
        &self,
        account: &str,
        metric: &MetricId,
        span: Span,
        unit: Option<&str>,
        now_secs: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        let Span { start, end, period } = span;
        let Some(meta) = self.series(account, metric)? else {
            return Ok(vec![]);
        };
        if unit.is_some_and(|u| u != meta.unit) || period <= 0 || end <= start {
            return Ok(vec![]);
        }
        let age = now_secs - start;
        let res = if period < 60 && meta.high_res && age <= RESOLUTIONS[0].keep_secs {
            RESOLUTIONS[0]
        } else if age <= RESOLUTIONS[1].keep_secs {
            RESOLUTIONS[1]
        } else if age <= RESOLUTIONS[2].keep_secs {
            RESOLUTIONS[2]
        } else {
            RESOLUTIONS[3]
        };
        if period >= 60 && period % res.secs != 0 {
            return Ok(vec![]);
        }
        let origin = start.div_euclid(res.secs) * res.secs;
        let mut out: BTreeMap<i64, Agg> = BTreeMap::new();
        // Each moment lives in one table (the sweep rolls points up as they
        // age): read them all.
        for table in RESOLUTIONS {
            let from = point_key(meta.id, table, origin.div_euclid(table.secs) * table.secs);
            let to = point_key(meta.id, table, end);
            for kv in self.tree.range(from..to) {
                let (k, v) = kv?;
                let at = point_time(&k).ok_or_else(|| StoreError::Damaged("a point key".into()))?;
                let agg = Agg::decode(&v).ok_or_else(|| StoreError::Damaged("a point".into()))?;
                let bucket = origin + (at.max(origin) - origin).div_euclid(period) * period;
                out.entry(bucket)
                    .and_modify(|a| a.merge(&agg))
                    .or_insert(agg);
            }
        }
        Ok(out
            .into_iter()
            .map(|(at, agg)| Bucket { at, agg })
            .collect())
    }

    /// Up to `limit` series of `account` that `filter` wants, in key order,
    /// after the one `after` names (a token from a previous page); and the
    /// token of the next page, if there is one.
    pub fn list(
        &self,
        account: &str,
        filter: &ListFilter,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Listed>, Option<Vec<u8>>), StoreError> {
        let mut prefix = vec![b's'];
        prefix.extend_from_slice(account.as_bytes());
        prefix.push(0);
        if let Some(ns) = &filter.namespace {
            prefix.extend_from_slice(ns.as_bytes());
            prefix.push(0);
            if let Some(name) = &filter.name {
                prefix.extend_from_slice(name.as_bytes());
                prefix.push(0);
            }
        }
        let mut out = Vec::new();
        let iter = match after {
            Some(a) if a.starts_with(&prefix) => {
                use std::ops::Bound;
                self.tree
                    .range::<&[u8], _>((Bound::Excluded(a), Bound::Unbounded))
            }
            _ => self.tree.range(prefix.clone()..),
        };
        for kv in iter {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Some((_, metric)) = parse_series_key(&k) else {
                continue;
            };
            if filter.name.as_ref().is_some_and(|n| *n != metric.name) {
                continue;
            }
            let wanted = filter.dimensions.iter().all(|(n, v)| {
                metric
                    .dimensions
                    .iter()
                    .any(|d| d.name == *n && v.as_ref().is_none_or(|v| *v == d.value))
            });
            if !wanted {
                continue;
            }
            let meta: SeriesMeta =
                serde_json::from_slice(&v).map_err(|_| StoreError::Damaged("a series".into()))?;
            if filter.since_ms.is_some_and(|s| meta.last_ms < s) {
                continue;
            }
            if out.len() == limit {
                let last: &Listed = &out[out.len() - 1];
                let token = series_key(account, &last.metric);
                return Ok((out, Some(token)));
            }
            out.push(Listed { metric, meta });
        }
        Ok((out, None))
    }

    /// Rolls points up as they age (1-second points past 3 hours into
    /// 1-minute ones, 1-minute past 15 days into 5-minute, 5-minute past 63
    /// days into 1-hour), drops 1-hour points past 455 days and the series
    /// with none left; returns how many points went or moved.
    pub fn sweep(&self, now_secs: i64) -> Result<usize, StoreError> {
        let _one = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = 0;
        let series: Vec<(sled::IVec, SeriesMeta)> = self
            .tree
            .scan_prefix(b"s")
            .filter_map(|kv| {
                let (k, v) = kv.ok()?;
                Some((k, serde_json::from_slice(&v).ok()?))
            })
            .collect();
        for (k, meta) in series {
            let mut batch = sled::Batch::default();
            let mut coarser: BTreeMap<[u8; 18], Agg> = BTreeMap::new();
            for (i, res) in RESOLUTIONS.iter().enumerate() {
                let from = point_key(meta.id, *res, i64::MIN);
                let to = point_key(meta.id, *res, now_secs - res.keep_secs);
                for kv in self.tree.range(from..to) {
                    let (pk, v) = kv?;
                    batch.remove(pk.clone());
                    gone += 1;
                    let Some(next) = RESOLUTIONS.get(i + 1) else {
                        continue;
                    };
                    let (Some(at), Some(agg)) = (point_time(&pk), Agg::decode(&v)) else {
                        continue;
                    };
                    let nk = point_key(meta.id, *next, at.div_euclid(next.secs) * next.secs);
                    match coarser.get_mut(&nk) {
                        Some(a) => a.merge(&agg),
                        None => {
                            let mut a = match self.tree.get(nk)? {
                                Some(v) => Agg::decode(&v)
                                    .ok_or_else(|| StoreError::Damaged("a point".into()))?,
                                None => Agg::set(0.0, 0.0, 0.0, 0.0),
                            };
                            a.merge(&agg);
                            coarser.insert(nk, a);
                        }
                    }
                }
            }
            for (nk, agg) in &coarser {
                batch.insert(&nk[..], agg.encode());
            }
            if meta.last_ms < (now_secs - RESOLUTIONS[3].keep_secs) * 1000 {
                batch.remove(k);
                gone += 1;
            }
            self.tree.apply_batch(batch)?;
        }
        self.db.flush()?;
        Ok(gone)
    }
}

/// The table a point of `at` lives in: the finest that keeps that age
/// (1-second ones only for high-resolution metrics); none past them all.
fn home_of(at: i64, now: i64, high_res: bool) -> Option<Resolution> {
    RESOLUTIONS
        .into_iter()
        .filter(|r| high_res || r.secs > 1)
        .find(|r| at >= now - r.keep_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{agg::Statistic, Dimension};

    fn cpu(id: &str) -> MetricId {
        MetricId::new(
            "AWS/EC2",
            "CPUUtilization",
            vec![Dimension::new("InstanceId", id)],
        )
    }

    fn point(m: &MetricId, at: i64, v: f64) -> Point {
        Point {
            metric: m.clone(),
            unit: "Percent".into(),
            at_secs: at,
            agg: Agg::of(v, 1.0),
            high_res: false,
        }
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn points_come_back_in_periods_with_exact_sums() {
        let s = MetricStore::temporary().expect("works");
        let m = cpu("i-1");
        let t0 = NOW - 3600;
        let pts: Vec<Point> = (0..30).map(|i| point(&m, t0 + i * 10, i as f64)).collect();
        s.put("111", &pts, &[], NOW).expect("works");
        let b = s
            .statistics(
                "111",
                &m,
                Span {
                    start: t0,
                    end: t0 + 300,
                    period: 60,
                },
                None,
                NOW,
            )
            .expect("works");
        assert_eq!(b.len(), 5);
        assert_eq!(b[0].at, t0 - t0.rem_euclid(60));
        let total: f64 = b.iter().filter_map(|b| b.agg.get(Statistic::Sum)).sum();
        assert_eq!(total, (0..30).sum::<i64>() as f64);
        // A whole 5-minute period, and another account's view.
        let b5 = s
            .statistics(
                "111",
                &m,
                Span {
                    start: t0 - t0.rem_euclid(300),
                    end: t0 + 600,
                    period: 300,
                },
                None,
                NOW,
            )
            .expect("works");
        let sum: f64 = b5.iter().filter_map(|b| b.agg.get(Statistic::Sum)).sum();
        assert_eq!(sum, 435.0);
        assert!(s
            .statistics(
                "222",
                &m,
                Span {
                    start: t0,
                    end: t0 + 300,
                    period: 60
                },
                None,
                NOW
            )
            .expect("works")
            .is_empty());
        // Another unit: none.
        assert!(s
            .statistics(
                "111",
                &m,
                Span {
                    start: t0,
                    end: t0 + 300,
                    period: 60
                },
                Some("Count"),
                NOW
            )
            .expect("works")
            .is_empty());
        // Not a multiple of the resolution kept for that age.
        let old = NOW - 20 * DAY;
        s.put("111", &[point(&m, old, 5.0)], &[], NOW)
            .expect("works");
        assert!(s
            .statistics(
                "111",
                &m,
                Span {
                    start: old,
                    end: old + 600,
                    period: 60
                },
                None,
                NOW
            )
            .expect("works")
            .is_empty());
        assert_eq!(
            s.statistics(
                "111",
                &m,
                Span {
                    start: old,
                    end: old + 600,
                    period: 300
                },
                None,
                NOW
            )
            .expect("works")
            .len(),
            1
        );
    }

    #[test]
    fn points_roll_up_as_they_age_and_go_after_455_days() {
        let s = MetricStore::temporary().expect("works");
        let m = cpu("i-1");
        let at = NOW - 14 * DAY;
        s.put(
            "111",
            &[point(&m, at, 4.0), point(&m, at + 60, 6.0)],
            &[],
            NOW,
        )
        .expect("works");
        let sum = |now: i64, period: i64| -> Option<f64> {
            let b = s
                .statistics(
                    "111",
                    &m,
                    Span {
                        start: at - at.rem_euclid(3600),
                        end: at + 3600,
                        period,
                    },
                    None,
                    now,
                )
                .expect("works");
            b.first()?.agg.get(Statistic::Sum)
        };
        assert_eq!(s.sweep(NOW).expect("works"), 0, "nothing is old yet");
        assert_eq!(sum(NOW, 60), Some(4.0), "the first minute alone");
        // Past 15 days: into a 5-minute point; 1-minute periods no longer answer.
        assert_eq!(s.sweep(NOW + 2 * DAY).expect("works"), 2);
        assert_eq!(sum(NOW + 2 * DAY, 300), Some(10.0));
        assert_eq!(sum(NOW + 2 * DAY, 60), None);
        // Past 63 days: a 1-hour point.
        assert_eq!(s.sweep(NOW + 50 * DAY).expect("works"), 1);
        assert_eq!(sum(NOW + 50 * DAY, 3600), Some(10.0));
        assert_eq!(sum(NOW + 50 * DAY, 300), None);
        // Past 455 days: gone, and the series with it.
        assert_eq!(s.sweep(NOW + 460 * DAY).expect("works"), 2);
        assert!(s.series("111", &m).expect("works").is_none());
    }

    #[test]
    fn listing_filters_and_pages() {
        let s = MetricStore::temporary().expect("works");
        let mut pts = Vec::new();
        for i in 0..7 {
            pts.push(point(&cpu(&format!("i-{i}")), NOW, 1.0));
        }
        let mut other = point(&cpu("i-x"), NOW, 1.0);
        other.metric.name = "NetworkIn".into();
        pts.push(other);
        s.put("111", &pts, &[("node-a".into(), 42)], NOW)
            .expect("works");
        assert_eq!(s.mark("node-a").expect("works"), Some(42));
        let f = ListFilter {
            namespace: Some("AWS/EC2".into()),
            name: Some("CPUUtilization".into()),
            ..Default::default()
        };
        let (page, next) = s.list("111", &f, None, 5).expect("works");
        assert_eq!(page.len(), 5);
        let (rest, none) = s.list("111", &f, next.as_deref(), 5).expect("works");
        assert_eq!(rest.len(), 2);
        assert!(none.is_none());
        let by_dim = ListFilter {
            dimensions: vec![("InstanceId".into(), Some("i-x".into()))],
            ..Default::default()
        };
        let (x, _) = s.list("111", &by_dim, None, 500).expect("works");
        assert_eq!(x.len(), 1);
        assert_eq!(x[0].metric.name, "NetworkIn");
        assert!(s
            .list("222", &ListFilter::default(), None, 500)
            .expect("works")
            .0
            .is_empty());
    }

    #[test]
    fn what_was_put_survives_reopening() {
        let dir = tempfile::tempdir().expect("works");
        let m = cpu("i-1");
        {
            let s = MetricStore::open(dir.path(), 1 << 20).expect("works");
            s.put("111", &[point(&m, NOW, 7.0)], &[], NOW)
                .expect("works");
        }
        let s = MetricStore::open(dir.path(), 1 << 20).expect("works");
        let b = s
            .statistics(
                "111",
                &m,
                Span {
                    start: NOW - 60,
                    end: NOW + 60,
                    period: 60,
                },
                None,
                NOW,
            )
            .expect("works");
        assert_eq!(b[0].agg.get(Statistic::Maximum), Some(7.0));
    }
}
