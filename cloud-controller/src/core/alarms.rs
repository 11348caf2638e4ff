//! Metric alarms: made and changed by their account, judged every few
//! seconds on the account's points ([`metric_store::alarm::evaluate`]),
//! and on a change of state their actions carried out for real: EC2's
//! `arn:aws:automate:REGION:ec2:stop|terminate|reboot` on the instance the
//! alarm watches (its `InstanceId`), as its owner would.

use std::time::Duration;

use metric_store::{
    alarm::{evaluate, Alarm, AlarmSpec, AlarmState, HistoryItem, Verdict},
    Span, Statistic,
};

use super::{monitoring::MonitoringError, Cloud};

/// An EC2 action an alarm can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ec2Action {
    Stop,
    Terminate,
    Reboot,
}

/// The EC2 action `arn` names in `region`, if it is one.
pub fn ec2_action(arn: &str, region: &str) -> Option<Ec2Action> {
    let rest = arn.strip_prefix("arn:aws:automate:")?;
    let (r, what) = rest.split_once(":ec2:")?;
    if r != region {
        return None;
    }
    Some(match what {
        "stop" => Ec2Action::Stop,
        "terminate" => Ec2Action::Terminate,
        "reboot" => Ec2Action::Reboot,
        _ => return None,
    })
}

fn history(alarm: &str, kind: &str, summary: String, data: serde_json::Value) -> HistoryItem {
    HistoryItem {
        alarm_name: alarm.to_string(),
        at_ms: common::time::unix_ms(),
        kind: kind.to_string(),
        summary,
        data: data.to_string(),
    }
}

fn spec_json(a: &Alarm) -> serde_json::Value {
    serde_json::json!({
        "version": "1.0",
        "type": "Update",
        "updatedAlarm": {
            "alarmName": a.spec.name,
            "namespace": a.spec.metric.namespace,
            "metricName": a.spec.metric.name,
            "dimensions": a.spec.metric.dimensions.iter().map(|d| serde_json::json!({"name": d.name, "value": d.value})).collect::<Vec<_>>(),
            "statistic": a.spec.statistic,
            "period": a.spec.period,
            "evaluationPeriods": a.spec.evaluation_periods,
            "threshold": a.spec.threshold,
            "comparisonOperator": a.spec.comparison,
            "actionsEnabled": a.spec.actions_enabled,
            "alarmActions": a.spec.alarm_actions,
        }
    })
}

impl Cloud {
    /// The ARN of `account_id`'s alarm `name`.
    pub fn alarm_arn(&self, account_id: &str, name: &str) -> String {
        format!(
            "arn:aws:cloudwatch:{}:{account_id}:alarm:{name}",
            self.settings.region
        )
    }

    /// PutMetricAlarm: a new alarm starts INSUFFICIENT_DATA; a changed one
    /// keeps its state.
    pub fn put_alarm(&self, account_id: &str, spec: AlarmSpec) -> Result<(), MonitoringError> {
        let now = common::time::unix_ms();
        let old = self.metrics.alarm(account_id, &spec.name)?;
        let (state, reason, reason_data, updated, transitioned) = match &old {
            Some(a) => (
                a.state,
                a.state_reason.clone(),
                a.state_reason_data.clone(),
                a.state_updated_ms,
                a.state_transitioned_ms,
            ),
            None => (
                AlarmState::InsufficientData,
                "Unchecked: Initial alarm creation".to_string(),
                None,
                now,
                now,
            ),
        };
        let alarm = Alarm {
            account: account_id.to_string(),
            arn: self.alarm_arn(account_id, &spec.name),
            spec,
            state,
            state_reason: reason,
            state_reason_data: reason_data,
            state_updated_ms: updated,
            state_transitioned_ms: transitioned,
            config_updated_ms: now,
        };
        let verb = if old.is_some() { "updated" } else { "created" };
        let h = history(
            &alarm.spec.name,
            "ConfigurationUpdate",
            format!("Alarm \"{}\" {verb}", alarm.spec.name),
            spec_json(&alarm),
        );
        self.metrics.put_alarm(&alarm, &[h])?;
        Ok(())
    }

    /// `account_id`'s alarms, by name.
    pub fn alarms(&self, account_id: &str) -> Result<Vec<Alarm>, MonitoringError> {
        Ok(self.metrics.alarms(Some(account_id))?)
    }

