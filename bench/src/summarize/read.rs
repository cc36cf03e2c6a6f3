//! Reading a results directory: the repeats, their step reports and load averages, the
//! peer's runs, and the loss counts, so `summarize`'s `run` only lays out the table.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context;
use serde_json::Value;

use crate::{dm::kept_up, report::DmReport};

/// Raw rates further apart than this (max ÷ min − 1) make a repeat void.
const VOID_ABOVE: f64 = 0.15;

/// One repeat of the cycle: its step reports by step name.
pub struct Repeat {
    pub name: String,
    pub steps: BTreeMap<String, Value>,
    /// 1-minute load average at the start and at the end.
    pub load: (Option<f64>, Option<f64>),
}

impl Repeat {
    pub fn num(&self, step: &str, pointer: &str) -> Option<f64> {
        self.steps.get(step)?.pointer(pointer)?.as_f64()
    }

    /// Mean of the figure in raw-before and raw-after (either one if only one exists).
    pub fn raw_mean(&self, pointer: &str) -> Option<f64> {
        mean(&[
            self.num("raw-before", pointer),
            self.num("raw-after", pointer),
        ])
    }

    /// Why this repeat does not count, if it does not.
    pub fn void(&self) -> Option<String> {
        let (a, b) = (
            self.num("raw-before", "/writes_per_s")?,
            self.num("raw-after", "/writes_per_s")?,
        );
        let apart = a.max(b) / a.min(b).max(1e-9) - 1.0;
        (apart > VOID_ABOVE).then(|| {
            format!(
                "raw-before {a:.0} vs raw-after {b:.0} writes/s, {:.0} % apart",
                apart * 100.0
            )
        })
    }

    fn sweep_runs(&self) -> Vec<DmReport> {
        let Some(sweep) = self.steps.get("sweep") else {
            return Vec::new();
        };
        let runs = sweep["runs"].as_array().into_iter().flatten();
        runs.chain(sweep.get("half_peak"))
            .filter_map(|r| serde_json::from_value(r.clone()).ok())
            .collect()
    }

    /// The nats-servers' CPU per message in the sweep's run that set the peak.
    pub fn peak_nats_ms(&self) -> Option<f64> {
        let peak = self.num("sweep", "/peak_per_s")?;
        let sweep = self.steps.get("sweep")?;
        let runs: Vec<DmReport> = serde_json::from_value(sweep["runs"].clone()).ok()?;
        runs.iter()
            .find(|r| kept_up(r) && r.delivered_per_s == peak)?
            .cpu
            .as_ref()?
            .nats_servers_ms_per_message
    }
}

fn mean(values: &[Option<f64>]) -> Option<f64> {
    let known: Vec<f64> = values.iter().flatten().copied().collect();
    (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
}

pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

pub fn fmt(value: Option<f64>) -> String {
    match value {
        None => "—".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

pub fn load_avg(path: &Path) -> Option<f64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Every `*.json` in `dir` by file stem.
fn reports(dir: &Path) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            found.insert(stem.to_owned(), read_json(&path)?);
        }
    }
    Ok(found)
}

pub fn repeats(dir: &Path) -> anyhow::Result<Vec<Repeat>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() && name.starts_with('r') && name[1..].parse::<u32>().is_ok() {
            found.push(Repeat {
                name: name.to_owned(),
                steps: reports(&path)?,
                load: (
                    load_avg(&path.join("loadavg-start")),
                    load_avg(&path.join("loadavg-end")),
                ),
            });
        }
    }
    found.sort_by_key(|r| r.name[1..].parse::<u32>().unwrap_or(0));
    Ok(found)
}

/// The highest rate each XMPP system kept up, by system name.
pub fn peer_peaks(dir: &Path) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut peaks = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(peaks);
    }
    for value in reports(dir)?.into_values() {
        let run: DmReport = serde_json::from_value(value)?;
        let peak = peaks.entry(run.system.clone()).or_insert(0.0f64);
        if kept_up(&run) {
            *peak = peak.max(run.delivered_per_s);
        }
    }
    Ok(peaks)
}

