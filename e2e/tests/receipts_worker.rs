//! The receipts worker on its own (`natter_workers::receipts`), against a one-node NATS
//! of this test's own, with group marks published as gateways publish them: it tells a
//! sender `all: true` once every other member has their message, acks an event only once
//! the checkpoint holding it is stored, and a successor that takes over the partition
//! goes on from that checkpoint.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};

use natter_e2e::{cluster::NatsCluster, system::nats_client};
use natter_fabric::{
    groups::{Group, Groups},
    streams, subjects,
    watermarks::{Checkpoints, GroupMark, MarkBatch, SenderMark},
};
use natter_schemas::{Conversation, ReceiptStatus};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Longest wait for anything the worker does (it checkpoints every second).
const PATIENCE: Duration = Duration::from_secs(30);

struct Setup {
    _cluster: NatsCluster,
    js: jetstream::Context,
    /// As a gateway: gateways create groups and publish marks.
    gateway_js: jetstream::Context,
    groups: Groups,
    checkpoints: Checkpoints,
    gid: String,
}

async fn setup() -> Setup {
    let cluster = NatsCluster::start(1);
    let client = nats_client(&cluster.urls(), "workers", "receipts-worker-test").await;
    let js = jetstream::new(client);
    streams::ensure_with_patience(&js, 1, PATIENCE)
        .await
        .unwrap();
    let groups = Groups::open(&js, 1, 0).await.unwrap();
    let checkpoints = Checkpoints::open(&js, 1).await.unwrap();
    let gid = "friends".to_owned();
    let members: Vec<String> = ["alice", "bob", "carol"].map(str::to_owned).to_vec();
    let group = Group {
        id: gid.clone(),
        name: "Friends".into(),
        admins: vec!["alice".into()],
        members,
        since: Default::default(),
    };
    let gateway = nats_client(&cluster.urls(), "gateway", "receipts-worker-test-gateway").await;
    let gateway_js = jetstream::new(gateway);
    let as_gateway = Groups::open(&gateway_js, 1, 0).await.unwrap();
    as_gateway.create(&group).await.unwrap();
    Setup {
        _cluster: cluster,
        js,
        gateway_js,
        groups,
        checkpoints,
        gid,
    }
}

impl Setup {
    /// Starts a worker for every partition; stopped by cancelling the token returned.
    async fn start_worker(&self) -> CancellationToken {
        let stop = CancellationToken::new();
        let tasks = natter_workers::receipts::start(
            &self.js,
            &self.groups,
            &self.checkpoints,
            stop.clone(),
        )
        .await
        .unwrap();
        for task in tasks {
            tokio::spawn(task);
        }
        stop
    }

    fn partition(&self) -> u32 {
        subjects::partition_of(&Conversation::Group(self.gid.clone()))
    }

    /// Publishes `by`'s mark up to `id` (a message of `from`), as a gateway does; its
    /// sequence in `RCPT`.
    async fn mark(&self, by: &str, status: ReceiptStatus, from: &str, id: &str) -> u64 {
        let senders = match status {
            ReceiptStatus::Delivered => vec![SenderMark {
                from: from.to_owned(),
                id: id.to_owned(),
            }],
            ReceiptStatus::Read => Vec::new(),
        };
        let batch = MarkBatch {
            marks: vec![GroupMark {
                group: self.gid.clone(),
                by: by.to_owned(),
                status,
                up_to: id.to_owned(),
                senders,
            }],
        };
        let payload = serde_json::to_vec(&batch).unwrap().into();
        let subject = subjects::rcpt(self.partition());
        let ack = self.gateway_js.publish(subject, payload).await.unwrap();
        ack.await.unwrap().sequence
    }

    /// Every item in `user`'s inbox, oldest first.
    async fn inbox(&self, user: &str) -> Vec<Value> {
        let stream = self.js.get_stream(streams::INBOX).await.unwrap();
        let mut items = Vec::new();
        let mut seq = 0;
        // Direct gets of the subject's next item, until there is none.
        while let Ok(next) = stream
            .direct_get_next_for_subject(subjects::inbox(user), Some(seq + 1))
            .await
        {
            seq = next.sequence;
            items.push(serde_json::from_slice(&next.payload).unwrap());
        }
        items
    }

