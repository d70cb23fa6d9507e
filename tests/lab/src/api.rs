//! The AWS API as a NAT instance reaches it: an HTTP-aware proxy in front
//! of moto, one listener per NAT, one shared [`Api`] per lab.
//!
//! The proxy reads each request (the AWS query protocol: a form body with
//! `Action=`, the service in the signature's credential scope), counts it
//! per NAT and action, and before forwarding it to moto can:
//! - add the lab's **latency profile** ([`Latency::Realistic`] by default);
//! - apply **faults** ([`Fault`]) per NAT and per action, or to all: extra
//!   latency, a hang (until the fault ends), throttling with the body AWS
//!   sends (EC2 `RequestLimitExceeded` 503, Auto Scaling `Throttling` 400),
//!   a 500/503, or a reset connection;
//! - charge EC2's **per-account token buckets**, shared by every NAT of the
//!   lab ([`Buckets`]): a call that finds its bucket empty is throttled.
//!
//! It also plays what moto lacks of EC2's **application status checks**
//! ([`Witness`]): it answers `AssociateApplicationStatusCheck` itself, and
//! adds each associated instance's application status (as the lab's
//! checker concludes it) to moto's `DescribeInstanceStatus` answers.
//!
//! And what moto lacks of **secondary private addresses** ([`Secondary`]):
//! moto picks a `SecondaryPrivateIpAddressCount`'s addresses at random in
//! the subnet (where they may fall on the lab's router or another
//! instance), so the proxy picks free ones itself, as EC2 does, and asks
//! for those; and moto ignores `AssociateAddress`'s `PrivateIpAddress`
//! (its answers always name the interface's primary address), so the
//! proxy remembers it and puts it into `DescribeAddresses` answers.
//!
//! The lab's own calls to moto (building the VPC, reading routes) do not go
//! through it: only the daemons' calls are counted and faulted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// The service a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Ec2,
    AutoScaling,
    SecretsManager,
    /// `monitoring`: the daemons' `PutMetricData`.
    CloudWatch,
    Other,
}

/// How long moto's answers take on top of their own few milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// moto as it is (~5 ms a call).
    None,
    /// The order of magnitude of AWS's control plane, see [`realistic`].
    Realistic,
}

impl Latency {
    pub fn parse(s: &str) -> anyhow::Result<Latency> {
        match s {
            "none" => Ok(Latency::None),
            "realistic" => Ok(Latency::Realistic),
            _ => anyhow::bail!("unknown API latency `{s}`; choose realistic or none"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Latency::None => "none",
            Latency::Realistic => "realistic",
        }
    }
}

/// The latency the realistic profile adds to a call, drawn uniformly from
/// a range by kind: reads (`Describe*`) 30–90 ms, writes (routes, addresses,
/// interface attributes, instance health) 150–450 ms. AWS publishes no
/// latency figures; these ranges are our assumption of the order of
/// magnitude (reads tens of ms, mutations a few hundred), not a measurement.
pub fn realistic(action: &str) -> Duration {
    let (base, spread) = if is_read(action) {
        (30, 60)
    } else {
        (150, 300)
    };
    Duration::from_millis(base + fastrand::u64(0..=spread))
}

fn is_read(action: &str) -> bool {
    ["Describe", "Get", "List"]
        .iter()
        .any(|p| action.starts_with(p))
}

/// What a fault does to the calls it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer, but this much later.
    Delay(Duration),
    /// Never answer while the fault lasts (the caller's timeout ends it).
    Hang,
    /// The service's throttling error.
    Throttle,
    /// The throttling error for this share of the calls, in percent (an
    /// AWS FIS `aws:fis:inject-api-throttle-error`).
    ThrottleShare(u8),
    /// A server error (500 or 503) with the service's error body.
    Error(u16),
    /// Close the connection without an answer.
    Reset,
}

/// A fault on the calls of one NAT (or all) and one action (or all), until
/// a time (or until removed).
#[derive(Debug, Clone)]
pub struct Rule {
    pub nat: Option<usize>,
    pub action: Option<String>,
    pub fault: Fault,
    pub until: Option<Instant>,
}

