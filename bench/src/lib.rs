//! `natter-bench`: load scenarios that drive a running Natter through its WebSocket API as
//! real clients would (and, for comparison, a raw JetStream writer and an XMPP peer), and
//! report throughput and latency percentiles from HDR histograms, next to controls that do
//! the same durable work with no Natter code (`raw`, `control-server`, `storm-control`)
//! and the CPU each process spent per message (`cpu`).
//!
//! Every scenario is a module with its options (`clap::Args`) and a `run` returning a
//! serializable report; `main.rs` only parses flags and prints.

pub mod ceiling;
pub mod chatlist;
pub mod control;
pub mod cpu;
pub mod dm;
pub mod fanout;
pub mod history;
pub mod idle;
pub mod net;
pub mod plot;
pub mod presence;
pub mod raw;
pub mod report;
pub mod senders;
pub mod shard;
pub mod storm;
pub mod summarize;
pub mod xmpp;
