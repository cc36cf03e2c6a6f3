//! The Lua scripts against a real redis-server (Debian's package), started on a free
//! loopback port for this test binary and stopped when each test's guard drops.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use natter_redis::{
    RedisSettings,
    presence::{Admission, Presence},
    push_queue::{Coalescing, Note, NoteKind, PushQueue},
    rate_limit::{Decision, Lease, RateLimiter},
};

/// A redis-server of this test's own, killed on drop.
struct Redis {
    child: Child,
    url: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis() -> Redis {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    }
}

async fn client(redis: &Redis) -> natter_redis::Client {
    let client = natter_redis::connect(&RedisSettings {
        url: redis.url.clone(),
        ..RedisSettings::default()
    })
    .await
    .unwrap();
    assert!(natter_redis::ClientLike::is_connected(&client));
    client
}

#[tokio::test]
async fn a_user_is_online_while_any_socket_is_and_last_seen_when_the_last_one_goes() {
    let redis = redis();
    let presence = Presence::new(client(&redis).await, "t:", Duration::from_secs(30));
    let bob = ["bob".to_owned()];
    assert_eq!(presence.status(&bob).await.unwrap()[0].last_seen, None);

    let online = |socket: &'static str| presence.online("bob", socket, 2);
    assert_eq!(online("s1").await.unwrap(), Admission::CameOnline);
    assert_eq!(online("s2").await.unwrap(), Admission::AlreadyOnline);
    assert_eq!(
        online("s3").await.unwrap(),
        Admission::TooMany,
        "at most 2 sockets"
    );
    assert!(presence.status(&bob).await.unwrap()[0].online);
    assert_eq!(
        presence.offline("bob", "s1").await.unwrap(),
        None,
        "s2 still live"
    );
    assert!(presence.status(&bob).await.unwrap()[0].online);

    let seen = presence
        .offline("bob", "s2")
        .await
        .unwrap()
        .expect("last socket gone");
    let state = &presence.status(&bob).await.unwrap()[0];
    assert!(!state.online);
    assert_eq!(state.last_seen, Some(seen));
    assert_eq!(
        presence.offline("bob", "s2").await.unwrap(),
        None,
        "only once"
    );
}

#[tokio::test]
async fn sockets_not_renewed_expire_and_one_sweep_settles_them() {
    let redis = redis();
    let presence = Presence::new(client(&redis).await, "t:", Duration::from_millis(300));
    presence.online("carol", "s1", 8).await.unwrap();
    presence.online("dave", "s1", 8).await.unwrap();
    // dave's gateway keeps heartbeating; carol's died.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut settled = Vec::new();
    while settled.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let revived = presence
            .heartbeat(&[("dave".into(), "s1".into())])
            .await
            .unwrap();
        assert!(revived.is_empty());
        settled = presence.sweep().await.unwrap();
    }
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0].0, "carol");
    assert!(settled[0].1.is_some(), "carol's last seen");
    assert!(presence.sweep().await.unwrap().is_empty(), "settled once");
    let states = presence
        .status(&["carol".into(), "dave".into()])
        .await
        .unwrap();
    assert!(!states[0].online && states[1].online, "{states:?}");
}

