//! CPU time of named processes over a scenario's measured window, per message.
//!
//! Wall-clock rates on this shared 2-core box swing with whatever else runs; the CPU each
//! process (the three nats-servers, gateways, workers, Redis, the load tool) spent per
//! message does not swing as much and says where the work goes. It is also how W is
//! measured: W is the nats-servers' CPU per plain R3 write (`raw write`), so "Natter costs
//! N W per message" is the ratio of two reports of one run (`summarize`).
//!
//! CPU is utime + stime from `/proc/<pid>/stat`, in clock ticks. The tick rate comes from
//! the auxiliary vector the kernel gave this process (`AT_CLKTCK` in `/proc/self/auxv`,
//! what `sysconf(_SC_CLK_TCK)` returns) so no unsafe FFI is needed; 100, which
//! `getconf CLK_TCK` prints here, if it cannot be read. A tick is 10 ms, so a window
//! should be seconds long.

use std::{sync::OnceLock, time::Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// `--watch`: the processes whose CPU a scenario reports.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WatchArgs {
    /// Processes to report CPU for, as name=pid, comma-separated (e.g.
    /// nats-1=123,nats-2=124,nats-3=125,gateway=130,workers=131,redis=140). Names starting
    /// with `nats` count as nats-servers in the per-message totals. The load tool itself
    /// is always included, as `load`.
    #[arg(long, value_delimiter = ',')]
    pub watch: Vec<String>,
}

impl WatchArgs {
    pub fn watch(&self) -> anyhow::Result<Watch> {
        Watch::new(&self.watch)
    }
}

/// Named processes to measure.
#[derive(Debug, Clone)]
pub struct Watch {
    processes: Vec<(String, u32)>,
}

impl Default for Watch {
    /// Only the load tool.
    fn default() -> Self {
        Self {
            processes: vec![("load".to_owned(), std::process::id())],
        }
    }
}

impl Watch {
    /// The load tool plus `name=pid` entries.
    pub fn new(entries: &[String]) -> anyhow::Result<Self> {
        let mut watch = Self::default();
        for entry in entries.iter().filter(|e| !e.trim().is_empty()) {
            let (name, pid) = entry
                .split_once('=')
                .with_context(|| format!("--watch {entry:?}: expected name=pid"))?;
            let pid = pid
                .trim()
                .parse()
                .with_context(|| format!("--watch {entry:?}: bad pid"))?;
            watch.add(name.trim(), pid);
        }
        Ok(watch)
    }

    /// Adds a process found at run time (e.g. a load process this tool started).
    pub fn add(&mut self, name: impl Into<String>, pid: u32) {
        self.processes.push((name.into(), pid));
    }

