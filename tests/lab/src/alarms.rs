//! The templates' CloudWatch alarms, which moto's CloudFormation skips:
//! read from the template's text, resolved against the deployed stack, and
//! created through `PutMetricAlarm`, as CloudFormation would on AWS. moto
//! evaluates no alarm, so [`Cloud::breaching`] reads an alarm back and applies its
//! metric, statistic, threshold and comparison to what the daemons
//! published, as CloudWatch would for one period.

use anyhow::{Context, Result, anyhow, bail};
use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, MetricAlarm, Statistic};

use crate::cloud::Cloud;

/// One `AWS::CloudWatch::Alarm` of a template, its values resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// Its logical id in the template.
    pub id: String,
    pub condition: String,
    pub name: String,
    pub description: String,
    pub namespace: String,
    pub metric: String,
    pub dimensions: Vec<(String, String)>,
    pub statistic: String,
    pub period: i32,
    pub evaluation_periods: i32,
    pub threshold: f64,
    pub comparison: String,
    pub missing: String,
    /// `AlarmActions` and `OKActions`, resolved: an SNS topic's ARN, or
    /// empty for none.
    pub actions: String,
    pub ok_actions: String,
}

/// The alarms `template` declares whose condition `made` says holds,
/// every `!Ref`, `!Sub`, `!Select` and `!If` in them resolved by `resolve`
/// (each errs on what it does not know, so a template the lab cannot
/// follow fails loudly).
pub fn declared(
    template: &str,
    made: impl Fn(&str) -> Result<bool>,
    resolve: impl Fn(&str) -> Result<String>,
) -> Result<Vec<Declared>> {
    let lines: Vec<&str> = template.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "Type: AWS::CloudWatch::Alarm" {
            continue;
        }
        let id = lines[..i]
            .iter()
            .rev()
            .find(|l| l.starts_with("  ") && !l.starts_with("   "))
            .map(|l| l.trim().trim_end_matches(':'))
            .unwrap_or("?");
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| l.starts_with("   ") || l.trim().is_empty())
            .copied()
            .collect();
        let key = |k: &str| -> Result<String> {
            let prefix = format!("{k}: ");
            let at = body
                .iter()
                .position(|l| l.trim_start().starts_with(&prefix))
                .ok_or_else(|| anyhow!("{id}: no {k}"))?;
            let value = body[at].trim_start()[prefix.len()..].trim();
            if value == ">-" {
                let indent = body[at].len() - body[at].trim_start().len();
                let folded: Vec<&str> = body[at + 1..]
                    .iter()
                    .take_while(|l| l.len() - l.trim_start().len() > indent)
                    .map(|l| l.trim())
                    .collect();
                return Ok(folded.join(" "));
            }
            resolve(value).with_context(|| format!("{id}: {k}"))
        };
        let condition = body
            .iter()
            .find_map(|l| l.trim().strip_prefix("Condition: "))
            .ok_or_else(|| anyhow!("{id}: no Condition"))?;
        if !made(condition)? {
            continue;
        }
        let number = |k: &str| -> Result<f64> {
            key(k)?
                .parse()
                .with_context(|| format!("{id}: {k} is no number"))
        };
        let dimensions = body
            .iter()
            .filter_map(|l| l.trim().strip_prefix("- { Name: "))
            .map(|d| {
                let (name, value) = d
                    .trim_end_matches('}')
                    .trim()
                    .split_once(", Value: ")
                    .ok_or_else(|| anyhow!("{id}: dimension `{d}`"))?;
                Ok((name.to_owned(), resolve(value.trim())?))
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Declared {
            id: id.to_owned(),
            condition: condition.to_owned(),
            name: key("AlarmName")?,
            description: key("AlarmDescription")?,
            namespace: key("Namespace")?,
            metric: key("MetricName")?,
            dimensions,
            statistic: key("Statistic")?,
            period: number("Period")? as i32,
            evaluation_periods: number("EvaluationPeriods")? as i32,
            threshold: number("Threshold")?,
            comparison: key("ComparisonOperator")?,
            missing: key("TreatMissingData")?,
            actions: key("AlarmActions")?,
            ok_actions: key("OKActions")?,
        });
    }
    Ok(out)
}

