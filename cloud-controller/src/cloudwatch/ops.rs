//! CloudWatch's operations: each parses its input [`Doc`] (checking it as
//! CloudWatch does, with its error codes and messages, before anything is
//! stored), calls the core for the caller's account and renders the
//! answer. Parameter names in messages are the Query protocol's
//! (`MetricData.member.1.Value`), as CloudWatch writes them.

use metric_store::{
    alarm::{Alarm, AlarmSpec, AlarmState, COMPARISONS, MISSING},
    Agg, Dimension, ListFilter, MetricId, Span, Statistic,
};

use super::{doc::Doc, CwError};
use crate::{
    core::{
        alarms::ec2_action,
        monitoring::{DataQuery, DataResult, DataSource, Datum, MonitoringError},
    },
    ec2::{Caller, Ec2},
};

type Answer = Result<Option<Doc>, CwError>;

/// CloudWatch's units.
pub const UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

const BASIC_STATS: [&str; 5] = ["SampleCount", "Average", "Sum", "Minimum", "Maximum"];
/// Most datapoints GetMetricStatistics answers with.
pub const MAX_DATAPOINTS: i64 = 1440;

impl From<MonitoringError> for CwError {
    fn from(e: MonitoringError) -> Self {
        match e {
            MonitoringError::Store(e) => e.into(),
            MonitoringError::Expression(m) => CwError::validation(m),
            MonitoringError::NotFound(m) => CwError::not_found(m),
            MonitoringError::Invalid(m) => CwError::invalid_value(m),
        }
    }
}

/// Runs operation `op` for `caller`.
pub async fn run(ec2: &Ec2, caller: &Caller, op: &str, input: &Doc) -> Answer {
    let account = caller.account_id.as_str();
    match op {
        "PutMetricData" => put_metric_data(ec2, account, input),
        "GetMetricStatistics" => get_metric_statistics(ec2, account, input),
        "GetMetricData" => get_metric_data(ec2, account, input),
        "ListMetrics" => list_metrics(ec2, account, input),
        "PutMetricAlarm" => put_metric_alarm(ec2, account, input),
        "DescribeAlarms" => describe_alarms(ec2, account, input),
        "DescribeAlarmsForMetric" => describe_alarms_for_metric(ec2, account, input),
        "DescribeAlarmHistory" => describe_alarm_history(ec2, account, input),
        "DeleteAlarms" => {
            let names = alarm_names(input, true)?;
            ec2.cloud.delete_alarms(account, &names)?;
            Ok(None)
        }
        "EnableAlarmActions" | "DisableAlarmActions" => {
            let names = alarm_names(input, true)?;
            ec2.cloud
                .set_alarm_actions(account, &names, op == "EnableAlarmActions")?;
            Ok(None)
        }
        "SetAlarmState" => set_alarm_state(ec2, account, input).await,
        other => Err(CwError::unknown_operation(other)),
    }
}

// ---- reading the input ----

fn text<'a>(d: &'a Doc, name: &str, param: &str) -> Result<Option<&'a str>, CwError> {
    match d.get(name) {
        None => Ok(None),
        Some(Doc::Str(s)) => Ok(Some(s)),
        Some(_) => Err(CwError::invalid_value(format!(
            "The parameter {param} must be a string."
        ))),
    }
}

fn required<'a>(d: &'a Doc, name: &str, param: &str) -> Result<&'a str, CwError> {
    text(d, name, param)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CwError::missing(param))
}

/// A name of 1 to `max` characters without control characters.
fn checked<'a>(value: &'a str, param: &str, max: usize) -> Result<&'a str, CwError> {
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(CwError::bad(param, value));
    }
    Ok(value)
}

/// Member `name` of `d` (a parameter named `prefix` + `name`): there, and
/// 1 to `max` characters without control characters.
fn named<'a>(d: &'a Doc, name: &str, prefix: &str, max: usize) -> Result<&'a str, CwError> {
    let param = format!("{prefix}{name}");
    checked(required(d, name, &param)?, &param, max)
}

fn number(d: &Doc, name: &str, param: &str) -> Result<Option<f64>, CwError> {
    match d.get(name) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(f) if f.is_finite() => Ok(Some(f)),
            _ => Err(CwError::bad(param, &shown(v))),
        },
    }
}

fn integer(d: &Doc, name: &str, param: &str) -> Result<Option<i64>, CwError> {
    match number(d, name, param)? {
        None => Ok(None),
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => Ok(Some(f as i64)),
        Some(f) => Err(CwError::bad(param, &f.to_string())),
    }
}

fn time(d: &Doc, name: &str, param: &str) -> Result<Option<f64>, CwError> {
    match d.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_time()
            .filter(|t| t.is_finite())
            .map(Some)
            .ok_or_else(|| CwError::bad(param, &shown(v))),
    }
}

fn flag(d: &Doc, name: &str, param: &str) -> Result<Option<bool>, CwError> {
    match d.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| CwError::bad(param, &shown(v))),
    }
}

fn shown(v: &Doc) -> String {
    match v {
        Doc::Str(s) => s.clone(),
        Doc::Int(i) => i.to_string(),
        Doc::Float(f) => f.to_string(),
        Doc::Bool(b) => b.to_string(),
        _ => "(structure)".into(),
    }
}

