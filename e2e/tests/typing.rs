//! Typing notices: relayed to the other members' connected devices, only for members,
//! never stored.

use std::time::Duration;

use natter_e2e::{Client, unique};
use serde_json::{Value, json};

fn is_typing(from: &str, state: &'static str) -> impl Fn(&Value) -> bool {
    let from = from.to_owned();
    move |f| f["type"] == "typing" && f["from"] == from.as_str() && f["state"] == state
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
    a.send_json(json!({"type": "typing", "conv": conv, "state": "start"}))
        .await;
    for device in [&mut b_phone, &mut b_tablet] {
        let notice = device
            .wait_for("typing start", is_typing(&alice, "start"))
            .await;
        assert_eq!(notice["conv"], conv.as_str());
        assert!(notice.get("seq").is_none(), "typing is not an inbox item");
    }
    a.send_json(json!({"type": "typing", "conv": conv, "state": "stop"}))
        .await;
    b_phone
        .wait_for("typing stop", is_typing(&alice, "stop"))
        .await;
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

    b.send_json(json!({"type": "typing", "conv": gconv, "state": "start"}))
        .await;
    a.wait_for("bob typing", is_typing(&bob, "start")).await;
    c.wait_for("bob typing", is_typing(&bob, "start")).await;

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
    a.send_json(json!({"type": "typing", "conv": gconv, "state": "start"}))
        .await;
    b.wait_for("amy typing", is_typing(&amy, "start")).await;
    assert!(
        typing_within(&mut e, Duration::from_millis(500))
            .await
            .is_empty()
    );
}