impl Rule {
    pub fn all(fault: Fault, for_: Duration) -> Rule {
        Rule {
            nat: None,
            action: None,
            fault,
            until: Some(Instant::now() + for_),
        }
    }

    fn matches(&self, nat: usize, action: &str, now: Instant) -> bool {
        self.nat.is_none_or(|n| n == nat)
            && self.action.as_deref().is_none_or(|a| a == action)
            && self.until.is_none_or(|u| now < u)
    }
}

/// One token bucket: `capacity` calls at once, refilled at `refill` per
/// second.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    refill: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(capacity: f64, refill: f64) -> Bucket {
        Bucket {
            capacity,
            refill,
            tokens: capacity,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant, refill: f64) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * refill).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// EC2's per-account request buckets, as documented for unfiltered
/// accounts: non-mutating actions 100 at once, 20 per second; mutating
/// ones 50 at once, 5 per second. [`Api::drain`] empties both and slows
/// their refill for a while (another agent of the account using them up).
#[derive(Debug, Clone)]
struct Buckets {
    read: Bucket,
    write: Bucket,
    /// While set: (until, refill per second of both buckets).
    drained: Option<(Instant, f64)>,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            read: Bucket::new(100.0, 20.0),
            write: Bucket::new(50.0, 5.0),
            drained: None,
        }
    }
}

impl Buckets {
    fn take(&mut self, action: &str, now: Instant) -> bool {
        let drained = self.drained.filter(|(until, _)| now < *until);
        self.drained = drained;
        let bucket = match is_read(action) {
            true => &mut self.read,
            false => &mut self.write,
        };
        let refill = drained.map_or(bucket.refill, |(_, r)| r);
        bucket.take(now, refill)
    }
}

/// One call as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub nat: usize,
    pub service: Service,
    pub action: String,
    /// The HTTP status answered (0: connection reset, or never answered).
    pub status: u16,
}

#[derive(Default)]
struct State {
    latency: Option<Latency>,
    rules: Vec<Rule>,
    buckets: Buckets,
    calls: Vec<Call>,
    witness: Witness,
    secondary: Secondary,
}

/// Secondary private addresses as EC2 would keep them (see the module's
/// documentation).
#[derive(Debug, Default, Clone)]
pub struct Secondary {
    /// Addresses handed out so far, per AZ (the next is `.100 + n`).
    handed: HashMap<usize, u8>,
    /// Allocation id → (interface, private address) it was associated
    /// with by a `PrivateIpAddress`.
    pub associated: HashMap<String, (String, String)>,
}

impl Secondary {
    /// `count` fresh addresses in AZ `az`'s public subnet (10.0.2az.0/24):
    /// .100 to .199 in turn, away from moto's own (.4 upward) and the
    /// lab's (.1, .250).
    fn pick(&mut self, az: usize, count: usize) -> Vec<String> {
        let n = self.handed.entry(az).or_default();
        (0..count)
            .map(|_| {
                let ip = format!("10.0.{}.{}", 2 * az, 100 + *n);
                *n = (*n + 1) % 100;
                ip
            })
            .collect()
    }
}