#[tokio::test]
async fn watchers_are_remembered_for_the_ttl() {
    let redis = redis();
    let presence = Presence::new(client(&redis).await, "t:", Duration::from_millis(400));
    let watching = [
        (
            "alice".to_owned(),
            vec!["bob".to_owned(), "carol".to_owned()],
        ),
        ("erin".to_owned(), vec!["bob".to_owned()]),
    ];
    presence.watch(&watching).await.unwrap();
    assert_eq!(presence.watchers("bob").await.unwrap(), ["alice", "erin"]);
    assert_eq!(presence.watchers("carol").await.unwrap(), ["alice"]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(presence.watchers("bob").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_token_bucket_allows_the_burst_then_the_rate() {
    let redis = redis();
    let limiter = RateLimiter::new(client(&redis).await, "t:", "send", 10.0, 5.0);
    for i in 0..5 {
        assert_eq!(
            limiter.check("spam").await.unwrap(),
            Decision::Allowed,
            "{i}"
        );
    }
    let Decision::Limited { retry_after_ms } = limiter.check("spam").await.unwrap() else {
        panic!("the sixth within the burst window must be limited");
    };
    assert!((1..=100).contains(&retry_after_ms), "{retry_after_ms}");
    assert_eq!(
        limiter.check("other").await.unwrap(),
        Decision::Allowed,
        "per user"
    );
    tokio::time::sleep(Duration::from_millis(retry_after_ms + 20)).await;
    assert_eq!(limiter.check("spam").await.unwrap(), Decision::Allowed);

    // A lease takes what is there, up to what was asked (the burst is 5 here).
    let leases = RateLimiter::new(client(&redis).await, "t:", "lease", 10.0, 5.0);
    assert_eq!(leases.take("u", 3).await.unwrap(), Lease::Granted(3));
    assert_eq!(leases.take("u", 3).await.unwrap(), Lease::Granted(2));
    assert!(matches!(
        leases.take("u", 3).await.unwrap(),
        Lease::Limited { .. }
    ));

    // An action that costs 4 takes 4 or nothing, and says when 4 will be there.
    let costly = RateLimiter::new(client(&redis).await, "t:", "costly", 10.0, 5.0);
    assert_eq!(
        costly.take_between("u", 4, 6).await.unwrap(),
        Lease::Granted(5)
    );
    let Lease::Limited { retry_after_ms } = costly.take_between("u", 4, 6).await.unwrap() else {
        panic!("4 tokens out of an empty bucket");
    };
    assert!((300..=400).contains(&retry_after_ms), "{retry_after_ms}");
    // One that costs more than the burst waits for a full bucket.
    tokio::time::sleep(Duration::from_millis(520)).await;
    assert_eq!(
        costly.take_between("u", 50, 50).await.unwrap(),
        Lease::Granted(5)
    );
}

#[tokio::test]
async fn a_burst_for_an_offline_user_is_one_notification_with_its_count() {
    let redis = redis();
    let redis_client = client(&redis).await;
    let coalescing = Coalescing {
        window: Duration::from_millis(300),
        min_interval: Duration::from_secs(60),
    };
    let queue = PushQueue::new(redis_client.clone(), "t:", coalescing);
    let presence = Presence::new(redis_client, "t:", Duration::from_secs(30));
    presence.online("online-user", "s1", 8).await.unwrap();
    assert!(
        !queue
            .note("online-user", 1, "x", "dm:a:b", "a", "")
            .await
            .unwrap()
    );
    for i in 0..20 {
        assert!(
            queue
                .note(
                    "bob",
                    10 + i,
                    &format!("id{i}"),
                    "dm:alice:bob",
                    "alice",
                    &format!("m{i}")
                )
                .await
                .unwrap()
        );
    }
    // A reader replaying (or a second reader) notes nothing twice.
    for seq in [10, 29] {
        assert!(
            !queue
                .note("bob", seq, "id", "dm:alice:bob", "alice", "again")
                .await
                .unwrap()
        );
    }
    assert!(
        queue.claim_due().await.unwrap().is_empty(),
        "window still open"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let due = queue.claim_due().await.unwrap();
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!((due[0].user.as_str(), due[0].count), ("bob", 20));
    assert_eq!(
        (due[0].conv.as_str(), due[0].text.as_str()),
        ("dm:alice:bob", "m19")
    );
    assert!(queue.claim_due().await.unwrap().is_empty(), "claimed once");
    // The next message waits for min_interval (a minute) after that notification.
    queue
        .note("bob", 30, "id30", "dm:alice:bob", "alice", "later")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(queue.claim_due().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_message_deleted_while_its_notification_waits_is_taken_out_of_it() {
    let redis = redis();
    let queue = PushQueue::new(
        client(&redis).await,
        "t:",
        Coalescing {
            window: Duration::from_millis(300),
            min_interval: Duration::from_millis(1),
        },
    );
    let note = |kind, user, seq, id, text| Note {
        kind,
        user,
        seq,
        id,
        conv: "dm:alice:bob",
        from: "alice",
        text,
    };
    // Two messages, the latest deleted: one counted, and not the deleted one's text.
    let notes = [
        note(NoteKind::Message, "bob", 1, "m1", "hello"),
        note(NoteKind::Message, "bob", 2, "m2", "oops"),
        note(NoteKind::Deleted, "bob", 3, "m2", ""),
        note(NoteKind::Deleted, "bob", 4, "m2", ""), // again: nothing more
        // The only message deleted: no notification at all.
        note(NoteKind::Message, "carol", 5, "m3", "secret"),
        note(NoteKind::Deleted, "carol", 6, "m3", ""),
        // A deletion of a message that was never waiting changes nothing.
        note(NoteKind::Message, "dave", 7, "m4", "hi"),
        note(NoteKind::Deleted, "dave", 8, "m0", ""),
    ];
    assert_eq!(queue.note_all(&notes).await.unwrap(), 4);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut due = queue.claim_due().await.unwrap();
    due.sort_by(|a, b| a.user.cmp(&b.user));
    let seen: Vec<(&str, u64, &str)> = due
        .iter()
        .map(|p| (p.user.as_str(), p.count, p.text.as_str()))
        .collect();
    assert_eq!(seen, [("bob", 1, ""), ("dave", 1, "hi")]);
}
