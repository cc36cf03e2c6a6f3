//! A worker process is killed (SIGKILL, by PID) in the middle of a large group fanout,
//! and another is started: every member still gets every message, edit, deletion and
//! reaction exactly once, in the order they were made, history shows the changes, and
//! group receipt state checkpointed by the first worker is still there for the second
//! (the receipt that says "all delivered" comes from it).
//!
//! This binary's shared system runs no workers of its own. The workers are this test
//! binary run again as a child process (`worker_process` below, selected with
//! `--exact --ignored` and an environment variable), so the test can kill one by PID.

use std::time::Duration;

use async_nats::jetstream;
use natter_e2e::{
    Client,
    child::TestProcess,
    client::token,
    system::{self, Options, configure, http_get, nats_settings},
    unique,
};
use serde_json::{Value, json};

const MEMBERS: usize = 250;
const MESSAGES: usize = 40;
const URLS_VAR: &str = "NATTER_E2E_WORKER_URLS";
/// Where the child workers keep history (the second opens the first's store).
const HISTORY_VAR: &str = "NATTER_E2E_WORKER_HISTORY";

/// Runs the workers until killed, when started by the test below.
#[test]
#[ignore = "a child process of the failover test, not a test"]
fn worker_process() {
    let (Ok(urls), Ok(history)) = (std::env::var(URLS_VAR), std::env::var(HISTORY_VAR)) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let settings = nats_settings(&urls, "workers", "failover-worker");
        let settings = natter_workers::Settings {
            kind: natter_workers::Kind::All,
            nats: settings,
            metrics_listen: None,
            canary: None,
            // History answers the gateway's lookups for edits, deletions and reactions.
            history: Some(natter_workers::history::HistorySettings {
                instance: "failover-history".to_owned(),
                backend: natter_workers::history::Backend::Embedded(history.into()),
                retention_days: 0,
            }),
            push: None,
            refused_patience: natter_workers::fanout::REFUSED_PATIENCE,
        };
        natter_workers::run(settings, std::future::pending())
            .await
            .expect("workers");
    });
}

/// A worker process running `worker_process`.
fn start_worker(urls: &str, history: &str) -> TestProcess {
    let vars = [(URLS_VAR, urls), (HISTORY_VAR, history)];
    TestProcess::start("worker_process", &vars, None)
}

