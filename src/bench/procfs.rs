//! The measured server's resident memory and CPU time, read from
//! `/proc/PID/status`, `/proc/PID/smaps_rollup` and `/proc/PID/stat` (same
//! machine). PSS splits pages shared between processes (nginx's workers and
//! their shared memory zone) among them, so that a sum over processes
//! counts each page once; RSS counts a shared page in every process.

use serde::Serialize;

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ, fixed at 100
/// in Linux's user-space ABI).
const USER_HZ: f64 = 100.0;

/// One reading of a set of processes (several `--role fanout` processes
/// count as one server).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Sum of VmRSS, KiB.
    pub rss_kib: u64,
    /// Sum of Pss (0 where smaps_rollup is unreadable), KiB.
    pub pss_kib: u64,
    /// Sum of user + system CPU time, seconds.
    pub cpu_s: f64,
}

/// Reads `pids`; `None` if any is gone or unreadable.
pub fn sample(pids: &[u32]) -> Option<Sample> {
    let mut s = Sample::default();
    for &pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        s.rss_kib += field_kib(&status, "VmRSS:")?;
        if let Ok(rollup) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            s.pss_kib += field_kib(&rollup, "Pss:").unwrap_or(0);
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        s.cpu_s += cpu_ticks(&stat)? as f64 / USER_HZ;
    }
    Some(s)
}

/// A `Name:   123 kB` line of a status or smaps_rollup file, in KiB.
fn field_kib(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of a stat line, in ticks. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After the name: state is field 3; utime and stime are fields 14, 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tflowcast\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(field_kib(status, "VmRSS:"), Some(12345));
        assert_eq!(field_kib("Name: x\n", "VmRSS:"), None);
        let rollup = "Rss:  2000 kB\nPss:  1500 kB\nPss_Anon:  100 kB\n";
        assert_eq!(field_kib(rollup, "Pss:"), Some(1500));
        let stat = "4242 (flow cast) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        assert_eq!(cpu_ticks(stat), Some(300));
    }

    #[test]
    fn reads_this_process() {
        let s = sample(&[std::process::id()]).unwrap();
        assert!(s.rss_kib > 0);
        assert!(sample(&[u32::MAX]).is_none());
    }
}