    /// `account_id`'s alarm history, newest first, between the times.
    pub fn alarm_history(
        &self,
        account_id: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<HistoryItem>, MonitoringError> {
        Ok(self.metrics.history(account_id, from_ms, to_ms)?)
    }

    /// DeleteAlarms: all of `names` or, if one is not there, none.
    pub fn delete_alarms(&self, account_id: &str, names: &[String]) -> Result<(), MonitoringError> {
        let missing = self.metrics.delete_alarms(account_id, names)?;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(MonitoringError::NotFound(format!(
                "The named resource does not exist: {}",
                missing.join(", ")
            )))
        }
    }

    /// Enable/DisableAlarmActions (names that are not alarms are skipped,
    /// as CloudWatch does).
    pub fn set_alarm_actions(
        &self,
        account_id: &str,
        names: &[String],
        on: bool,
    ) -> Result<(), MonitoringError> {
        for n in names {
            if let Some(mut a) = self.metrics.alarm(account_id, n)? {
                if a.spec.actions_enabled != on {
                    a.spec.actions_enabled = on;
                    a.config_updated_ms = common::time::unix_ms();
                    let h = history(
                        n,
                        "ConfigurationUpdate",
                        format!("Alarm \"{n}\" updated"),
                        spec_json(&a),
                    );
                    self.metrics.put_alarm(&a, &[h])?;
                }
            }
        }
        Ok(())
    }

    /// SetAlarmState: the state until the next evaluation says otherwise;
    /// its actions run as for any change.
    pub async fn set_alarm_state(
        &self,
        account_id: &str,
        name: &str,
        state: AlarmState,
        reason: String,
        reason_data: Option<String>,
    ) -> Result<(), MonitoringError> {
        let alarm = self
            .metrics
            .alarm(account_id, name)?
            .ok_or_else(|| MonitoringError::NotFound(format!("Alarm {name} does not exist.")))?;
        self.change_state(alarm, Verdict { state, reason }, reason_data)
            .await
    }

    /// The points an alarm judges: its last `evaluation_periods` periods,
    /// the current one only once it has a point (oldest first).
    pub fn alarm_points(
        &self,
        alarm: &Alarm,
        now_secs: i64,
    ) -> Result<Vec<Option<f64>>, MonitoringError> {
        let p = alarm.spec.period.max(1);
        let n = alarm.spec.evaluation_periods.max(1) as i64;
        let end = now_secs.div_euclid(p) * p + p;
        let start = end - (n + 1) * p;
        let stat = Statistic::parse(&alarm.spec.statistic).unwrap_or(Statistic::Average);
        let buckets = self.metrics.statistics(
            &alarm.account,
            &alarm.spec.metric,
            Span {
                start,
                end,
                period: p,
            },
            alarm.spec.unit.as_deref(),
            now_secs,
        )?;
        let mut points: Vec<Option<f64>> = (0..=n)
            .map(|i| {
                let at = start + i * p;
                buckets
                    .iter()
                    .find(|b| b.at == at)
                    .and_then(|b| b.agg.get(stat))
            })
            .collect();
        if points.last().is_some_and(|p| p.is_none()) {
            points.pop();
        } else {
            points.remove(0);
        }
        Ok(points)
    }

