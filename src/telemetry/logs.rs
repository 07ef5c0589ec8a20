//! Log lines that never block a shard or the ingest thread (SPEC §2.5):
//! lines go through a bounded buffer to a writer thread of their own, and
//! when it is full (stderr is slow, or nobody reads it) they are dropped and
//! counted (`mesaya_log_lines_dropped_total`) instead of stalling the
//! thread that logged. Each line stays one line, whatever text a field holds
//! (a token's header, a parser's error), and a flood of refused upgrades is
//! logged a few times a second per status, the rest only counted.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Lines the buffer holds before new ones are dropped.
const BUFFERED_LINES: usize = 16_384;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// The writer every log line goes to, and the guard that flushes what is
/// buffered when the process ends (keep it alive until then).
pub fn stderr_writer() -> (NonBlocking, WorkerGuard) {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        .thread_name("log-writer")
        .finish(io::stderr());
    // Only the first writer's drops are counted: there is one per process.
    let _ = DROPPED.set(writer.error_counter());
    (writer, guard)
}

/// Lines dropped so far because the buffer was full.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |counter| counter.dropped_lines() as u64)
}

/// A formatted line, written with every line break inside it escaped: a
/// field's text cannot start a line of its own (text logs; JSON already
/// escapes).
pub struct OneLine<W>(pub W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        if !body.iter().any(|&byte| byte == b'\n' || byte == b'\r') {
            return self.0.write(buf);
        }
        let mut line = Vec::with_capacity(buf.len() + 8);
        for &byte in body {
            match byte {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                _ => line.push(byte),
            }
        }
        if body.len() < buf.len() {
            line.push(b'\n');
        }
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// At most [`LogBudget::PER_SECOND`] lines a second for each of a few
/// kinds of line; the others are counted elsewhere, not logged.
pub struct LogBudget {
    kinds: [(AtomicU64, AtomicU32); LogBudget::KINDS],
}

impl LogBudget {
    pub const PER_SECOND: u32 = 5;
    /// Kinds the budget tells apart; more share the last one.
    pub const KINDS: usize = 8;

    pub const fn new() -> Self {
        Self { kinds: [const { (AtomicU64::new(0), AtomicU32::new(0)) }; Self::KINDS] }
    }

    /// Whether a line of `kind` may be logged now.
    pub fn allow(&self, kind: usize) -> bool {
        let second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        self.allow_at(kind, second)
    }

    /// [`LogBudget::allow`] in `second` (seconds since the epoch). Threads
    /// racing at a second's turn may let a line or two more through.
    fn allow_at(&self, kind: usize, second: u64) -> bool {
        let (window, used) = &self.kinds[kind.min(Self::KINDS - 1)];
        if window.swap(second, Ordering::Relaxed) != second {
            used.store(0, Ordering::Relaxed);
        }
        used.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(text: &str) -> String {
        let mut line = OneLine(Vec::new());
        line.write_all(text.as_bytes()).unwrap();
        String::from_utf8(line.0).unwrap()
    }

    #[test]
    fn a_line_stays_one_line_whatever_its_fields_hold() {
        assert_eq!(written("INFO upgrade refused\n"), "INFO upgrade refused\n");
        assert_eq!(
            written("INFO why=bad header\nERROR forged line\r\n"),
            "INFO why=bad header\\nERROR forged line\\r\n"
        );
        assert_eq!(written("no newline at all"), "no newline at all");
    }

    #[test]
    fn each_kind_gets_a_few_lines_a_second() {
        let budget = LogBudget::new();
        let allowed = |kind, second| (0..20).filter(|_| budget.allow_at(kind, second)).count();
        assert_eq!(allowed(0, 100), 5);
        assert_eq!(allowed(1, 100), 5, "another kind has its own budget");
        assert_eq!(allowed(0, 100), 0, "spent for this second");
        assert_eq!(allowed(0, 101), 5, "the next second");
        assert_eq!(allowed(99, 101), 5, "kinds beyond the table share the last one");
    }
}