/// EC2's application status checks as the lab plays them: which instance
/// the daemons associated with which check, and the application status
/// the lab's checker concluded for each (`initializing` until then).
#[derive(Debug, Default, Clone)]
pub struct Witness {
    /// Instance → (check, when associated).
    pub associated: HashMap<String, (String, Instant)>,
    /// Instance → `initializing`, `ok` or `impaired`, and since when.
    pub status: HashMap<String, (&'static str, Instant)>,
}

/// The lab's AWS API: latency profile, faults, buckets and the record of
/// every call, shared by all NATs' proxies.
#[derive(Clone, Default)]
pub struct Api {
    state: Arc<Mutex<State>>,
}

impl Api {
    pub fn new(latency: Latency) -> Api {
        let api = Api::default();
        api.lock().latency = Some(latency);
        api
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn latency(&self) -> Latency {
        self.lock().latency.unwrap_or(Latency::None)
    }

    /// Add a fault.
    pub fn inject(&self, rule: Rule) {
        self.lock().rules.push(rule);
    }

    /// End every rule with `fault` now.
    pub fn lift(&self, fault: Fault) {
        self.lock().rules.retain(|r| r.fault != fault);
    }

    /// Empty the account's buckets and refill them at `refill` calls per
    /// second for `for_`.
    pub fn drain(&self, for_: Duration, refill: f64) {
        let mut st = self.lock();
        let now = Instant::now();
        st.buckets.read.tokens = 0.0;
        st.buckets.read.at = now;
        st.buckets.write.tokens = 0.0;
        st.buckets.write.at = now;
        st.buckets.drained = Some((now + for_, refill));
    }

    /// The application status checks' associations and verdicts.
    pub fn witness(&self) -> Witness {
        self.lock().witness.clone()
    }

    /// Record the checker's verdict on `instance`.
    pub fn set_application_status(&self, instance: &str, status: &'static str) {
        let mut st = self.lock();
        st.witness
            .status
            .insert(instance.to_owned(), (status, Instant::now()));
    }

    /// Where each Elastic IP associated by a private address is: allocation
    /// id → (interface, private address).
    pub fn secondary_associations(&self) -> HashMap<String, (String, String)> {
        self.lock().secondary.associated.clone()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    fn fault(&self, nat: usize, action: &str) -> Option<Fault> {
        let now = Instant::now();
        let mut st = self.lock();
        st.rules.retain(|r| r.until.is_none_or(|u| now < u));
        st.rules
            .iter()
            .find(|r| r.matches(nat, action, now))
            .map(|r| r.fault)
    }

    fn record(&self, nat: usize, service: Service, action: &str, status: u16) {
        self.lock().calls.push(Call {
            at: Instant::now(),
            nat,
            service,
            action: action.to_owned(),
            status,
        });
    }
}

/// Calls per action, over all NATs, in `calls`.
pub fn by_action(calls: &[Call]) -> Vec<(String, usize)> {
    let mut m: HashMap<&str, usize> = HashMap::new();
    for c in calls {
        *m.entry(c.action.as_str()).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = m.into_iter().map(|(a, n)| (a.to_owned(), n)).collect();
    v.sort();
    v
}

/// Calls per NAT per minute in `[from, to)`, averaged over `nats` NATs.
pub fn per_nat_min(calls: &[Call], nats: usize, from: Instant, to: Instant) -> f64 {
    let minutes = to.saturating_duration_since(from).as_secs_f64() / 60.0;
    if minutes <= 0.0 || nats == 0 {
        return 0.0;
    }
    let n = calls.iter().filter(|c| c.at >= from && c.at < to).count();
    n as f64 / nats as f64 / minutes
}

/// Serve AZ `nat`'s API on `listener` (inside its namespace), forwarding
/// to moto on loopback `moto_port`, until aborted.
pub async fn serve(listener: std::net::TcpListener, nat: usize, api: Api, moto_port: u16) {
    let Ok(()) = listener.set_nonblocking(true) else {
        return;
    };
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let upstream = SocketAddr::from(([127, 0, 0, 1], moto_port));
    while let Ok((stream, _)) = listener.accept().await {
        let api = api.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { handle(&api, nat, req, upstream).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Answer = Result<Response<Full<Bytes>>, std::io::Error>;

async fn handle(api: &Api, nat: usize, req: Request<Incoming>, upstream: SocketAddr) -> Answer {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let service = service_of(&parts.headers);
    let action = action_of(&body)
        .or_else(|| target_of(&parts.headers))
        .unwrap_or_else(|| "Unknown".into());
    let profile = match api.latency() {
        Latency::Realistic => realistic(&action),
        Latency::None => Duration::ZERO,
    };
    tokio::time::sleep(profile).await;
    let answer = match api.fault(nat, &action) {
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            None
        }
        Some(Fault::Hang) => {
            while api.fault(nat, &action) == Some(Fault::Hang) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
        Some(Fault::Throttle) => Some(throttled(service)),
        Some(Fault::ThrottleShare(p)) => (fastrand::u8(0..100) < p).then(|| throttled(service)),
        Some(Fault::Error(code)) => Some(server_error(service, code)),
        Some(Fault::Reset) => {
            api.record(nat, service, &action, 0);
            return Err(std::io::Error::other("reset by the lab"));
        }
        None => None,
    };
    let answer = match answer {
        Some(a) => a,
        None if service == Service::Ec2 && !api.lock().buckets.take(&action, Instant::now()) => {
            throttled(service)
        }
        None if service == Service::Ec2 && action == "AssociateApplicationStatusCheck" => {
            associate(api, &body)
        }
        None if service == Service::Ec2 && action == "DescribeInstanceStatus" => {
            let answer = forward(Request::from_parts(parts, Full::new(body)), upstream).await?;
            with_application_status(answer, &api.witness()).await?
        }
        None if service == Service::Ec2 && action == "AssignPrivateIpAddresses" => {
            let body = with_chosen_addresses(api, nat, &body);
            let mut parts = parts;
            parts
                .headers
                .insert(hyper::header::CONTENT_LENGTH, body.len().into());
            forward(Request::from_parts(parts, Full::new(body)), upstream).await?
        }
        None if service == Service::Ec2 && action == "AssociateAddress" => {
            let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
            let answer = forward(Request::from_parts(parts, Full::new(body)), upstream).await?;
            if answer.status().is_success() {
                remember_association(api, &form);
            }
            answer
        }
        None if service == Service::Ec2 && action == "DescribeAddresses" => {
            let answer = forward(Request::from_parts(parts, Full::new(body)), upstream).await?;
            with_private_addresses(answer, &api.secondary_associations()).await?
        }
        None => forward(Request::from_parts(parts, Full::new(body)), upstream).await?,
    };
    api.record(nat, service, &action, answer.status().as_u16());
    Ok(answer)
}

async fn forward(req: Request<Full<Bytes>>, upstream: SocketAddr) -> Answer {
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let resp = send
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}

/// `AssociateApplicationStatusCheck` (instances only), which moto lacks.
fn associate(api: &Api, body: &[u8]) -> Response<Full<Bytes>> {
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(check) = get("ApplicationStatusCheckId").filter(|c| c.starts_with("asc-")) else {
        return ec2_error(
            400,
            "InvalidParameterValue",
            "ApplicationStatusCheckId is missing or malformed.",
        );
    };
    let instances: Vec<String> = form
        .iter()
        .filter(|(k, _)| k.starts_with("InstanceId."))
        .map(|(_, v)| v.clone())
        .collect();
    let mut items = String::new();
    {
        let mut st = api.lock();
        for id in &instances {
            st.witness
                .associated
                .entry(id.clone())
                .or_insert_with(|| (check.clone(), Instant::now()));
            st.witness
                .status
                .entry(id.clone())
                .or_insert(("initializing", Instant::now()));
            items.push_str(&format!(
                "<item><applicationStatusCheckId>{check}</applicationStatusCheckId>\
                 <associationType>instance-id</associationType>\
                 <associationValue>{id}</associationValue></item>"
            ));
        }
    }
    xml(
        200,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<AssociateApplicationStatusCheckResponse \
             xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>{}</requestId>\
             <successfulResultSet>{items}</successfulResultSet><unsuccessfulResultSet/>\
             </AssociateApplicationStatusCheckResponse>",
            request_id()
        ),
    )
}

/// An `AssignPrivateIpAddresses` body asking for a count, rewritten to ask
/// for that many addresses the lab picked (see [`Secondary`]).
fn with_chosen_addresses(api: &Api, az: usize, body: &[u8]) -> Bytes {
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let count = form
        .iter()
        .find(|(k, _)| k == "SecondaryPrivateIpAddressCount")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let Some(count) = count else {
        return Bytes::copy_from_slice(body);
    };
    let picked = api.lock().secondary.pick(az, count);
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form
        .iter()
        .filter(|(k, _)| k != "SecondaryPrivateIpAddressCount")
    {
        out.append_pair(k, v);
    }
    for (n, ip) in picked.iter().enumerate() {
        out.append_pair(&format!("PrivateIpAddress.{}", n + 1), ip);
    }
    Bytes::from(out.finish())
}

/// Note where an `AssociateAddress` that moto accepted put the address.
fn remember_association(api: &Api, form: &[(String, String)]) {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(allocation) = get("AllocationId") else {
        return;
    };
    let mut st = api.lock();
    match (get("NetworkInterfaceId"), get("PrivateIpAddress")) {
        (Some(eni), Some(ip)) => {
            st.secondary.associated.insert(allocation, (eni, ip));
        }
        _ => {
            st.secondary.associated.remove(&allocation);
        }
    }
}

/// moto's `DescribeAddresses` answer with each address that is still on
/// the interface it was associated with by a private address showing that
/// address.
async fn with_private_addresses(
    answer: Response<Full<Bytes>>,
    associated: &HashMap<String, (String, String)>,
) -> Answer {
    rewritten(answer, |text| {
        text.split("<item>")
            .map(|item| {
                let field = |tag: &str| {
                    let open = format!("<{tag}>");
                    let start = item.find(&open)? + open.len();
                    let end = item[start..].find(&format!("</{tag}>"))?;
                    Some(item[start..start + end].to_owned())
                };
                let placed = field("allocationId").and_then(|a| associated.get(&a));
                match (placed, field("networkInterfaceId")) {
                    (Some((eni, ip)), Some(on)) if *eni == on => match field("privateIpAddress") {
                        Some(old) => item.replacen(
                            &format!("<privateIpAddress>{old}</privateIpAddress>"),
                            &format!("<privateIpAddress>{ip}</privateIpAddress>"),
                            1,
                        ),
                        None => item.replacen(
                            "<publicIp>",
                            &format!("<privateIpAddress>{ip}</privateIpAddress><publicIp>"),
                            1,
                        ),
                    },
                    _ => item.to_owned(),
                }
            })
            .collect::<Vec<_>>()
            .join("<item>")
    })
    .await
}

/// A successful answer of moto's with its body changed by `change` (an
/// error passes as it is).
async fn rewritten(answer: Response<Full<Bytes>>, change: impl FnOnce(String) -> String) -> Answer {
    let (mut parts, body) = answer.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    if !parts.status.is_success() {
        return Ok(Response::from_parts(parts, Full::new(body)));
    }
    // The body changes length: hyper sets the length of the new one.
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    let text = change(String::from_utf8_lossy(&body).into_owned());
    Ok(Response::from_parts(parts, Full::new(Bytes::from(text))))
}

/// moto's `DescribeInstanceStatus` answer with each associated instance's
/// `applicationStatus` added after its `instanceId`.
async fn with_application_status(answer: Response<Full<Bytes>>, w: &Witness) -> Answer {
    rewritten(answer, |mut text| {
        for (id, (status, _)) in &w.status {
            let tag = format!("<instanceId>{id}</instanceId>");
            text = text.replace(
                &tag,
                &format!("{tag}<applicationStatus><status>{status}</status></applicationStatus>"),
            );
        }
        text
    })
    .await
}

/// The service named in the signature's credential scope
/// (`Credential=KEY/DATE/REGION/SERVICE/aws4_request`).
fn service_of(headers: &hyper::HeaderMap) -> Service {
    let auth = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let scope = auth
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split([',', ' ']).next())
        .unwrap_or_default();
    match scope.split('/').nth(3) {
        Some("ec2") => Service::Ec2,
        Some("autoscaling") => Service::AutoScaling,
        Some("secretsmanager") => Service::SecretsManager,
        Some("monitoring") => Service::CloudWatch,
        _ => Service::Other,
    }
}

/// `Action=` of a query-protocol form body.
fn action_of(body: &[u8]) -> Option<String> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .map(str::to_owned)
}

/// The operation of a JSON-protocol call (`X-Amz-Target: service.Op`).
fn target_of(headers: &hyper::HeaderMap) -> Option<String> {
    let target = headers.get("x-amz-target")?.to_str().ok()?;
    target.rsplit('.').next().map(str::to_owned)
}

/// A JSON-protocol error (Secrets Manager).
fn json_error(status: u16, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "__type": kind, "message": message }).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    r
}

fn xml(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/xml"),
    );
    r
}

fn request_id() -> String {
    format!("lab-{:016x}", fastrand::u64(..))
}

fn ec2_error(status: u16, code: &str, message: &str) -> Response<Full<Bytes>> {
    xml(
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
             <Message>{message}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
            request_id()
        ),
    )
}

