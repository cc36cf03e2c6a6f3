//! Load processes for the socket-heavy scenarios. One process may hold at most ~19,990
//! sockets here (open files are capped at 20,000 and cannot be raised), so `idle` and
//! `storm` run one child process per gateway: this same binary, started with a hidden
//! `*-shard` subcommand. Parent and child talk in lines: the parent writes orders to the
//! child's stdin (`drop`, `reconnect`, `stop`), the child answers with one JSON object per
//! line on stdout when a phase is done. Children are killed if the parent goes away.

use std::process::Stdio;

use anyhow::{Context, bail};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

/// Flags of one load process (hidden subcommands `idle-shard`, `storm-shard`): its users
/// are `<prefix>-0` … `<prefix>-<users − 1>`, all on one gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct ShardOptions {
    #[arg(long)]
    pub gateway: String,
    #[arg(long)]
    pub users: usize,
    #[arg(long)]
    pub prefix: String,
    /// First source address index (see net::Sources).
    #[arg(long)]
    pub first_source: usize,
    #[arg(long)]
    pub secret: String,
}

/// The parent's handle on one load process.
#[derive(Debug)]
pub struct Shard {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Shard {
    /// Starts this binary again with `args` (a hidden shard subcommand and its flags).
    pub fn spawn(args: &[String]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("path of natter-bench")?;
        let mut child = tokio::process::Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start a load process")?;
        let stdin = child.stdin.take().context("shard stdin")?;
        let stdout = child.stdout.take().context("shard stdout")?;
        Ok(Self {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The child's next report.
    pub async fn next<T: DeserializeOwned>(&mut self) -> anyhow::Result<T> {
        let Some(line) = self.lines.next_line().await? else {
            bail!("a load process ended early (its errors are above)");
        };
        serde_json::from_str(&line).with_context(|| format!("load process said {line:?}"))
    }

    /// Sends one order line.
    pub async fn tell(&mut self, order: &str) -> anyhow::Result<()> {
        self.stdin
            .write_all(format!("{order}\n").as_bytes())
            .await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Tells the child to stop and waits for it.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        let _ = self.tell("stop").await;
        let status = self.child.wait().await?;
        if !status.success() {
            bail!("a load process exited with {status}");
        }
        Ok(())
    }
}

/// Child side: one report line to the parent.
pub fn say(report: &impl Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(report)?)?;
    out.flush()?;
    Ok(())
}

/// Child side: the parent's orders, one per line; `None` once the parent is gone.
#[derive(Debug)]
pub struct Orders(Lines<BufReader<tokio::io::Stdin>>);

impl Orders {
    pub fn new() -> Self {
        Self(BufReader::new(tokio::io::stdin()).lines())
    }

    pub async fn next(&mut self) -> Option<String> {
        self.0.next_line().await.ok().flatten()
    }
}

impl Default for Orders {
    fn default() -> Self {
        Self::new()
    }
}

/// Resident memory of a process, in bytes (`VmRSS` in /proc).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is not running"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("VmRSS missing")?;
    Ok(kib * 1024)
}

/// Parses a comma-separated list of PIDs.
pub fn pids(list: &str) -> anyhow::Result<Vec<u32>> {
    list.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse().with_context(|| format!("bad pid {p:?}")))
        .collect()
}
