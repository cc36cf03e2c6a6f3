//! One socket: a `select!` loop over client frames, live inbox items, acks of this
//! socket's sends, keepalive, resync and shutdown.
//!
//! Everything the loop holds is bounded: at most `max_inflight` sends await their
//! JetStream ack (beyond that the loop stops reading the socket), live items wait in the
//! subscription's bounded buffer (overflow is repaired from the inbox), and a write that
//! does not finish within `write_timeout` closes the socket with 1013 so the client
//! resumes later with `after`.

use std::{pin::Pin, sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use bytes::Bytes;
use futures_util::{
    SinkExt, StreamExt,
    stream::{FuturesUnordered, SplitSink},
};
use natter_fabric::{
    StoredItem,
    groups::{Change, Group, GroupsError, Refusal},
    now_millis, publish_durable,
    records::{HistoryAnswer, HistoryQuery, MsgRecord, MsgsEntry, RcptEvent},
    subjects,
};
use natter_schemas::{
    ClientFrame, Conversation, ErrorCode, ErrorFrame, GroupChange, GroupCreate, GroupLeave,
    HistoryPage, HistoryRequest, Pong, Sent, ServerFrame, Target, Typing, TypingNotice,
    ids::check_id, inbox::message_ts,
};
use tokio::time::{Instant, MissedTickBehavior, timeout};
use tracing::Instrument;

use crate::{
    App,
    delivery::{Cursor, DeliveryError},
    presence::{FollowError, Registration},
};

type Sink = SplitSink<WebSocket, Message>;

/// Default and largest `limit` of a `history` request.
const DEFAULT_HISTORY_PAGE: u32 = 50;
const MAX_HISTORY_PAGE: u32 = 100;
/// How long a `history` request waits for a history worker.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a `presence_subscribe` may take (privacy checks and Redis) before it is
/// answered `unavailable`.
const PRESENCE_TIMEOUT: Duration = Duration::from_secs(3);

/// How soon a failed inbox read is retried.
const RETRY_AFTER: Duration = Duration::from_secs(1);
type Pending = Pin<Box<dyn Future<Output = Option<ServerFrame>> + Send>>;

/// Why a socket ended.
#[derive(Debug)]
enum End {
    /// The client closed or went away.
    Peer,
    /// The gateway is shutting down (1001).
    Shutdown,
    /// The client does not keep up, or is too far behind (1013).
    Behind(String),
    /// The client stopped answering keepalives.
    Silent,
    /// NATS or the inbox failed under us (1011).
    Internal(String),
    /// The client broke the WebSocket protocol: a frame over the size limit (1009),
    /// text that is not UTF-8 (1007), or another protocol error (1002).
    Broken(u16, String),
}

/// Why a socket could not be opened (answered 503 instead of the upgrade).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("subscribing to the inbox: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("subscribing to the inbox: {0}")]
    Flush(#[from] async_nats::client::FlushError),
    #[error("reading the inbox: {0}")]
    Inbox(#[from] natter_fabric::InboxError),
}

/// A socket's delivery, settled before its upgrade is answered: the subscriptions, and the
/// cursor checked against the inbox.
///
/// Before, not after: the client may send (or have a friend send) the moment it sees its
/// socket open. A resume point beyond the inbox is moved back to the inbox's newest item,
/// and that must be the newest item from before the socket opened, or a message stored in
/// between would count as one the device already has and never reach it.
pub(crate) struct Opening {
    cursor: Cursor,
    /// Where catch-up stops (see [`Cursor::clamp_to_inbox`]).
    newest: u64,
    live: async_nats::Subscriber,
    ephemeral: async_nats::Subscriber,
}

/// Subscribes to `user`'s live items and notices, then settles the cursor at `after`.
pub(crate) async fn open(app: &App, user: &str, after: u64) -> Result<Opening, OpenError> {
    // Subscribe before catching up so nothing stored meanwhile is missed; items that
    // arrive live during catch-up wait in the subscription and are de-duplicated.
    let live = app.nats.subscribe(subjects::live(user)).await?;
    // Typing notices: best effort, never stored; one missed is harmless.
    let ephemeral = app.nats.subscribe(subjects::ephemeral(user)).await?;
    app.nats.flush().await?;
    let mut cursor = Cursor::new(user, after, app.config.limits.max_gap_repair);
    let newest = cursor.clamp_to_inbox(&app.inbox).await?;
    Ok(Opening {
        cursor,
        newest,
        live,
        ephemeral,
    })
}

/// Serves one authenticated socket until it ends; `registration` is its place in presence
/// (admitted before the upgrade), `opening` its delivery (from [`open`]).
pub(crate) async fn serve(
    app: App,
    user: String,
    device: String,
    registration: Registration,
    opening: Opening,
    socket: WebSocket,
) {
    let span = tracing::info_span!("socket", %user, %device);
    serve_in_span(app, user, device, registration, opening, socket)
        .instrument(span)
        .await;
}

async fn serve_in_span(
    app: App,
    user: String,
    device: String,
    registration: Registration,
    opening: Opening,
    socket: WebSocket,
) {
    let (sink, stream) = socket.split();
    let Opening {
        cursor,
        newest,
        live,
        ephemeral,
    } = opening;
    let mut session = Session {
        presence: Some(registration),
        // The client's `after`, or the inbox's newest item when `after` was beyond it.
        acked: cursor.last(),
        cursor,
        retry_soon: false,
        send_lease: Arc::default(),
        app,
        user,
        device,
        sink,
    };
    metrics::counter!("natter_gateway_connections_total").increment(1);
    let sockets = metrics::gauge!("natter_gateway_sockets");
    sockets.increment(1.0);
    let end = session.run(stream, live, ephemeral, newest).await;
    sockets.decrement(1.0);
    // Out of presence now (offline if it was the user's last socket), before the close.
    drop(session.presence.take());
    metrics::counter!("natter_gateway_disconnects_total", "reason" => end.label()).increment(1);
    let (code, reason) = match &end {
        End::Peer => {
            tracing::debug!("client closed");
            return;
        }
        End::Shutdown => (close_code::AWAY, "gateway shutting down".to_owned()),
        End::Behind(why) => (close_code::AGAIN, why.clone()),
        End::Silent => (close_code::POLICY, "no keepalive answer".to_owned()),
        End::Internal(why) => {
            tracing::warn!(error = %why, "socket ended by an internal error");
            (close_code::ERROR, "internal error, reconnect".to_owned())
        }
        End::Broken(code, why) => (*code, why.clone()),
    };
    tracing::info!(?end, "closing socket");
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = timeout(Duration::from_secs(1), session.sink.send(close)).await;
}

impl End {
    /// Why a read from the client failed: its fault (closed with the matching code) or the
    /// connection's (nothing left to close).
    fn from_read_error(err: axum::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let err = err.into_inner();
        let Some(ws) = err.downcast_ref::<WsError>() else {
            tracing::debug!(error = %err, "socket read failed");
            return End::Peer;
        };
        match ws {
            WsError::Capacity(why) => End::Broken(close_code::SIZE, why.to_string()),
            WsError::Utf8(_) => End::Broken(close_code::INVALID, "text is not UTF-8".into()),
            WsError::Protocol(why) => End::Broken(close_code::PROTOCOL, why.to_string()),
            other => {
                tracing::debug!(error = %other, "socket read failed");
                End::Peer
            }
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Shutdown => "shutdown",
            Self::Behind(_) => "behind",
            Self::Silent => "silent",
            Self::Internal(_) => "internal",
            Self::Broken(..) => "broken",
        }
    }
}

struct Session {
    app: App,
    /// This socket in presence (taken when the socket ends).
    presence: Option<Registration>,
    user: String,
    device: String,
    sink: Sink,
    cursor: Cursor,
    /// Highest inbox sequence this device acked.
    acked: u64,
    /// An inbox read failed (e.g. during a leader election): reconcile again soon.
    retry_soon: bool,
    /// Send tokens this socket took from the user's bucket and has not spent yet. Sends
    /// in flight take turns on it, so only one of them asks Redis at a time.
    send_lease: Arc<tokio::sync::Mutex<u32>>,
}

impl Session {
    async fn run(
        &mut self,
        mut stream: futures_util::stream::SplitStream<WebSocket>,
        mut live: async_nats::Subscriber,
        mut ephemeral: async_nats::Subscriber,
        newest: u64,
    ) -> End {
        let limits = self.app.config.limits.clone();
        if let Err(end) = self.catch_up(newest).await {
            return end;
        }

        let mut shutdown = self.app.shutdown.clone();
        let mut resync = self.app.resync.subscribe();
        let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
        // The first reconcile comes soon after connect: interest in `live.<uid>` reaches
        // the stream leader's server a moment after the subscription, and an item stored
        // in that moment is not republished to us.
        let mut reconcile = tokio::time::interval_at(
            Instant::now() + Duration::from_secs(1),
            limits.reconcile_every(),
        );
        reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut keepalive =
            tokio::time::interval_at(Instant::now() + limits.ping_every(), limits.ping_every());
        let mut last_heard = Instant::now();

        loop {
            let step = tokio::select! {
                _ = shutdown.changed() => Err(End::Shutdown),
                frame = stream.next(), if inflight.len() < limits.max_inflight => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(message)) => self.on_client_message(message, &mut inflight).await,
                        Some(Err(err)) => Err(End::from_read_error(err)),
                        None => Err(End::Peer),
                    }
                }
                Some(reply) = inflight.next(), if !inflight.is_empty() => match reply {
                    Some(frame) => self.write(frame.to_json()).await,
                    None => Ok(()),
                },
                Some(notice) = ephemeral.next() => match std::str::from_utf8(&notice.payload) {
                    Ok(text) => self.write(text.to_owned()).await,
                    Err(_) => Ok(()),
                },
                Some(message) = live.next() => {
                    let items = self.cursor.on_live(&self.app.inbox, message).await;
                    self.forward(items, true).await
                }
                _ = reconcile.tick() => {
                    let items = self.cursor.reconcile(&self.app.inbox).await;
                    self.forward(items, false).await
                }
                signal = resync.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = signal {
                        return End::Shutdown;
                    }
                    let items = self.cursor.reconcile(&self.app.inbox).await;
                    self.forward(items, false).await
                }
                _ = keepalive.tick() => {
                    if last_heard.elapsed() > limits.ping_every() * 3 {
                        Err(End::Silent)
                    } else {
                        self.send(Message::Ping(Bytes::new())).await
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
            if std::mem::take(&mut self.retry_soon) {
                reconcile.reset_after(RETRY_AFTER);
            }
        }
    }

    /// Everything from the cursor up to `newest`; later items come live.
    async fn catch_up(&mut self, newest: u64) -> Result<(), End> {
        loop {
            let items = self
                .cursor
                .catch_up_page(&self.app.inbox, newest)
                .await
                .map_err(|err| End::Internal(err.to_string()))?;
            if items.is_empty() {
                tracing::debug!(last = self.cursor.last(), "caught up");
                return Ok(());
            }
            metrics::counter!("natter_gateway_items_delivered_total", "path" => "catch_up")
                .increment(items.len() as u64);
            self.write_items(&items).await?;
        }
    }

    /// Writes what a live item (`live`: the item last, any repaired gap before it) or a
    /// reconcile produced.
    async fn forward(
        &mut self,
        items: Result<Vec<StoredItem>, DeliveryError>,
        live: bool,
    ) -> Result<(), End> {
        match items {
            Ok(items) => {
                let recovered = if live {
                    items.len().saturating_sub(1)
                } else {
                    items.len()
                };
                metrics::counter!("natter_gateway_items_delivered_total", "path" => "live")
                    .increment((items.len() - recovered) as u64);
                metrics::counter!("natter_gateway_items_delivered_total", "path" => "recovered")
                    .increment(recovered as u64);
                self.write_items(&items).await?;
                // End to end for messages delivered live: from the gateway that accepted the
                // send (its `ts`) to this write. Catch-up items would measure offline time.
                if let Some(ts) = items
                    .last()
                    .filter(|_| live)
                    .and_then(|i| message_ts(&i.payload))
                {
                    let millis = now_millis().saturating_sub(ts);
                    metrics::histogram!("natter_gateway_send_to_deliver_seconds")
                        .record(millis as f64 / 1000.0);
                }
                Ok(())
            }
            Err(DeliveryError::TooFarBehind(n)) => Err(End::Behind(format!(
                "more than {n} items behind; resume with after"
            ))),
            Err(DeliveryError::Inbox(err)) => {
                tracing::warn!(error = %err, "inbox read failed; retrying shortly");
                self.retry_soon = true;
                Ok(())
            }
        }
    }

    async fn write_items(&mut self, items: &[StoredItem]) -> Result<(), End> {
        for item in items {
            match natter_schemas::inbox::with_seq(item.seq, &item.payload) {
                Some(frame) => self.write(frame).await?,
                None => tracing::error!(seq = item.seq, "inbox item is not a JSON object; skipped"),
            }
        }
        Ok(())
    }

    async fn write(&mut self, text: String) -> Result<(), End> {
        self.send(Message::Text(text.into())).await
    }

    async fn send(&mut self, message: Message) -> Result<(), End> {
        match timeout(
            self.app.config.limits.write_timeout(),
            self.sink.send(message),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Peer),
            Err(_) => Err(End::Behind("client too slow to read".to_owned())),
        }
    }

    async fn on_client_message(
        &mut self,
        message: Message,
        inflight: &mut FuturesUnordered<Pending>,
    ) -> Result<(), End> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let refusal = refuse(
                    ErrorCode::BadFrame,
                    "binary frames are not part of the protocol",
                    None,
                );
                return self.write(refusal.to_json()).await;
            }
            Message::Close(_) => return Err(End::Peer),
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        };
        let frame = match ClientFrame::parse(text.as_str()) {
            Ok(frame) => frame,
            Err(err) => {
                let reference = reference_of(text.as_str());
                let refusal = refuse(ErrorCode::BadFrame, &format!("bad frame: {err}"), reference);
                return self.write(refusal.to_json()).await;
            }
        };
        let reference = frame.reference().map(str::to_owned);
        metrics::counter!("natter_gateway_frames_total", "type" => frame.kind()).increment(1);
        if let ClientFrame::PresenceSubscribe(subscribe) = frame {
            return self.on_presence_subscribe(subscribe).await;
        }
        match self.on_frame(frame) {
            Ok(Some(pending)) => {
                inflight.push(pending);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(Refused(code, message)) => {
                self.write(refuse(code, &message, reference).to_json())
                    .await
            }
            Err(Answer(frame)) => self.write(frame.to_json()).await,
        }
    }

    /// Handles one parsed frame. `Ok(Some(_))` is work that answers later.
    fn on_frame(&mut self, frame: ClientFrame) -> Result<Option<Pending>, Reply> {
        match frame {
            ClientFrame::Send(send) => self.on_send(send).map(Some),
            ClientFrame::Ack(ack) => self.on_ack(ack.seq),
            ClientFrame::Read(read) => self.on_read(&read.conv, &read.up_to, read.r#ref).map(Some),
            ClientFrame::Ping(ping) => Err(Answer(ServerFrame::Pong(Pong { r#ref: ping.r#ref }))),
            ClientFrame::GroupCreate(create) => self.on_group_create(create).map(Some),
            ClientFrame::GroupAdd(change) => self.on_group_change(change, Membership::Add),
            ClientFrame::GroupRemove(change) => self.on_group_change(change, Membership::Remove),
            ClientFrame::GroupLeave(leave) => self.on_group_leave(leave).map(Some),
            ClientFrame::History(request) => self.on_history(request).map(Some),
            ClientFrame::Typing(typing) => self.on_typing(typing).map(Some),
            ClientFrame::PresenceSubscribe(_) => unreachable!("answered before on_frame"),
        }
    }

    fn on_send(&mut self, send: natter_schemas::Send) -> Result<Pending, Reply> {
        check_id(&send.id, "message id").map_err(bad_id)?;
        let target = Target::parse(&send.to).map_err(bad_id)?;
        send.body
            .check()
            .map_err(|why| Refused(ErrorCode::BadRequest, why.into()))?;
        if let Some(reply_to) = &send.reply_to {
            check_id(reply_to, "reply_to").map_err(bad_id)?;
        }
        let conv = Conversation::of_send(&self.user, &target);
        let record = MsgRecord {
            id: uuid::Uuid::now_v7().to_string(),
            conv: conv.to_string(),
            from: self.user.clone(),
            device: self.device.clone(),
            ts: now_millis(),
            body: send.body,
            reply_to: send.reply_to,
        };
        let subject = subjects::msg(&conv);
        let msg_id = format!("{}:{}", self.user, send.id);
        let app = self.app.clone();
        let reference = send.r#ref;
        let started = std::time::Instant::now();
        let lease = self.send_lease.clone();
        Ok(Box::pin(async move {
            if let Some(refusal) = over_send_limit(&app, &record.from, &lease, &reference).await {
                return Some(refusal);
            }
            if let Target::Group(gid) = &target
                && let Err(refusal) = require_member(&app, gid, &record.from).await
            {
                return Some(refusal.with_ref(reference));
            }
            if let Some(media) = record.body.media()
                && let Err(refusal) = share_media(&app, &record.from, &record.conv, media).await
            {
                return Some(refusal.with_ref(reference));
            }
            let payload = Bytes::from(serde_json::to_vec(&record).expect("records serialize"));
            let sent = match publish_durable(&app.js, &subject, &msg_id, payload).await {
                Ok(ack) if ack.duplicate => original(&app, ack.sequence).await,
                Ok(_) => Some(record),
                Err(err) => {
                    tracing::warn!(error = %err, "send not stored");
                    None
                }
            };
            Some(match sent {
                Some(r) => {
                    metrics::histogram!("natter_gateway_send_to_sent_seconds")
                        .record(started.elapsed().as_secs_f64());
                    ServerFrame::Sent(Sent {
                        r#ref: reference,
                        id: r.id,
                        conv: r.conv,
                        ts: r.ts,
                    })
                }
                None => refuse(
                    ErrorCode::Unavailable,
                    "message not stored; retry with the same id",
                    reference,
                ),
            })
        }))
    }

    fn on_ack(&mut self, seq: u64) -> Result<Option<Pending>, Reply> {
        if seq > self.cursor.last() {
            return Err(Refused(
                ErrorCode::BadRequest,
                format!(
                    "ack {seq} is beyond the last item sent to this device ({})",
                    self.cursor.last()
                ),
            ));
        }
        if seq <= self.acked {
            return Ok(None);
        }
        let event = RcptEvent::Delivered {
            by: self.user.clone(),
            device: self.device.clone(),
            after: self.acked,
            upto: seq,
        };
        self.acked = seq;
        let msg_id = format!("d:{}:{}:{seq}", self.user, self.device);
        Ok(Some(self.publish_receipt_event(event, msg_id)))
    }

    fn on_read(
        &mut self,
        conv: &str,
        up_to: &str,
        reference: Option<String>,
    ) -> Result<Pending, Reply> {
        let conv = Conversation::parse(conv).map_err(bad_id)?;
        check_id(up_to, "up_to").map_err(bad_id)?;
        let group = self.group_to_check(&conv)?;
        let event = RcptEvent::Read {
            by: self.user.clone(),
            conv: conv.to_string(),
            up_to: up_to.to_owned(),
        };
        let msg_id = format!("r:{}:{conv}:{up_to}", self.user);
        let publish = self.publish_receipt_event(event, msg_id);
        let (app, user) = (self.app.clone(), self.user.clone());
        Ok(Box::pin(async move {
            if let Some(gid) = group
                && let Err(refusal) = require_member(&app, &gid, &user).await
            {
                return Some(refusal.with_ref(reference));
            }
            publish.await
        }))
    }

    /// `typing`: relayed to the other members' connected devices over core NATS (never
    /// stored, no answer unless refused).
    fn on_typing(&mut self, typing: Typing) -> Result<Pending, Reply> {
        let conv = Conversation::parse(&typing.conv).map_err(bad_id)?;
        let group = self.group_to_check(&conv)?;
        let (app, user, reference) = (self.app.clone(), self.user.clone(), typing.r#ref);
        Ok(Box::pin(async move {
            let others: Vec<String> = match (&conv, group) {
                (_, Some(gid)) => match app.groups.get(&gid).await {
                    Ok(Some(g)) if g.is_member(&user) => {
                        g.members.iter().filter(|m| **m != user).cloned().collect()
                    }
                    Ok(_) => return Some(Denied::from(Refusal::NotMember).with_ref(reference)),
                    Err(err) => return Some(Denied::from(err).with_ref(reference)),
                },
                (direct, None) => direct
                    .peer_of(&user)
                    .filter(|peer| *peer != user)
                    .map(|peer| vec![peer.to_owned()])
                    .unwrap_or_default(),
            };
            let notice = ServerFrame::Typing(TypingNotice {
                conv: conv.to_string(),
                from: user,
                state: typing.state,
            });
            let payload = Bytes::from(notice.to_json());
            for other in &others {
                if let Err(err) = app
                    .nats
                    .publish(subjects::ephemeral(other), payload.clone())
                    .await
                {
                    tracing::debug!(error = %err, "typing notice not relayed");
                }
            }
            metrics::counter!("natter_gateway_typing_relayed_total").increment(others.len() as u64);
            None
        }))
    }

    /// `presence_subscribe`: a `presence` frame for each user now, and on every change
    /// later (relayed on `ephemeral.<me>`). Only users one shares a conversation with may
    /// be followed; the others are refused in one `forbidden` error. Answered in place
    /// (subscriptions are rare), within `PRESENCE_TIMEOUT`.
    async fn on_presence_subscribe(
        &mut self,
        subscribe: natter_schemas::PresenceSubscribe,
    ) -> Result<(), End> {
        let reference = subscribe.r#ref.clone();
        let frames = match timeout(PRESENCE_TIMEOUT, self.follow(subscribe.users, &reference)).await
        {
            Ok(Ok(frames)) => frames,
            Ok(Err(Refused(code, message))) => vec![refuse(code, &message, reference)],
            Ok(Err(Answer(frame))) => vec![frame],
            Err(_) => vec![refuse(
                ErrorCode::Unavailable,
                "presence did not answer in time; try again",
                reference,
            )],
        };
        for frame in frames {
            self.write(frame.to_json()).await?;
        }
        Ok(())
    }

    async fn follow(
        &mut self,
        users: Vec<String>,
        reference: &Option<String>,
    ) -> Result<Vec<ServerFrame>, Reply> {
        let max = self.app.config.presence.max_follow;
        if users.len() > max {
            return Err(Refused(
                ErrorCode::BadRequest,
                format!("at most {max} users per presence_subscribe"),
            ));
        }
        let mut wanted: Vec<String> = Vec::with_capacity(users.len());
        for user in users {
            check_id(&user, "user id").map_err(bad_id)?;
            if !wanted.contains(&user) {
                wanted.push(user);
            }
        }
        let mut allowed = Vec::with_capacity(wanted.len());
        let mut denied = Vec::new();
        for other in wanted {
            match may_follow(&self.app, &self.user, &other).await {
                Ok(true) => allowed.push(other),
                Ok(false) => denied.push(other),
                Err(why) => return Err(Refused(ErrorCode::Unavailable, why)),
            }
        }
        let mut frames = Vec::new();
        if !denied.is_empty() {
            frames.push(refuse(
                ErrorCode::Forbidden,
                &format!(
                    "you share no conversation with {}: their presence is private",
                    denied.join(", ")
                ),
                reference.clone(),
            ));
        }
        let registration = self.presence.as_ref().expect("registered while serving");
        let states = self
            .app
            .presence
            .follow(registration, allowed, max)
            .await
            .map_err(|err| match err {
                FollowError::TooMany(_) => Refused(ErrorCode::BadRequest, err.to_string()),
                FollowError::Redis(err) => {
                    tracing::debug!(error = %err, "presence unavailable");
                    Refused(
                        ErrorCode::Unavailable,
                        "presence is unavailable; try again".into(),
                    )
                }
            })?;
        frames.extend(states.into_iter().map(|state| {
            ServerFrame::Presence(natter_schemas::Presence {
                user: state.user,
                online: state.online,
                last_seen: state.last_seen,
            })
        }));
        Ok(frames)
    }

    /// Refuses a one-on-one conversation the user is not part of; for a group, the id
    /// whose membership the answer must check first (an asynchronous read).
    fn group_to_check(&self, conv: &Conversation) -> Result<Option<String>, Reply> {
        match conv {
            Conversation::Group(gid) => Ok(Some(gid.clone())),
            direct if direct.peer_of(&self.user).is_none() => Err(Refused(
                ErrorCode::Forbidden,
                "not a member of this conversation".into(),
            )),
            _ => Ok(None),
        }
    }

    /// `history`: one page of a conversation the user is part of, from the history
    /// workers (the gateway never touches the store).
    fn on_history(&mut self, request: HistoryRequest) -> Result<Pending, Reply> {
        let conv = Conversation::parse(&request.conv).map_err(bad_id)?;
        if let Some(before) = &request.before {
            check_id(before, "before").map_err(bad_id)?;
        }
        let limit = request.limit.unwrap_or(DEFAULT_HISTORY_PAGE);
        if !(1..=MAX_HISTORY_PAGE).contains(&limit) {
            return Err(Refused(
                ErrorCode::BadRequest,
                format!("limit must be 1..={MAX_HISTORY_PAGE}"),
            ));
        }
        let group = self.group_to_check(&conv)?;
        let (app, user, reference) = (self.app.clone(), self.user.clone(), request.r#ref);
        Ok(Box::pin(async move {
            if let Some(gid) = group
                && let Err(refusal) = require_member(&app, &gid, &user).await
            {
                return Some(refusal.with_ref(reference));
            }
            let query = HistoryQuery {
                conv: conv.to_string(),
                reader: user.clone(),
                before: request.before,
                limit: limit as usize,
            };
            let payload = Bytes::from(serde_json::to_vec(&query).expect("queries serialize"));
            let started = std::time::Instant::now();
            let asked = timeout(
                HISTORY_TIMEOUT,
                app.nats.request(subjects::HISTORY_PAGE, payload),
            )
            .await;
            let answer = match asked {
                Ok(Ok(message)) => serde_json::from_slice::<HistoryAnswer>(&message.payload)
                    .map_err(|e| e.to_string()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err("no answer in time".to_owned()),
            };
            Some(match answer {
                Ok(HistoryAnswer::Page { messages, more }) => {
                    metrics::histogram!("natter_gateway_history_seconds")
                        .record(started.elapsed().as_secs_f64());
                    ServerFrame::History(HistoryPage {
                        conv: query.conv,
                        messages,
                        more,
                        r#ref: reference,
                    })
                }
                Ok(HistoryAnswer::Failed { error }) | Err(error) => {
                    tracing::warn!(%error, "history page failed");
                    refuse(
                        ErrorCode::Unavailable,
                        "history unavailable; try again",
                        reference,
                    )
                }
            })
        }))
    }

    /// `group_create`: a new group with a fresh id, the sender as its admin.
    fn on_group_create(&mut self, create: GroupCreate) -> Result<Pending, Reply> {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let limit = self.app.config.limits.max_group_members;
        let (group, change) = Group::create(
            id,
            &create.name,
            &self.user,
            &create.members,
            limit,
            now_millis(),
        )
        .map_err(|refusal| Reply::from(Denied::from(refusal)))?;
        let app = self.app.clone();
        let reference = create.r#ref;
        Ok(Box::pin(async move {
            if let Err(err) = app.groups.create(&group).await {
                return Some(Denied::from(err).with_ref(reference));
            }
            Some(announce(&app, &group, Some(change), reference).await)
        }))
    }

    /// `group_add` / `group_remove`: admins only.
    fn on_group_change(
        &mut self,
        change: GroupChange,
        membership: Membership,
    ) -> Result<Option<Pending>, Reply> {
        check_id(&change.group, "group id").map_err(bad_id)?;
        let (app, user) = (self.app.clone(), self.user.clone());
        let limit = app.config.limits.max_group_members;
        Ok(Some(Box::pin(async move {
            let updated = app
                .groups
                .update(&change.group, |group| {
                    let ts = now_millis();
                    match membership {
                        Membership::Add => group.add(&user, &change.members, limit, ts),
                        Membership::Remove => group.remove(&user, &change.members, ts),
                    }
                })
                .await;
            Some(match updated {
                Ok((group, event)) => announce(&app, &group, event, change.r#ref).await,
                Err(err) => Denied::from(err).with_ref(change.r#ref),
            })
        })))
    }

    /// `group_leave`: any member.
    fn on_group_leave(&mut self, leave: GroupLeave) -> Result<Pending, Reply> {
        check_id(&leave.group, "group id").map_err(bad_id)?;
        let (app, user) = (self.app.clone(), self.user.clone());
        Ok(Box::pin(async move {
            let updated = app
                .groups
                .update(&leave.group, |group| {
                    group.leave(&user, now_millis()).map(Some)
                })
                .await;
            Some(match updated {
                Ok((group, event)) => announce(&app, &group, event, leave.r#ref).await,
                Err(err) => Denied::from(err).with_ref(leave.r#ref),
            })
        }))
    }

    fn publish_receipt_event(&self, event: RcptEvent, msg_id: String) -> Pending {
        let app = self.app.clone();
        let subject = subjects::rcpt(&self.user);
        Box::pin(async move {
            let payload = Bytes::from(serde_json::to_vec(&event).expect("events serialize"));
            if let Err(err) = publish_durable(&app.js, &subject, &msg_id, payload).await {
                tracing::warn!(error = %err, "receipt event not stored");
            }
            None
        })
    }
}

/// Which way `group_add` / `group_remove` changes a group.
#[derive(Debug, Clone, Copy)]
enum Membership {
    Add,
    Remove,
}

/// A refused action (group, membership, media), as the `error` frame it becomes.
struct Denied(ErrorCode, String);

impl Denied {
    fn with_ref(self, reference: Option<String>) -> ServerFrame {
        refuse(self.0, &self.1, reference)
    }
}

impl From<Denied> for Reply {
    fn from(Denied(code, message): Denied) -> Self {
        Refused(code, message)
    }
}

impl From<Refusal> for Denied {
    fn from(refusal: Refusal) -> Self {
        let code = match refusal {
            Refusal::NotMember | Refusal::NotAdmin => ErrorCode::Forbidden,
            Refusal::TooMany { .. } => ErrorCode::LimitExceeded,
            Refusal::BadName => ErrorCode::BadRequest,
            Refusal::BadMember(_) => ErrorCode::BadId,
        };
        Self(code, refusal.to_string())
    }
}

impl From<GroupsError> for Denied {
    fn from(err: GroupsError) -> Self {
        match err {
            GroupsError::Refused(refusal) => refusal.into(),
            other => {
                tracing::warn!(error = %other, "group store failed");
                Self(
                    ErrorCode::Unavailable,
                    "groups are unavailable; try again".into(),
                )
            }
        }
    }
}

/// Refuses anyone who is not (or no longer) a member of `gid`.
async fn require_member(app: &App, gid: &str, user: &str) -> Result<(), Denied> {
    match app.groups.is_member(gid, user).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Refusal::NotMember.into()),
        Err(err) => Err(err.into()),
    }
}

/// Lets the members of `conv` fetch the file a media message refers to, if `user` may
/// share it: they uploaded it, or can already see it. Recorded before the message is
/// stored, so recipients can fetch it as soon as it arrives.
async fn share_media(
    app: &App,
    user: &str,
    conv: &str,
    media: &natter_schemas::body::Media,
) -> Result<(), Denied> {
    let unavailable = |err: String| {
        tracing::warn!(error = %err, "media store failed");
        Denied(
            ErrorCode::Unavailable,
            "media unavailable; retry with the same id".into(),
        )
    };
    let access = app
        .media
        .access(&media.media_id)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let allowed = match &access {
        Some(access) => crate::http::may_see(app, user, access)
            .await
            .map_err(unavailable)?,
        None => false,
    };
    let Some(access) = access.filter(|_| allowed) else {
        return Err(Denied(
            ErrorCode::Forbidden,
            "no such media, or not yours to share".into(),
        ));
    };
    if access.mime != media.mime {
        return Err(Denied(
            ErrorCode::BadRequest,
            format!("mime must be the uploaded type, {}", access.mime),
        ));
    }
    app.media
        .share(&media.media_id, conv)
        .await
        .map_err(|e| unavailable(e.to_string()))
}

/// Puts a group change into `MSGS` (the group's partition, ordered with its messages) for
/// the fanout workers, then answers with the group as it is now.
async fn announce(
    app: &App,
    group: &Group,
    change: Option<Change>,
    reference: Option<String>,
) -> ServerFrame {
    if let Some(change) = change {
        let event = change.record();
        let msg_id = format!("gev:{}", event.event_id);
        let subject = subjects::msg(&Conversation::Group(group.id.clone()));
        let record = MsgsEntry::GroupEvent(event);
        let payload = Bytes::from(serde_json::to_vec(&record).expect("records serialize"));
        if let Err(err) = publish_durable(&app.js, &subject, &msg_id, payload).await {
            tracing::warn!(error = %err, group = %group.id, "group change stored but not announced");
            return refuse(
                ErrorCode::Unavailable,
                "the change is stored but members were not told yet; try again",
                reference,
            );
        }
    }
    ServerFrame::Group(group.info(reference))
}

/// The first `sent` answer of a re-sent client id: the stored original.
async fn original(app: &App, seq: u64) -> Option<MsgRecord> {
    match app.msgs.get_raw_message(seq).await {
        Ok(message) => serde_json::from_slice(&message.payload).ok(),
        Err(err) => {
            tracing::warn!(error = %err, seq, "cannot read the original of a duplicate send");
            None
        }
    }
}

/// An immediate answer to a frame: a refusal or a direct reply.
enum Reply {
    Refused(ErrorCode, String),
    Answer(ServerFrame),
}
use Reply::{Answer, Refused};

fn bad_id(err: natter_schemas::IdError) -> Reply {
    Refused(ErrorCode::BadId, err.to_string())
}

fn refuse(code: ErrorCode, message: &str, reference: Option<String>) -> ServerFrame {
    metrics::counter!("natter_gateway_errors_total", "code" => code.as_str()).increment(1);
    ServerFrame::Error(ErrorFrame {
        code,
        message: message.to_owned(),
        r#ref: reference,
        retry_after_ms: None,
    })
}

/// Whether `me` may see `other`'s presence: themselves, someone in a group with them, or
/// someone they have a one-on-one conversation with (at least one message in history).
async fn may_follow(app: &App, me: &str, other: &str) -> Result<bool, String> {
    if me == other || app.groups.share_a_group(me, other) {
        return Ok(true);
    }
    let query = HistoryQuery {
        conv: Conversation::direct(me, other).to_string(),
        reader: me.to_owned(),
        before: None,
        limit: 1,
    };
    let payload = Bytes::from(serde_json::to_vec(&query).expect("queries serialize"));
    let answer = timeout(
        HISTORY_TIMEOUT,
        app.nats.request(subjects::HISTORY_PAGE, payload),
    )
    .await
    .map_err(|_| "history did not answer in time; try again".to_owned())?
    .map_err(|e| format!("history unavailable: {e}"))?;
    match serde_json::from_slice::<HistoryAnswer>(&answer.payload) {
        Ok(HistoryAnswer::Page { messages, .. }) => Ok(!messages.is_empty()),
        Ok(HistoryAnswer::Failed { error }) => Err(format!("history unavailable: {error}")),
        Err(err) => Err(format!("history answered nonsense: {err}")),
    }
}

/// Send tokens a socket takes from its user's bucket at once: one Redis round trip per
/// this many sends, at the price of up to this many minus one tokens held by a socket.
const SEND_LEASE: u32 = 4;

/// A refusal when `user` is over their send rate. A token this socket leased earlier costs
/// nothing; otherwise a few are leased from Redis. Fails open: when Redis does not answer,
/// the send goes through (counted in `natter_gateway_rate_limit_unchecked_total`).
async fn over_send_limit(
    app: &App,
    user: &str,
    lease: &tokio::sync::Mutex<u32>,
    reference: &Option<String>,
) -> Option<ServerFrame> {
    use natter_redis::rate_limit::Lease;
    let limiter = app.send_limit.as_ref()?;
    let mut leased = lease.lock().await;
    if *leased > 0 {
        *leased -= 1;
        return None;
    }
    match limiter.take(user, SEND_LEASE).await {
        Ok(Lease::Granted(n)) => {
            *leased = n - 1;
            None
        }
        Ok(Lease::Limited { retry_after_ms }) => {
            Some(rate_limited(retry_after_ms, reference.clone()))
        }
        Err(err) => {
            metrics::counter!("natter_gateway_rate_limit_unchecked_total").increment(1);
            tracing::debug!(error = %err, "rate limit not checked; allowing");
            None
        }
    }
}

/// `rate_limited`, with when to try again.
fn rate_limited(retry_after_ms: u64, reference: Option<String>) -> ServerFrame {
    metrics::counter!("natter_gateway_errors_total", "code" => "rate_limited").increment(1);
    ServerFrame::Error(ErrorFrame {
        code: ErrorCode::RateLimited,
        message: format!("too many messages; retry in {retry_after_ms} ms"),
        r#ref: reference,
        retry_after_ms: Some(retry_after_ms),
    })
}

/// The `ref` of a frame that did not parse, when it is at least a JSON object with one.
fn reference_of(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.get("ref")?.as_str().map(str::to_owned)
}