fn strings(d: &Doc, name: &str, max: usize, item_max: usize) -> Result<Vec<String>, CwError> {
    let items = d.get(name).map(Doc::items).unwrap_or_default();
    if items.len() > max {
        return Err(CwError::invalid_value(format!(
            "The collection {name} must not have a size greater than {max}."
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let p = format!("{name}.member.{}", i + 1);
            let s = v.as_str().ok_or_else(|| CwError::bad(&p, &shown(v)))?;
            Ok(checked(s, &p, item_max)?.to_string())
        })
        .collect()
}

fn dimensions(d: &Doc, prefix: &str) -> Result<Vec<Dimension>, CwError> {
    let items = d.get("Dimensions").map(Doc::items).unwrap_or_default();
    if items.len() > 30 {
        return Err(CwError::invalid_value(format!(
            "The collection {prefix}Dimensions must not have a size greater than 30."
        )));
    }
    let mut out: Vec<Dimension> = Vec::new();
    for (i, dim) in items.iter().enumerate() {
        let p = format!("{prefix}Dimensions.member.{}", i + 1);
        let name = named(dim, "Name", &format!("{p}."), 255)?;
        let value = named(dim, "Value", &format!("{p}."), 1024)?;
        if out.iter().any(|d| d.name == name) {
            return Err(CwError::invalid_value(
                "No Metric may specify the same dimension twice.",
            ));
        }
        out.push(Dimension::new(name, value));
    }
    Ok(out)
}

/// `Namespace`, `MetricName` and `Dimensions` of `d` (at `prefix`).
fn metric(d: &Doc, prefix: &str) -> Result<MetricId, CwError> {
    let ns = named(d, "Namespace", prefix, 255)?;
    let name = named(d, "MetricName", prefix, 255)?;
    Ok(MetricId::new(ns, name, dimensions(d, prefix)?))
}

fn unit(d: &Doc, param: &str) -> Result<Option<String>, CwError> {
    match text(d, "Unit", param)? {
        None => Ok(None),
        Some(u) if UNITS.contains(&u) => Ok(Some(u.to_string())),
        Some(u) => Err(CwError::bad(param, u)),
    }
}

fn period(p: i64, param: &str) -> Result<i64, CwError> {
    if p < 1 {
        return Err(CwError::bad(param, &p.to_string()));
    }
    if p < 60 && ![1, 5, 10, 30].contains(&p) {
        return Err(CwError::invalid_value(format!(
            "The parameter {param} must be 1, 5, 10, 30, or a multiple of 60."
        )));
    }
    if p >= 60 && p % 60 != 0 {
        return Err(CwError::invalid_value(format!(
            "The parameter {param} must be a multiple of 60."
        )));
    }
    Ok(p)
}

fn span(d: &Doc) -> Result<(i64, i64), CwError> {
    let start = time(d, "StartTime", "StartTime")?.ok_or_else(|| CwError::missing("StartTime"))?;
    let end = time(d, "EndTime", "EndTime")?.ok_or_else(|| CwError::missing("EndTime"))?;
    if start >= end {
        return Err(CwError::invalid_value(
            "The parameter StartTime must be less than the parameter EndTime.",
        ));
    }
    Ok((start.floor() as i64, end.ceil() as i64))
}

// ---- metrics ----

fn put_metric_data(ec2: &Ec2, account: &str, input: &Doc) -> Answer {
    let ns = named(input, "Namespace", "", 255)?;
    if ns.starts_with("AWS/") || ns.starts_with(':') {
        return Err(CwError::bad("Namespace", ns));
    }
    let items = input.get("MetricData").map(Doc::items).unwrap_or_default();
    if items.is_empty() {
        return Err(CwError::missing("MetricData"));
    }
    if items.len() > 1000 {
        return Err(CwError::invalid_value(
            "The collection MetricData must not have a size greater than 1000.",
        ));
    }
    let now = common::time::unix_secs();
    let mut data = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let p = format!("MetricData.member.{}", i + 1);
        let name = named(m, "MetricName", &format!("{p}."), 255)?;
        let dims = dimensions(m, &format!("{p}."))?;
        let at = time(m, "Timestamp", &format!("{p}.Timestamp"))?
            .map(|t| t.floor() as i64)
            .unwrap_or(now);
        if at < now - 14 * 86_400 {
            return Err(CwError::invalid_value(format!(
                "The parameter {p}.Timestamp must specify a time no more than two weeks in the past."
            )));
        }
        if at > now + 2 * 3600 {
            return Err(CwError::invalid_value(format!(
                "The parameter {p}.Timestamp must specify a time no more than two hours in the future."
            )));
        }
        let value = number(m, "Value", &format!("{p}.Value"))?;
        let stats = m.get("StatisticValues");
        let values = m.get("Values");
        let given: Vec<&str> = [
            ("Value", value.is_some()),
            ("StatisticValues", stats.is_some()),
            ("Values", values.is_some()),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| *n)
        .collect();
        if given.len() > 1 {
            return Err(CwError::combination(format!(
                "The parameters {p}.{} and {p}.{} are mutually exclusive and you have specified both.",
                given[0], given[1]
            )));
        }
        let agg = if let Some(v) = value {
            Agg::of(v, 1.0)
        } else if let Some(s) = stats {
            let sp = format!("{p}.StatisticValues");
            let get = |n: &str| -> Result<f64, CwError> {
                number(s, n, &format!("{sp}.{n}"))?
                    .ok_or_else(|| CwError::missing(&format!("{sp}.{n}")))
            };
            let (count, sum, min, max) = (
                get("SampleCount")?,
                get("Sum")?,
                get("Minimum")?,
                get("Maximum")?,
            );
            if count <= 0.0 {
                return Err(CwError::bad(
                    &format!("{sp}.SampleCount"),
                    &count.to_string(),
                ));
            }
            if min > max {
                return Err(CwError::invalid_value(format!(
                    "The parameter {sp}.Maximum must be greater than or equal to {sp}.Minimum."
                )));
            }
            Agg::set(count, sum, min, max)
        } else if let Some(vs) = values {
            let vs = vs.items();
            let counts = m.get("Counts").map(Doc::items).unwrap_or_default();
            if vs.is_empty() {
                return Err(CwError::missing(&format!("{p}.Values")));
            }
            if vs.len() > 150 {
                return Err(CwError::invalid_value(format!(
                    "The collection {p}.Values must not have a size greater than 150."
                )));
            }
            if !counts.is_empty() && counts.len() != vs.len() {
                return Err(CwError::invalid_value(format!(
                    "The parameters {p}.Values and {p}.Counts must be of the same size."
                )));
            }
            let mut agg: Option<Agg> = None;
            for (j, v) in vs.iter().enumerate() {
                let vp = format!("{p}.Values.member.{}", j + 1);
                let x = v
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| CwError::bad(&vp, &shown(v)))?;
                let c = match counts.get(j) {
                    None => 1.0,
                    Some(c) => {
                        let cp = format!("{p}.Counts.member.{}", j + 1);
                        c.as_f64()
                            .filter(|f| f.is_finite() && *f >= 0.0)
                            .ok_or_else(|| CwError::bad(&cp, &shown(c)))?
                    }
                };
                if c == 0.0 {
                    continue;
                }
                match &mut agg {
                    Some(a) => a.merge(&Agg::of(x, c)),
                    None => agg = Some(Agg::of(x, c)),
                }
            }
            match agg {
                Some(a) => a,
                None => continue,
            }
        } else {
            return Err(CwError::missing(&format!("{p}.Value")));
        };
        let unit = unit(m, &format!("{p}.Unit"))?.unwrap_or_else(|| "None".into());
        let high_res = match integer(m, "StorageResolution", &format!("{p}.StorageResolution"))? {
            None | Some(60) => false,
            Some(1) => true,
            Some(other) => {
                return Err(CwError::bad(
                    &format!("{p}.StorageResolution"),
                    &other.to_string(),
                ))
            }
        };
        data.push(Datum {
            metric: MetricId::new(ns, name, dims),
            at_secs: at,
            agg,
            unit,
            high_res,
        });
    }
    ec2.cloud.put_metric_data(account, &data)?;
    Ok(None)
}

