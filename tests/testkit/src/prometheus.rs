//! A real Prometheus server (Debian's `prometheus` package) scraping one target as the job
//! `mesaya-realtime`, with rule files loaded, on 127.0.0.1. Used by the dashboard and alert test
//! and by `mesaya-dev --with-prometheus`.
//!
//! Its configuration and its database live in a scratch directory, removed on drop (kept, with
//! its log, when the test is panicking).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::client;
use crate::process::{LogFile, free_port, scratch_path};
use crate::wait;

/// The scrape job's name, as `deploy/prometheus/alerts.yml` expects it.
pub const JOB: &str = "mesaya-realtime";

/// The server binary: `PROMETHEUS_BIN`, else `prometheus` on the `PATH` (`apt-get install
/// prometheus`); `None` when neither is there.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("prometheus")).find(|candidate| candidate.is_file())
}

/// A running Prometheus. Dropping it kills the process.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
    log: LogFile,
}

impl Prometheus {
    /// Starts `bin` scraping `target` (`host:port`, its `/metrics`) every `every`, evaluating
    /// `rule_files` as often, listening on `port` (a free one when `None`).
    pub fn start(
        bin: &Path,
        target: &str,
        rule_files: &[&Path],
        every: Duration,
        port: Option<u16>,
    ) -> Result<Prometheus, String> {
        let dir = scratch_path("prometheus");
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, configuration(target, rule_files, every)?)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let port = port.unwrap_or_else(free_port);
        let log = LogFile::new("prometheus");
        let (stdout, stderr) = log.stdio();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        Ok(Prometheus { child, port, dir, log })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Waits until the server answers `/-/ready`; panics with its log after `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let url = format!("{}/-/ready", self.url());
        let log = &self.log;
        let child = &mut self.child;
        wait::until_some(timeout, "Prometheus to be ready", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("Prometheus exited ({status}); its log:\n{}", log.tail(40));
            }
            let url = url.clone();
            async move { matches!(client::try_get(&url).await, Ok((200, _))).then_some(()) }
        })
        .await;
    }

    /// `GET /api/v1/{path}` with the query `params`: the answer's `data` when its `status` is
    /// `success`, else its `error`.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
        let (status, body) = client::try_get(&format!("{}/api/v1/{path}?{query}", self.url())).await?;
        let answer: Value =
            serde_json::from_str(&body).map_err(|e| format!("{path}: answered {status} with no JSON ({e}): {body}"))?;
        match answer["status"].as_str() {
            Some("success") => Ok(answer["data"].clone()),
            _ => Err(format!("{path}: {} ({})", answer["error"], answer["errorType"])),
        }
    }

    /// An instant query of `expr`: its result (an array of series, or a scalar).
    pub async fn query(&self, expr: &str) -> Result<Value, String> {
        Ok(self.api("query", &[("query", expr)]).await?["result"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("[mesaya-testkit] Prometheus kept at {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn configuration(target: &str, rule_files: &[&Path], every: Duration) -> Result<String, String> {
    let rules = rule_files
        .iter()
        .map(|path| {
            let path = path.canonicalize().map_err(|e| format!("rule file {}: {e}", path.display()))?;
            Ok(format!("  - {:?}\n", path.display().to_string()))
        })
        .collect::<Result<String, String>>()?;
    let rules = if rules.is_empty() { " []\n".to_string() } else { format!("\n{rules}") };
    let every = format!("{}ms", every.as_millis());
    Ok(format!(
        "global:\n  scrape_interval: {every}\n  evaluation_interval: {every}\nrule_files:{rules}\
         scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [{target:?}]\n"
    ))
}
