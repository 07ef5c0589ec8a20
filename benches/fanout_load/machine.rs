//! What the harness reads of processes and of the machine (/proc), and the facts of a run's
//! header (the gateway binary, its source version, the machine).

use super::*;

// ---------------------------------------------------------------------------------------------
// /proc readings

pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime and stime of every thread of `pid`, in seconds: its own code's time and the kernel's
/// on its behalf.
pub(crate) fn cpu_split(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else { return (0.0, 0.0) };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) / hz.max(1.0), ticks(12) / hz.max(1.0))
}

/// utime + stime of every thread of `pid`, in seconds.
pub(crate) fn cpu_seconds(pid: &str) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// One thread's time so far, from the kernel's schedstat.
pub(crate) struct ThreadTimes {
    pub(crate) name: String,
    /// Nanoseconds it has run on a CPU.
    pub(crate) ran: u64,
    /// Nanoseconds it has waited runnable for one: what a busy machine adds to its latency.
    pub(crate) waited: u64,
}

/// Every thread of `pid`, by thread id.
pub(crate) fn thread_times(pid: &str) -> BTreeMap<String, ThreadTimes> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return BTreeMap::new() };
    tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?.trim().to_string();
            let schedstat = std::fs::read_to_string(path.join("schedstat")).ok()?;
            let mut fields = schedstat.split_whitespace().map(|v| v.parse::<u64>().ok());
            let (ran, waited) = (fields.next()??, fields.next()??);
            Some((path.file_name()?.to_string_lossy().into_owned(), ThreadTimes { name, ran, waited }))
        })
        .collect()
}

/// "name ran / waited" as shares of `wall`, for each thread that was busy for at least 2 % of it,
/// busiest first.
pub(crate) fn thread_shares(
    before: &BTreeMap<String, ThreadTimes>,
    after: &BTreeMap<String, ThreadTimes>,
    wall: f64,
) -> String {
    let mut shares: Vec<(&str, f64, f64)> = after
        .iter()
        .map(|(tid, now)| {
            let (ran0, waited0) = before.get(tid).map_or((0, 0), |then| (then.ran, then.waited));
            let share = |now: u64, then: u64| now.saturating_sub(then) as f64 / 1e9 / wall;
            (now.name.as_str(), share(now.ran, ran0), share(now.waited, waited0))
        })
        .filter(|(_, ran, waited)| ran + waited >= 0.02)
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares
        .iter()
        .map(|(name, ran, waited)| format!("{name} {:.0} % / {:.0} %", 100.0 * ran, 100.0 * waited))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gives every thread of `pid` the niceness `nice` (`LOAD_SERVER_NICE`; below 0 needs root), so
/// that the server runs whenever it is runnable even on a machine its clients and broker keep
/// busy: what it would see with cores of its own.
pub(crate) fn prioritise(pid: &str, nice: i32, who: &str) {
    let tids: Vec<String> = thread_times(pid).into_keys().collect();
    for tid in &tids {
        let Ok(id) = tid.parse::<libc::id_t>() else { continue };
        // SAFETY: setpriority only changes the scheduling priority of the thread it names.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, id, nice) } != 0 {
            panic!("LOAD_SERVER_NICE={nice}: setpriority on thread {tid}: {}", std::io::Error::last_os_error());
        }
    }
    println!("  {who}: {} server threads at nice {nice} (LOAD_SERVER_NICE)", tids.len());
}

/// Busy CPU-seconds of the whole machine (all cores; everything but idle and iowait).
pub(crate) fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    let v: Vec<f64> = cpu.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (total - idle) / hz.max(1.0)
}

/// Waits (at most `LOAD_QUIET_MAX` seconds, 60 by default) until the rest of the machine uses
/// less than a quarter of a core, so that a row does not start while something else (a build)
/// holds the cores it is about to measure.
pub(crate) async fn wait_for_quiet() {
    let max = Duration::from_secs(setting("LOAD_QUIET_MAX", 60) as u64);
    let started = Instant::now();
    loop {
        let (machine, own) = (machine_busy_seconds(), cpu_seconds("self"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = (machine_busy_seconds() - machine) - (cpu_seconds("self") - own);
        if busy < 0.25 || started.elapsed() >= max {
            if started.elapsed() > Duration::from_secs(2) {
                println!(
                    "  (waited {:.0} s for a quiet machine; others use {busy:.2} cores now)",
                    started.elapsed().as_secs_f64()
                );
            }
            return;
        }
    }
}

/// The kernel's count of connections dropped because a listen queue was full (`TcpExt:
/// ListenOverflows`): each costs the client a SYN retransmit, one second later.
pub(crate) fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let [names, values] = rows[..] else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// The commit of the gateway's source (cargo rebuilt the binary from it), `+changes` when `src/`
/// differs from it.
/// Names another build of the gateway to measure (an older commit's, say),
/// so that two builds can be compared in the same hour with the same harness.
pub(crate) const GATEWAY_BIN: &str = "LOAD_GATEWAY_BIN";

pub(crate) fn gateway_binary() -> std::path::PathBuf {
    std::env::var_os(GATEWAY_BIN).map_or_else(|| env!("CARGO_BIN_EXE_mesaya-realtime").into(), Into::into)
}

pub(crate) fn source_version() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = git(&["log", "-1", "--format=%h %s"]);
    let changed = !git(&["status", "--porcelain", "--", "src"]).is_empty();
    let commit: String = commit.chars().take(90).collect();
    format!("{commit}{}", if changed { " (+ uncommitted changes in src/)" } else { "" })
}

pub(crate) fn machine() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("?".to_string(), |m| m.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    format!(
        "nproc {}, {:.1} GiB RAM, {model}, Linux {}, open files {}/{}",
        cores(),
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        limit.rlim_cur,
        limit.rlim_max
    )
}