impl Cloud {
    /// Create `alarm` through `PutMetricAlarm`.
    pub async fn put_alarm(&self, alarm: &Declared) -> Result<()> {
        let mut put = self
            .cloudwatch
            .put_metric_alarm()
            .alarm_name(&alarm.name)
            .alarm_description(&alarm.description)
            .namespace(&alarm.namespace)
            .metric_name(&alarm.metric)
            .statistic(Statistic::from(alarm.statistic.as_str()))
            .period(alarm.period)
            .evaluation_periods(alarm.evaluation_periods)
            .threshold(alarm.threshold)
            .comparison_operator(ComparisonOperator::from(alarm.comparison.as_str()))
            .treat_missing_data(&alarm.missing);
        for (k, v) in &alarm.dimensions {
            put = put.dimensions(Dimension::builder().name(k).value(v).build());
        }
        if !alarm.actions.is_empty() {
            put = put.alarm_actions(&alarm.actions);
        }
        if !alarm.ok_actions.is_empty() {
            put = put.ok_actions(&alarm.ok_actions);
        }
        put.send()
            .await
            .with_context(|| format!("PutMetricAlarm {}", alarm.name))?;
        Ok(())
    }

    /// The alarm called `name`, as CloudWatch describes it.
    pub async fn alarm(&self, name: &str) -> Result<MetricAlarm> {
        let out = self
            .cloudwatch
            .describe_alarms()
            .alarm_names(name)
            .send()
            .await
            .context("DescribeAlarms")?;
        out.metric_alarms()
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("no alarm {name}"))
    }

    /// Whether alarm `name`'s condition holds over the data published since
    /// `since`, taken as one period: its statistic of its metric compared
    /// with its threshold; no data counts as its `TreatMissingData` says.
    pub async fn breaching(&self, name: &str, since: std::time::SystemTime) -> Result<bool> {
        let a = self.alarm(name).await?;
        let dims: Vec<(&str, &str)> = a
            .dimensions()
            .iter()
            .map(|d| (d.name().unwrap_or_default(), d.value().unwrap_or_default()))
            .collect();
        let stat = a.statistic().map(|s| s.as_str()).unwrap_or("Average");
        let period = 3600;
        let values = self
            .metric(
                a.namespace().unwrap_or_default(),
                a.metric_name().unwrap_or_default(),
                &dims,
                (stat, period),
                since,
            )
            .await?;
        let threshold = a.threshold().unwrap_or(f64::NAN);
        let Some(v) = values.first() else {
            return Ok(a.treat_missing_data() == Some("breaching"));
        };
        Ok(match a.comparison_operator() {
            Some(ComparisonOperator::GreaterThanThreshold) => *v > threshold,
            Some(ComparisonOperator::GreaterThanOrEqualToThreshold) => *v >= threshold,
            Some(ComparisonOperator::LessThanThreshold) => *v < threshold,
            Some(ComparisonOperator::LessThanOrEqualToThreshold) => *v <= threshold,
            other => bail!("alarm {name}: comparison {other:?} not evaluated by the lab"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_templates_declare_three_alarms_per_az_the_lab_can_read() {
        for (name, template) in [
            ("vpc.yaml", crate::lab::vpc::VPC_TEMPLATE),
            (
                "existing-vpc.yaml",
                include_str!("../../../cloudformation/existing-vpc.yaml"),
            ),
        ] {
            // Expressions kept as written: this reads the structure only.
            let all = declared(template, |_| Ok(true), |v| Ok(v.to_owned())).unwrap();
            assert_eq!(all.len(), 9, "{name}");
            let no_c = declared(template, |c| Ok(c != "AlarmedThree"), |v| Ok(v.to_owned()));
            assert_eq!(no_c.unwrap().len(), 6, "{name}");
            let forwarding = &all[0];
            assert_eq!(forwarding.metric, "ForwardingNat", "{name}");
            assert_eq!(forwarding.dimensions.len(), 2, "{name}");
            assert_eq!(forwarding.dimensions[0].0, "VpcId", "{name}");
            assert_eq!((forwarding.period, forwarding.evaluation_periods), (60, 3));
            assert!(
                forwarding.description.starts_with("No NAT forwarded"),
                "{name}"
            );
            let failed = declared(
                template,
                |_| Ok(true),
                |v| match v.starts_with('!') {
                    true => Err(anyhow!("cannot resolve {v}")),
                    false => Ok(v.to_owned()),
                },
            );
            assert!(failed.is_err(), "{name}: an unknown expression is an error");
        }
    }
}
