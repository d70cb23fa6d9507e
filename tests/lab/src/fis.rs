//! AWS Fault Injection Service experiments played in the lab: `hanat-lab
//! fis FILE [EXPERIMENT]` reads the `AWS::FIS::ExperimentTemplate`s of a
//! CloudFormation template, maps each action onto the lab's own fault,
//! applies its targets and durations as written, stops the experiment when
//! one of its stop-condition alarms fires (evaluated as the lab evaluates
//! alarms), and reports as `chaos` does.
//!
//! moto's CloudFormation skips `AWS::FIS::ExperimentTemplate`, and moto's
//! FIS runs nothing: the lab reads the experiments from the template's text,
//! resolving `!Ref`, `!Sub`, `!GetAtt`, `!If` and `!Join` itself.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::alarms::Declared;
use crate::api::{Fault, Rule};
use crate::chaos::{self, ChaosOptions, Report};
use crate::lab::{Lab, REGION, nat_stack_name};

/// The FIS actions the lab plays, and the lab fault each one is.
pub const KNOWN: [(&str, &str); 6] = [
    ("aws:ec2:terminate-instances", "terminate-instance"),
    (
        "aws:ssm:send-command",
        "stop-forwarding, with an SSM document of the template that drops forwarded packets",
    ),
    (
        "aws:network:disrupt-connectivity",
        "az-isolation, with scope availability-zone",
    ),
    ("aws:fis:inject-api-throttle-error", "api-throttle"),
    (
        "aws:ec2:send-spot-instance-interruptions",
        "spot-interruption",
    ),
    ("aws:fis:wait", "a pause"),
];

/// The parameters the lab fills with its own stack's values.
pub const FILLED: [&str; 6] = [
    "Name",
    "NatStackName",
    "VpcId",
    "NumberOfAZs",
    "TargetAz",
    "NatRoleArn",
];

/// The account moto answers for.
const ACCOUNT: &str = "123456789012";

/// A template read and checked: every experiment's actions are ones the
/// lab plays.
pub struct Template {
    parameters: serde_yaml::Mapping,
    conditions: serde_yaml::Mapping,
    resources: serde_yaml::Mapping,
}

/// Read `text` (a CloudFormation template in YAML or JSON) and check that
/// it has experiments and that the lab knows each of their actions.
pub fn read(text: &str) -> Result<Template> {
    let doc: Yaml = serde_yaml::from_str(text).context("not a YAML or JSON template")?;
    let section = |key: &str| match doc.get(key) {
        Some(Yaml::Mapping(m)) => Ok(m.clone()),
        None => Ok(serde_yaml::Mapping::new()),
        Some(_) => bail!("`{key}` is not a mapping"),
    };
    let t = Template {
        parameters: section("Parameters")?,
        conditions: section("Conditions")?,
        resources: section("Resources")?,
    };
    let names = t.experiments();
    if names.is_empty() {
        bail!("the template has no AWS::FIS::ExperimentTemplate");
    }
    for name in &names {
        let actions = t.resources[name.as_str()]
            .get("Properties")
            .and_then(|p| p.get("Actions"))
            .and_then(Yaml::as_mapping)
            .ok_or_else(|| anyhow!("experiment {name}: no Actions"))?;
        for (action, body) in actions {
            let action = action.as_str().unwrap_or("?");
            let id = body.get("ActionId").and_then(Yaml::as_str).ok_or_else(|| {
                anyhow!("experiment {name}: action {action}: no ActionId written out")
            })?;
            if !KNOWN.iter().any(|(k, _)| *k == id) {
                let known: Vec<String> = KNOWN.iter().map(|(k, f)| format!("{k} ({f})")).collect();
                bail!(
                    "experiment {name}: action {action}: the lab cannot play `{id}`; it plays {}",
                    known.join(", ")
                );
            }
        }
    }
    Ok(t)
}

impl Template {
    /// The experiments' logical ids, in template order.
    pub fn experiments(&self) -> Vec<String> {
        self.resources
            .iter()
            .filter(|(_, r)| {
                r.get("Type").and_then(Yaml::as_str) == Some("AWS::FIS::ExperimentTemplate")
            })
            .filter_map(|(k, _)| k.as_str().map(str::to_owned))
            .collect()
    }

    /// The template's parameters.
    pub fn parameter_names(&self) -> Vec<String> {
        (self.parameters.keys())
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect()
    }

    /// The parameters' values: `given`, else their defaults.
    /// What resolving an intrinsic function reads, with `params` filled.
    fn ctx<'a>(&'a self, params: &'a HashMap<String, String>) -> Ctx<'a> {
        Ctx {
            params,
            conditions: &self.conditions,
            resources: &self.resources,
        }
    }

    fn values(&self, given: &HashMap<String, String>) -> Result<HashMap<String, String>> {
        let mut params = HashMap::new();
        for (k, v) in &self.parameters {
            let k = k.as_str().unwrap_or_default();
            let value = match (given.get(k), v.get("Default")) {
                (Some(g), _) => g.clone(),
                (None, Some(d)) => scalar(d).with_context(|| format!("parameter {k}: Default"))?,
                (None, None) => bail!("parameter {k} has no default: give it a value"),
            };
            params.insert(k.to_owned(), value);
        }
        Ok(params)
    }

