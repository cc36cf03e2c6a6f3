//! A gateway dies under traffic: recipients connected to a gateway process that is killed
//! (SIGKILL, by PID) reconnect to the other gateway with `after` = the last sequence they
//! stored, and get every message that was `sent` exactly once, in order, with no gap.
//!
//! A gateway told to stop (SIGTERM) instead closes its sockets with 1001 (going away) and
//! exits cleanly.
//!
//! The checker is the clients: senders record what got `sent`, recipients what arrived
//! (and `Client` asserts increasing inbox sequences on every frame, across the reconnect).

use std::time::Duration;

use natter_e2e::{Client, child, system, unique};

const PAIRS: usize = 5;
const MESSAGES: usize = 80;
const URLS_VAR: &str = "NATTER_E2E_GATEWAY_URLS";

/// Runs a gateway until killed, when started by the test below.
#[test]
#[ignore = "a child process of the gateway failover test, not a test"]
fn gateway_process() {
    child::gateway_process(URLS_VAR, "doomed-gateway", |_| {});
}

/// Sends `MESSAGES` texts one after another; returns the ones that got `sent`.
async fn sender(mut client: Client, to: String) -> Vec<String> {
    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        let text = format!("{i:03}");
        let answer = client
            .send_text_with_id(&to, &uuid::Uuid::new_v4().to_string(), &text)
            .await;
        if answer["type"] == "sent" {
            sent.push(text);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    sent
}

/// Texts of the messages `client` receives until its socket closes, and its cursor.
async fn until_closed(mut client: Client) -> (Vec<String>, u64) {
    let mut texts = Vec::new();
    while let Some(frame) = client.receive().await {
        if frame["type"] == "msg" {
            texts.push(frame["body"]["text"].as_str().unwrap().to_owned());
        }
    }
    (texts, client.last_seq)
}

#[tokio::test]
async fn recipients_of_a_killed_gateway_resume_on_the_other_with_nothing_lost_or_doubled() {
    let urls = system::system().nats_urls.clone();
    let (mut doomed, addr) = child::start_gateway("gateway_process", URLS_VAR, &urls);
    system::wait_healthy(addr).await;

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut names = Vec::new();
    for _ in 0..PAIRS {
        let (alice, bob) = (unique("alice"), unique("bob"));
        let receiver = Client::connect_to(addr, &bob, "phone", 0).await;
        receivers.push(tokio::spawn(until_closed(receiver)));
        let client = Client::connect(0, &alice, "phone", 0).await;
        senders.push(tokio::spawn(sender(client, bob.clone())));
        names.push(bob);
    }

    // Kill the gateway a third of the way through.
    tokio::time::sleep(Duration::from_millis((MESSAGES as u64 * 25) / 3)).await;
    doomed.kill();

    let mut before_kill = Vec::new();
    for receiver in receivers {
        before_kill.push(receiver.await.unwrap());
    }
    let mut sent = Vec::new();
    for sender in senders {
        sent.push(sender.await.unwrap());
    }
    let mut resumed_total = 0;
    for ((bob, (mut texts, cursor)), sent) in names.iter().zip(before_kill).zip(&sent) {
        assert!(!texts.is_empty(), "{bob} got nothing before the kill");
        assert!(
            texts.len() < sent.len(),
            "{bob} got everything before the kill"
        );
        // Reconnect to the surviving gateway where this device left off.
        let mut phone = Client::connect(1, bob, "phone", cursor).await;
        while texts.len() < sent.len() {
            let msg = phone
                .wait_for("the rest after the failover", |f| f["type"] == "msg")
                .await;
            texts.push(msg["body"]["text"].as_str().unwrap().to_owned());
            resumed_total += 1;
        }
        let extra = phone.messages_within(Duration::from_millis(500)).await;
        assert!(extra.is_empty(), "{bob}: duplicates {extra:?}");
        assert_eq!(&texts, sent, "{bob}: every sent message once, in order");
    }
    eprintln!(
        "gateway killed; {PAIRS} recipients resumed on the other gateway with {resumed_total} \
         messages, none lost or doubled"
    );
}

/// SIGTERM, as a service manager stops a gateway: every socket is closed with 1001 (going
/// away, so clients reconnect elsewhere at once), the process exits with success within
/// its drain time, and what is sent meanwhile waits in the inbox for the reconnect.
#[tokio::test]
async fn a_gateway_told_to_stop_closes_its_sockets_as_going_away_and_exits() {
    let urls = system::system().nats_urls.clone();
    let (mut leaving, addr) = child::start_gateway("gateway_process", URLS_VAR, &urls);
    system::wait_healthy(addr).await;
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut phone = Client::connect_to(addr, &bob, "phone", 0).await;
    let mut laptop = Client::connect_to(addr, &bob, "laptop", 0).await;
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    a.send_text(&bob, "before").await;
    phone.wait_for_text("before").await;
    laptop.wait_for_text("before").await;

    let exited = tokio::task::spawn_blocking(move || {
        let status = leaving.terminate(Duration::from_secs(20));
        (leaving, status)
    });
    assert_eq!(phone.close_code().await, Some(1001), "phone");
    assert_eq!(laptop.close_code().await, Some(1001), "laptop");
    let (_leaving, status) = exited.await.unwrap();
    let status = status.expect("the gateway exits within 20 s of SIGTERM");
    assert!(status.success(), "{status:?}");

    a.send_text(&bob, "after").await;
    let mut back = Client::connect(0, &bob, "phone", phone.last_seq).await;
    back.wait_for_text("after").await;
}
