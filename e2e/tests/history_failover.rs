//! The history worker is killed (SIGKILL, by PID) while messages stream in and started
//! again on the same embedded store: history has every message once, in order. Then the
//! whole system restarts (history worker stopped, every NATS node restarted) after `MSGS`
//! was purged, so nothing can be written again from the stream: history still pages
//! everything, from the file on disk.
//!
//! The history worker is this test binary run again as a child process
//! (`history_worker_process` below).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use async_nats::jetstream;
use natter_e2e::{
    Client,
    child::TestProcess,
    system::{self, Options, configure, nats_settings, with_cluster},
    unique,
};

const URLS_VAR: &str = "NATTER_E2E_WORKER_URLS";
const DIR_VAR: &str = "NATTER_E2E_HISTORY_DIR";
const MESSAGES: usize = 300;

/// Runs a history worker until killed, when started by the test below.
#[test]
#[ignore = "a child process of the history failover test, not a test"]
fn history_worker_process() {
    let (Ok(urls), Ok(dir)) = (std::env::var(URLS_VAR), std::env::var(DIR_VAR)) else {
        return;
    };
    natter_fabric::process::init_tracing();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let settings = natter_workers::Settings {
            kind: natter_workers::Kind::History,
            nats: nats_settings(&urls, "workers", "history-worker"),
            metrics_listen: None,
            canary: None,
            history: Some(natter_workers::history::HistorySettings {
                instance: "history-proc".into(),
                backend: natter_workers::history::Backend::Embedded(PathBuf::from(dir)),
                retention_days: 0,
            }),
            push: None,
            refused_patience: natter_workers::fanout::REFUSED_PATIENCE,
        };
        natter_workers::run(settings, std::future::pending())
            .await
            .expect("history worker");
    });
}

/// A history worker process on the store in `dir`; its output goes to `dir`.log.
fn start_worker(urls: &str, dir: &Path) -> TestProcess {
    let dir_text = dir.to_str().expect("a UTF-8 path");
    TestProcess::start(
        "history_worker_process",
        &[(URLS_VAR, urls), (DIR_VAR, dir_text), ("RUST_LOG", "info")],
        Some(&dir.with_extension("log")),
    )
}

/// How many messages the newest history page shows (0 while no worker answers).
async fn newest(client: &mut Client, conv: &str) -> usize {
    let page = client
        .request(serde_json::json!({"type": "history", "conv": conv, "limit": 100}))
        .await;
    page["messages"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn history_survives_a_killed_worker_and_a_restart_of_everything() {
    configure(Options {
        workers: 0,
        ..Options::default()
    });
    let urls = system::system().nats_urls.clone();
    let dir = with_cluster(|c| c.dir().join("history-proc"));
    let (alice, bob) = (unique("alice"), unique("bob"));
    let conv = if alice < bob {
        format!("dm:{alice}:{bob}")
    } else {
        format!("dm:{bob}:{alice}")
    };
    let mut first = start_worker(&urls, &dir);

    let sender = Client::connect(0, &alice, "phone", 0).await;
    let sending = tokio::spawn(async move {
        let mut sender = sender;
        let mut ids = Vec::new();
        for i in 0..MESSAGES {
            let answer = sender.send_text(&bob, &format!("m{i}")).await;
            ids.push(answer["id"].as_str().unwrap().to_owned());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ids
    });

    // Kill the worker once some of the stream is written, start another on the same file.
    let mut reader = Client::connect(1, &alice, "laptop", 0).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let written_at_kill = loop {
        let written = newest(&mut reader, &conv).await;
        if written >= 30 {
            break written;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    first.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut second = start_worker(&urls, &dir);
    let sent = sending.await.unwrap();
    reader
        .wait_for_history(&conv, &sent, Duration::from_secs(60))
        .await;
    eprintln!(
        "worker killed after {written_at_kill}+ of {MESSAGES} messages were in history; all paged once after"
    );

    // Everything restarts; MSGS is purged first, so history can only come from disk.
    second.kill();
    let admin = system::nats_as("workers", "history-admin").await;
    let js = jetstream::new(admin);
    js.get_stream(natter_fabric::streams::MSGS)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    drop(reader);
    with_cluster(|cluster| {
        for i in 0..cluster.len() {
            cluster.kill(i);
        }
        for i in 0..cluster.len() {
            cluster.restart(i);
        }
    });
    let _third = start_worker(&urls, &dir);
    // Connect once the inbox has a leader again and the worker answers (asked as the
    // gateway asks: the workers' NATS user may not publish requests).
    let asker = system::nats_as("gateway", "history-readiness").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let inbox_ready = match js.get_stream(natter_fabric::streams::INBOX).await {
            Ok(mut stream) => stream
                .info()
                .await
                .is_ok_and(|info| info.cluster.as_ref().is_some_and(|c| c.leader.is_some())),
            Err(_) => false,
        };
        let query = br#"{"conv":"dm:ready:ready","reader":"ready","limit":1}"#.to_vec();
        let worker_ready = asker
            .request(natter_fabric::subjects::HISTORY_PAGE, query.into())
            .await
            .is_ok();
        if inbox_ready && worker_ready {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the system did not come back: inbox leader {inbox_ready}, history worker \
             {worker_ready}; the worker's log:\n{}",
            std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    system::wait_healthy(system::system().gateways[0]).await;
    let mut after_restart = Client::connect(0, &alice, "tablet", 0).await;
    after_restart
        .wait_for_history(&conv, &sent, Duration::from_secs(90))
        .await;
}