    /// The template's own `AWS::CloudWatch::Alarm`s (which moto's
    /// CloudFormation skips), resolved with the parameters `given`, for
    /// the lab to create as CloudFormation would.
    pub fn alarms(&self, given: &HashMap<String, String>) -> Result<Vec<Declared>> {
        let params = self.values(given)?;
        let ctx = self.ctx(&params);
        let mut out = Vec::new();
        for (id, r) in &self.resources {
            let id = id.as_str().unwrap_or_default();
            if r.get("Type").and_then(Yaml::as_str) != Some("AWS::CloudWatch::Alarm") {
                continue;
            }
            let condition = r
                .get("Condition")
                .and_then(Yaml::as_str)
                .unwrap_or_default();
            if !condition.is_empty() && !ctx.condition(condition)? {
                continue;
            }
            let p = (r.get("Properties").map(|p| ctx.eval(p)).transpose()?)
                .flatten()
                .ok_or_else(|| anyhow!("alarm {id}: no Properties"))?;
            let text = |k: &str| p.get(k).and_then(json_scalar).unwrap_or_default();
            let number = |k: &str| -> Result<f64> {
                text(k)
                    .parse()
                    .with_context(|| format!("alarm {id}: {k} is no number"))
            };
            let dimensions = (p.get("Dimensions").and_then(Json::as_array).into_iter())
                .flatten()
                .map(|d| (text_of(d, "Name"), text_of(d, "Value")))
                .collect();
            let first = |k: &str| strings(p.get(k)).into_iter().next().unwrap_or_default();
            out.push(Declared {
                id: id.to_owned(),
                condition: condition.to_owned(),
                name: text("AlarmName"),
                description: text("AlarmDescription"),
                namespace: text("Namespace"),
                metric: text("MetricName"),
                dimensions,
                statistic: text("Statistic"),
                period: number("Period")? as i32,
                evaluation_periods: number("EvaluationPeriods")? as i32,
                threshold: number("Threshold")?,
                comparison: text("ComparisonOperator"),
                missing: match text("TreatMissingData") {
                    m if m.is_empty() => "missing".into(),
                    m => m,
                },
                actions: first("AlarmActions"),
                ok_actions: first("OKActions"),
            });
        }
        Ok(out)
    }

    /// Experiment `name` with the parameters `given` (the rest take their
    /// defaults) and every intrinsic function resolved.
    pub fn resolve(&self, name: &str, given: &HashMap<String, String>) -> Result<Experiment> {
        let params = self.values(given)?;
        let ctx = self.ctx(&params);
        let resource = self
            .resources
            .get(name)
            .filter(|r| {
                r.get("Type").and_then(Yaml::as_str) == Some("AWS::FIS::ExperimentTemplate")
            })
            .ok_or_else(|| {
                anyhow!(
                    "no experiment {name}; the template has {}",
                    self.experiments().join(", ")
                )
            })?;
        if let Some(c) = resource.get("Condition").and_then(Yaml::as_str)
            && !ctx.condition(c)?
        {
            bail!("experiment {name}: its condition {c} does not hold, so it is not deployed");
        }
        let props = resource
            .get("Properties")
            .map(|p| ctx.eval(p))
            .transpose()?
            .flatten()
            .ok_or_else(|| anyhow!("experiment {name}: no Properties"))?;
        let documents = (self.resources.iter())
            .filter(|(_, r)| r.get("Type").and_then(Yaml::as_str) == Some("AWS::SSM::Document"))
            .filter(|(_, r)| {
                let text = serde_yaml::to_string(r).unwrap_or_default();
                text.contains("hook forward") && text.contains("policy drop")
            })
            .filter_map(|(k, _)| k.as_str().map(str::to_owned))
            .collect();
        Experiment::from_properties(name, &props, documents)
    }
}

