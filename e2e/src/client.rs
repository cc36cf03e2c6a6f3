//! A WebSocket client for tests that keeps every frame it got and checks, on every inbox
//! item, that this device never sees a sequence twice or out of order.

use std::{collections::VecDeque, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use crate::system::{SECRET, system};

/// How long a test waits for an expected frame.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn token(user: &str) -> String {
    natter_gateway::auth::mint_hs256(SECRET.as_bytes(), user, None, 3600, None, None).unwrap()
}

pub struct Client {
    socket: Socket,
    pub user: String,
    pub device: String,
    /// Frames received and not yet taken by `wait_for`.
    pub pending: VecDeque<Value>,
    /// Every inbox sequence this connection received, in order.
    pub seqs: Vec<u64>,
    /// The `hello` frame the socket opened with.
    pub hello: Value,
    /// The highest inbox sequence seen (what the device would store as its cursor).
    pub last_seq: u64,
    next_ref: u64,
}

impl Client {
    /// Connects `user`'s `device` to gateway `gateway` (0 or 1), resuming after `after`.
    pub async fn connect(gateway: usize, user: &str, device: &str, after: u64) -> Self {
        Self::connect_to(system().gateways[gateway], user, device, after).await
    }

    /// Connects to the gateway at `addr`.
    pub async fn connect_to(
        addr: std::net::SocketAddr,
        user: &str,
        device: &str,
        after: u64,
    ) -> Self {
        Self::open(addr, user, device, &after.to_string()).await
    }

    /// Connects a new device with `after=latest`: nothing from before is replayed.
    pub async fn connect_latest(gateway: usize, user: &str, device: &str) -> Self {
        Self::open(system().gateways[gateway], user, device, "latest").await
    }

    async fn open(addr: std::net::SocketAddr, user: &str, device: &str, after: &str) -> Self {
        let url = format!(
            "ws://{addr}/v1/ws?token={}&device={device}&after={after}",
            token(user)
        );
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .expect("websocket connect");
        let mut client = Self {
            socket,
            user: user.to_owned(),
            device: device.to_owned(),
            pending: VecDeque::new(),
            seqs: Vec::new(),
            hello: Value::Null,
            last_seq: 0,
            next_ref: 0,
        };
        let hello = tokio::time::timeout(PATIENCE, client.receive())
            .await
            .ok()
            .flatten()
            .expect("a first frame");
        assert_eq!(hello["type"], "hello", "the first frame: {hello}");
        client.last_seq = hello["after"].as_u64().expect("hello.after");
        client.hello = hello;
        client
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.socket
            .send(Message::text(text))
            .await
            .expect("socket send");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_raw(&value.to_string()).await;
    }

