//! The gateway binary as a child process on 127.0.0.1.
//!
//! Only the main crate's tests know the binary's path
//! (`env!("CARGO_BIN_EXE_mesaya-realtime")`), so callers pass it in.
//!
//! The child gets a clean environment: `HOST=127.0.0.1`, `PORT=<free port>`, `LOG_FORMAT=json`,
//! `RUST_BACKTRACE` if set, then the caller's variables (which may override the first three).
//! Pass `KAFKA_BROKERS` and `REST_BASE_URL` explicitly: the defaults point at `localhost`.
//! With `ADMIN_PORT` among them, the operations endpoints are looked for on that port
//! ([`Gateway::ops_url`]), as the gateway serves them only there.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::{SNAPSHOT_PATH, StandInApi};
use crate::broker::Broker;
use crate::client;
use crate::process::LogFile;
pub use crate::process::free_port;
use crate::wait::POLL_INTERVAL;

/// Lines of the log quoted in panic messages.
const LOG_TAIL: usize = 40;

/// The variables that point a gateway at `broker` and `api`, with the HMAC
/// key `secret`.
pub fn wiring(broker: &Broker, api: &StandInApi, secret: &str) -> Vec<(&'static str, String)> {
    wiring_to(&broker.bootstrap(), api, secret)
}

/// [`wiring`] for any Kafka at `bootstrap`. Fetch waits are short because
/// neither tansu nor librdkafka's mock cluster answers an idle fetch early:
/// librdkafka's default would add up to 500 ms per event.
pub fn wiring_to(bootstrap: &str, api: &StandInApi, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BROKERS", bootstrap.to_string()),
        ("REST_BASE_URL", api.base_url()),
        ("SECTION_SNAPSHOT_PATH", SNAPSHOT_PATH.to_string()),
        ("JWT_SECRET", secret.to_string()),
        ("KAFKA_FETCH_WAIT_MAX", "10ms".to_string()),
    ]
}

/// How a gateway run to its end ended, and what it wrote.
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running gateway process. Dropping it kills the process.
pub struct Gateway {
    child: Child,
    port: u16,
    /// `ADMIN_PORT`, when the caller set it.
    admin_port: Option<u16>,
    log: LogFile,
    exit: Option<ExitStatus>,
}

impl Gateway {
    /// Spawns `bin` with stdout and stderr captured to one log file.
    pub fn start(bin: &Path, env: &[(&str, String)]) -> Gateway {
        Self::spawn(bin, env, None)
    }

    /// [`Gateway::start`] with the child's open-file limit, soft and hard, set to `open_files`,
    /// as a container's `ulimit -n` would: the gateway cannot raise it.
    pub fn start_with_open_files(bin: &Path, env: &[(&str, String)], open_files: u64) -> Gateway {
        Self::spawn(bin, env, Some(open_files))
    }

    fn spawn(bin: &Path, env: &[(&str, String)], open_files: Option<u64>) -> Gateway {
        let port = port_from(env);
        let log = LogFile::new("gateway");
        let (stdout, stderr) = log.stdio();
        let mut command = command(bin, port, env);
        if let Some(limit) = open_files {
            limit_open_files(&mut command, limit);
        }
        let child = command
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the gateway {}: {e}", bin.display()));
        Gateway { child, port, admin_port: admin_port_from(env), log, exit: None }
    }

    /// Spawns `bin` with its stderr a pipe that nobody reads (once the pipe
    /// is full, every write to it would block); stdout goes to the log file.
    pub fn start_with_stderr_unread(bin: &Path, env: &[(&str, String)]) -> Gateway {
        let port = port_from(env);
        let log = LogFile::new("gateway");
        let child = command(bin, port, env)
            .stdout(log.stdio().0)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the gateway {}: {e}", bin.display()));
        Gateway { child, port, admin_port: admin_port_from(env), log, exit: None }
    }

    /// Runs `bin` until it exits by itself (e.g. rejecting its configuration); returns its exit
    /// status and its stderr alone. Panics (killing it) if it still runs after `timeout`.
    pub async fn run_to_exit(bin: &Path, env: &[(&str, String)], timeout: Duration) -> (ExitStatus, String) {
        let exited = Self::run_command_to_exit(bin, &[], env, timeout).await;
        (exited.status, exited.stderr)
    }