/// A resolved experiment.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    pub actions: Vec<Action>,
    pub targets: BTreeMap<String, Target>,
    /// The stop conditions' alarm names.
    pub stop_alarms: Vec<String>,
    /// The template's SSM documents that stop forwarding.
    documents: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Action {
    pub name: String,
    pub id: String,
    /// Target kind (`Instances`, `Subnets`, `Roles`…) → target name.
    pub targets: BTreeMap<String, String>,
    pub parameters: BTreeMap<String, String>,
    pub start_after: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Target {
    pub resource_type: String,
    pub tags: BTreeMap<String, String>,
    /// Filter path → values.
    pub filters: Vec<(String, Vec<String>)>,
    pub arns: Vec<String>,
    pub selection: String,
}

fn strings(v: Option<&Json>) -> Vec<String> {
    match v {
        Some(Json::Array(a)) => a.iter().filter_map(json_scalar).collect(),
        Some(v) => json_scalar(v).into_iter().collect(),
        None => vec![],
    }
}

fn string_map(v: Option<&Json>) -> BTreeMap<String, String> {
    (v.and_then(Json::as_object).into_iter().flatten())
        .filter_map(|(k, v)| Some((k.clone(), json_scalar(v)?)))
        .collect()
}

fn text_of(v: &Json, key: &str) -> String {
    v.get(key).and_then(json_scalar).unwrap_or_default()
}

fn json_scalar(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Experiment {
    fn from_properties(name: &str, props: &Json, documents: Vec<String>) -> Result<Experiment> {
        let actions = (props.get("Actions").and_then(Json::as_object).into_iter())
            .flatten()
            .map(|(a, body)| Action {
                name: a.clone(),
                id: body["ActionId"].as_str().unwrap_or_default().to_owned(),
                targets: string_map(body.get("Targets")),
                parameters: string_map(body.get("Parameters")),
                start_after: strings(body.get("StartAfter")),
            })
            .collect();
        let targets = (props.get("Targets").and_then(Json::as_object).into_iter())
            .flatten()
            .map(|(t, body)| {
                let filters = (body.get("Filters").and_then(Json::as_array).into_iter())
                    .flatten()
                    .map(|f| {
                        let path = f["Path"].as_str().unwrap_or_default().to_owned();
                        (path, strings(f.get("Values")))
                    })
                    .collect();
                let target = Target {
                    resource_type: body["ResourceType"].as_str().unwrap_or_default().into(),
                    tags: string_map(body.get("ResourceTags")),
                    filters,
                    arns: strings(body.get("ResourceArns")),
                    selection: body["SelectionMode"].as_str().unwrap_or_default().into(),
                };
                (t.clone(), target)
            })
            .collect();
        let mut stop_alarms = Vec::new();
        for c in (props
            .get("StopConditions")
            .and_then(Json::as_array)
            .into_iter())
        .flatten()
        {
            match (c["Source"].as_str(), c["Value"].as_str()) {
                (Some("none"), _) => {}
                (Some("aws:cloudwatch:alarm"), Some(arn)) => {
                    let alarm = arn
                        .split_once(":alarm:")
                        .map(|(_, n)| n)
                        .ok_or_else(|| anyhow!("experiment {name}: `{arn}` is no alarm ARN"))?;
                    stop_alarms.push(alarm.to_owned());
                }
                (s, _) => bail!("experiment {name}: stop condition source {s:?} not played"),
            }
        }
        Ok(Experiment {
            name: name.to_owned(),
            actions,
            targets,
            stop_alarms,
            documents,
        })
    }
}

/// Resolving a template's values with its parameters: CloudFormation's
/// intrinsic functions, short or long form.
struct Ctx<'a> {
    params: &'a HashMap<String, String>,
    conditions: &'a serde_yaml::Mapping,
    resources: &'a serde_yaml::Mapping,
}

fn scalar(v: &Yaml) -> Result<String> {
    match v {
        Yaml::String(s) => Ok(s.clone()),
        Yaml::Number(n) => Ok(n.to_string()),
        Yaml::Bool(b) => Ok(b.to_string()),
        other => bail!("not a plain value: {other:?}"),
    }
}

impl Ctx<'_> {
    /// `v` resolved; `None` is `AWS::NoValue`.
    fn eval(&self, v: &Yaml) -> Result<Option<Json>> {
        Ok(Some(match v {
            Yaml::Tagged(t) => {
                let tag = t.tag.to_string();
                return self.intrinsic(tag.trim_start_matches('!'), &t.value);
            }
            Yaml::Mapping(m) if m.len() == 1 => {
                let Some((k, arg)) = m.iter().next() else {
                    unreachable!("a mapping of one entry")
                };
                match k.as_str() {
                    Some("Ref") => return self.intrinsic("Ref", arg),
                    Some(f) if f.starts_with("Fn::") => return self.intrinsic(&f[4..], arg),
                    _ => self.object(m)?,
                }
            }
            Yaml::Mapping(m) => self.object(m)?,
            Yaml::Sequence(s) => {
                let mut out = Vec::new();
                for x in s {
                    out.extend(self.eval(x)?);
                }
                Json::Array(out)
            }
            Yaml::Null => Json::Null,
            other => Json::String(scalar(other)?),
        }))
    }

    fn object(&self, m: &serde_yaml::Mapping) -> Result<Json> {
        let mut out = serde_json::Map::new();
        for (k, v) in m {
            let k = scalar(k)?;
            if let Some(v) = self.eval(v).with_context(|| format!("in {k}"))? {
                out.insert(k, v);
            }
        }
        Ok(Json::Object(out))
    }

    fn text(&self, v: &Yaml) -> Result<String> {
        match self.eval(v)? {
            Some(j) => json_scalar(&j).ok_or_else(|| anyhow!("not a string: {j}")),
            None => bail!("AWS::NoValue where a string is needed"),
        }
    }

    fn intrinsic(&self, f: &str, arg: &Yaml) -> Result<Option<Json>> {
        let list = || arg.as_sequence().ok_or_else(|| anyhow!("{f} needs a list"));
        Ok(Some(match f {
            "Ref" => return self.reference(&scalar(arg)?),
            "GetAtt" => {
                let (res, att) = match arg {
                    Yaml::Sequence(s) if s.len() == 2 => (scalar(&s[0])?, scalar(&s[1])?),
                    other => {
                        let s = scalar(other)?;
                        let (r, a) = s.split_once('.').ok_or_else(|| anyhow!("GetAtt {s}"))?;
                        (r.to_owned(), a.to_owned())
                    }
                };
                Json::String(self.attribute(&res, &att)?)
            }
            "Sub" => {
                let (text, vars) = match arg {
                    Yaml::Sequence(s) if s.len() == 2 => (scalar(&s[0])?, s[1].as_mapping()),
                    other => (scalar(other)?, None),
                };
                let mut out = String::new();
                let mut rest = text.as_str();
                while let Some(at) = rest.find("${") {
                    out.push_str(&rest[..at]);
                    let end = rest[at..]
                        .find('}')
                        .ok_or_else(|| anyhow!("Sub `{text}`: an unclosed ${{"))?;
                    let var = &rest[at + 2..at + end];
                    let value = match vars.and_then(|m| m.get(var)) {
                        Some(v) => self.text(v)?,
                        None => match var.split_once('.') {
                            Some((r, a)) => self.attribute(r, a)?,
                            None => self
                                .reference(var)?
                                .and_then(|j| json_scalar(&j))
                                .ok_or_else(|| anyhow!("Sub `{text}`: ${{{var}}} is no value"))?,
                        },
                    };
                    out.push_str(&value);
                    rest = &rest[at + end + 1..];
                }
                out.push_str(rest);
                Json::String(out)
            }
            "If" => {
                let l = list()?;
                if l.len() != 3 {
                    bail!("If needs [condition, then, else]");
                }
                return match self.condition(&scalar(&l[0])?)? {
                    true => self.eval(&l[1]),
                    false => self.eval(&l[2]),
                };
            }
            "Join" => {
                let l = list()?;
                let (sep, items) = match l.as_slice() {
                    [sep, items] => (scalar(sep)?, items),
                    _ => bail!("Join needs [separator, list]"),
                };
                let items = match self.eval(items)? {
                    Some(Json::Array(a)) => a,
                    other => bail!("Join of {other:?}"),
                };
                let parts: Vec<String> = items.iter().filter_map(json_scalar).collect();
                Json::String(parts.join(&sep))
            }
            other => bail!("the lab does not resolve Fn::{other}"),
        }))
    }

    fn reference(&self, name: &str) -> Result<Option<Json>> {
        let s = match name {
            "AWS::NoValue" => return Ok(None),
            "AWS::Partition" => "aws".to_owned(),
            "AWS::Region" => REGION.to_owned(),
            "AWS::AccountId" => ACCOUNT.to_owned(),
            "AWS::StackName" => "hanat-fis".to_owned(),
            _ => match self.params.get(name) {
                Some(v) => v.clone(),
                // A resource's Ref: its logical id stands for its physical one.
                None if self.resources.contains_key(name) => name.to_owned(),
                None => bail!("Ref {name}: no such parameter or resource"),
            },
        };
        Ok(Some(Json::String(s)))
    }

    fn attribute(&self, resource: &str, att: &str) -> Result<String> {
        let kind = self
            .resources
            .get(resource)
            .and_then(|r| r.get("Type"))
            .and_then(Yaml::as_str)
            .ok_or_else(|| anyhow!("GetAtt {resource}.{att}: no such resource"))?;
        match (kind, att) {
            ("AWS::IAM::Role", "Arn") => Ok(format!("arn:aws:iam::{ACCOUNT}:role/{resource}")),
            _ => bail!("GetAtt {resource}.{att} ({kind}) is not resolved by the lab"),
        }
    }

    fn condition(&self, name: &str) -> Result<bool> {
        let c = self
            .conditions
            .get(name)
            .ok_or_else(|| anyhow!("no condition {name}"))?;
        self.holds(c).with_context(|| format!("condition {name}"))
    }

    fn holds(&self, c: &Yaml) -> Result<bool> {
        let (f, arg) = match c {
            Yaml::Tagged(t) => (
                t.tag.to_string().trim_start_matches('!').to_owned(),
                &t.value,
            ),
            Yaml::Mapping(m) if m.len() == 1 => {
                let Some((k, v)) = m.iter().next() else {
                    unreachable!("a mapping of one entry")
                };
                let k = scalar(k)?;
                (k.trim_start_matches("Fn::").to_owned(), v)
            }
            other => bail!("not a condition: {other:?}"),
        };
        let items = || {
            arg.as_sequence()
                .cloned()
                .ok_or_else(|| anyhow!("{f} needs a list"))
        };
        match f.as_str() {
            "Equals" => match items()?.as_slice() {
                [a, b] => Ok(self.text(a)? == self.text(b)?),
                _ => bail!("Equals needs two values"),
            },
            "Not" => Ok(!self.holds(&items()?[0])?),
            "And" => items()?
                .iter()
                .try_fold(true, |a, c| Ok(a && self.holds(c)?)),
            "Or" => items()?
                .iter()
                .try_fold(false, |a, c| Ok(a || self.holds(c)?)),
            "Condition" => self.condition(&scalar(arg)?),
            other => bail!("the lab does not evaluate Fn::{other}"),
        }
    }
}

