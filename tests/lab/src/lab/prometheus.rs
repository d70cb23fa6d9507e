//! A real Prometheus (Debian's `prometheus` package) scraping every NAT of
//! the lab, as an operator's would: it runs in the VPC router's namespace
//! (inside the VPC, where the security group lets it reach port 7472),
//! and tests query it through its HTTP API.

use super::*;

/// Where Prometheus listens, inside the router's namespace.
const LISTEN: &str = "127.0.0.1:9090";

/// A running Prometheus; dropping it stops it and removes its data.
pub struct Prometheus {
    child: Child,
    rtr: PathBuf,
    dir: PathBuf,
}

impl Lab {
    /// Start Prometheus scraping every current NAT's `/metrics` every
    /// `every`, each target labelled with its `nat_az` and `instance_id`
    /// (`az` is a label of some of hanat's own metrics).
    pub fn start_prometheus(&self, every: Duration) -> Result<Prometheus> {
        let dir = self.dir.join("prometheus");
        std::fs::create_dir_all(dir.join("data"))?;
        let targets: Vec<serde_json::Value> = (0..self.azs.len())
            .filter_map(|i| self.nat(i).map(|n| (i, n)))
            .map(|(i, n)| {
                serde_json::json!({
                    "targets": [format!("{}:7472", n.instance.private_ip)],
                    "labels": { "nat_az": self.azs[i].name, "instance_id": n.instance.id },
                })
            })
            .collect();
        std::fs::write(
            dir.join("nats.json"),
            serde_json::Value::Array(targets).to_string(),
        )?;
        let secs = every.as_secs().max(1);
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\n\
                 scrape_configs:\n  - job_name: hanat\n    file_sd_configs:\n      - files: [{}]\n",
                dir.join("nats.json").display()
            ),
        )?;
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net={}", self.rtr.path().display()))
            .arg("--")
            .arg("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log"))?);
        crate::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .context("starting prometheus (Debian's `prometheus` package)")?;
        let p = Prometheus {
            child,
            rtr: self.rtr.path(),
            dir,
        };
        let start = Instant::now();
        while p.get("/-/ready").is_err() {
            if start.elapsed() > Duration::from_secs(20) {
                bail!(
                    "prometheus not ready within 20 s: {}",
                    std::fs::read_to_string(p.dir.join("prometheus.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(p)
    }
}

impl Prometheus {
    /// An instant query through the HTTP API: `data.result`.
    pub fn query(&self, q: &str) -> Result<Vec<serde_json::Value>> {
        let q: String = form_urlencoded::byte_serialize(q.as_bytes()).collect();
        let body = self.get(&format!("/api/v1/query?query={q}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("prometheus answered: {body}"))?;
        if v["status"] != "success" {
            bail!("prometheus: {v}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of an instant query's only series, if it has one.
    pub fn value(&self, q: &str) -> Result<Option<f64>> {
        let r = self.query(q)?;
        Ok(r.first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok()))
    }

    /// GET `path`; the body of a 200.
    fn get(&self, path: &str) -> Result<String> {
        let (code, body) =
            crate::netns::http_get(&self.rtr, LISTEN.parse()?, path, Duration::from_secs(5))?;
        if code != 200 {
            bail!("GET {path}: {code} {body}");
        }
        Ok(body)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