    /// Sends `frame` with a fresh `ref` and waits for the answer carrying it.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        self.next_ref += 1;
        let reference = format!("r{}", self.next_ref);
        frame["ref"] = Value::from(reference.as_str());
        self.send_json(frame).await;
        self.wait_for("answer", |f| f["ref"] == reference.as_str())
            .await
    }

    /// Sends a text message with client id `client_id` and waits for its answer
    /// (`sent` or `error`), which it returns.
    pub async fn send_text_with_id(&mut self, to_user: &str, client_id: &str, text: &str) -> Value {
        self.send_to_with_id(&format!("user:{to_user}"), client_id, text)
            .await
    }

    /// Sends a text to `to` (`user:<id>` or `group:<id>`) and returns the answer.
    pub async fn send_to_with_id(&mut self, to: &str, client_id: &str, text: &str) -> Value {
        self.request(json!({
            "type": "send", "id": client_id, "to": to,
            "body": {"kind": "text", "text": text},
        }))
        .await
    }

    /// Sends a text to group `gid` and returns its `sent` frame (panics on `error`).
    pub async fn send_to_group(&mut self, gid: &str, text: &str) -> Value {
        let answer = self
            .send_to_with_id(
                &format!("group:{gid}"),
                &uuid::Uuid::new_v4().to_string(),
                text,
            )
            .await;
        assert_eq!(answer["type"], "sent", "send refused: {answer}");
        answer
    }

    /// Sends a text message and returns its `sent` frame (panics on `error`).
    pub async fn send_text(&mut self, to_user: &str, text: &str) -> Value {
        let answer = self
            .send_text_with_id(to_user, &uuid::Uuid::new_v4().to_string(), text)
            .await;
        assert_eq!(answer["type"], "sent", "send refused: {answer}");
        answer
    }

    /// The next frame matching `wanted`, from what was already received or what comes
    /// within [`PATIENCE`]. Frames that do not match stay pending.
    pub async fn wait_for(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&wanted) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.receive()).await;
            match frame {
                Ok(Some(frame)) if wanted(&frame) => return frame,
                Ok(Some(frame)) => self.pending.push_back(frame),
                Ok(None) => panic!(
                    "{}: socket closed while waiting for {what}; had {:?}",
                    self.user, self.pending
                ),
                Err(_) => panic!(
                    "{}: no {what} within {PATIENCE:?}; had {:?}",
                    self.user, self.pending
                ),
            }
        }
    }

    /// Subscribes to `user`'s presence, again while refused (the conversation that allows
    /// it is in history a moment after its message); returns the `presence` frame that
    /// answers (it has no `ref`: it is the same frame later changes come in).
    pub async fn follow(&mut self, user: &str) -> Value {
        for attempt in 0..50 {
            let reference = format!("follow-{attempt}");
            self.send_json(
                json!({"type": "presence_subscribe", "users": [user], "ref": reference}),
            )
            .await;
            let answer = self
                .wait_for("presence or refusal", |f| {
                    (f["type"] == "presence" && f["user"] == user) || f["ref"] == reference.as_str()
                })
                .await;
            if answer["type"] == "presence" {
                return answer;
            }
            assert_eq!(answer["code"], "forbidden", "{answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} may never follow {user}", self.user);
    }

    /// The next `msg` item with body text `text`.
    pub async fn wait_for_text(&mut self, text: &str) -> Value {
        self.wait_for(&format!("message {text:?}"), |f| {
            f["type"] == "msg" && f["body"]["text"] == text
        })
        .await
    }

    /// The `msg` items among everything pending and arriving within `window`.
    pub async fn messages_within(&mut self, window: Duration) -> Vec<Value> {
        let frames = self.collect_for(window).await;
        frames.into_iter().filter(|f| f["type"] == "msg").collect()
    }

    /// Everything that arrives within `window` (after what is pending).
    pub async fn collect_for(&mut self, window: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(frame)) = tokio::time::timeout_at(deadline, self.receive()).await {
            self.pending.push_back(frame);
        }
        self.pending.drain(..).collect()
    }

    /// Reads (and drops) frames until the server closes the socket; the close code it
    /// gave, `None` when the socket ended without a close frame.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads one frame; `None` when the socket closed.
    pub async fn receive(&mut self) -> Option<Value> {
        loop {
            let message = match self.socket.next().await {
                Some(Ok(message)) => message,
                Some(Err(_)) | None => return None,
            };
            match message {
                Message::Text(text) => {
                    let frame: Value =
                        serde_json::from_str(text.as_str()).expect("server sent invalid JSON");
                    if let Some(seq) = frame["seq"].as_u64() {
                        assert!(
                            seq > self.last_seq,
                            "{}/{}: seq {seq} after {} (duplicate or out of order): {frame}",
                            self.user,
                            self.device,
                            self.last_seq
                        );
                        self.last_seq = seq;
                        self.seqs.push(seq);
                    }
                    return Some(frame);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Every message id of `conv` in history, oldest first, paging back `limit` at a time;
    /// the first `error` answer instead, if one comes. Checks each page's shape (at most
    /// `limit` messages, oldest first).
    pub async fn page_back(&mut self, conv: &str, limit: u32) -> Result<Vec<String>, Value> {
        let mut ids: Vec<String> = Vec::new();
        let mut before: Option<String> = None;
        for _ in 0..10_000 {
            let mut request = json!({"type": "history", "conv": conv, "limit": limit});
            if let Some(before) = &before {
                request["before"] = Value::from(before.as_str());
            }
            let page = self.request(request).await;
            if page["type"] != "history" {
                return Err(page);
            }
            assert_eq!(page["conv"], conv);
            let messages = page["messages"].as_array().expect("messages");
            assert!(messages.len() <= limit as usize);
            let page_ids: Vec<String> = messages
                .iter()
                .map(|m| m["id"].as_str().expect("an id").to_owned())
                .collect();
            assert!(
                page_ids.windows(2).all(|w| w[0] < w[1]),
                "a page is oldest first"
            );
            before = page_ids.first().cloned();
            ids.splice(0..0, page_ids);
            if page["more"] == false {
                return Ok(ids);
            }
        }
        panic!("history of {conv} never ended");
    }

    /// Pages back until `conv`'s history is exactly `expected` (history is written
    /// shortly after `sent`, and a worker may be restarting), for up to `patience`.
    pub async fn wait_for_history(&mut self, conv: &str, expected: &[String], patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let found = self.page_back(conv, 100).await;
            if found.as_deref() == Ok(expected) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                match found {
                    Ok(ids) => panic!(
                        "history of {conv}: {} ids, expected {} (first difference at {:?})",
                        ids.len(),
                        expected.len(),
                        ids.iter().zip(expected).position(|(a, b)| a != b)
                    ),
                    Err(error) => panic!("history of {conv}: {error}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub async fn ack(&mut self, seq: u64) {
        self.send_json(json!({"type": "ack", "seq": seq})).await;
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
