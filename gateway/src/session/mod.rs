//! One socket: a `select!` loop over client frames, its mailbox (live inbox items,
//! notices, reconcile results), the answers of work its frames started, keepalive and
//! shutdown. What each frame does is in `crate::frames`; how items reach the socket is in
//! `deliver` (here) and `crate::live`.
//!
//! Everything the loop holds is bounded: at most `max_inflight` frames' work waits at once
//! (beyond that the loop stops reading the socket), the mailbox is bounded in bytes
//! (overflow is repaired from the inbox), and a write that does not finish within
//! `write_timeout` closes the socket with 1013 so the client resumes later with `after`.

mod deliver;

use std::{sync::Arc, time::Duration};

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use bytes::Bytes;
use futures_util::{
    SinkExt, StreamExt,
    stream::{FuturesUnordered, SplitSink, SplitStream},
};
use tokio::time::{Instant, timeout};
use tracing::Instrument;

use crate::{
    App,
    charge::Wallet,
    frames::Pending,
    live::{Attached, cursor::Cursor, mailbox::Mailbox, wheel::Slot},
    presence::Registration,
    receipts::Unacked,
};
use natter_schemas::{Hello, ServerFrame};

type Sink = SplitSink<WebSocket, Message>;

/// Why a socket ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The client closed or went away.
    Peer,
    /// The gateway is shutting down (1001).
    Shutdown,
    /// The client does not keep up, or is too far behind (1013).
    Behind(String),
    /// The client stopped answering keepalives.
    Silent,
    /// The token the socket was opened with expired (4001: reconnect with a fresh one).
    Expired,
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
    Flush(#[from] crate::live::FlushFailed),
    #[error("reading the inbox: {0}")]
    Read(#[from] crate::live::reads::ReadError),
    #[error("reading the inbox: {0}")]
    Inbox(#[from] natter_fabric::InboxError),
}

/// A socket's delivery, settled before its upgrade is answered: its place on its user's
/// live subscription, and the cursor checked against the inbox.
///
/// Before, not after: the client may send (or have a friend send) the moment it sees its
/// socket open. A resume point beyond the inbox is moved back to the inbox's newest item,
/// and that must be the newest item from before the socket opened, or a message stored in
/// between would count as one the device already has and never reach it.
pub(crate) struct Opening {
    cursor: Cursor,
    /// Where catch-up stops (see [`Cursor::clamp_to_inbox`]).
    newest: u64,
    /// The inbox's oldest sequence as the socket opened (`hello`).
    oldest: u64,
    mailbox: Arc<Mailbox>,
    attached: Attached,
}

/// Attaches a socket of `user` to their live subscription, then settles its cursor at
/// `after`.
pub(crate) async fn open(app: &App, user: &str, after: u64) -> Result<Opening, OpenError> {
    // Live first, so nothing stored meanwhile is missed; items that arrive during
    // catch-up wait in the mailbox and are de-duplicated by sequence.
    let mailbox = Arc::new(Mailbox::with_sent(after));
    let attached = app.live.attach(user, mailbox.clone()).await?;
    app.live.flushed().await?;
    let newest = app.reads.newest(user).await?;
    let mut cursor = Cursor::new(after, app.config.limits.max_gap_repair);
    let newest = cursor.clamp_to_inbox(user, newest, &app.inbox).await?;
    let oldest = app.oldest.seq();
    mailbox.set_sent(cursor.last());
    // Interest reaches the stream leader's server a moment after the subscription: an
    // item stored in that moment is not republished here. The reconciler checks in a
    // second.
    app.opened.note(user);
    Ok(Opening {
        cursor,
        newest,
        oldest,
        mailbox,
        attached,
    })
}

/// Who a socket is: its user and device, and when the token that opened it expires.
pub(crate) struct Holder {
    pub user: String,
    pub device: String,
    /// The token's `exp` (seconds since the epoch): the socket is closed with 4001 at the
    /// first keepalive tick after it.
    pub expires_at: u64,
}

/// Close code for a socket whose token expired (an application code: 4000-4999).
pub(crate) const TOKEN_EXPIRED: u16 = 4001;

/// Serves one authenticated socket until it ends; `registration` is its place in presence
/// (admitted before the upgrade), `opening` its delivery (from [`open`]).
pub(crate) async fn serve(
    app: App,
    holder: Holder,
    registration: Registration,
    opening: Opening,
    socket: WebSocket,
) {
    let span = tracing::info_span!("socket", user = %holder.user, device = %holder.device);
    serve_in_span(app, holder, registration, opening, socket)
        .instrument(span)
        .await;
}

async fn serve_in_span(
    app: App,
    holder: Holder,
    registration: Registration,
    opening: Opening,
    socket: WebSocket,
) {
    let Holder {
        user,
        device,
        expires_at,
    } = holder;
    let (sink, stream) = socket.split();
    let Opening {
        cursor,
        newest,
        oldest,
        mailbox,
        attached,
    } = opening;
    let slot = app.wheel.slot();
    let mut session = Session {
        presence: Some(registration),
        // The client's `after`, or the inbox's newest item when `after` was beyond it.
        acked: cursor.last(),
        unacked: Unacked::default(),
        cursor,
        mailbox,
        _attached: attached,
        wallet: Wallet::default(),
        app,
        user,
        device,
        expires_at,
        sink,
    };
    metrics::counter!("natter_gateway_connections_total").increment(1);
    let sockets = metrics::gauge!("natter_gateway_sockets");
    sockets.increment(1.0);
    let after = session.cursor.last();
    let hello = Hello {
        after,
        newest,
        oldest,
        resumed: crate::live::oldest::resumed(after, oldest),
    };
    let end = session.run(stream, slot, hello).await;
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
        End::Expired => (
            TOKEN_EXPIRED,
            "token expired, reconnect with a fresh one".to_owned(),
        ),
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
            Self::Expired => "expired",
            Self::Internal(_) => "internal",
            Self::Broken(..) => "broken",
        }
    }
}

