//! Subcommand `summarize`: the markdown summary of one `bench/run-all.sh` run, so the
//! table that decides issue 15 is computed by the tool from the published JSON, never by
//! hand. Every Natter figure stands next to its control from the same repeat and their
//! ratio; each metric is the median over the repeats that are not void (a repeat is void
//! when its raw writer's rate before and after the Natter steps differ by more than 15 %,
//! i.e. the box changed under the run); the per-repeat figures follow, so nothing is hidden.
//!
//! Layout read (missing files leave their cells empty, so a smoke run with a few steps
//! still summarizes): `<dir>/r<N>/<step>.json` with steps raw-before, floor, sweep,
//! raw-lat, fanout, raw-fan, idle, idle-control, storm, storm-control, raw-after;
//! `<dir>/r<N>/loadavg-start` and `-end` and the same for the whole run in `<dir>`
//! (copies of /proc/loadavg); `<dir>/ejabberd/*.json` (`xmpp` reports).

mod read;

use std::{fmt::Write, path::PathBuf};

use read::{Repeat, counts, fmt, load_avg, median, peer_peaks, repeats};

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// A results directory written by bench/run-all.sh.
    pub dir: PathBuf,
}

/// A metric: Natter's figure, its control's, and what the issue asks of their ratio.
struct Metric {
    label: &'static str,
    natter: fn(&Repeat) -> Option<f64>,
    control: fn(&Repeat) -> Option<f64>,
    target: &'static str,
}

const METRICS: &[Metric] = &[
    Metric {
        label: "1:1 peak msg/s ÷ raw writes/s (mean of raw-before, raw-after)",
        natter: |r| r.num("sweep", "/peak_per_s").filter(|p| *p > 0.0),
        control: |r| r.raw_mean("/writes_per_s"),
        target: "≥ 0.18 (0.25 hoped)",
    },
    Metric {
        label: "1:1 peak msg/s ÷ floor msg/s",
        natter: |r| r.num("sweep", "/peak_per_s").filter(|p| *p > 0.0),
        control: |r| r.num("floor", "/messages_per_s"),
        target: "≥ 0.6",
    },
    Metric {
        label: "floor msg/s ÷ raw writes/s",
        natter: |r| r.num("floor", "/messages_per_s"),
        control: |r| r.raw_mean("/writes_per_s"),
        target: "(reference)",
    },
    Metric {
        label: "nats-servers' CPU ms per 1:1 message at peak ÷ W (ms per raw write): in W",
        natter: Repeat::peak_nats_ms,
        control: |r| r.raw_mean("/cpu/nats_servers_ms_per_message"),
        target: "≤ 5",
    },
    Metric {
        label: "floor: nats-servers' CPU ms per message ÷ W: in W",
        natter: |r| r.num("floor", "/cpu/nats_servers_ms_per_message"),
        control: |r| r.raw_mean("/cpu/nats_servers_ms_per_message"),
        target: "(reference)",
    },
    Metric {
        label: "half-peak send → deliver p50 ms ÷ raw-lat p50",
        natter: |r| r.num("sweep", "/half_peak/send_to_deliver_ms/p50"),
        control: |r| r.num("raw-lat", "/publish_to_live_ms/p50"),
        target: "Natter ≤ 2 ms",
    },
    Metric {
        label: "half-peak send → deliver p99 ms ÷ raw-lat p99",
        natter: |r| r.num("sweep", "/half_peak/send_to_deliver_ms/p99"),
        control: |r| r.num("raw-lat", "/publish_to_live_ms/p99"),
        target: "Natter ≤ 10 ms, or ratio ≤ 2",
    },
    Metric {
        label: "1,024-member fanout, last member p99 ms ÷ raw-fan p99",
        natter: |r| r.num("fanout", "/send_to_last_member_ms/p99"),
        control: |r| r.num("raw-fan", "/publish_to_last_arrival_ms/p99"),
        target: "Natter ≤ 150 ms and ratio ≤ 2",
    },
    Metric {
        label: "idle RSS per user B ÷ idle-control",
        natter: |r| r.num("idle", "/rss_per_user_bytes"),
        control: |r| r.num("idle-control", "/rss_per_user_bytes"),
        target: "Natter ≤ 10,240 B and ratio ≤ 1.5",
    },
    Metric {
        label: "reconnect storm, all caught up s ÷ storm-control",
        natter: |r| r.num("storm", "/all_caught_up_s"),
        control: |r| r.num("storm-control", "/all_caught_up_s"),
        target: "Natter ≤ 15 s and ratio ≤ 2",
    },
];