/// A duration written as ISO 8601 (`PT2M`, `PT10S`, `PT1H30M`), as FIS
/// takes them.
pub fn iso_duration(s: &str) -> Result<Duration> {
    let body = s
        .strip_prefix("PT")
        .ok_or_else(|| anyhow!("`{s}` is not a duration like PT2M"))?;
    let mut total = 0u64;
    let mut number = String::new();
    for c in body.chars() {
        match c {
            '0'..='9' => number.push(c),
            'H' | 'M' | 'S' if !number.is_empty() => {
                let n: u64 = number.parse()?;
                total += n * match c {
                    'H' => 3600,
                    'M' => 60,
                    _ => 1,
                };
                number.clear();
            }
            _ => bail!("`{s}` is not a duration like PT2M"),
        }
    }
    if !number.is_empty() || body.is_empty() {
        bail!("`{s}` is not a duration like PT2M");
    }
    Ok(Duration::from_secs(total))
}

/// What the lab is: the values a user gives the experiment stack.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The NAT stack's name (its NATs' `hanat:stack` tag) and `Name`.
    pub stack: String,
    pub vpc: String,
    /// The AZs' names, AZ 0 first.
    pub azs: Vec<String>,
    /// The role the daemons call the API as.
    pub nat_role: String,
}

impl Facts {
    /// The parameters the lab fills, for [`Template::resolve`].
    pub fn parameters(&self) -> HashMap<String, String> {
        [
            ("Name", self.stack.clone()),
            ("NatStackName", self.stack.clone()),
            ("VpcId", self.vpc.clone()),
            ("NumberOfAZs", self.azs.len().max(2).to_string()),
            ("TargetAz", self.azs[0].clone()),
            ("NatRoleArn", self.nat_role.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// One action as the lab plays it.
#[derive(Debug, Clone, PartialEq)]
pub enum Play {
    Terminate(usize),
    StopForwarding(usize, Duration),
    Isolate(usize, Duration),
    /// Operations, percent, for how long.
    Throttle(Vec<String>, u8, Duration),
    Wait(Duration),
    /// AZ, the notice.
    Spot(usize, Duration),
}

/// An action placed in time from the experiment's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub action: String,
    pub play: Play,
    pub start: Duration,
    pub end: Duration,
}

/// The experiment's actions as lab faults on `facts`' lab, in time.
pub fn plan(exp: &Experiment, facts: &Facts) -> Result<Vec<Step>> {
    let mut plays = HashMap::new();
    for a in &exp.actions {
        let play = play_of(exp, a, facts)
            .with_context(|| format!("experiment {}: action {} ({})", exp.name, a.name, a.id))?;
        plays.insert(a.name.clone(), play);
    }
    // Each action starts when every action it starts after has ended.
    let mut steps: Vec<Step> = Vec::new();
    while steps.len() < exp.actions.len() {
        let before = steps.len();
        for a in &exp.actions {
            if steps.iter().any(|s| s.action == a.name) {
                continue;
            }
            if let Some(missing) = a
                .start_after
                .iter()
                .find(|p| !exp.actions.iter().any(|x| &x.name == *p))
            {
                bail!(
                    "experiment {}: action {} starts after {missing}, which it does not have",
                    exp.name,
                    a.name
                );
            }
            let ends: Option<Vec<Duration>> = (a.start_after.iter())
                .map(|p| steps.iter().find(|s| &s.action == p).map(|s| s.end))
                .collect();
            if let Some(ends) = ends {
                let start = ends.into_iter().max().unwrap_or_default();
                let play = plays[&a.name].clone();
                let held = match &play {
                    Play::Terminate(_) | Play::Spot(..) => Duration::ZERO,
                    Play::StopForwarding(_, d)
                    | Play::Isolate(_, d)
                    | Play::Throttle(_, _, d)
                    | Play::Wait(d) => *d,
                };
                steps.push(Step {
                    action: a.name.clone(),
                    play,
                    start,
                    end: start + held,
                });
            }
        }
        if steps.len() == before {
            bail!(
                "experiment {}: its actions start after each other in a circle",
                exp.name
            );
        }
    }
    steps.sort_by_key(|s| s.start);
    Ok(steps)
}

fn param<'a>(a: &'a Action, key: &str) -> Result<&'a str> {
    a.parameters
        .get(key)
        .map(String::as_str)
        .ok_or_else(|| anyhow!("no parameter {key}"))
}

fn target<'a>(exp: &'a Experiment, a: &Action, kind: &str) -> Result<&'a Target> {
    let name = a
        .targets
        .get(kind)
        .ok_or_else(|| anyhow!("no target {kind}"))?;
    exp.targets
        .get(name)
        .ok_or_else(|| anyhow!("target {name} is not in the experiment's Targets"))
}