async fn inbox_items(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream(natter_fabric::streams::INBOX).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Group `gid`'s messages and changes in `user`'s inbox, in inbox order: (type, id).
async fn group_items(user: &str, gid: &str) -> Vec<(String, String)> {
    let conv = format!("group:{gid}");
    let path = "/v1/inbox?after=0&limit=500";
    let (status, body) = http_get(system::system().gateways[0], path, Some(&token(user))).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["conv"] == conv.as_str())
        .map(|i| {
            let kind = i["type"].as_str().unwrap().to_owned();
            (kind, i["id"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn a_fanout_worker_killed_mid_fanout_loses_and_doubles_nothing() {
    configure(Options {
        workers: 0,
        ..Options::default()
    });
    let urls = system::system().nats_urls.clone();
    let admin = system::nats_as("workers", "failover-admin").await;
    let js = jetstream::new(admin);

    let history = std::env::temp_dir().join(unique("natter-failover-history"));
    let history = history.to_str().unwrap().to_owned();
    let mut first = start_worker(&urls, &history);
    let owner = unique("owner");
    let members: Vec<String> = (1..MEMBERS).map(|i| unique(&format!("m{i}"))).collect();
    let mut o = Client::connect(0, &owner, "phone", 0).await;
    let group = o
        .request(json!({"type": "group_create", "name": "Big", "members": members}))
        .await;
    let gid = group["id"].as_str().expect("group created").to_owned();
    // The first worker is up and fanning out: the owner's copy of the event arrived.
    o.wait_for("created event", |f| f["type"] == "group_event")
        .await;
    // A small group whose first delivered receipt is counted by the first worker.
    let (x, y) = (unique("x"), unique("y"));
    let mut cx = Client::connect(1, &x, "phone", 0).await;
    let mut cy = Client::connect(1, &y, "phone", 0).await;
    let small = o
        .request(json!({"type": "group_create", "name": "Small", "members": [x, y]}))
        .await;
    let small = small["id"]
        .as_str()
        .expect("small group created")
        .to_owned();
    let note = o.send_to_group(&small, "before the crash").await["id"].clone();
    let at_x = cx.wait_for_text("before the crash").await;
    let at_y = cy.wait_for_text("before the crash").await;
    cx.ack(at_x["seq"].as_u64().unwrap()).await;
    // x's mark is in the receipt state the first worker checkpointed.
    let receipts = js.get_key_value("receipts").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = receipts.get(format!("g.{small}")).await.unwrap();
        let state: Value = state.map_or(Value::Null, |s| serde_json::from_slice(&s).unwrap());
        if state["delivered"][&x] == note {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "x's mark never checkpointed: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Three messages the burst will change (history has them before the burst).
    let mut targets = Vec::new();
    let mut expected = Vec::new();
    for text in ["to edit", "to react to", "to delete"] {
        let id = o.send_to_group(&gid, text).await["id"].clone();
        expected.push(("msg".to_owned(), id.as_str().unwrap().to_owned()));
        targets.push(id);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let baseline = loop {
        let n = inbox_items(&js).await;
        // The big group's event and 3 messages, and the small group's event (3) and
        // message (3).
        let small_group_items = 6;
        if n >= 4 * MEMBERS as u64 + small_group_items {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "created event fanout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // The burst: messages with an edit, a reaction and a deletion among them, each in
    // the group's partition of MSGS after the messages sent before it.
    let changes = [
        (
            10,
            json!({"type": "edit", "id": targets[0], "body": {"kind": "text", "text": "edited"}}),
            "edit",
        ),
        (
            20,
            json!({"type": "react", "id": targets[1], "emoji": "🎉"}),
            "reaction",
        ),
        (30, json!({"type": "delete", "id": targets[2]}), "delete"),
    ];
    for i in 0..MESSAGES {
        for (_, change, kind) in changes.iter().filter(|(at, ..)| *at == i) {
            let answer = o.request(change.clone()).await;
            assert_eq!(answer["type"], "changed", "{answer}");
            expected.push((
                (*kind).to_owned(),
                change["id"].as_str().unwrap().to_owned(),
            ));
        }
        let answer = o.send_to_group(&gid, &format!("burst {i}")).await;
        expected.push(("msg".to_owned(), answer["id"].as_str().unwrap().to_owned()));
    }
    let total = ((MESSAGES + changes.len()) * MEMBERS) as u64;
    // Kill the worker once part of the burst is in the inboxes.
    let at_kill = loop {
        let stored = inbox_items(&js).await - baseline;
        if stored >= total / 10 {
            first.kill();
            break inbox_items(&js).await - baseline;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        at_kill < total,
        "the fanout finished before the kill ({at_kill} of {total}); make the burst bigger"
    );

    let _second = start_worker(&urls, &history);
    // Its partitions move to the new worker after the pin timeout, and the unacked batch
    // is redelivered after the ack wait.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let stored = inbox_items(&js).await - baseline;
        if stored >= total {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {stored} of {total} inbox items after the takeover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing more trickles in (no duplicates stored late).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        inbox_items(&js).await - baseline,
        total,
        "items beyond one per member and message"
    );
    for member in std::iter::once(&owner).chain(&members) {
        assert_eq!(
            group_items(member, &gid).await,
            expected,
            "{member}'s inbox"
        );
    }
    eprintln!("killed after {at_kill} of {total} inbox items; all {total} stored exactly once");

    // History (the second worker's, on the first one's store) has each change once.
    let conv = format!("group:{gid}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = o
            .request(json!({"type": "history", "conv": conv, "limit": 50}))
            .await;
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        let find = |id: &Value| messages.iter().find(|m| m["id"] == *id).cloned();
        let (edited, reacted, deleted) = (find(&targets[0]), find(&targets[1]), find(&targets[2]));
        let done = edited
            .as_ref()
            .is_some_and(|m| m["body"]["text"] == "edited")
            && reacted
                .as_ref()
                .is_some_and(|m| m["reactions"] == json!({"🎉": 1}))
            && deleted
                .as_ref()
                .is_some_and(|m| m["deleted"]["by"] == owner.as_str());
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "history never showed the changes: {edited:?} {reacted:?} {deleted:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = std::fs::remove_dir_all(&history);

    // The second worker continues the small group's receipt state: y's ack completes it.
    cy.ack(at_y["seq"].as_u64().unwrap()).await;
    let last_receipt = o
        .wait_for("the delivered receipt", |f| {
            f["type"] == "receipt" && f["id"] == note && f["by"] == y.as_str()
        })
        .await;
    assert_eq!(
        last_receipt["all"], true,
        "state kept across workers: {last_receipt}"
    );
}