/// One socket's state; the frame handlers (`crate::frames`) work on it too.
pub(crate) struct Session {
    pub(crate) app: App,
    /// This socket in presence (taken when the socket ends).
    pub(crate) presence: Option<Registration>,
    pub(crate) user: String,
    pub(crate) device: String,
    /// When the token that opened the socket expires (seconds since the epoch).
    expires_at: u64,
    sink: Sink,
    pub(crate) cursor: Cursor,
    /// Where the dispatcher and the reconciler leave this socket's live traffic.
    mailbox: Arc<Mailbox>,
    /// This socket's place on its user's live subscription (detached when dropped).
    _attached: Attached,
    /// Highest inbox sequence this device acked.
    pub(crate) acked: u64,
    /// Messages sent to this socket and not acked yet: what its next ack makes delivered.
    pub(crate) unacked: Unacked,
    /// Tokens this socket took from the user's bucket and has not spent yet, and its own
    /// bucket for when Redis is away (`crate::charge`).
    pub(crate) wallet: Wallet,
}

impl Session {
    async fn run(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        mut slot: Slot,
        hello: Hello,
    ) -> End {
        let limits = self.app.config.limits.clone();
        // The first frame, before any inbox item.
        let newest = hello.newest;
        if let Err(end) = self.write(ServerFrame::Hello(hello).to_json()).await {
            return end;
        }
        // The work a step does is boxed: a task's future is as large as its largest
        // suspended state, and with frame handling inlined an idle socket's task was
        // ~10.7 KB (heaptrack); boxed, an idle socket holds only the waits below.
        if let Err(end) = Box::pin(self.catch_up(newest)).await {
            return end;
        }
        let shutdown = self.app.shutdown.clone();
        let mut inflight: FuturesUnordered<Pending> = FuturesUnordered::new();
        let mailbox = self.mailbox.clone();
        let mut last_heard = Instant::now();
        loop {
            let step = tokio::select! {
                _ = shutdown.cancelled() => Err(End::Shutdown),
                frame = stream.next(), if inflight.len() < limits.max_inflight => {
                    last_heard = Instant::now();
                    match frame {
                        Some(Ok(message)) => {
                            Box::pin(self.on_client_message(message, &mut inflight)).await
                        }
                        Some(Err(err)) => Err(End::from_read_error(err)),
                        None => Err(End::Peer),
                    }
                }
                Some(reply) = inflight.next(), if !inflight.is_empty() => match reply {
                    Some(frame) => Box::pin(self.write(frame.to_json())).await,
                    None => Ok(()),
                },
                _ = mailbox.ready() => Box::pin(self.on_mailbox()).await,
                _ = slot.tick() => {
                    if last_heard.elapsed() > limits.ping_every() * 3 {
                        Err(End::Silent)
                    } else if natter_fabric::now_millis() / 1000 >= self.expires_at {
                        Err(End::Expired)
                    } else {
                        Box::pin(self.send(Message::Ping(Bytes::new()))).await
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    pub(crate) async fn write(&mut self, text: String) -> Result<(), End> {
        self.send(Message::Text(text.into())).await
    }

    async fn send(&mut self, message: Message) -> Result<(), End> {
        self.send_all(std::iter::once(message)).await
    }

    /// Writes `messages` and flushes once (one syscall for a burst of items, not one
    /// each), within `write_timeout` for them all.
    async fn send_all(&mut self, messages: impl IntoIterator<Item = Message>) -> Result<(), End> {
        let sink = &mut self.sink;
        let write = async move {
            for message in messages {
                sink.feed(message).await?;
            }
            sink.flush().await
        };
        match timeout(self.app.config.limits.write_timeout(), write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Peer),
            Err(_) => Err(End::Behind("client too slow to read".to_owned())),
        }
    }
}