fn play_of(exp: &Experiment, a: &Action, facts: &Facts) -> Result<Play> {
    let duration = || iso_duration(param(a, "duration")?);
    Ok(match a.id.as_str() {
        "aws:ec2:terminate-instances" => Play::Terminate(nat_az(
            target(exp, a, "Instances")?,
            "aws:ec2:instance",
            facts,
        )?),
        "aws:ec2:send-spot-instance-interruptions" => Play::Spot(
            nat_az(
                target(exp, a, "SpotInstances")?,
                "aws:ec2:spot-instance",
                facts,
            )?,
            iso_duration(param(a, "durationBeforeInterruption")?)?,
        ),
        "aws:ssm:send-command" => {
            let az = nat_az(target(exp, a, "Instances")?, "aws:ec2:instance", facts)?;
            let arn = param(a, "documentArn")?;
            let doc = arn.rsplit_once("document/").map_or("", |(_, d)| d);
            if !exp.documents.iter().any(|d| d == doc) {
                bail!(
                    "runs document `{arn}`: the lab plays only a document of this template that drops forwarded packets (`hook forward` … `policy drop`)"
                );
            }
            // The document holds the fault for its DurationMinutes; FIS
            // waits for it at most `duration`.
            let minutes = match a.parameters.get("documentParameters") {
                Some(p) => {
                    let p: Json = serde_json::from_str(p)
                        .with_context(|| format!("documentParameters `{p}` is not JSON"))?;
                    p.get("DurationMinutes").and_then(json_scalar)
                }
                None => None,
            };
            let held = match minutes {
                Some(m) => Duration::from_secs(
                    60 * m
                        .parse::<u64>()
                        .with_context(|| format!("DurationMinutes `{m}`"))?,
                ),
                None => duration()?,
            };
            Play::StopForwarding(az, held.min(duration()?))
        }
        "aws:network:disrupt-connectivity" => {
            let scope = a.parameters.get("scope").map_or("all", String::as_str);
            if scope != "availability-zone" {
                bail!(
                    "scope `{scope}`: the lab plays scope availability-zone (its az-isolation: an AZ cut off from the VPC's other AZs)"
                );
            }
            let t = target(exp, a, "Subnets")?;
            if t.resource_type != "aws:ec2:subnet" {
                bail!("target type `{}` is not aws:ec2:subnet", t.resource_type);
            }
            if !t.tags.is_empty() || !t.arns.is_empty() {
                bail!("the lab finds subnets by the filters VpcId and AvailabilityZone only");
            }
            let mut az = None;
            for (path, values) in &t.filters {
                match path.as_str() {
                    "VpcId" if values == std::slice::from_ref(&facts.vpc) => {}
                    "VpcId" => bail!("subnets of {values:?}: the lab's VPC is {}", facts.vpc),
                    "AvailabilityZone" => az = Some(one_az(values, facts)?),
                    other => bail!("subnet filter `{other}` is not played"),
                }
            }
            let az = az.ok_or_else(|| {
                anyhow!(
                    "subnets of every AZ: filter them on AvailabilityZone (the lab cuts off one AZ)"
                )
            })?;
            Play::Isolate(az, duration()?)
        }
        "aws:fis:inject-api-throttle-error" => {
            let t = target(exp, a, "Roles")?;
            if t.resource_type != "aws:iam:role" || t.arns != [facts.nat_role.clone()] {
                bail!(
                    "throttles {:?}: the lab's daemons call the API as the NAT role {} only",
                    t.arns,
                    facts.nat_role
                );
            }
            if param(a, "service")? != "ec2" {
                bail!("service `{}`: FIS throttles ec2 only", param(a, "service")?);
            }
            let operations = param(a, "operations")?
                .split(',')
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect();
            let percent: u8 = param(a, "percentage")?
                .parse()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| anyhow!("percentage is not 1-100"))?;
            Play::Throttle(operations, percent, duration()?)
        }
        "aws:fis:wait" => Play::Wait(duration()?),
        other => bail!("`{other}` is not played"),
    })
}