    /// Samples every process now: the start of a measured window.
    pub fn start(&self) -> anyhow::Result<Window> {
        let processes = self
            .processes
            .iter()
            .map(|(name, pid)| {
                let ticks = ticks(*pid).with_context(|| format!("--watch {name}={pid}"))?;
                Ok((name.clone(), *pid, ticks))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Window {
            processes,
            started: Instant::now(),
        })
    }
}

/// A measured window in progress.
#[derive(Debug)]
pub struct Window {
    processes: Vec<(String, u32, u64)>,
    started: Instant,
}

impl Window {
    /// Ends the window: CPU of each process since [`Watch::start`], and per message, where
    /// `messages` counts what `unit` names (e.g. `message`, `write`, `item`, `reconnect`).
    pub fn finish(&self, messages: u64, unit: &str) -> CpuReport {
        let seconds = self.started.elapsed().as_secs_f64();
        let per = |ms: f64| (messages > 0).then(|| ms / messages as f64);
        let processes: Vec<ProcessCpu> = self
            .processes
            .iter()
            .map(|(name, pid, before)| {
                // A process that ended during the window has no figure.
                let cpu_ms = ticks(*pid)
                    .ok()
                    .map(|after| after.saturating_sub(*before) as f64 * 1000.0 / tick_rate());
                ProcessCpu {
                    name: name.clone(),
                    pid: *pid,
                    cpu_ms,
                    ms_per_message: cpu_ms.and_then(per),
                    percent_of_core: cpu_ms.map(|ms| ms / 10.0 / seconds.max(1e-9)),
                }
            })
            .collect();
        let nats: Vec<&ProcessCpu> = processes
            .iter()
            .filter(|p| p.name.starts_with("nats"))
            .collect();
        let nats_ms = (!nats.is_empty())
            .then(|| nats.iter().map(|p| p.cpu_ms).sum::<Option<f64>>())
            .flatten();
        CpuReport {
            seconds,
            unit: unit.to_owned(),
            messages,
            nats_servers_ms: nats_ms,
            nats_servers_ms_per_message: nats_ms.and_then(per),
            processes,
        }
    }
}

/// CPU used during one measured window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuReport {
    pub seconds: f64,
    /// What `messages` counts.
    pub unit: String,
    pub messages: u64,
    /// All processes named `nats…` together (none when none was watched).
    pub nats_servers_ms: Option<f64>,
    pub nats_servers_ms_per_message: Option<f64>,
    pub processes: Vec<ProcessCpu>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessCpu {
    pub name: String,
    pub pid: u32,
    pub cpu_ms: Option<f64>,
    pub ms_per_message: Option<f64>,
    pub percent_of_core: Option<f64>,
}

impl CpuReport {
    /// Lines for the human table.
    pub fn table(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "CPU over {:.1} s, {} {}s:  process  ms  ms/{}  % of a core",
            self.seconds, self.messages, self.unit, self.unit
        )];
        let fmt = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
        };
        for p in &self.processes {
            lines.push(format!(
                "  {:<12} {:>9} {:>10} {:>6}",
                p.name,
                fmt(p.cpu_ms, 0),
                fmt(p.ms_per_message, 4),
                fmt(p.percent_of_core, 0)
            ));
        }
        if self.nats_servers_ms.is_some() {
            lines.push(format!(
                "  {:<12} {:>9} {:>10}",
                "nats-servers",
                fmt(self.nats_servers_ms, 0),
                fmt(self.nats_servers_ms_per_message, 4)
            ));
        }
        lines
    }
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU fields.
pub fn tick_rate() -> f64 {
    static RATE: OnceLock<f64> = OnceLock::new();
    *RATE.get_or_init(|| {
        const AT_CLKTCK: u64 = 17;
        std::fs::read("/proc/self/auxv")
            .ok()
            .and_then(|auxv| {
                auxv.chunks_exact(16).find_map(|pair| {
                    let word =
                        |i: usize| u64::from_ne_bytes(pair[i..i + 8].try_into().expect("8 bytes"));
                    (word(0) == AT_CLKTCK).then(|| word(8))
                })
            })
            .filter(|&hz| hz > 0)
            .unwrap_or(100) as f64
    })
}

/// CPU a process has used so far (utime + stime), in clock ticks.
pub fn ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is not running"))?;
    // The command name may hold spaces; the fields after its closing parenthesis are plain.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short /proc stat")?.parse()?)
    };
    Ok(field(11)? + field(12)?)
}

/// CPU a process has used so far, in seconds.
pub fn seconds(pid: u32) -> anyhow::Result<f64> {
    Ok(ticks(pid)? as f64 / tick_rate())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_rate_is_what_getconf_says() {
        let getconf = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap();
        let hz: f64 = String::from_utf8(getconf.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(tick_rate(), hz);
    }

    #[test]
    fn a_window_counts_this_process_busy_time() {
        let window = Watch::new(&["nats-x=1".into()]).unwrap().start().unwrap();
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed().as_millis() < 200 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let report = window.finish(10, "message");
        let load = &report.processes[0];
        assert_eq!(load.name, "load");
        assert!(load.cpu_ms.unwrap() >= 100.0, "{report:?} {x}");
        assert!(report.nats_servers_ms.is_some());
        assert!(Watch::new(&["nopid".into()]).is_err());
    }
}
