//! A steadily slow reader: a device that reads all the time, but far slower than its
//! messages come (a phone on a bad link). The never-reading client of `bad_input.rs` is
//! dropped by the write timeout; this one never trips it, so what the gateway holds for
//! it must be bounded in bytes (the mailbox, the socket's write buffer), not in items: a
//! flood of 30 KiB texts must not grow the gateway by the flood's size. The device gets
//! its items in inbox order with none twice, and others on that gateway chat as usual.

use std::{net::SocketAddr, time::Duration};

use natter_e2e::{
    Client,
    child::{self, TestProcess},
    memory_mib,
    raw::{Ending, RawSocket},
    system::{system, wait_healthy},
    unique,
};
use serde_json::json;

const URLS_VAR: &str = "NATTER_E2E_SLOW_READER_URLS";
const REDIS_VAR: &str = "NATTER_E2E_SLOW_READER_REDIS";

/// Runs a gateway (its own process, so its memory can be read) until killed.
#[test]
#[ignore = "a child process of the slow reader test, not a test"]
fn gateway_process() {
    child::gateway_process(URLS_VAR, "slow-reader-gateway", |config| {
        if let Ok(redis) = std::env::var(REDIS_VAR) {
            config.redis.url = redis;
        }
    });
}

#[tokio::test]
async fn a_steady_slow_reader_costs_the_gateway_bounded_memory_and_gets_its_items_in_order() {
    const MESSAGES: usize = 1_600;
    const BATCH: usize = 40;
    let system = system();
    let (gateway, addr) = {
        let env = [
            (URLS_VAR, system.nats_urls.as_str()),
            (REDIS_VAR, system.redis_url.as_str()),
        ];
        let (process, addr) = TestProcess::start_announcing("gateway_process", &env, "listening ");
        (process, addr.parse::<SocketAddr>().unwrap())
    };
    wait_healthy(addr).await;
    let (alice, bob, carol, dave) = (
        unique("alice"),
        unique("bob"),
        unique("carol"),
        unique("dave"),
    );
    // Bob reads 8 KiB every 20 ms (400 KiB/s) through a small receive buffer, all along.
    let mut bob_socket = RawSocket::open(addr, &bob, Some(4096)).await;
    let (stop_reading, stop) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        bob_socket
            .read_slowly(8 * 1024, Duration::from_millis(20), stop)
            .await
    });
    let mut c = Client::connect_to(addr, &carol, "phone", 0).await;
    let mut d = Client::connect_to(addr, &dave, "phone", 0).await;
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = memory_mib(gateway.pid(), "VmRSS:");

    let bulk = "x".repeat(30 * 1024);
    let mut slowest_chat = Duration::ZERO;
    for batch in 0..MESSAGES / BATCH {
        for i in 0..BATCH {
            a.send_json(json!({
                "type": "send", "id": format!("bulk-{batch}-{i}"), "to": format!("user:{bob}"),
                "body": {"kind": "text", "text": format!("{batch}/{i} {bulk}")},
                "ref": format!("bulk-{batch}-{i}"),
            }))
            .await;
        }
        for i in 0..BATCH {
            let reference = format!("bulk-{batch}-{i}");
            let answer = a.wait_for("sent", |f| f["ref"] == reference.as_str()).await;
            assert_eq!(answer["type"], "sent", "{answer}");
        }
        a.pending.clear();
        let chat = std::time::Instant::now();
        let text = format!("meanwhile {batch}");
        c.send_text(&dave, &text).await;
        d.wait_for_text(&text).await;
        slowest_chat = slowest_chat.max(chat.elapsed());
    }
    // Bob keeps reading a little longer, then stops.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak = memory_mib(gateway.pid(), "VmHWM:");
    let _ = stop_reading.send(());
    let read = reader.await.unwrap();
    let flood_mib = (MESSAGES * bulk.len()) as f64 / (1024.0 * 1024.0);
    eprintln!(
        "steady slow reader: {MESSAGES} messages ({flood_mib:.0} MiB); it got {} items \
         ({:?}); the gateway's RSS idle {idle:.1} MiB, peak {peak:.1} MiB; slowest chat \
         meanwhile {slowest_chat:?} ({} build)",
        read.seqs.len(),
        read.ending,
        natter_e2e::build_profile(),
    );
    assert!(!read.seqs.is_empty(), "the slow reader got nothing");
    assert!(
        read.seqs.windows(2).all(|w| w[0] < w[1]),
        "items in inbox order, none twice"
    );
    // Still open, or told to come back later: never dropped for reading slowly.
    assert!(
        matches!(read.ending, None | Some(Ending::Close(Some(1013)))),
        "{:?}",
        read.ending
    );
    assert!(
        peak < idle + flood_mib / 3.0,
        "the gateway peaked at {peak:.1} MiB (idle {idle:.1} MiB) for a {flood_mib:.0} MiB flood"
    );
    assert!(
        slowest_chat < Duration::from_secs(5),
        "others waited {slowest_chat:?}"
    );
    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}
