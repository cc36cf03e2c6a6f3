//! Typing notices: relayed to the other members' connected devices, only for members,
//! never stored.
//!
//! Typing is best effort (core NATS): a notice sent before a just-connected device's
//! subscription has reached every server is not seen, which is why clients repeat `start`
//! while typing. The tests do the same: they repeat a notice until every device that
//! should see it has.

use std::time::Duration;

use natter_e2e::{Client, unique};
use serde_json::{Value, json};

fn is_typing(from: &str, state: &'static str) -> impl Fn(&Value) -> bool {
    let from = from.to_owned();
    move |f| f["type"] == "typing" && f["from"] == from.as_str() && f["state"] == state
}

/// Sends `state` for `conv` from `typist` every 250 ms until each of `devices` has seen
/// it from `from` (at most 40 times).
async fn keep_typing(
    typist: &mut Client,
    conv: &str,
    state: &'static str,
    from: &str,
    devices: &mut [&mut Client],
) {
    let mut seen = vec![false; devices.len()];
    for _ in 0..40 {
        typist
            .send_json(json!({"type": "typing", "conv": conv, "state": state}))
            .await;
        for (device, seen) in devices.iter_mut().zip(seen.iter_mut()) {
            if !*seen {
                let frames = device.collect_for(Duration::from_millis(250)).await;
                *seen = frames.iter().any(is_typing(from, state));
            }
        }
        if seen.iter().all(|s| *s) {
            return;
        }
    }
    panic!("typing {state} from {from} not seen by every device: {seen:?}");
}

/// Typing notices among everything `client` receives within `window`.
async fn typing_within(client: &mut Client, window: Duration) -> Vec<Value> {
    let frames = client.collect_for(window).await;
    frames
        .into_iter()
        .filter(|f| f["type"] == "typing")
        .collect()
}

#[tokio::test]
async fn the_other_side_sees_typing_on_every_device_and_nothing_is_stored() {
    let (alice, bob) = (unique("alice"), unique("bob"));
    let mut a = Client::connect(0, &alice, "phone", 0).await;
    let mut a_laptop = Client::connect(1, &alice, "laptop", 0).await;
    let mut b_phone = Client::connect(1, &bob, "phone", 0).await;
    let mut b_tablet = Client::connect(0, &bob, "tablet", 0).await;
    let conv = if alice < bob {
        format!("dm:{alice}:{bob}")
    } else {
        format!("dm:{bob}:{alice}")
    };
    keep_typing(
        &mut a,
        &conv,
        "start",
        &alice,
        &mut [&mut b_phone, &mut b_tablet],
    )
    .await;
    // A notice carries the conversation and is not an inbox item.
    a.send_json(json!({"type": "typing", "conv": conv, "state": "start"}))
        .await;
    let notice = b_phone
        .wait_for("typing start", is_typing(&alice, "start"))
        .await;
    assert_eq!(notice["conv"], conv.as_str());
    assert!(notice.get("seq").is_none(), "typing is not an inbox item");
    keep_typing(&mut a, &conv, "stop", &alice, &mut [&mut b_phone]).await;
    assert!(
        typing_within(&mut a_laptop, Duration::from_millis(500))
            .await
            .is_empty(),
        "the typist's own devices are not told"
    );
    // Never stored: a device connecting afterwards gets no typing notice.
    let mut b_late = Client::connect(0, &bob, "late", 0).await;
    assert!(
        typing_within(&mut b_late, Duration::from_millis(500))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn in_groups_typing_reaches_members_only_and_outsiders_are_refused() {
    let (amy, bob, cat, eve) = (unique("amy"), unique("bob"), unique("cat"), unique("eve"));
    let mut a = Client::connect(0, &amy, "phone", 0).await;
    let mut b = Client::connect(1, &bob, "phone", 0).await;
    let mut c = Client::connect(0, &cat, "phone", 0).await;
    let mut e = Client::connect(1, &eve, "phone", 0).await;
    let group = a
        .request(json!({"type": "group_create", "name": "Typists", "members": [bob, cat]}))
        .await;
    let gconv = format!("group:{}", group["id"].as_str().unwrap());

    keep_typing(&mut b, &gconv, "start", &bob, &mut [&mut a, &mut c]).await;

    let refused = e
        .request(json!({"type": "typing", "conv": gconv, "state": "start"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let dm_of_others = if amy < bob {
        format!("dm:{amy}:{bob}")
    } else {
        format!("dm:{bob}:{amy}")
    };
    let refused = e
        .request(json!({"type": "typing", "conv": dm_of_others, "state": "start"}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert!(
        typing_within(&mut a, Duration::from_millis(500))
            .await
            .iter()
            .all(|f| f["from"] != eve.as_str()),
        "an outsider's typing reached a member"
    );
    // Outsiders do not hear the group typing either.
    keep_typing(&mut a, &gconv, "start", &amy, &mut [&mut b]).await;
    assert!(
        typing_within(&mut e, Duration::from_millis(500))
            .await
            .is_empty()
    );
}