/// The lab AZ whose NAT `t` selects.
fn nat_az(t: &Target, kind: &str, facts: &Facts) -> Result<usize> {
    if t.resource_type != kind {
        bail!("target type `{}` is not {kind}", t.resource_type);
    }
    if !t.arns.is_empty() {
        bail!("names instances by ARN: the lab finds its NATs by tag (hanat:stack) and AZ");
    }
    if t.tags.is_empty() {
        bail!("selects instances by no tag, so not only NATs: give it ResourceTags hanat:stack");
    }
    for (k, v) in &t.tags {
        if k != "hanat:stack" || v != &facts.stack {
            bail!(
                "selects instances tagged {k}={v}: the lab's NATs are tagged hanat:stack={}",
                facts.stack
            );
        }
    }
    let mut az = None;
    for (path, values) in &t.filters {
        match path.as_str() {
            "Placement.AvailabilityZone" => az = Some(one_az(values, facts)?),
            "State.Name" if values.iter().any(|v| v == "running") => {}
            other => bail!("instance filter `{other}` {values:?} is not played"),
        }
    }
    az.ok_or_else(|| {
        anyhow!("hits NATs of every AZ: filter on Placement.AvailabilityZone (the lab hits one)")
    })
}

fn one_az(values: &[String], facts: &Facts) -> Result<usize> {
    match values {
        [one] => (facts.azs.iter())
            .position(|a| a == one)
            .ok_or_else(|| anyhow!("AZ {one} is not one of the lab's: {:?}", facts.azs)),
        _ => bail!("AZs {values:?}: the lab hits one AZ"),
    }
}

/// Run experiment `name` of `template` on a fresh lab. `given` are the
/// parameters a user gives (the lab fills [`FILLED`]). The stop alarms are
/// evaluated over their own periods, in real time, on what the NATs publish
/// every `opts.lab.cloudwatch`.
pub async fn run(
    template: &Template,
    name: &str,
    given: &HashMap<String, String>,
    opts: ChaosOptions,
) -> Result<Report> {
    // Resolved once before the lab with stand-in facts, so that a bad
    // template fails at once, and again with the lab's own.
    let stand_in = Facts {
        stack: "stack".into(),
        vpc: "vpc-0".into(),
        azs: vec![format!("{REGION}a"), format!("{REGION}b")],
        nat_role: format!("arn:aws:iam::{ACCOUNT}:role/nat"),
    };
    let mut params = stand_in.parameters();
    params.extend(given.clone());
    let exp = template.resolve(name, &params)?;
    let replaced_by_end = exp.actions.iter().any(|a| {
        matches!(
            a.id.as_str(),
            "aws:ec2:terminate-instances"
                | "aws:ssm:send-command"
                | "aws:ec2:send-spot-instance-interruptions"
        )
    });
    if opts.lab.cloudwatch.is_none() && !exp.stop_alarms.is_empty() {
        bail!("experiment {name} stops on alarms: the NATs must publish to CloudWatch");
    }
    chaos::run_fault(
        &format!("fis:{name}"),
        opts,
        replaced_by_end,
        async |lab: &Lab| {
            let stack = nat_stack_name(&lab.prefix, &lab.opts);
            let outputs = lab.cloud.stack_outputs(&stack).await?;
            let facts = Facts {
                nat_role: outputs
                    .get("NatRoleArn")
                    .cloned()
                    .ok_or_else(|| anyhow!("stack {stack}: no output NatRoleArn"))?,
                stack,
                vpc: lab.vpc.clone(),
                azs: lab.azs.iter().map(|a| a.name.clone()).collect(),
            };
            let mut params = facts.parameters();
            params.extend(given.clone());
            for alarm in template.alarms(&params)? {
                lab.cloud.put_alarm(&alarm).await?;
            }
            let exp = template.resolve(name, &params)?;
            let steps = plan(&exp, &facts)?;
            play(lab, &exp, &steps).await
        },
    )
    .await
}

