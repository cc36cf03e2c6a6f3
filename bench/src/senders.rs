//! A pool of sender sockets that store messages for many recipients as fast as the
//! gateway takes them (each socket keeps `window` sends in flight and waits for `sent`).
//! Used where the scenario is about the recipients (reconnect storm), not the senders.

use std::{collections::HashSet, net::SocketAddr, time::Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    dm::token,
    net::{self, Socket, Sources},
};

#[derive(Debug)]
pub struct Senders {
    sockets: Vec<Socket>,
}

#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Messages the gateway confirmed (`sent`: stored in JetStream).
    pub stored: u64,
    pub per_s: f64,
}

impl Senders {
    pub async fn connect(
        gateway: SocketAddr,
        secret: &str,
        prefix: &str,
        count: usize,
    ) -> anyhow::Result<Self> {
        let sources = Sources::new(0, count);
        let mut sockets = Vec::with_capacity(count);
        for i in 0..count {
            let token = token(secret, &format!("{prefix}{i}"))?;
            sockets.push(net::connect(gateway, sources.pick(), &token, "sender", None).await?);
        }
        Ok(Self { sockets })
    }

    /// Sends `per_user` text messages to each of `users`, spread over the sockets.
    pub async fn send_to_all(
        &mut self,
        users: &[String],
        per_user: usize,
        window: usize,
    ) -> anyhow::Result<Sent> {
        let started = Instant::now();
        let count = self.sockets.len();
        let mut tasks = Vec::new();
        for (i, socket) in std::mem::take(&mut self.sockets).into_iter().enumerate() {
            let targets: Vec<String> = users
                .iter()
                .skip(i)
                .step_by(count)
                .flat_map(|u| std::iter::repeat_n(u.clone(), per_user))
                .collect();
            tasks.push(tokio::spawn(send_all(socket, targets, window.max(1))));
        }
        let mut stored = 0;
        for task in tasks {
            let (socket, n) = task.await??;
            stored += n;
            self.sockets.push(socket);
        }
        Ok(Sent {
            stored,
            per_s: stored as f64 / started.elapsed().as_secs_f64().max(1e-9),
        })
    }
}

async fn send_all(
    mut socket: Socket,
    targets: Vec<String>,
    window: usize,
) -> anyhow::Result<(Socket, u64)> {
    let (mut next, mut stored) = (0usize, 0u64);
    let mut waiting = HashSet::new();
    while stored < targets.len() as u64 {
        while next < targets.len() && waiting.len() < window {
            let frame = json!({
                "type": "send", "id": uuid::Uuid::new_v4().to_string(),
                "to": format!("user:{}", targets[next]),
                "body": {"kind": "text", "text": "storm"}, "ref": next.to_string(),
            });
            socket.send(Message::text(frame.to_string())).await?;
            waiting.insert(next.to_string());
            next += 1;
        }
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), socket.next())
            .await
            .context("no answer from the gateway in 30 s")?
            .context("sender socket closed")??;
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(text.as_str())?;
        match frame["type"].as_str() {
            Some("sent") if waiting.remove(frame["ref"].as_str().unwrap_or_default()) => {
                stored += 1;
            }
            Some("error") => bail!("the gateway refused a send: {frame}"),
            _ => {}
        }
    }
    Ok((socket, stored))
}