fn query_error(status: u16, kind: &str, code: &str, message: &str) -> Response<Full<Bytes>> {
    xml(
        status,
        format!(
            "<ErrorResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">\
             <Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error>\
             <RequestId>{}</RequestId></ErrorResponse>",
            request_id()
        ),
    )
}

/// What AWS answers a throttled call.
fn throttled(service: Service) -> Response<Full<Bytes>> {
    match service {
        Service::Ec2 => ec2_error(503, "RequestLimitExceeded", "Request limit exceeded."),
        Service::SecretsManager => json_error(400, "ThrottlingException", "Rate exceeded"),
        _ => query_error(400, "Sender", "Throttling", "Rate exceeded"),
    }
}

fn server_error(service: Service, status: u16) -> Response<Full<Bytes>> {
    match (service, status) {
        (Service::Ec2, 503) => ec2_error(503, "Unavailable", "The server is overloaded."),
        (Service::Ec2, _) => ec2_error(status, "InternalError", "An internal error has occurred."),
        (Service::SecretsManager, _) => json_error(
            status,
            "InternalServiceError",
            "An internal error occurred.",
        ),
        (_, 503) => query_error(
            503,
            "Receiver",
            "ServiceUnavailable",
            "Service unavailable.",
        ),
        _ => query_error(status, "Receiver", "InternalFailure", "Internal failure."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_and_service_of_a_query_call() {
        assert_eq!(
            action_of(b"Action=DescribeRouteTables&Version=2016-11-15").as_deref(),
            Some("DescribeRouteTables")
        );
        assert_eq!(action_of(b"Version=1"), None);
        let mut h = hyper::HeaderMap::new();
        h.insert(
            hyper::header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=testing/20261127/us-east-1/autoscaling/aws4_request, SignedHeaders=host, Signature=ab"
                .parse()
                .unwrap(),
        );
        assert_eq!(service_of(&h), Service::AutoScaling);
        assert_eq!(service_of(&hyper::HeaderMap::new()), Service::Other);
        let mut h = hyper::HeaderMap::new();
        h.insert(
            "x-amz-target",
            "secretsmanager.GetSecretValue".parse().unwrap(),
        );
        assert_eq!(target_of(&h).as_deref(), Some("GetSecretValue"));
    }

    #[test]
    fn an_empty_bucket_throttles_until_it_refills() {
        let mut b = Buckets::default();
        let t = Instant::now();
        let passed = (0..120).filter(|_| b.take("DescribeInstances", t)).count();
        assert_eq!(passed, 100, "burst of 100 reads");
        assert!(b.take("ReplaceRoute", t), "writes have their own bucket");
        assert!(!b.take("DescribeInstances", t));
        assert!(b.take("DescribeInstances", t + Duration::from_millis(60)));
    }

    #[test]
    fn faults_match_by_nat_and_action_until_they_end() {
        let api = Api::new(Latency::None);
        api.inject(Rule {
            nat: Some(0),
            action: Some("ReplaceRoute".into()),
            fault: Fault::Throttle,
            until: None,
        });
        api.inject(Rule::all(Fault::Error(500), Duration::ZERO));
        assert_eq!(api.fault(0, "ReplaceRoute"), Some(Fault::Throttle));
        assert_eq!(api.fault(1, "ReplaceRoute"), None);
        assert_eq!(api.fault(0, "DescribeRouteTables"), None);
    }

    #[test]
    fn calls_per_nat_and_minute() {
        let t = Instant::now();
        let call = |s: u64, a: &str| Call {
            at: t + Duration::from_secs(s),
            nat: 0,
            service: Service::Ec2,
            action: a.into(),
            status: 200,
        };
        let calls = [call(0, "A"), call(10, "B"), call(30, "A"), call(70, "A")];
        assert_eq!(by_action(&calls), vec![("A".into(), 3), ("B".into(), 1)]);
        let rate = per_nat_min(&calls, 2, t, t + Duration::from_secs(60));
        assert!((rate - 1.5).abs() < 1e-9, "{rate}");
    }
}