/// Play `steps` on `lab`, checking the stop alarms between them; the alarm
/// that stopped the experiment, if one did.
async fn play(lab: &Lab, exp: &Experiment, steps: &[Step]) -> Result<Option<String>> {
    // An alarm breaches when its condition holds in each of its
    // evaluation periods: for these alarms (a maximum below a threshold)
    // exactly when it holds over all of them at once, in real time.
    let mut windows = Vec::new();
    for alarm in &exp.stop_alarms {
        let a = lab.cloud.alarm(alarm).await.with_context(|| {
            format!("stop condition: the lab has no alarm {alarm} (FIS would not start)")
        })?;
        let periods = a.evaluation_periods().unwrap_or(1).max(1) as u64;
        let period = a.period().unwrap_or(60).max(1) as u64;
        windows.push((alarm.clone(), Duration::from_secs(period * periods)));
    }
    let breached = async || -> Result<Option<String>> {
        for (alarm, window) in &windows {
            let since = SystemTime::now() - *window;
            if lab.cloud.breaching(alarm, since).await? {
                return Ok(Some(alarm.clone()));
            }
        }
        Ok(None)
    };
    // Every start and end, in time; ends first at the same instant.
    let mut events: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        events.push((s.start, true, i));
        events.push((s.end, false, i));
    }
    events.sort_by_key(|(at, start, _)| (*at, *start));
    let t0 = Instant::now();
    let mut started = vec![false; steps.len()];
    let mut ended = vec![false; steps.len()];
    let mut instance = vec![None; steps.len()];
    for (at, start, i) in events {
        loop {
            if let Some(alarm) = breached().await? {
                lab.note(format!(
                    "fis: experiment {} STOPPED: alarm {alarm} in ALARM",
                    exp.name
                ));
                for (j, s) in steps.iter().enumerate() {
                    if started[j] && !ended[j] {
                        end(lab, s, &instance[j]);
                    }
                }
                return Ok(Some(alarm));
            }
            let left = at.saturating_sub(t0.elapsed());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        }
        let s = &steps[i];
        if start {
            lab.note(format!("fis: {} starts: {:?}", s.action, s.play));
            instance[i] = begin(lab, s).await?;
            started[i] = true;
        } else {
            end(lab, s, &instance[i]);
            ended[i] = true;
        }
    }
    lab.note(format!("fis: experiment {} completed", exp.name));
    Ok(None)
}

/// The table the shipped SSM document adds to stop forwarding.
const STOP_TABLE: &str = "fis_stop_forwarding";

/// Start a step; the instance it hit, for those that end on it.
async fn begin(lab: &Lab, s: &Step) -> Result<Option<String>> {
    match &s.play {
        Play::Terminate(az) => lab.terminate_instance(*az).await.map(|_| None),
        Play::Spot(az, notice) => lab.spot_interruption(*az, *notice).map(|()| None),
        Play::StopForwarding(az, _) => {
            lab.stop_forwarding(*az, STOP_TABLE)?;
            Ok(lab.nat(*az).map(|n| n.instance.id))
        }
        Play::Isolate(az, _) => lab.isolate_az(*az, true).map(|()| None),
        Play::Throttle(operations, percent, held) => {
            for op in operations {
                lab.api().inject(Rule {
                    nat: None,
                    action: Some(op.clone()),
                    fault: Fault::ThrottleShare(*percent),
                    until: Some(Instant::now() + *held),
                });
            }
            Ok(None)
        }
        Play::Wait(_) => Ok(None),
    }
}