/// Per step, what was counted and how many.
pub type Counts = Vec<(String, Vec<(&'static str, u64)>)>;

/// Every loss or duplicate any step counted, summed over all repeats.
pub fn counts(repeats: &[Repeat], peers: &Path) -> anyhow::Result<Counts> {
    const FIELDS: &[(&str, &[(&str, &str)])] = &[
        (
            "floor",
            &[("live missing", "/live_missing"), ("errors", "/errors")],
        ),
        (
            "raw-lat",
            &[("live missing", "/live_missing"), ("errors", "/errors")],
        ),
        (
            "raw-fan",
            &[
                ("missing", "/missing"),
                ("stray", "/stray"),
                ("errors", "/errors"),
            ],
        ),
        ("fanout", &[("doubled", "/doubled")]),
        ("idle", &[("failed", "/failed")]),
        ("idle-control", &[("failed", "/failed")]),
        (
            "storm",
            &[
                ("lost", "/lost"),
                ("doubled", "/doubled"),
                ("replayed", "/replayed"),
                ("connect failed", "/connect_failed"),
                ("connect retried", "/connect_retried"),
            ],
        ),
        (
            "storm-control",
            &[
                ("lost", "/lost"),
                ("doubled", "/doubled"),
                ("replayed", "/replayed"),
                ("connect failed", "/connect_failed"),
                ("connect retried", "/connect_retried"),
            ],
        ),
    ];
    let sum = |step: &str, pointer: &str| -> u64 {
        repeats
            .iter()
            .filter_map(|r| r.num(step, pointer))
            .sum::<f64>() as u64
    };
    let mut rows = Vec::new();
    let sweeps: Vec<DmReport> = repeats.iter().flat_map(Repeat::sweep_runs).collect();
    if !sweeps.is_empty() {
        rows.push((
            "sweep (every run)".to_owned(),
            vec![
                ("lost", sweeps.iter().map(|r| r.lost).sum()),
                ("doubled", sweeps.iter().map(|r| r.doubled).sum()),
                ("errors", sweeps.iter().map(|r| r.errors).sum()),
            ],
        ));
    }
    for (step, fields) in FIELDS {
        if repeats.iter().any(|r| r.steps.contains_key(*step)) {
            let mut counts: Vec<(&str, u64)> = fields
                .iter()
                .map(|(what, p)| (*what, sum(step, p)))
                .collect();
            if *step == "floor" {
                let stored: u64 = 2 * sum(step, "/messages");
                counts.push((
                    "tail missing",
                    stored.saturating_sub(sum(step, "/tail_read")),
                ));
            }
            if *step == "fanout" {
                let rounds = sum(step, "/rounds");
                counts.push((
                    "incomplete rounds",
                    rounds - sum(step, "/complete_rounds").min(rounds),
                ));
            }
            rows.push((step.to_string(), counts));
        }
    }
    if peers.is_dir() {
        let runs: Vec<DmReport> = reports(peers)?
            .into_values()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()?;
        rows.push((
            "ejabberd (every run)".to_owned(),
            vec![
                ("lost", runs.iter().map(|r| r.lost).sum()),
                ("doubled", runs.iter().map(|r| r.doubled).sum()),
            ],
        ));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_void_repeats() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        let repeat = |before: f64, after: f64| Repeat {
            name: "r1".into(),
            steps: [
                (
                    "raw-before".to_owned(),
                    serde_json::json!({"writes_per_s": before}),
                ),
                (
                    "raw-after".to_owned(),
                    serde_json::json!({"writes_per_s": after}),
                ),
            ]
            .into(),
            load: (None, None),
        };
        assert!(repeat(30_000.0, 27_000.0).void().is_none());
        assert!(repeat(30_000.0, 25_000.0).void().is_some());
        assert_eq!(
            repeat(30_000.0, 26_000.0).raw_mean("/writes_per_s"),
            Some(28_000.0)
        );
    }
}
