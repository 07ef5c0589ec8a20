//! Plumbing shared by the modules that run child processes: free ports and log files.

use std::fs::{self, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// A port that was free on 127.0.0.1 a moment ago. The listener is closed before returning, so
/// another process could take it in between; with ephemeral ports that race is negligible.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free port on 127.0.0.1")
}

/// `$TMPDIR/mesaya-testkit/<prefix>-<uuid>`: a fresh, unique path (not created).
pub(crate) fn scratch_path(prefix: &str) -> PathBuf {
    let root = std::env::temp_dir().join("mesaya-testkit");
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("cannot create {}: {e}", root.display()));
    root.join(format!("{prefix}-{}", uuid::Uuid::new_v4()))
}

/// A log file that a child process writes its stdout and stderr to (appending, so a restarted
/// process continues the same file).
pub(crate) struct LogFile {
    path: PathBuf,
}

impl LogFile {
    pub(crate) fn new(prefix: &str) -> Self {
        let mut path = scratch_path(prefix);
        path.set_extension("log");
        Self { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Two handles on the file, for a child's stdout and stderr.
    pub(crate) fn stdio(&self) -> (Stdio, Stdio) {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .unwrap_or_else(|e| panic!("cannot open log {}: {e}", self.path.display()));
        let clone = file.try_clone().expect("cannot duplicate log file handle");
        (Stdio::from(file), Stdio::from(clone))
    }

    pub(crate) fn read(&self) -> String {
        fs::read(&self.path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default()
    }

    /// The last `n` lines, for panic messages.
    pub(crate) fn tail(&self, n: usize) -> String {
        let text = self.read();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for LogFile {
    /// Keep the log of a failing test (and say where it is); remove it otherwise.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("[mesaya-testkit] log kept at {}", self.path.display());
        } else {
            let _ = fs::remove_file(&self.path);
        }
    }
}
