//! Metric alarms: what an alarm watches and how it judges the points
//! ([`evaluate`]), kept with their history in the metric store.

use serde::{Deserialize, Serialize};

use crate::{
    store::{MetricStore, StoreError},
    MetricId,
};

/// An alarm's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmState {
    Ok,
    Alarm,
    InsufficientData,
}

impl AlarmState {
    /// As CloudWatch writes it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Alarm => "ALARM",
            Self::InsufficientData => "INSUFFICIENT_DATA",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "OK" => Self::Ok,
            "ALARM" => Self::Alarm,
            "INSUFFICIENT_DATA" => Self::InsufficientData,
            _ => return None,
        })
    }
}

/// How a point is compared with the threshold.
pub const COMPARISONS: [&str; 4] = [
    "GreaterThanOrEqualToThreshold",
    "GreaterThanThreshold",
    "LessThanThreshold",
    "LessThanOrEqualToThreshold",
];

/// What a period without a point counts as.
pub const MISSING: [&str; 4] = ["breaching", "notBreaching", "ignore", "missing"];

/// What PutMetricAlarm sets: everything of an alarm but its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmSpec {
    pub name: String,
    pub description: Option<String>,
    pub actions_enabled: bool,
    pub ok_actions: Vec<String>,
    pub alarm_actions: Vec<String>,
    pub insufficient_data_actions: Vec<String>,
    pub metric: MetricId,
    /// A basic statistic (`Average`, ...) or an extended one (`p90`).
    pub statistic: String,
    pub extended: bool,
    pub period: i64,
    pub unit: Option<String>,
    pub evaluation_periods: u32,
    pub datapoints_to_alarm: Option<u32>,
    pub threshold: f64,
    pub comparison: String,
    pub treat_missing_data: Option<String>,
}

/// A metric alarm: its account's, as PutMetricAlarm made it, with its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    pub account: String,
    pub arn: String,
    #[serde(flatten)]
    pub spec: AlarmSpec,
    pub state: AlarmState,
    pub state_reason: String,
    pub state_reason_data: Option<String>,
    pub state_updated_ms: i64,
    pub state_transitioned_ms: i64,
    pub config_updated_ms: i64,
}

/// An entry of an alarm's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryItem {
    pub alarm_name: String,
    pub at_ms: i64,
    /// `ConfigurationUpdate`, `StateUpdate` or `Action`.
    pub kind: String,
    pub summary: String,
    /// JSON, as CloudWatch gives it.
    pub data: String,
}

/// What an evaluation found.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub state: AlarmState,
    pub reason: String,
}

fn breaches(comparison: &str, v: f64, threshold: f64) -> bool {
    match comparison {
        "GreaterThanOrEqualToThreshold" => v >= threshold,
        "GreaterThanThreshold" => v > threshold,
        "LessThanThreshold" => v < threshold,
        _ => v <= threshold,
    }
}

fn phrase(comparison: &str) -> &'static str {
    match comparison {
        "GreaterThanOrEqualToThreshold" => "greater than or equal to",
        "GreaterThanThreshold" => "greater than",
        "LessThanThreshold" => "less than",
        _ => "less than or equal to",
    }
}