fn get_metric_statistics(ec2: &Ec2, account: &str, input: &Doc) -> Answer {
    let metric = metric(input, "")?;
    let (start, end) = span(input)?;
    let period = period(
        integer(input, "Period", "Period")?.ok_or_else(|| CwError::missing("Period"))?,
        "Period",
    )?;
    let stats = strings(input, "Statistics", 5, 20)?;
    let extended = strings(input, "ExtendedStatistics", 10, 20)?;
    if stats.is_empty() && extended.is_empty() {
        return Err(CwError::combination(
            "Must specify either Statistics or ExtendedStatistics.",
        ));
    }
    if !stats.is_empty() && !extended.is_empty() {
        return Err(CwError::combination(
            "The parameters Statistics and ExtendedStatistics are mutually exclusive and you have specified both.",
        ));
    }
    let mut wanted = Vec::new();
    for (i, s) in stats.iter().enumerate() {
        if !BASIC_STATS.contains(&s.as_str()) {
            return Err(CwError::invalid_value(format!(
                "The parameter Statistics.member.{} must be a value in the set [ Maximum, Sum, SampleCount, Minimum, Average ].",
                i + 1
            )));
        }
        wanted.push((s.clone(), Statistic::parse(s).unwrap_or(Statistic::Average)));
    }
    let mut pcts = Vec::new();
    for (i, s) in extended.iter().enumerate() {
        match Statistic::parse(s) {
            Some(st @ Statistic::Percentile(_)) => pcts.push((s.clone(), st)),
            _ => {
                return Err(CwError::bad(
                    &format!("ExtendedStatistics.member.{}", i + 1),
                    s,
                ))
            }
        }
    }
    let unit = unit(input, "Unit")?;
    let count = (end - start + period - 1) / period;
    if count > MAX_DATAPOINTS {
        return Err(CwError::combination(format!(
            "You have requested up to {count} datapoints, which exceeds the limit of 1,440. You may reduce the datapoints requested by increasing Period, or decreasing the time range."
        )));
    }
    let buckets = ec2.cloud.metric_statistics(
        account,
        &metric,
        Span { start, end, period },
        unit.as_deref(),
    )?;
    let shown_unit = match unit {
        Some(u) => u,
        None => ec2
            .cloud
            .metric_unit(account, &metric)?
            .unwrap_or_else(|| "None".into()),
    };
    let points = buckets
        .iter()
        .map(|b| {
            let mut m: Vec<(&str, Doc)> = vec![("Timestamp", Doc::Time(b.at as f64))];
            for (name, st) in &wanted {
                if let Some(v) = b.agg.get(*st) {
                    m.push((name.as_str(), Doc::Float(v)));
                }
            }
            m.push(("Unit", Doc::str(shown_unit.clone())));
            if !pcts.is_empty() {
                m.push((
                    "ExtendedStatistics",
                    Doc::Map(
                        pcts.iter()
                            .filter_map(|(n, st)| Some((n.clone(), Doc::Float(b.agg.get(*st)?))))
                            .collect(),
                    ),
                ));
            }
            Doc::of(m)
        })
        .collect();
    Ok(Some(Doc::of(vec![
        ("Label", Doc::str(metric.name.clone())),
        ("Datapoints", Doc::List(points)),
    ])))
}

