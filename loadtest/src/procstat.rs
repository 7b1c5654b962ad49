//! CPU time and memory of processes, read from Linux `/proc`.
//!
//! CPU: `utime + stime` (fields 14 and 15 of `/proc/PID/stat`) in clock ticks
//! of `USER_HZ`, which Linux fixes at 100 for `/proc` whatever the kernel's
//! HZ. Memory: `VmRSS` and `VmHWM` (peak RSS) of `/proc/PID/status`.

use std::collections::HashMap;

use serde::Serialize;

const TICKS_PER_SECOND: f64 = 100.0;

/// One sample of a group of processes (summed).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_seconds: f64,
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Peak resident set, KiB.
    pub hwm_kib: u64,
    /// Processes found (a process that exited is missing).
    pub processes: usize,
}

/// `(ppid, cpu ticks)` from the text of `/proc/PID/stat`.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // The command name may hold spaces and parentheses: split after the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// `(VmRSS, VmHWM)` in KiB from the text of `/proc/PID/status`.
pub fn parse_status(status: &str) -> (u64, u64) {
    let mut rss = 0;
    let mut hwm = 0;
    for line in status.lines() {
        let value = |line: &str| -> u64 {
            line.split_whitespace()
                .nth(1)
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        if line.starts_with("VmRSS:") {
            rss = value(line);
        } else if line.starts_with("VmHWM:") {
            hwm = value(line);
        }
    }
    (rss, hwm)
}

fn read_one(pid: u32) -> Option<(u32, u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (ppid, ticks) = parse_stat(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let (rss, hwm) = parse_status(&status);
    Some((ppid, ticks, rss, hwm))
}

/// The given processes and, when `with_descendants`, all their descendants.
pub fn expand_descendants(pids: &[u32], with_descendants: bool) -> Vec<u32> {
    let mut all: Vec<u32> = pids.to_vec();
    if !with_descendants {
        return all;
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Some((ppid, _)) = parse_stat(&stat) {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    let mut index = 0;
    while index < all.len() {
        if let Some(kids) = children.get(&all[index]) {
            for kid in kids {
                if !all.contains(kid) {
                    all.push(*kid);
                }
            }
        }
        index += 1;
    }
    all
}

/// Sum CPU and memory over the processes.
pub fn sample(pids: &[u32]) -> ProcSample {
    let mut total = ProcSample::default();
    for &pid in pids {
        if let Some((_, ticks, rss, hwm)) = read_one(pid) {
            total.cpu_seconds += ticks as f64 / TICKS_PER_SECOND;
            total.rss_kib += rss;
            total.hwm_kib += hwm;
            total.processes += 1;
        }
    }
    total
}

/// Busy and total CPU seconds of the whole machine (all cores), from the
/// first line of `/proc/stat`; softirq time (where loopback TCP is processed)
/// is only visible here, not in any process's utime/stime.
pub fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    parse_machine_cpu(&stat)
}

pub fn parse_machine_cpu(stat: &str) -> (f64, f64) {
    let Some(line) = stat.lines().next() else {
        return (0.0, 0.0);
    };
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|value| value.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    (
        (total - idle) as f64 / TICKS_PER_SECOND,
        total as f64 / TICKS_PER_SECOND,
    )
}

/// This process.
pub fn sample_self() -> ProcSample {
    sample(&[std::process::id()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "4242 (we (ird) name) S 17 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((17, 325)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn parses_machine_cpu() {
        let stat = "cpu  100 0 50 800 50 0 25 0 0 0\ncpu0 50 0 25 400 25 0 12 0 0 0\n";
        assert_eq!(parse_machine_cpu(stat), (1.75, 10.25));
    }

    #[test]
    fn parses_status() {
        let status =
            "Name:\tx\nVmPeak:\t 9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nThreads:\t1\n";
        assert_eq!(parse_status(status), (1024, 2048));
    }

    #[test]
    fn samples_this_process() {
        let me = sample_self();
        assert_eq!(me.processes, 1);
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
        let with_children = expand_descendants(&[std::process::id()], true);
        assert_eq!(with_children[0], std::process::id());
    }
}
