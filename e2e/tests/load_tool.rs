//! The load tool (`natter-bench`, bench/) against the test system: short runs of its
//! scenarios, so the tool that produces docs/BENCHMARKS.md is itself checked. Each test
//! asserts what the tool reports against what must have happened (every confirmed message
//! delivered once, every group member reached, raw writes acknowledged), so a tool that
//! miscounts fails here before it publishes a wrong figure.

use natter_bench::{ceiling, dm, fanout};
use natter_e2e::{system, system::SECRET};

fn dm_options(pairs: usize, rate: u64, seconds: u64) -> dm::Options {
    dm::Options {
        gateway: system().gateways[0].to_string(),
        pairs,
        rate,
        seconds,
        secret: Some(SECRET.into()),
        system: "natter".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_dm_run_counts_every_message_once() {
    let report = dm::run(&dm_options(4, 60, 2)).await.unwrap();
    assert!(report.sends >= 100, "sent only {}", report.sends);
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.confirmed, report.sends, "{report:?}");
    assert_eq!(report.delivered, report.confirmed, "{report:?}");
    assert_eq!((report.lost, report.doubled), (0, 0), "{report:?}");
    assert_eq!(report.send_to_deliver_ms.count, report.delivered);
    assert!(
        report.send_to_deliver_ms.p50 > 0.0
            && report.send_to_deliver_ms.p50 <= report.send_to_deliver_ms.p99
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_fanout_run_reaches_every_member_every_round() {
    let report = fanout::run(&fanout::Options {
        gateways: system().gateways.iter().map(|g| g.to_string()).collect(),
        members: 24,
        rounds: 3,
        secret: Some(SECRET.into()),
        read: true,
    })
    .await
    .unwrap();
    assert_eq!(report.complete_rounds, 3, "{report:?}");
    assert_eq!(report.doubled, 0, "{report:?}");
    assert_eq!(report.send_to_each_member_ms.count, 3 * 23);
    assert_eq!(report.send_to_last_member_ms.count, 3);
    assert!(report.send_to_last_member_ms.max >= report.send_to_each_member_ms.p50);
    let read = report.send_to_all_read_ms.expect("timed with --read");
    assert_eq!(read.count, 3, "every round fully read: {report:?}");
    assert!(read.p50 >= report.send_to_last_member_ms.p50, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ceiling_run_writes_as_many_raw_messages_as_natter_stored() {
    let report = ceiling::run(&ceiling::Options {
        dm: dm_options(2, 40, 1),
        nats: system().nats_urls.clone(),
        nats_user: "bench".into(),
        nats_password: "bench-dev".into(),
        in_flight: 32,
        payload: 300,
    })
    .await
    .unwrap();
    assert!(report.natter.confirmed >= 20, "{:?}", report.natter);
    assert_eq!(report.natter.lost, 0);
    // The raw side wrote as many messages as Natter confirmed, into a replicated stream,
    // as the server counts them.
    assert_eq!(report.raw_jetstream.stored, report.natter.confirmed);
    assert_eq!(report.raw_jetstream.replicas, 3);
    assert_eq!(report.raw_jetstream.writes, report.raw_jetstream.stored);
    assert_eq!(
        report.raw_jetstream.publish_to_ack_ms.count,
        report.raw_jetstream.writes
    );
    assert!(report.ratio > 0.0);
}