/// End a step that lasts (early, when the experiment is stopped). A NAT
/// replaced meanwhile took its fault with it.
fn end(lab: &Lab, s: &Step, instance: &Option<String>) {
    let done = match &s.play {
        Play::StopForwarding(az, _) => {
            let same = lab.nat(*az).map(|n| n.instance.id) == *instance;
            match same {
                true => lab.resume_forwarding(*az, STOP_TABLE),
                false => Ok(()),
            }
        }
        Play::Isolate(az, _) => lab.isolate_az(*az, false),
        Play::Throttle(_, percent, _) => {
            lab.api().lift(Fault::ThrottleShare(*percent));
            Ok(())
        }
        Play::Terminate(_) | Play::Spot(..) | Play::Wait(_) => return,
    };
    match done {
        Ok(()) => lab.note(format!("fis: {} ends", s.action)),
        Err(e) => lab.note(format!("fis: {} could not end: {e:#}", s.action)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../../cloudformation/fis.yaml");

    fn facts(azs: usize) -> Facts {
        Facts {
            stack: "lab1".into(),
            vpc: "vpc-1".into(),
            azs: (0..azs)
                .map(|i| format!("us-east-1{}", b"abc"[i] as char))
                .collect(),
            nat_role: format!("arn:aws:iam::{ACCOUNT}:role/lab1-NatRole"),
        }
    }

    fn planned(text: &str, name: &str, azs: usize) -> Result<(Experiment, Vec<Step>)> {
        let t = read(text)?;
        let exp = t.resolve(name, &facts(azs).parameters())?;
        let steps = plan(&exp, &facts(azs))?;
        Ok((exp, steps))
    }

    #[test]
    fn every_shipped_experiment_is_planned_as_written() {
        let t = read(SHIPPED).unwrap();
        assert_eq!(
            t.experiments(),
            [
                "TerminateNat",
                "StopForwarding",
                "DisruptAz",
                "ThrottleApi",
                "SpotInterruption"
            ]
        );
        let min = Duration::from_secs(60);
        let (exp, steps) = planned(SHIPPED, "TerminateNat", 2).unwrap();
        assert_eq!(steps[0].play, Play::Terminate(0));
        assert_eq!(
            exp.stop_alarms,
            [
                "lab1-nat-a-no-forwarding-nat",
                "lab1-nat-b-no-forwarding-nat"
            ]
        );
        let (exp, _) = planned(SHIPPED, "TerminateNat", 3).unwrap();
        assert_eq!(exp.stop_alarms.len(), 3, "{:?}", exp.stop_alarms);
        let (_, steps) = planned(SHIPPED, "StopForwarding", 2).unwrap();
        assert_eq!(steps[0].play, Play::StopForwarding(0, min));
        let (_, steps) = planned(SHIPPED, "DisruptAz", 2).unwrap();
        assert_eq!(steps[0].play, Play::Isolate(0, min));
        let (_, steps) = planned(SHIPPED, "SpotInterruption", 2).unwrap();
        assert_eq!(steps[0].play, Play::Spot(0, Duration::from_secs(120)));
        // Throttling and a pause at once; the termination after the pause.
        let (_, steps) = planned(SHIPPED, "ThrottleApi", 2).unwrap();
        let at = |name: &str| steps.iter().find(|s| s.action == name).unwrap().clone();
        assert!(matches!(at("Throttle").play, Play::Throttle(ref ops, 50, d)
            if d == min && ops.contains(&"ReplaceRoute".to_owned()) && ops.len() == 10));
        assert_eq!(at("Throttle").start, Duration::ZERO);
        assert_eq!(at("Terminate").start, Duration::from_secs(10));
        assert_eq!(at("Terminate").play, Play::Terminate(0));
    }

    #[test]
    fn parameters_change_what_is_played() {
        let t = read(SHIPPED).unwrap();
        let mut p = facts(2).parameters();
        p.insert("FaultMinutes".into(), "3".into());
        p.insert("TargetAz".into(), "us-east-1b".into());
        let exp = t.resolve("DisruptAz", &p).unwrap();
        let steps = plan(&exp, &facts(2)).unwrap();
        assert_eq!(steps[0].play, Play::Isolate(1, Duration::from_secs(180)));
        p.insert("TargetAz".into(), "eu-west-1a".into());
        let exp = t.resolve("DisruptAz", &p).unwrap();
        let err = format!("{:#}", plan(&exp, &facts(2)).unwrap_err());
        assert!(
            err.contains("AZ eu-west-1a is not one of the lab's"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_action_is_refused_naming_it_and_what_the_lab_plays() {
        let text = SHIPPED.replace("aws:ec2:terminate-instances", "aws:ec2:reboot-instances");
        let err = format!("{:#}", read(&text).err().unwrap());
        assert!(
            err.contains("experiment TerminateNat: action Terminate: the lab cannot play `aws:ec2:reboot-instances`"),
            "{err}"
        );
        assert!(
            err.contains("aws:fis:inject-api-throttle-error (api-throttle)"),
            "{err}"
        );
        assert!(
            read("Resources: {}")
                .err()
                .unwrap()
                .to_string()
                .contains("no AWS::FIS")
        );
    }

    #[test]
    fn targets_the_lab_cannot_find_are_refused() {
        let other_tag = SHIPPED.replacen("\"hanat:stack\": !Ref NatStackName", "team: db", 1);
        let err = format!("{:#}", planned(&other_tag, "TerminateNat", 2).unwrap_err());
        assert!(err.contains("selects instances tagged team=db"), "{err}");
        let all = SHIPPED.replacen("scope: availability-zone", "scope: all", 1);
        let err = format!("{:#}", planned(&all, "DisruptAz", 2).unwrap_err());
        assert!(err.contains("scope `all`"), "{err}");
        let mut f = facts(2);
        f.nat_role = "arn:aws:iam::1:role/other".into();
        let t = read(SHIPPED).unwrap();
        let exp = t.resolve("ThrottleApi", &facts(2).parameters()).unwrap();
        let err = format!("{:#}", plan(&exp, &f).unwrap_err());
        assert!(
            err.contains("as the NAT role arn:aws:iam::1:role/other only"),
            "{err}"
        );
    }

    #[test]
    fn iso_durations() {
        assert_eq!(iso_duration("PT2M").unwrap(), Duration::from_secs(120));
        assert_eq!(iso_duration("PT10S").unwrap(), Duration::from_secs(10));
        assert_eq!(iso_duration("PT1H30M").unwrap(), Duration::from_secs(5400));
        for bad in ["2M", "PT", "PTM", "PT5", "PT5X"] {
            assert!(iso_duration(bad).is_err(), "{bad}");
        }
    }
}