    /// [`Gateway::run_to_exit`] with command-line `args`, returning stdout too.
    pub async fn run_command_to_exit(bin: &Path, args: &[&str], env: &[(&str, String)], timeout: Duration) -> Exited {
        let stdout_log = LogFile::new("gateway-stdout");
        let stderr_log = LogFile::new("gateway-stderr");
        let port = port_from(env);
        // A Gateway (with stdout as its log) so that a panic below still kills the child.
        let mut gateway = Gateway {
            child: command(bin, port, env)
                .args(args)
                .stdout(stdout_log.stdio().0)
                .stderr(stderr_log.stdio().0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run the gateway {}: {e}", bin.display())),
            port,
            admin_port: admin_port_from(env),
            log: stdout_log,
            exit: None,
        };
        let Some(status) = gateway.wait_exit(timeout).await else {
            panic!(
                "the gateway still runs after {timeout:?}; stdout:\n{}\nstderr:\n{}",
                gateway.log.tail(LOG_TAIL),
                stderr_log.tail(LOG_TAIL)
            );
        };
        Exited { status, stdout: gateway.log.read(), stderr: stderr_log.read() }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where `/healthz`, `/readyz` and `/metrics` are served: `http://127.0.0.1:ADMIN_PORT` when
    /// the caller set `ADMIN_PORT`, else [`Gateway::url`].
    pub fn ops_url(&self) -> String {
        self.admin_port.map_or_else(|| self.url(), |port| format!("http://127.0.0.1:{port}"))
    }

    /// `ws://127.0.0.1:PORT{path}`; `path` starts with `/`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        self.log.read()
    }

    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// `GET {url}{path}` on the public port → `(status, body)`.
    pub async fn get(&self, path: &str) -> (u16, String) {
        client::get(&format!("{}{path}", self.url())).await
    }

    /// `GET {ops_url}{path}`: on the admin listener when there is one (see [`Gateway::ops_url`]).
    pub async fn get_ops(&self, path: &str) -> (u16, String) {
        client::get(&format!("{}{path}", self.ops_url())).await
    }

    /// Polls `GET /readyz` (on [`Gateway::ops_url`]) until it answers 200. Panics with the log's
    /// tail if the process exits or `timeout` passes first.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/readyz", self.ops_url());
        loop {
            if let Some(status) = self.poll_exit() {
                panic!("the gateway exited ({status}) before it was ready; output:\n{}", self.log.tail(LOG_TAIL));
            }
            let last = client::try_get(&url).await;
            if matches!(last, Ok((200, _))) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the gateway was not ready within {timeout:?} (last /readyz: {last:?}); output:\n{}",
                    self.log.tail(LOG_TAIL)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGINT (graceful shutdown, as Ctrl-C).
    pub fn interrupt(&self) {
        self.signal(libc::SIGINT);
    }

    fn signal(&self, signal: libc::c_int) {
        if self.exit.is_some() {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid out of range");
        // SAFETY: kill(2) only takes plain integers; the pid is our own unreaped child, so it
        // cannot have been recycled for another process.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("cannot poll the gateway process");
        }
        self.exit
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("[mesaya-testkit] gateway output (last {LOG_TAIL} lines):\n{}", self.log.tail(LOG_TAIL));
        }
    }
}

/// The caller's `PORT`, else a free one.
fn port_from(env: &[(&str, String)]) -> u16 {
    match env.iter().find(|(name, _)| *name == "PORT") {
        Some((_, port)) => port.parse().unwrap_or_else(|_| panic!("PORT={port} is not a port")),
        None => free_port(),
    }
}

/// The caller's `ADMIN_PORT`, if any.
fn admin_port_from(env: &[(&str, String)]) -> Option<u16> {
    let (_, port) = env.iter().find(|(name, _)| *name == "ADMIN_PORT")?;
    Some(port.parse().unwrap_or_else(|_| panic!("ADMIN_PORT={port} is not a port")))
}

/// Sets the child's soft and hard `RLIMIT_NOFILE` between fork and exec.
fn limit_open_files(command: &mut Command, open_files: u64) {
    use std::os::unix::process::CommandExt;
    let limit = libc::rlimit { rlim_cur: open_files, rlim_max: open_files };
    // SAFETY: setrlimit(2) is async-signal-safe, and the closure touches nothing but the copied
    // struct, as code between fork and exec must.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

fn command(bin: &Path, port: u16, env: &[(&str, String)]) -> Command {
    let mut command = Command::new(bin);
    // A clean environment, so that nothing from the developer's shell or CI changes the config.
    command
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .stdin(Stdio::null());
    if let Some(backtrace) = std::env::var_os("RUST_BACKTRACE") {
        command.env("RUST_BACKTRACE", backtrace);
    }
    command.envs(env.iter().map(|(name, value)| (name, value)));
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;

    /// A stand-in "binary": a shell script, since the real gateway is only known to the main
    /// crate's tests.
    struct Script(PathBuf);

    impl Script {
        fn new(body: &str) -> Self {
            let path = crate::process::scratch_path("script");
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            Self(path)
        }
    }

    impl Drop for Script {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[tokio::test]
    async fn run_to_exit_returns_status_and_stderr_with_a_clean_environment() {
        let script =
            Script::new(r#"echo "out"; echo "$HOST:$PORT $LOG_FORMAT ${HOME:-no-home} $JWT_SECRET" >&2; exit 3"#);
        let env = [("PORT", "4321".to_owned()), ("JWT_SECRET", "s".to_owned())];
        let (status, stderr) = Gateway::run_to_exit(&script.0, &env, Duration::from_secs(10)).await;
        assert_eq!(status.code(), Some(3));
        assert_eq!(stderr, "127.0.0.1:4321 json no-home s\n");
    }

    #[tokio::test]
    async fn terminate_delivers_sigterm() {
        let script = Script::new("exec /bin/sleep 30");
        let mut gateway = Gateway::start(&script.0, &[]);
        assert!(gateway.wait_exit(Duration::from_millis(50)).await.is_none());
        gateway.terminate();
        let status = gateway.wait_exit(Duration::from_secs(10)).await.expect("exit after SIGTERM");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[tokio::test]
    #[should_panic(expected = "exited (exit status: 7) before it was ready")]
    async fn wait_ready_fails_fast_when_the_process_dies() {
        let script = Script::new("echo boom; exit 7");
        let mut gateway = Gateway::start(&script.0, &[]);
        gateway.wait_ready(Duration::from_secs(30)).await;
    }

    #[tokio::test]
    async fn logs_capture_stdout_and_stderr() {
        let script = Script::new("echo one; echo two >&2");
        let mut gateway = Gateway::start(&script.0, &[]);
        gateway.wait_exit(Duration::from_secs(10)).await.expect("exit");
        assert_eq!(gateway.logs(), "one\ntwo\n");
    }
}