/// Judges the alarm on its last `evaluation_periods` periods (oldest
/// first; `None`: no point), as CloudWatch does: ALARM when at least
/// `datapoints_to_alarm` of them breach; missing ones count as
/// `treat_missing_data` says (`missing` by default: left out, and no point
/// at all is INSUFFICIENT_DATA; `ignore`: the state stays). `None` when
/// the state stays as it is.
pub fn evaluate(alarm: &Alarm, points: &[Option<f64>]) -> Option<Verdict> {
    let n = alarm.spec.evaluation_periods.max(1) as usize;
    let m = alarm
        .spec
        .datapoints_to_alarm
        .unwrap_or(alarm.spec.evaluation_periods)
        .max(1) as usize;
    let treat = alarm
        .spec
        .treat_missing_data
        .as_deref()
        .unwrap_or("missing");
    let points = &points[points.len().saturating_sub(n)..];
    let present: Vec<f64> = points.iter().flatten().copied().collect();
    let missing = points.len() - present.len();
    let mut breaching: Vec<f64> = present
        .iter()
        .copied()
        .filter(|v| breaches(&alarm.spec.comparison, *v, alarm.spec.threshold))
        .collect();
    let mut missing_breach = 0;
    match treat {
        "breaching" => missing_breach = missing,
        "notBreaching" => {}
        "ignore" if present.is_empty() => return None,
        _ if present.is_empty() => {
            return Some(Verdict {
                state: AlarmState::InsufficientData,
                reason: format!(
                    "Insufficient Data: {n} datapoint{} unknown.",
                    if n == 1 { " was" } else { "s were" }
                ),
            })
        }
        _ => {}
    }
    let list = |vals: &[f64]| {
        vals.iter()
            .map(|v| format!("{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if breaching.len() + missing_breach >= m {
        breaching.truncate(m);
        return Some(Verdict {
            state: AlarmState::Alarm,
            reason: format!(
                "Threshold Crossed: {} out of the last {} datapoints [{}] {} {} the threshold ({}) (minimum {m} datapoint{} for OK -> ALARM transition).",
                breaching.len() + missing_breach,
                n,
                list(&breaching),
                if breaching.len() + missing_breach == 1 { "was" } else { "were" },
                phrase(&alarm.spec.comparison),
                alarm.spec.threshold,
                if m == 1 { "" } else { "s" },
            ),
        });
    }
    let shown: Vec<f64> = present.iter().rev().take(m).copied().collect();
    Some(Verdict {
        state: AlarmState::Ok,
        reason: format!(
            "Threshold Crossed: {} datapoint{} [{}] {} not {} the threshold ({}).",
            shown.len(),
            if shown.len() == 1 { "" } else { "s" },
            list(&shown),
            if shown.len() == 1 { "was" } else { "were" },
            phrase(&alarm.spec.comparison),
            alarm.spec.threshold,
        ),
    })
}

fn alarm_key(account: &str, name: &str) -> Vec<u8> {
    let mut k = vec![b'a'];
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

fn history_prefix(account: &str) -> Vec<u8> {
    let mut k = vec![b'h'];
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k
}

/// How long alarm history is kept (CloudWatch: two weeks).
pub const HISTORY_KEEP_MS: i64 = 14 * 86_400_000;

impl MetricStore {
    /// Stores `alarm` (new or changed) and `history` with it, flushed.
    pub fn put_alarm(&self, alarm: &Alarm, history: &[HistoryItem]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let v = serde_json::to_vec(alarm).map_err(|_| StoreError::Damaged("an alarm".into()))?;
        batch.insert(alarm_key(&alarm.account, &alarm.spec.name), v);
        self.history_into(&mut batch, &alarm.account, history)?;
        self.tree().apply_batch(batch)?;
        self.flush()
    }

    fn history_into(
        &self,
        batch: &mut sled::Batch,
        account: &str,
        history: &[HistoryItem],
    ) -> Result<(), StoreError> {
        for h in history {
            let mut k = history_prefix(account);
            k.extend_from_slice(&(h.at_ms as u64).to_be_bytes());
            k.extend_from_slice(&self.next_id()?.to_be_bytes());
            let v = serde_json::to_vec(h).map_err(|_| StoreError::Damaged("history".into()))?;
            batch.insert(k, v);
        }
        Ok(())
    }

    /// Adds `history` of `account`'s alarms, flushed.
    pub fn add_history(&self, account: &str, history: &[HistoryItem]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        self.history_into(&mut batch, account, history)?;
        self.tree().apply_batch(batch)?;
        self.flush()
    }

    /// The alarm `name` of `account`.
    pub fn alarm(&self, account: &str, name: &str) -> Result<Option<Alarm>, StoreError> {
        match self.tree().get(alarm_key(account, name))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| StoreError::Damaged("an alarm".into())),
        }
    }

    /// Every alarm of `account` (of every account: `None`), by name.
    pub fn alarms(&self, account: Option<&str>) -> Result<Vec<Alarm>, StoreError> {
        let prefix = match account {
            Some(a) => alarm_key(a, ""),
            None => vec![b'a'],
        };
        self.tree()
            .scan_prefix(prefix)
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v).map_err(|_| StoreError::Damaged("an alarm".into()))
            })
            .collect()
    }

    /// Deletes the alarms `names` of `account` (all or none: the names not
    /// found come back and nothing is deleted).
    pub fn delete_alarms(
        &self,
        account: &str,
        names: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut missing = Vec::new();
        for n in names {
            if self.tree().get(alarm_key(account, n))?.is_none() {
                missing.push(n.clone());
            }
        }
        if !missing.is_empty() {
            return Ok(missing);
        }
        let mut batch = sled::Batch::default();
        for n in names {
            batch.remove(alarm_key(account, n));
        }
        self.tree().apply_batch(batch)?;
        self.flush()?;
        Ok(vec![])
    }

    /// `account`'s history, newest first, from `from_ms` to `to_ms`.
    pub fn history(
        &self,
        account: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<HistoryItem>, StoreError> {
        let prefix = history_prefix(account);
        let mut start = prefix.clone();
        start.extend_from_slice(&(from_ms.max(0) as u64).to_be_bytes());
        let mut end = prefix.clone();
        end.extend_from_slice(&(to_ms.max(0) as u64).to_be_bytes());
        let mut out: Vec<HistoryItem> = self
            .tree()
            .range(start..end)
            .map(|kv| {
                let (_, v) = kv?;
                serde_json::from_slice(&v).map_err(|_| StoreError::Damaged("history".into()))
            })
            .collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// Drops history older than two weeks; how many entries went.
    pub fn sweep_history(&self, now_ms: i64) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut gone = 0;
        for kv in self.tree().scan_prefix(b"h") {
            let (k, _) = kv?;
            let Some(at) = k
                .iter()
                .position(|b| *b == 0)
                .and_then(|i| k.get(i + 1..i + 9))
                .and_then(|b| b.try_into().ok())
                .map(|b: [u8; 8]| u64::from_be_bytes(b) as i64)
            else {
                continue;
            };
            if at < now_ms - HISTORY_KEEP_MS {
                batch.remove(k);
                gone += 1;
            }
        }
        self.tree().apply_batch(batch)?;
        self.flush()?;
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(n: u32, m: Option<u32>, treat: Option<&str>) -> Alarm {
        Alarm {
            account: "111".into(),
            arn: "arn:aws:cloudwatch:r:111:alarm:cpu".into(),
            spec: AlarmSpec {
                name: "cpu".into(),
                description: None,
                actions_enabled: true,
                ok_actions: vec![],
                alarm_actions: vec![],
                insufficient_data_actions: vec![],
                metric: MetricId::new("AWS/EC2", "CPUUtilization", vec![]),
                statistic: "Average".into(),
                extended: false,
                period: 60,
                unit: None,
                evaluation_periods: n,
                datapoints_to_alarm: m,
                threshold: 80.0,
                comparison: "GreaterThanThreshold".into(),
                treat_missing_data: treat.map(str::to_string),
            },
            state: AlarmState::InsufficientData,
            state_reason: String::new(),
            state_reason_data: None,
            state_updated_ms: 0,
            state_transitioned_ms: 0,
            config_updated_ms: 0,
        }
    }

    #[test]
    fn n_breaching_periods_make_an_alarm() {
        let a = alarm(2, None, None);
        let v = evaluate(&a, &[Some(99.0), Some(98.5)]).expect("works");
        assert_eq!(v.state, AlarmState::Alarm);
        assert!(v.reason.contains("[99, 98.5]"), "{}", v.reason);
        assert_eq!(
            evaluate(&a, &[Some(10.0), Some(98.5)])
                .expect("works")
                .state,
            AlarmState::Ok
        );
        assert_eq!(
            evaluate(&a, &[None, None]).expect("works").state,
            AlarmState::InsufficientData
        );
        // 1 of 2 is enough with DatapointsToAlarm 1.
        assert_eq!(
            evaluate(&alarm(2, Some(1), None), &[Some(10.0), Some(98.5)])
                .expect("works")
                .state,
            AlarmState::Alarm
        );
    }

    #[test]
    fn missing_data_counts_as_told() {
        assert_eq!(
            evaluate(&alarm(2, None, Some("breaching")), &[None, Some(90.0)])
                .expect("works")
                .state,
            AlarmState::Alarm
        );
        assert_eq!(
            evaluate(&alarm(2, None, Some("notBreaching")), &[None, None])
                .expect("works")
                .state,
            AlarmState::Ok
        );
        assert_eq!(
            evaluate(&alarm(2, None, Some("ignore")), &[None, None]),
            None
        );
    }

    #[test]
    fn alarms_and_history_are_kept_per_account() {
        let s = MetricStore::temporary().expect("works");
        let a = alarm(2, None, None);
        let h = HistoryItem {
            alarm_name: "cpu".into(),
            at_ms: 1_000,
            kind: "ConfigurationUpdate".into(),
            summary: "Alarm \"cpu\" created".into(),
            data: "{}".into(),
        };
        s.put_alarm(&a, std::slice::from_ref(&h)).expect("works");
        assert_eq!(s.alarm("111", "cpu").expect("works"), Some(a.clone()));
        assert!(s.alarm("222", "cpu").expect("works").is_none());
        assert_eq!(s.alarms(Some("111")).expect("works").len(), 1);
        assert!(s.alarms(Some("11")).expect("works").is_empty());
        assert_eq!(s.history("111", 0, i64::MAX).expect("works"), vec![h]);
        assert!(s.history("222", 0, i64::MAX).expect("works").is_empty());
        assert_eq!(
            s.delete_alarms("111", &["cpu".into(), "nope".into()])
                .expect("works"),
            vec!["nope".to_string()]
        );
        assert!(s.alarm("111", "cpu").expect("works").is_some());
        assert!(s
            .delete_alarms("111", &["cpu".into()])
            .expect("works")
            .is_empty());
        assert!(s.alarms(None).expect("works").is_empty());
        assert_eq!(s.sweep_history(HISTORY_KEEP_MS + 2_000).expect("works"), 1);
    }
}