    /// Waits until `user`'s inbox holds `n` items; returns them.
    async fn inbox_of_len(&self, user: &str, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let items = self.inbox(user).await;
            if items.len() >= n || tokio::time::Instant::now() > deadline {
                assert_eq!(items.len(), n, "{user}'s inbox: {items:?}");
                return items;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn consumer(&self) -> PullConsumer {
        let stream = self.js.get_stream(streams::RCPT).await.unwrap();
        let name = format!("receipts-{}", self.partition());
        stream.get_consumer(&name).await.unwrap()
    }

    /// The revision of the group's checkpoint (0: none stored yet).
    async fn checkpoint(&self) -> u64 {
        let (revision, _) = self.checkpoints.load(&self.gid).await.unwrap();
        revision.unwrap_or(0)
    }

    /// Waits until every event up to `seq` is acked; the checkpoint's revision read right
    /// after.
    async fn acked_up_to(&self, seq: u64) -> u64 {
        let mut consumer = self.consumer().await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let info = consumer.info().await.unwrap();
            if info.ack_floor.stream_sequence >= seq {
                return self.checkpoint().await;
            }
            assert!(tokio::time::Instant::now() < deadline, "events never acked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn receipt(item: &Value) -> (&str, &str, &str, bool) {
    (
        item["type"].as_str().unwrap_or_default(),
        item["id"].as_str().unwrap_or_default(),
        item["status"].as_str().unwrap_or_default(),
        item["all"].as_bool().unwrap_or(false),
    )
}

#[tokio::test]
async fn the_worker_tells_the_sender_once_everyone_has_it_and_a_successor_goes_on_from_the_checkpoint()
 {
    let setup = setup().await;
    // Message ids as the gateway makes them (UUIDv7): a later millisecond sorts later.
    let m1 = uuid::Uuid::now_v7().to_string();
    tokio::time::sleep(Duration::from_millis(2)).await;
    let m2 = uuid::Uuid::now_v7().to_string();
    let first = setup.start_worker().await;

    // Bob has alice's first message, then carol: only then is alice told, once.
    setup
        .mark("bob", ReceiptStatus::Delivered, "alice", &m1)
        .await;
    let seq = setup
        .mark("carol", ReceiptStatus::Delivered, "alice", &m1)
        .await;
    let items = setup.inbox_of_len("alice", 1).await;
    assert_eq!(
        receipt(&items[0]),
        ("receipt", m1.as_str(), "delivered", true)
    );
    assert_eq!(items[0]["conv"], "group:friends");

    // The events are acked only with a checkpoint that holds them stored.
    let stored = setup.acked_up_to(seq).await;
    assert!(
        stored > 0,
        "events acked before their checkpoint was stored"
    );

    // Bob has the second message too; checkpointed again, then the worker stops.
    let seq = setup
        .mark("bob", ReceiptStatus::Delivered, "alice", &m2)
        .await;
    assert!(
        setup.acked_up_to(seq).await > stored,
        "acked before its checkpoint"
    );
    first.cancel();

    // A successor learns carol's mark: with bob's from the checkpoint, m2 is everyone's.
    let _second = setup.start_worker().await;
    setup
        .mark("carol", ReceiptStatus::Delivered, "alice", &m2)
        .await;
    let items = setup.inbox_of_len("alice", 2).await;
    assert_eq!(
        receipt(&items[1]),
        ("receipt", m2.as_str(), "delivered", true)
    );

    // Reads work the same way. Each wait above also saw nothing told twice: a receipt
    // sent again would have been there with the one awaited.
    setup.mark("bob", ReceiptStatus::Read, "alice", &m2).await;
    setup.mark("carol", ReceiptStatus::Read, "alice", &m2).await;
    let items = setup.inbox_of_len("alice", 3).await;
    assert_eq!(receipt(&items[2]), ("receipt", m2.as_str(), "read", true));
}