fn valid_id(id: &str) -> bool {
    let mut c = id.chars();
    id.len() <= 255
        && c.next().is_some_and(|f| f.is_ascii_lowercase())
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn get_metric_data(ec2: &Ec2, account: &str, input: &Doc) -> Answer {
    let items = input
        .get("MetricDataQueries")
        .map(Doc::items)
        .unwrap_or_default();
    if items.is_empty() {
        return Err(CwError::missing("MetricDataQueries"));
    }
    if items.len() > 500 {
        return Err(CwError::invalid_value(
            "The collection MetricDataQueries must not have a size greater than 500.",
        ));
    }
    let (start, end) = span(input)?;
    let from = match text(input, "NextToken", "NextToken")? {
        None => (0, 0),
        Some(t) => parse_data_token(t).ok_or_else(CwError::next_token)?,
    };
    let max = integer(input, "MaxDatapoints", "MaxDatapoints")?.unwrap_or(100_800);
    if max < 1 {
        return Err(CwError::bad("MaxDatapoints", &max.to_string()));
    }
    let descending = match text(input, "ScanBy", "ScanBy")? {
        None | Some("TimestampDescending") => true,
        Some("TimestampAscending") => false,
        Some(other) => return Err(CwError::bad("ScanBy", other)),
    };
    let mut queries: Vec<DataQuery> = Vec::new();
    for (i, q) in items.iter().enumerate() {
        let p = format!("MetricDataQueries.member.{}", i + 1);
        let id = required(q, "Id", &format!("{p}.Id"))?;
        if !valid_id(id) {
            return Err(CwError::validation(format!(
                "The value {id} for parameter {p}.Id is invalid."
            )));
        }
        if queries.iter().any(|o| o.id == id) {
            return Err(CwError::validation(
                "The values for parameter id in MetricDataQueries are not unique.",
            ));
        }
        let what = match (
            q.get("MetricStat"),
            text(q, "Expression", &format!("{p}.Expression"))?,
        ) {
            (Some(ms), None) => {
                let sp = format!("{p}.MetricStat");
                let m = ms
                    .get("Metric")
                    .ok_or_else(|| CwError::missing(&format!("{sp}.Metric")))?;
                let metric = metric(m, &format!("{sp}.Metric."))?;
                let per = period(
                    integer(ms, "Period", &format!("{sp}.Period"))?
                        .ok_or_else(|| CwError::missing(&format!("{sp}.Period")))?,
                    &format!("{sp}.Period"),
                )?;
                let stat_name = required(ms, "Stat", &format!("{sp}.Stat"))?;
                let stat = Statistic::parse(stat_name).ok_or_else(|| {
                    CwError::validation(format!(
                        "The value {stat_name} for parameter {sp}.Stat is invalid."
                    ))
                })?;
                DataSource::Stat {
                    metric,
                    period: per,
                    stat,
                    unit: unit(ms, &format!("{sp}.Unit"))?,
                }
            }
            (None, Some(e)) if !e.trim().is_empty() => DataSource::Expression(e.to_string()),
            _ => {
                return Err(CwError::validation(format!(
                    "Exactly one of {p}.MetricStat and {p}.Expression must be given."
                )))
            }
        };
        queries.push(DataQuery {
            id: id.to_string(),
            label: text(q, "Label", &format!("{p}.Label"))?.map(str::to_string),
            return_data: flag(q, "ReturnData", &format!("{p}.ReturnData"))?.unwrap_or(true),
            what,
        });
    }
    let mut results = ec2.cloud.metric_data(account, &queries, start, end)?;
    if descending {
        results.iter_mut().for_each(|r| r.points.reverse());
    }
    let (page, next) = data_page(results, from, max as usize);
    let out = page
        .into_iter()
        .map(|(r, partial)| {
            Doc::of(vec![
                ("Id", Doc::str(r.id)),
                ("Label", Doc::str(r.label)),
                (
                    "Timestamps",
                    Doc::List(r.points.iter().map(|(t, _)| Doc::Time(*t as f64)).collect()),
                ),
                (
                    "Values",
                    Doc::List(r.points.iter().map(|(_, v)| Doc::Float(*v)).collect()),
                ),
                (
                    "StatusCode",
                    Doc::str(if partial { "PartialData" } else { "Complete" }),
                ),
            ])
        })
        .collect();
    Ok(Some(Doc::of(vec![
        ("MetricDataResults", Doc::List(out)),
        (
            "NextToken",
            Doc::opt_str(next.map(|(i, o)| hex::encode(format!("{i}:{o}")))),
        ),
        ("Messages", Doc::List(vec![])),
    ])))
}

/// (result, point) where a GetMetricData page starts, from its NextToken.
fn parse_data_token(t: &str) -> Option<(usize, usize)> {
    let text = String::from_utf8(hex::decode(t).ok()?).ok()?;
    let (i, o) = text.split_once(':')?;
    Some((i.parse().ok()?, o.parse().ok()?))
}

/// A page of GetMetricData's results: each with whether it goes on in the
/// next page, and where that page starts (result, point).
type DataPage = (Vec<(DataResult, bool)>, Option<(usize, usize)>);

/// The page of GetMetricData's `results` that starts at `from` (result,
/// point) and holds at most `max` points.
fn data_page(results: Vec<DataResult>, from: (usize, usize), max: usize) -> DataPage {
    let mut left = max;
    let mut page = Vec::new();
    for (i, mut r) in results.into_iter().enumerate().skip(from.0) {
        let skip = if i == from.0 { from.1 } else { 0 };
        r.points.drain(..skip.min(r.points.len()));
        if left == 0 {
            return (page, Some((i, 0)));
        }
        let total = r.points.len();
        r.points.truncate(left);
        left -= r.points.len();
        let taken = r.points.len();
        if taken < total {
            page.push((r, true));
            return (page, Some((i, skip + taken)));
        }
        page.push((r, false));
    }
    (page, None)
}

/// Dimensions as CloudWatch lists them (`Name`, `Value`).
fn dimensions_doc(dims: &[Dimension]) -> Doc {
    Doc::List(
        dims.iter()
            .map(|d| {
                Doc::of(vec![
                    ("Name", Doc::str(d.name.clone())),
                    ("Value", Doc::str(d.value.clone())),
                ])
            })
            .collect(),
    )
}

fn metric_doc(m: &MetricId) -> Doc {
    Doc::of(vec![
        ("Namespace", Doc::str(m.namespace.clone())),
        ("MetricName", Doc::str(m.name.clone())),
        ("Dimensions", dimensions_doc(&m.dimensions)),
    ])
}

fn list_metrics(ec2: &Ec2, account: &str, input: &Doc) -> Answer {
    let namespace = text(input, "Namespace", "Namespace")?
        .map(|n| checked(n, "Namespace", 255).map(str::to_string))
        .transpose()?;
    let name = text(input, "MetricName", "MetricName")?
        .map(|n| checked(n, "MetricName", 255).map(str::to_string))
        .transpose()?;
    let items = input.get("Dimensions").map(Doc::items).unwrap_or_default();
    if items.len() > 10 {
        return Err(CwError::invalid_value(
            "The collection Dimensions must not have a size greater than 10.",
        ));
    }
    let mut dimensions = Vec::new();
    for (i, d) in items.iter().enumerate() {
        let p = format!("Dimensions.member.{}", i + 1);
        let n = named(d, "Name", &format!("{p}."), 255)?;
        let v = text(d, "Value", &format!("{p}.Value"))?
            .map(|v| checked(v, &format!("{p}.Value"), 1024).map(str::to_string))
            .transpose()?;
        dimensions.push((n.to_string(), v));
    }
    let since_ms = match text(input, "RecentlyActive", "RecentlyActive")? {
        None => None,
        Some("PT3H") => Some(common::time::unix_ms() - 3 * 3_600_000),
        Some(other) => return Err(CwError::bad("RecentlyActive", other)),
    };
    let after = match text(input, "NextToken", "NextToken")? {
        None => None,
        Some(t) => Some(hex::decode(t).map_err(|_| CwError::next_token())?),
    };
    let filter = ListFilter {
        // The listing of CloudWatch: series with a point in the last two weeks.
        since_ms: since_ms.or(Some(common::time::unix_ms() - 14 * 86_400_000)),
        namespace,
        name,
        dimensions,
    };
    let (page, next) = ec2
        .cloud
        .list_metrics(account, &filter, after.as_deref(), 500)?;
    Ok(Some(Doc::of(vec![
        (
            "Metrics",
            Doc::List(page.iter().map(|l| metric_doc(&l.metric)).collect()),
        ),
        ("NextToken", Doc::opt_str(next.map(hex::encode))),
    ])))
}

// ---- alarms ----

fn alarm_names(input: &Doc, needed: bool) -> Result<Vec<String>, CwError> {
    let names = strings(input, "AlarmNames", 100, 255)?;
    if needed && names.is_empty() {
        return Err(CwError::missing("AlarmNames"));
    }
    Ok(names)
}

fn actions(ec2: &Ec2, input: &Doc, name: &str, metric: &MetricId) -> Result<Vec<String>, CwError> {
    let list = strings(input, name, 5, 1024)?;
    for arn in &list {
        if arn.starts_with("arn:aws:automate:") {
            let region = &ec2.cloud.settings.region;
            if ec2_action(arn, region).is_none() {
                return Err(CwError::validation(format!(
                    "Invalid EC2 action {arn}: this cloud (region {region}) takes arn:aws:automate:{region}:ec2:stop, terminate or reboot."
                )));
            }
            if metric.dimension("InstanceId").is_none() {
                return Err(CwError::validation(
                    "Invalid use of EC2 action. An EC2 action can only be used if the alarm is monitoring an EC2 instance.",
                ));
            }
        } else if !arn.starts_with("arn:") {
            return Err(CwError::validation(format!("Invalid arn syntax: {arn}")));
        }
    }
    Ok(list)
}

fn put_metric_alarm(ec2: &Ec2, account: &str, input: &Doc) -> Answer {
    let name = named(input, "AlarmName", "", 255)?;
    if input.get("Metrics").is_some() {
        return Err(CwError::validation(
            "Alarms on metric math (Metrics) are not supported by this cloud; give MetricName and Namespace.",
        ));
    }
    let metric = metric(input, "")?;
    let statistic = text(input, "Statistic", "Statistic")?;
    let extended = text(input, "ExtendedStatistic", "ExtendedStatistic")?;
    let (statistic, is_extended) = match (statistic, extended) {
        (Some(_), Some(_)) => {
            return Err(CwError::combination(
                "The parameters Statistic and ExtendedStatistic are mutually exclusive and you have specified both.",
            ))
        }
        (None, None) => {
            return Err(CwError::combination(
                "Must specify either Statistic or ExtendedStatistic.",
            ))
        }
        (Some(s), None) if BASIC_STATS.contains(&s) => (s.to_string(), false),
        (Some(s), None) => return Err(CwError::bad("Statistic", s)),
        (None, Some(e)) => match Statistic::parse(e) {
            Some(Statistic::Percentile(_)) => (e.to_string(), true),
            _ => return Err(CwError::bad("ExtendedStatistic", e)),
        },
    };
    let per = integer(input, "Period", "Period")?.ok_or_else(|| CwError::missing("Period"))?;
    if !(per == 10 || per == 30 || (per >= 60 && per % 60 == 0)) {
        return Err(CwError::invalid_value(
            "The parameter Period must be 10, 30 or a multiple of 60.",
        ));
    }
    let evaluation_periods = integer(input, "EvaluationPeriods", "EvaluationPeriods")?
        .ok_or_else(|| CwError::missing("EvaluationPeriods"))?;
    if evaluation_periods < 1 {
        return Err(CwError::bad(
            "EvaluationPeriods",
            &evaluation_periods.to_string(),
        ));
    }
    if per * evaluation_periods > 7 * 86_400 {
        return Err(CwError::validation(
            "The product of EvaluationPeriods and Period must not exceed 604800 seconds (7 days).",
        ));
    }
    let datapoints_to_alarm = integer(input, "DatapointsToAlarm", "DatapointsToAlarm")?;
    if let Some(m) = datapoints_to_alarm {
        if m < 1 || m > evaluation_periods {
            return Err(CwError::validation(
                "DatapointsToAlarm must be at least 1 and at most EvaluationPeriods.",
            ));
        }
    }
    let threshold =
        number(input, "Threshold", "Threshold")?.ok_or_else(|| CwError::missing("Threshold"))?;
    let comparison = required(input, "ComparisonOperator", "ComparisonOperator")?;
    if !COMPARISONS.contains(&comparison) {
        return Err(CwError::bad("ComparisonOperator", comparison));
    }
    let treat = text(input, "TreatMissingData", "TreatMissingData")?;
    if let Some(t) = treat {
        if !MISSING.contains(&t) {
            return Err(CwError::bad("TreatMissingData", t));
        }
    }
    let description = text(input, "AlarmDescription", "AlarmDescription")?;
    if description.is_some_and(|d| d.chars().count() > 1024) {
        return Err(CwError::invalid_value(
            "The parameter AlarmDescription must be at most 1024 characters.",
        ));
    }
    let spec = AlarmSpec {
        name: name.to_string(),
        description: description.map(str::to_string),
        actions_enabled: flag(input, "ActionsEnabled", "ActionsEnabled")?.unwrap_or(true),
        ok_actions: actions(ec2, input, "OKActions", &metric)?,
        alarm_actions: actions(ec2, input, "AlarmActions", &metric)?,
        insufficient_data_actions: actions(ec2, input, "InsufficientDataActions", &metric)?,
        metric,
        statistic,
        extended: is_extended,
        period: per,
        unit: unit(input, "Unit")?,
        evaluation_periods: evaluation_periods as u32,
        datapoints_to_alarm: datapoints_to_alarm.map(|m| m as u32),
        threshold,
        comparison: comparison.to_string(),
        treat_missing_data: treat.map(str::to_string),
    };
    if ec2.cloud.alarms(account)?.len() >= 5000 && ec2.cloud.metrics.alarm(account, name)?.is_none()
    {
        return Err(CwError::limit(
            "The maximum alarm count of 5000 has been reached.",
        ));
    }
    ec2.cloud.put_alarm(account, spec)?;
    Ok(None)
}

fn alarm_doc(a: &Alarm) -> Doc {
    Doc::of(vec![
        ("AlarmName", Doc::str(a.spec.name.clone())),
        ("AlarmArn", Doc::str(a.arn.clone())),
        ("AlarmDescription", Doc::opt_str(a.spec.description.clone())),
        (
            "AlarmConfigurationUpdatedTimestamp",
            Doc::time_ms(a.config_updated_ms),
        ),
        ("ActionsEnabled", Doc::Bool(a.spec.actions_enabled)),
        ("OKActions", Doc::strs(&a.spec.ok_actions)),
        ("AlarmActions", Doc::strs(&a.spec.alarm_actions)),
        (
            "InsufficientDataActions",
            Doc::strs(&a.spec.insufficient_data_actions),
        ),
        ("StateValue", Doc::str(a.state.as_str())),
        ("StateReason", Doc::str(a.state_reason.clone())),
        ("StateReasonData", Doc::opt_str(a.state_reason_data.clone())),
        ("StateUpdatedTimestamp", Doc::time_ms(a.state_updated_ms)),
        ("MetricName", Doc::str(a.spec.metric.name.clone())),
        ("Namespace", Doc::str(a.spec.metric.namespace.clone())),
        (
            "Statistic",
            if a.spec.extended {
                Doc::Null
            } else {
                Doc::str(a.spec.statistic.clone())
            },
        ),
        (
            "ExtendedStatistic",
            if a.spec.extended {
                Doc::str(a.spec.statistic.clone())
            } else {
                Doc::Null
            },
        ),
        ("Dimensions", dimensions_doc(&a.spec.metric.dimensions)),
        ("Period", Doc::Int(a.spec.period)),
        ("Unit", Doc::opt_str(a.spec.unit.clone())),
        (
            "EvaluationPeriods",
            Doc::Int(a.spec.evaluation_periods as i64),
        ),
        (
            "DatapointsToAlarm",
            a.spec
                .datapoints_to_alarm
                .map(|m| Doc::Int(m as i64))
                .unwrap_or(Doc::Null),
        ),
        ("Threshold", Doc::Float(a.spec.threshold)),
        ("ComparisonOperator", Doc::str(a.spec.comparison.clone())),
        (
            "TreatMissingData",
            Doc::opt_str(a.spec.treat_missing_data.clone()),
        ),
        (
            "StateTransitionedTimestamp",
            Doc::time_ms(a.state_transitioned_ms),
        ),
    ])
}

fn max_records(input: &Doc, default: i64) -> Result<usize, CwError> {
    let m = integer(input, "MaxRecords", "MaxRecords")?.unwrap_or(default);
    if !(1..=100).contains(&m) {
        return Err(CwError::bad("MaxRecords", &m.to_string()));
    }
    Ok(m as usize)
}

fn describe_alarms(ec2: &Ec2, account: &str, input: &Doc) -> Answer {
    let names = alarm_names(input, false)?;
    let prefix = text(input, "AlarmNamePrefix", "AlarmNamePrefix")?;
    if !names.is_empty() && prefix.is_some() {
        return Err(CwError::combination(
            "The parameters AlarmNames and AlarmNamePrefix are mutually exclusive and you have specified both.",
        ));
    }
    let state = match text(input, "StateValue", "StateValue")? {
        None => None,
        Some(s) => Some(AlarmState::parse(s).ok_or_else(|| CwError::bad("StateValue", s))?),
    };
    let action_prefix = text(input, "ActionPrefix", "ActionPrefix")?;
    let types = strings(input, "AlarmTypes", 2, 20)?;
    for (i, t) in types.iter().enumerate() {
        if t != "MetricAlarm" && t != "CompositeAlarm" {
            return Err(CwError::bad(&format!("AlarmTypes.member.{}", i + 1), t));
        }
    }
    let max = max_records(input, 50)?;
    let after = match text(input, "NextToken", "NextToken")? {
        None => None,
        Some(t) => Some(
            String::from_utf8(hex::decode(t).map_err(|_| CwError::next_token())?)
                .map_err(|_| CwError::next_token())?,
        ),
    };
    let metric_alarms = types.is_empty() || types.iter().any(|t| t == "MetricAlarm");
    let mut all: Vec<Alarm> = if metric_alarms {
        ec2.cloud.alarms(account)?
    } else {
        vec![]
    };
    all.retain(|a| {
        (names.is_empty() || names.contains(&a.spec.name))
            && prefix.is_none_or(|p| a.spec.name.starts_with(p))
            && state.is_none_or(|s| a.state == s)
            && action_prefix.is_none_or(|p| {
                a.spec
                    .alarm_actions
                    .iter()
                    .chain(&a.spec.ok_actions)
                    .chain(&a.spec.insufficient_data_actions)
                    .any(|x| x.starts_with(p))
            })
            && after.as_ref().is_none_or(|after| a.spec.name > *after)
    });
    let next = (all.len() > max).then(|| hex::encode(&all[max - 1].spec.name));
    all.truncate(max);
    Ok(Some(Doc::of(vec![
        ("CompositeAlarms", Doc::List(vec![])),
        (
            "MetricAlarms",
            Doc::List(all.iter().map(alarm_doc).collect()),
        ),
        ("NextToken", Doc::opt_str(next)),
    ])))
}

fn describe_alarms_for_metric(ec2: &Ec2, account: &str, input: &Doc) -> Answer {
    let metric = metric(input, "")?;
    let statistic = text(input, "Statistic", "Statistic")?;
    let extended = text(input, "ExtendedStatistic", "ExtendedStatistic")?;
    let per = integer(input, "Period", "Period")?;
    let unit = unit(input, "Unit")?;
    let mut all = ec2.cloud.alarms(account)?;
    all.retain(|a| {
        a.spec.metric == metric
            && statistic.is_none_or(|s| !a.spec.extended && a.spec.statistic == s)
            && extended.is_none_or(|s| a.spec.extended && a.spec.statistic == s)
            && per.is_none_or(|p| a.spec.period == p)
            && unit
                .as_ref()
                .is_none_or(|u| a.spec.unit.as_ref() == Some(u))
    });
    Ok(Some(Doc::of(vec![(
        "MetricAlarms",
        Doc::List(all.iter().map(alarm_doc).collect()),
    )])))
}

fn describe_alarm_history(ec2: &Ec2, account: &str, input: &Doc) -> Answer {
    let name = text(input, "AlarmName", "AlarmName")?;
    let kind = text(input, "HistoryItemType", "HistoryItemType")?;
    if let Some(k) = kind {
        if !["ConfigurationUpdate", "StateUpdate", "Action"].contains(&k) {
            return Err(CwError::bad("HistoryItemType", k));
        }
    }
    let from = time(input, "StartDate", "StartDate")?
        .map(|t| (t * 1000.0) as i64)
        .unwrap_or(0);
    let to = time(input, "EndDate", "EndDate")?
        .map(|t| (t * 1000.0) as i64)
        .unwrap_or(i64::MAX);
    let ascending = match text(input, "ScanBy", "ScanBy")? {
        None | Some("TimestampDescending") => false,
        Some("TimestampAscending") => true,
        Some(other) => return Err(CwError::bad("ScanBy", other)),
    };
    let max = max_records(input, 100)?;
    let skip: usize = match text(input, "NextToken", "NextToken")? {
        None => 0,
        Some(t) => t.parse().map_err(|_| CwError::next_token())?,
    };
    let mut items = ec2.cloud.alarm_history(account, from, to)?;
    items.retain(|h| name.is_none_or(|n| h.alarm_name == n) && kind.is_none_or(|k| h.kind == k));
    if ascending {
        items.reverse();
    }
    if skip > items.len() {
        return Err(CwError::next_token());
    }
    let next = (items.len() > skip + max).then(|| (skip + max).to_string());
    let page: Vec<Doc> = items
        .iter()
        .skip(skip)
        .take(max)
        .map(|h| {
            Doc::of(vec![
                ("AlarmName", Doc::str(h.alarm_name.clone())),
                ("AlarmType", Doc::str("MetricAlarm")),
                ("Timestamp", Doc::time_ms(h.at_ms)),
                ("HistoryItemType", Doc::str(h.kind.clone())),
                ("HistorySummary", Doc::str(h.summary.clone())),
                ("HistoryData", Doc::str(h.data.clone())),
            ])
        })
        .collect();
    Ok(Some(Doc::of(vec![
        ("AlarmHistoryItems", Doc::List(page)),
        ("NextToken", Doc::opt_str(next)),
    ])))
}

async fn set_alarm_state(ec2: &Ec2, account: &str, input: &Doc) -> Answer {
    let name = named(input, "AlarmName", "", 255)?;
    let s = required(input, "StateValue", "StateValue")?;
    let state = AlarmState::parse(s).ok_or_else(|| CwError::bad("StateValue", s))?;
    let reason = required(input, "StateReason", "StateReason")?;
    if reason.chars().count() > 1023 {
        return Err(CwError::invalid_value(
            "The parameter StateReason must be at most 1023 characters.",
        ));
    }
    let data = text(input, "StateReasonData", "StateReasonData")?;
    if let Some(d) = data {
        if serde_json::from_str::<serde_json::Value>(d).is_err() {
            return Err(CwError::format("Unable to parse StateReasonData as JSON."));
        }
    }
    ec2.cloud
        .set_alarm_state(
            account,
            name,
            state,
            reason.to_string(),
            data.map(str::to_string),
        )
        .await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_as_cloudwatch_takes_them() {
        assert!(period(60, "Period").is_ok());
        assert!(period(10, "Period").is_ok());
        assert!(period(3600, "Period").is_ok());
        assert_eq!(
            period(90, "Period").expect_err("not a multiple").message,
            "The parameter Period must be a multiple of 60."
        );
        assert_eq!(
            period(7, "Period").expect_err("odd").code,
            "InvalidParameterValue"
        );
        assert!(period(0, "Period").is_err());
    }

    #[test]
    fn get_metric_data_pages_by_points() {
        let r = |id: &str, n: i64| DataResult {
            id: id.into(),
            label: id.into(),
            points: (0..n).map(|t| (t, t as f64)).collect(),
        };
        let all = || vec![r("a", 3), r("b", 4)];
        let ids = |p: &[(DataResult, bool)]| -> Vec<(String, usize, bool)> {
            p.iter()
                .map(|(r, more)| (r.id.clone(), r.points.len(), *more))
                .collect()
        };
        let (p1, next) = data_page(all(), (0, 0), 5);
        assert_eq!(ids(&p1), [("a".into(), 3, false), ("b".into(), 2, true)]);
        assert_eq!(next, Some((1, 2)));
        let (p2, next) = data_page(all(), (1, 2), 5);
        assert_eq!(ids(&p2), [("b".into(), 2, false)]);
        assert_eq!(
            p2[0].0.points[0].0, 2,
            "it goes on where the last page stopped"
        );
        assert_eq!(next, None);
        let (p3, next) = data_page(all(), (0, 0), 3);
        assert_eq!(ids(&p3), [("a".into(), 3, false)]);
        assert_eq!(next, Some((1, 0)));
        assert_eq!(parse_data_token(&hex::encode("1:2")), Some((1, 2)));
        assert_eq!(parse_data_token("zz"), None);
    }

    #[test]
    fn query_ids_start_lowercase() {
        assert!(valid_id("m1"));
        assert!(valid_id("cpu_total"));
        assert!(!valid_id("M1"));
        assert!(!valid_id("1m"));
        assert!(!valid_id("m-1"));
    }
}