    /// Judges every alarm of every account every `every`.
    pub async fn keep_evaluating_alarms(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let alarms = match self.metrics.alarms(None) {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the alarms");
                    continue;
                }
            };
            let now = common::time::unix_secs();
            for alarm in alarms {
                let points = match self.alarm_points(&alarm, now) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(alarm = %alarm.spec.name, error = %e, "cannot read an alarm's points");
                        continue;
                    }
                };
                let Some(verdict) = evaluate(&alarm, &points) else {
                    continue;
                };
                if verdict.state != alarm.state {
                    let data = serde_json::json!({
                        "version": "1.0",
                        "queryDate": common::time::iso8601_ms(now * 1000),
                        "statistic": alarm.spec.statistic,
                        "period": alarm.spec.period,
                        "recentDatapoints": points.iter().flatten().collect::<Vec<_>>(),
                        "threshold": alarm.spec.threshold,
                    })
                    .to_string();
                    let (account, name) = (alarm.account.clone(), alarm.spec.name.clone());
                    if let Err(e) = self.change_state(alarm, verdict, Some(data)).await {
                        tracing::warn!(account = %account, alarm = %name, error = %e, "cannot change an alarm's state");
                    }
                }
            }
        }
    }

    /// Records `alarm`'s new state with its history, then carries out the
    /// new state's actions (when its actions are enabled).
    async fn change_state(
        &self,
        mut alarm: Alarm,
        v: Verdict,
        data: Option<String>,
    ) -> Result<(), MonitoringError> {
        let now = common::time::unix_ms();
        let old = alarm.state;
        let h = history(
            &alarm.spec.name,
            "StateUpdate",
            format!(
                "Alarm updated from {} to {}",
                old.as_str(),
                v.state.as_str()
            ),
            serde_json::json!({
                "version": "1.0",
                "oldState": {"stateValue": old.as_str(), "stateReason": alarm.state_reason},
                "newState": {"stateValue": v.state.as_str(), "stateReason": v.reason},
            }),
        );
        alarm.state = v.state;
        alarm.state_reason = v.reason;
        alarm.state_reason_data = data;
        alarm.state_updated_ms = now;
        if old != v.state {
            alarm.state_transitioned_ms = now;
        }
        self.metrics.put_alarm(&alarm, &[h])?;
        tracing::info!(account = %alarm.account, alarm = %alarm.spec.name, from = old.as_str(), to = v.state.as_str(), "alarm changed state");
        if !alarm.spec.actions_enabled || old == v.state {
            return Ok(());
        }
        let actions = match v.state {
            AlarmState::Ok => &alarm.spec.ok_actions,
            AlarmState::Alarm => &alarm.spec.alarm_actions,
            AlarmState::InsufficientData => &alarm.spec.insufficient_data_actions,
        };
        let mut done = Vec::new();
        for arn in actions {
            let outcome = self.run_action(&alarm, arn).await;
            let (summary, ok) = match &outcome {
                Ok(()) => (format!("Successfully executed action {arn}"), true),
                Err(e) => (
                    format!("Failed to execute action {arn}. Received error: \"{e}\""),
                    false,
                ),
            };
            tracing::info!(alarm = %alarm.spec.name, action = %arn, ok, "{summary}");
            // What alarms do to instances shows in the cloud's event log too.
            if let (Some(_), Some(id)) = (
                ec2_action(arn, &self.settings.region),
                alarm.spec.metric.dimension("InstanceId"),
            ) {
                let event = crate::events::Event {
                    unix_ms: common::time::unix_ms(),
                    seq: 0,
                    kind: "alarm".into(),
                    cluster: String::new(),
                    node: String::new(),
                    instance_id: id.to_string(),
                    message: format!(
                        "alarm {} of account {} went {}: {summary}",
                        alarm.spec.name,
                        alarm.account,
                        v.state.as_str()
                    ),
                };
                if let Err(e) = self.events.record(event) {
                    tracing::warn!(error = %e, "cannot record an event");
                }
            }
            done.push(history(
                &alarm.spec.name,
                "Action",
                summary,
                serde_json::json!({"actionState": if ok {"Succeeded"} else {"Failed"}, "notificationResource": arn}),
            ));
        }
        self.metrics.add_history(&alarm.account, &done)?;
        Ok(())
    }

    async fn run_action(&self, alarm: &Alarm, arn: &str) -> Result<(), String> {
        let Some(action) = ec2_action(arn, &self.settings.region) else {
            return Err(format!("{arn} is not an action this cloud can take"));
        };
        let Some(id) = alarm.spec.metric.dimension("InstanceId") else {
            return Err("the alarm watches no instance".into());
        };
        let ids = [id.to_string()];
        let account = alarm.account.as_str();
        match action {
            Ec2Action::Stop => self
                .stop_or_start(account, &ids, true, false)
                .await
                .map(|_| ()),
            Ec2Action::Terminate => self.terminate(account, &ids, false).await.map(|_| ()),
            Ec2Action::Reboot => self.reboot(account, &ids, false).await,
        }
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_actions_are_named_by_their_arn() {
        assert_eq!(
            ec2_action("arn:aws:automate:gumtree:ec2:stop", "gumtree"),
            Some(Ec2Action::Stop)
        );
        assert_eq!(
            ec2_action("arn:aws:automate:gumtree:ec2:terminate", "gumtree"),
            Some(Ec2Action::Terminate)
        );
        assert_eq!(
            ec2_action("arn:aws:automate:us-east-1:ec2:stop", "gumtree"),
            None
        );
        assert_eq!(ec2_action("arn:aws:sns:gumtree:111:topic", "gumtree"), None);
    }
}