pub fn run(options: &Options) -> anyhow::Result<String> {
    let dir = &options.dir;
    let repeats = repeats(dir)?;
    anyhow::ensure!(
        !repeats.is_empty(),
        "{}: no r<N> directories",
        dir.display()
    );
    let counted: Vec<&Repeat> = repeats.iter().filter(|r| r.void().is_none()).collect();
    let mut out = String::new();
    let run_load = (
        load_avg(&dir.join("loadavg-start")),
        load_avg(&dir.join("loadavg-end")),
    );
    writeln!(
        out,
        "# Natter against same-run controls: {}\n",
        dir.display()
    )?;
    writeln!(
        out,
        "1-minute load at start {}, at end {}{}.\n",
        fmt(run_load.0),
        fmt(run_load.1),
        if run_load.0.is_some_and(|l| l > 1.0) {
            " — **flagged: above 1 at start**"
        } else {
            ""
        }
    )?;
    for r in &repeats {
        let verdict = r
            .void()
            .map_or_else(|| "counts".to_owned(), |why| format!("**void**: {why}"));
        let flag = if r.load.0.is_some_and(|l| l > 1.0) {
            " (load above 1 at start)"
        } else {
            ""
        };
        writeln!(
            out,
            "- {}: load {} → {}{flag}; {verdict}",
            r.name,
            fmt(r.load.0),
            fmt(r.load.1)
        )?;
    }
    writeln!(
        out,
        "\nMedians over {} of {} repeats; a ratio is figure ÷ control (Natter ÷ its control, except in reference rows), its median taken over the repeats' own ratios.\n",
        counted.len(),
        repeats.len()
    )?;
    writeln!(
        out,
        "| metric | figure | control | ratio | must reach | per repeat: figure / control = ratio |"
    )?;
    writeln!(out, "| --- | --- | --- | --- | --- | --- |")?;
    for m in METRICS {
        let pairs: Vec<(Option<f64>, Option<f64>)> = counted
            .iter()
            .map(|r| ((m.natter)(r), (m.control)(r)))
            .collect();
        let ratio = |(n, c): (Option<f64>, Option<f64>)| n.zip(c).map(|(n, c)| n / c.max(1e-12));
        let per_repeat: Vec<String> = repeats
            .iter()
            .map(|r| {
                let (n, c) = ((m.natter)(r), (m.control)(r));
                let void = if r.void().is_some() { " (void)" } else { "" };
                format!(
                    "{}{void}: {} / {} = {}",
                    r.name,
                    fmt(n),
                    fmt(c),
                    fmt(ratio((n, c)))
                )
            })
            .collect();
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            m.label,
            fmt(median(pairs.iter().filter_map(|p| p.0).collect())),
            fmt(median(pairs.iter().filter_map(|p| p.1).collect())),
            fmt(median(pairs.iter().filter_map(|&p| ratio(p)).collect())),
            m.target,
            per_repeat.join("; ")
        )?;
    }
    let peers = peer_peaks(&dir.join("ejabberd"))?;
    let peak = median(
        counted
            .iter()
            .filter_map(|r| r.num("sweep", "/peak_per_s"))
            .collect(),
    );
    for (system, peer) in &peers {
        writeln!(
            out,
            "| 1:1 peak msg/s ÷ {system} peak | {} | {} | {} | {} | |",
            fmt(peak),
            fmt(Some(*peer)),
            fmt(peak.map(|p| p / peer.max(1e-12))),
            if system.contains("pg") {
                "≥ 3"
            } else {
                "(reference)"
            }
        )?;
    }
    writeln!(out, "\n## Raw writer per repeat\n")?;
    writeln!(
        out,
        "| repeat | raw-before writes/s | raw-after writes/s | W before / after (nats-servers' ms per write) | floor msg/s |"
    )?;
    writeln!(out, "| --- | --- | --- | --- | --- |")?;
    for r in &repeats {
        let w = "/cpu/nats_servers_ms_per_message";
        writeln!(
            out,
            "| {} | {} | {} | {} / {} | {} |",
            r.name,
            fmt(r.num("raw-before", "/writes_per_s")),
            fmt(r.num("raw-after", "/writes_per_s")),
            fmt(r.num("raw-before", w)),
            fmt(r.num("raw-after", w)),
            fmt(r.num("floor", "/messages_per_s"))
        )?;
    }
    writeln!(
        out,
        "\n## Lost, doubled, replayed (all repeats, void ones included)\n"
    )?;
    writeln!(out, "| step | counts |\n| --- | --- |")?;
    for (step, counts) in counts(&repeats, &dir.join("ejabberd"))? {
        let text: Vec<String> = counts
            .iter()
            .map(|(what, n)| format!("{what} {n}"))
            .collect();
        writeln!(out, "| {step} | {} |", text.join(", "))?;
    }
    Ok(out)
}
