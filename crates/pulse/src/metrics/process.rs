//! The process's own CPU, memory and file counts, from `/proc/self` (Linux). Read at scrape
//! time; on other systems (or without `/proc`) the numbers are simply absent.

/// One reading of `/proc/self/stat` and `/proc/self/fd`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub threads: u64,
}

/// Reads the current process, or `None` where `/proc` is not there.
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| boot_time(&s));
    let mut p = parse_stat(&stat, ticks.max(1) as f64, page.max(1) as u64, boot)?;
    p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    Some(p)
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Parses `/proc/self/stat` (see proc(5)). The command name (field 2) is in parentheses
/// and may contain spaces, so fields are counted after its closing parenthesis.
fn parse_stat(
    stat: &str,
    ticks_per_second: f64,
    page_bytes: u64,
    boot: Option<f64>,
) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so field N is index N - 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let utime = num(14)?;
    let stime = num(15)?;
    let threads = num(20)?;
    let start_ticks = num(22)?;
    let vsize = num(23)?;
    let rss_pages = num(24)?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks_per_second,
        resident_bytes: rss_pages * page_bytes,
        virtual_bytes: vsize,
        start_time_seconds: boot.map_or(0.0, |b| b + start_ticks as f64 / ticks_per_second),
        open_fds: 0,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_the_name() {
        let line = "4242 (pulse (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                    12 0 5000 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1";
        let p = parse_stat(line, 100.0, 4096, Some(1_700_000_000.0)).expect("parses");
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 12);
        assert_eq!(p.virtual_bytes, 104_857_600);
        assert_eq!(p.resident_bytes, 2560 * 4096);
        assert_eq!(p.start_time_seconds, 1_700_000_050.0);
    }

    #[test]
    fn reads_this_process() {
        let p = read().expect("/proc is there on Linux");
        assert!(
            p.resident_bytes > 0 && p.open_fds > 0 && p.threads >= 1,
            "{p:?}"
        );
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000.0)
        );
    }
}
