//! CPU time and resident memory of the process under test, from /proc.

use std::sync::OnceLock;

/// The processes whose use is summed (a proxy, or a master and its workers).
#[derive(Clone)]
pub struct Watched {
    pids: Vec<u32>,
}

impl Watched {
    pub fn new(pids: Vec<u32>) -> Self {
        Self { pids }
    }

    /// utime + stime of every watched process, in microseconds; `None` when none is watched.
    pub fn cpu_us(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        let ticks: u64 = self.pids.iter().map(|pid| cpu_ticks(*pid).unwrap_or(0)).sum();
        Some(ticks * 1_000_000 / clock_ticks_per_second())
    }

    /// VmRSS of every watched process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        Some(self.pids.iter().map(|pid| rss_kib(*pid).unwrap_or(0)).sum())
    }
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields that follow it do not.
    // After ')' come state (field 3) … utime (14) and stime (15).
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    // SAFETY: sysconf only reads a constant of the running system.
    *TICKS.get_or_init(|| u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100))
}
