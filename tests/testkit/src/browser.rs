//! Headless Chromium driven over the DevTools protocol, for tests that look at a page as a person
//! would: read what it shows, wait until it shows something, keep a screenshot.
//!
//! Only the four protocol calls these tests need (`Target.createTarget`, `Target.attachToTarget`,
//! `Runtime.evaluate`, `Page.captureScreenshot`) over the WebSocket client the testkit already
//! has. The crates that wrap the whole protocol generate bindings for all of it: a large compile on
//! two cores for four calls.
//!
//! The binary is `CHROMIUM_BIN`, else `chromium` on PATH (Debian's package; `scripts/test.sh`
//! installs it). Each browser gets a fresh profile directory, removed when it is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::process::{LogFile, scratch_path};
use crate::wait::POLL_INTERVAL;

/// How long Chromium may take to open its DevTools port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one protocol call (a screenshot of a large page is the slowest).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The viewport every page is shown in, so that screenshots are comparable.
const WINDOW_SIZE: &str = "1280,860";
/// Flags for running as root in a container without a display, and for not talking to anything
/// but the page under test.
const FLAGS: [&str; 11] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-port=0",
];

/// A Chromium process and its profile directory. Dropping it kills the browser's whole process
/// group (renderers included) and removes the profile.
struct Process {
    child: Child,
    profile: PathBuf,
    log: LogFile,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) takes plain integers; the group is the one our unreaped child leads
            // (spawned with process_group(0)), so it holds only Chromium's processes.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One headless Chromium showing one page.
pub struct Browser {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The DevTools session attached to the page.
    session: String,
    next_id: u64,
    /// Held for its `Drop`, which ends Chromium; declared last so the socket closes first.
    _process: Process,
}

impl Browser {
    /// Starts Chromium and opens `url` in it.
    pub async fn open(url: &str) -> Browser {
        let profile = scratch_path("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap_or_else(|e| panic!("cannot create {}: {e}", profile.display()));
        let log = LogFile::new("chromium");
        let (stdout, stderr) = log.stdio();
        let bin = chromium_bin();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(&bin)
                .args(FLAGS)
                .arg(format!("--window-size={WINDOW_SIZE}"))
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("about:blank")
                // Its own process group, so that dropping it reaches the renderers too.
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {} ({e}); install Chromium (scripts/test.sh runs `apt-get install chromium`) \
                         or set CHROMIUM_BIN",
                        bin.display()
                    )
                })
        };
        let mut process = Process { child, profile, log };
        let endpoint = devtools_endpoint(&mut process).await;
        let (socket, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to Chromium's DevTools at {endpoint}: {e}"));
        let mut browser = Browser { socket, session: String::new(), next_id: 1, _process: process };
        let target = browser.call(None, "Target.createTarget", json!({ "url": url })).await;
        let target_id = target["targetId"].as_str().expect("Target.createTarget returns a targetId").to_owned();
        let attached =
            browser.call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true })).await;
        browser.session = attached["sessionId"].as_str().expect("Target.attachToTarget returns a sessionId").to_owned();
        browser
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value as JSON.
    /// Panics if it throws.
    pub async fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression).await.unwrap_or_else(|error| panic!("{error}"))
    }

    /// Polls `expression` until it yields a truthy value, and returns that value. An expression
    /// that throws (e.g. while the page is still loading) counts as "not yet". Panics, quoting
    /// `what`, the last value and the page's text, after `timeout`.
    pub async fn wait_for(&mut self, timeout: Duration, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.try_eval(expression).await;
            if let Ok(value) = &last
                && truthy(value)
            {
                return value.clone();
            }
            if Instant::now() >= deadline {
                let text = self.try_eval("document.body ? document.body.innerText : ''").await;
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last value of `{expression}`: {last:?}\n\
                     page text:\n{}",
                    text.ok().and_then(|text| text.as_str().map(str::to_owned)).unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Saves a PNG of the viewport at `path` (creating its directory).
    pub async fn screenshot(&mut self, path: &Path) {
        let session = self.session.clone();
        let shot = self.call(Some(session), "Page.captureScreenshot", json!({ "format": "png" })).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("Page.captureScreenshot returns data"))
            .expect("screenshot data is base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    async fn try_eval(&mut self, expression: &str) -> Result<Value, String> {
        let session = self.session.clone();
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let reply = self.try_call(Some(session), "Runtime.evaluate", params).await?;
        if let Some(exception) = reply.get("exceptionDetails") {
            let description = &exception["exception"]["description"];
            return Err(format!("`{expression}` threw: {}", description.as_str().unwrap_or(&exception.to_string())));
        }
        Ok(reply["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    async fn call(&mut self, session: Option<String>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params).await.unwrap_or_else(|error| panic!("{error}"))
    }

    /// Sends one command and reads until its answer; events in between are not needed here.
    async fn try_call(&mut self, session: Option<String>, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::Text(command.to_string().into()))
            .await
            .map_err(|e| format!("{method}: cannot send to Chromium: {e}"))?;
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .map_err(|_| format!("{method}: no answer from Chromium within {CALL_TIMEOUT:?}"))?;
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("{method}: DevTools connection failed: {e}")),
                None => return Err(format!("{method}: Chromium closed the DevTools connection")),
            };
            let mut message: Value =
                serde_json::from_str(&text).map_err(|e| format!("{method}: DevTools sent non-JSON ({e})"))?;
            if message["id"] != id {
                continue;
            }
            if let Some(error) = message.get("error") {
                return Err(format!("{method} failed: {error}"));
            }
            return Ok(message["result"].take());
        }
    }
}

/// `CHROMIUM_BIN`, else `chromium` (found on PATH).
fn chromium_bin() -> PathBuf {
    std::env::var_os("CHROMIUM_BIN").map_or_else(|| PathBuf::from("chromium"), PathBuf::from)
}

/// Waits for Chromium to write `DevToolsActivePort` (port, then browser path) into its profile:
/// with `--remote-debugging-port=0` it picks a free port itself, so nothing can race for it.
async fn devtools_endpoint(process: &mut Process) -> String {
    let file = process.profile.join("DevToolsActivePort");
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let [port, path, ..] = text.lines().collect::<Vec<_>>()[..]
        {
            return format!("ws://127.0.0.1:{port}{path}");
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!("Chromium exited during startup ({status}):\n{}", process.log.tail(30));
        }
        if Instant::now() >= deadline {
            panic!("Chromium opened no DevTools port within {STARTUP_TIMEOUT:?}:\n{}", process.log.tail(30));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// JavaScript's truthiness, for [`Browser::wait_for`].
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
