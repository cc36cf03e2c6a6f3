//! History: messages kept for paging, written by the inbox tail reader (`crate::tail`),
//! and pages and message info served on request.
//!
//! Writing: the tail reader puts the sender's copy of every message, and the receipts
//! that move each sender's ticks, into the store in batches with its checkpoint (see
//! `natter_history::log`). Group changes are not history.
//!
//! Serving: request/reply on `history.page`, `history.info`, `history.message` and
//! `history.conversations` (chat lists, `crate::chats`) in the queue group `history`, so each request is answered once by whichever history worker
//! NATS picks. Gateways check membership before asking for a page, and who may change a
//! message after asking for it; message info is answered to the message's sender only.
//!
//! Scaling: with the embedded store each process has its own file and its own tail reader
//! (a complete copy, its own checkpoint name): more processes add read capacity and
//! availability, not write capacity. With TiKV, processes share one store; each reads the
//! whole inbox and writes the same keys under its own checkpoint name: messages are
//! idempotent puts, and what several readers fold into (watermarks, a message's changes,
//! chat-list positions) is merged by compare-and-swap, so the reader behind never undoes
//! the one ahead (`natter_history::store::OrderedStore::put_merging`).

use std::{path::PathBuf, time::Duration};

use futures_util::StreamExt;
use natter_fabric::{
    groups::Groups,
    records::{
        ConversationsAnswer, ConversationsQuery, HistoryAnswer, HistoryQuery, InfoAnswer,
        InfoQuery, MemberStatus, MessageAnswer, MessageQuery,
    },
    subjects,
    watermarks::{Checkpoints, Member},
};
use natter_history::{Embedded, History, Store, ticks};
use natter_schemas::{Conversation, HistoryMessage};

use crate::WorkerError;
use tokio_util::sync::CancellationToken;

/// Requests answered at once by one process.
const CONCURRENCY: usize = 32;
const QUEUE_GROUP: &str = "history";

/// Where history lives and who this worker is.
#[derive(Debug, Clone)]
pub struct HistorySettings {
    /// Durable consumer name: unique per embedded store, shared by TiKV workers.
    pub instance: String,
    pub backend: Backend,
    /// Messages older than this many days are deleted (0: kept forever).
    pub retention_days: u64,
}

#[derive(Debug, Clone)]
pub enum Backend {
    /// redb in this directory (the single-machine default).
    Embedded(PathBuf),
    /// A TiKV cluster's PD endpoints.
    Tikv(Vec<String>),
}

/// Opens the store; returns it (for the tail reader) and the tasks that serve pages and
/// message info and apply retention.
/// What answering reads besides history: groups (members, names), group receipt
/// checkpoints (message info, read markers) and users' settings (muted conversations).
pub struct Readers<'a> {
    pub groups: &'a Groups,
    pub watermarks: &'a Checkpoints,
    pub settings: &'a natter_fabric::settings::Settings,
}

pub async fn start(
    client: &async_nats::Client,
    readers: Readers<'_>,
    settings: &HistorySettings,
    stop: CancellationToken,
) -> Result<(Store, Vec<crate::Task>), WorkerError> {
    let store = match &settings.backend {
        Backend::Embedded(dir) => Store::Embedded(Embedded::open(dir)?),
        #[cfg(feature = "tikv")]
        Backend::Tikv(pd) => Store::Tikv(natter_history::Tikv::connect(pd.clone()).await?),
        #[cfg(not(feature = "tikv"))]
        Backend::Tikv(_) => return Err(WorkerError::NoTikv),
    };
    let subscribe = |subject: &'static str| client.queue_subscribe(subject, QUEUE_GROUP.to_owned());
    let pages = subscribe(subjects::HISTORY_PAGE)
        .await
        .map_err(|e| WorkerError::Subscribe(e.to_string()))?;
    let infos = subscribe(subjects::HISTORY_INFO)
        .await
        .map_err(|e| WorkerError::Subscribe(e.to_string()))?;
    let lookups = subscribe(subjects::HISTORY_MESSAGE)
        .await
        .map_err(|e| WorkerError::Subscribe(e.to_string()))?;
    let lists = subscribe(subjects::HISTORY_CONVERSATIONS)
        .await
        .map_err(|e| WorkerError::Subscribe(e.to_string()))?;
    let server = {
        let (store, client, stop) = (store.clone(), client.clone(), stop.clone());
        let (groups, watermarks) = (readers.groups.clone(), readers.watermarks.clone());
        let user_settings = readers.settings.clone();
        Box::pin(async move {
            let history = History::new(store);
            let served = Served {
                history: &history,
                groups: &groups,
                watermarks: &watermarks,
                settings: &user_settings,
                client: &client,
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = served.pages(pages) => tracing::error!("history page subscription ended"),
                _ = served.infos(infos) => tracing::error!("message info subscription ended"),
                _ = served.lookups(lookups) => tracing::error!("message lookup subscription ended"),
                _ = served.lists(lists) => tracing::error!("chat list subscription ended"),
            }
            Ok(())
        }) as crate::Task
    };
    let mut tasks = vec![server];
    if settings.retention_days > 0 {
        let days = settings.retention_days;
        let store = store.clone();
        tasks.push(Box::pin(async move {
            sweep(History::new(store), days, stop).await;
            Ok(())
        }));
    }
    Ok((store, tasks))
}

/// What answering needs.
struct Served<'a> {
    history: &'a History<Store>,
    groups: &'a Groups,
    watermarks: &'a Checkpoints,
    settings: &'a natter_fabric::settings::Settings,
    client: &'a async_nats::Client,
}

impl Served<'_> {
    async fn pages(&self, requests: async_nats::Subscriber) {
        requests
            .for_each_concurrent(CONCURRENCY, |request| async move {
                let started = std::time::Instant::now();
                let answer = match serde_json::from_slice::<HistoryQuery>(&request.payload) {
                    Ok(query) => page(self.history, &query)
                        .await
                        .unwrap_or_else(|error| HistoryAnswer::Failed { error }),
                    Err(err) => HistoryAnswer::Failed {
                        error: format!("bad query: {err}"),
                    },
                };
                metrics::histogram!("natter_history_page_seconds")
                    .record(started.elapsed().as_secs_f64());
                self.reply(request, &answer).await;
            })
            .await;
    }

    async fn infos(&self, requests: async_nats::Subscriber) {
        requests
            .for_each_concurrent(CONCURRENCY, |request| async move {
                let answer = match serde_json::from_slice::<InfoQuery>(&request.payload) {
                    Ok(query) => self
                        .info(&query)
                        .await
                        .unwrap_or_else(|error| InfoAnswer::Failed { error }),
                    Err(err) => InfoAnswer::Failed {
                        error: format!("bad query: {err}"),
                    },
                };
                self.reply(request, &answer).await;
            })
            .await;
    }

    async fn lookups(&self, requests: async_nats::Subscriber) {
        requests
            .for_each_concurrent(CONCURRENCY, |request| async move {
                let answer = match serde_json::from_slice::<MessageQuery>(&request.payload) {
                    Ok(query) => lookup(self.history, &query.id)
                        .await
                        .unwrap_or_else(|error| MessageAnswer::Failed { error }),
                    Err(err) => MessageAnswer::Failed {
                        error: format!("bad query: {err}"),
                    },
                };
                self.reply(request, &answer).await;
            })
            .await;
    }

    async fn lists(&self, requests: async_nats::Subscriber) {
        requests
            .for_each_concurrent(CONCURRENCY, |request| async move {
                let started = std::time::Instant::now();
                let answer = match serde_json::from_slice::<ConversationsQuery>(&request.payload) {
                    Ok(query) => {
                        let readers = Readers {
                            groups: self.groups,
                            watermarks: self.watermarks,
                            settings: self.settings,
                        };
                        crate::chats::page(self.history, &readers, &query)
                            .await
                            .unwrap_or_else(|error| ConversationsAnswer::Failed { error })
                    }
                    Err(err) => ConversationsAnswer::Failed {
                        error: format!("bad query: {err}"),
                    },
                };
                metrics::histogram!("natter_history_chat_list_seconds")
                    .record(started.elapsed().as_secs_f64());
                self.reply(request, &answer).await;
            })
            .await;
    }

    async fn reply(&self, request: async_nats::Message, answer: &impl serde::Serialize) {
        let Some(reply) = request.reply else {
            return;
        };
        let payload = serde_json::to_vec(answer).expect("answers serialize");
        if let Err(err) = self.client.publish(reply, payload.into()).await {
            tracing::warn!(error = %err, "history answer not sent");
        }
    }

    /// Each other member's status for a group message, for its sender: members as they
    /// are now who were members when it was sent.
    async fn info(&self, query: &InfoQuery) -> Result<InfoAnswer, String> {
        let message = self
            .history
            .message(&query.id)
            .await
            .map_err(|e| e.to_string())?;
        let Some(message) = message.filter(|m| m.from == query.reader) else {
            return Ok(InfoAnswer::NotFound);
        };
        let Ok(Conversation::Group(gid)) = Conversation::parse(&message.conv) else {
            return Ok(InfoAnswer::NotFound);
        };
        let group = self.groups.get(&gid).await.map_err(|e| e.to_string())?;
        let (_, marks) = self
            .watermarks
            .load(&gid)
            .await
            .map_err(|e| e.to_string())?;
        let members = group
            .iter()
            .flat_map(|g| {
                g.members.iter().filter_map(|user| {
                    let since_ms = g.member_since(user);
                    (*user != message.from && since_ms <= message.ts).then(|| Member {
                        user: user.clone(),
                        since_ms,
                    })
                })
            })
            .map(|member| MemberStatus {
                status: marks.status_of(&member, &message.id).to_owned(),
                user: member.user,
            })
            .collect();
        Ok(InfoAnswer::Info {
            conv: message.conv,
            members,
        })
    }
}

/// One page with the reader's own messages' ticks.
async fn page(history: &History<Store>, query: &HistoryQuery) -> Result<HistoryAnswer, String> {
    let page = history
        .page(&query.conv, query.before.as_deref(), query.limit)
        .await
        .map_err(|e| e.to_string())?;
    let own = page.messages.iter().any(|m| m.from == query.reader);
    let marks = if own {
        history
            .marks(&query.conv, &query.reader)
            .await
            .map_err(|e| e.to_string())?
    } else {
        Default::default()
    };
    let changes = match (page.messages.first(), page.messages.last()) {
        (Some(oldest), Some(newest)) => history
            .changes(&query.conv, &oldest.id, &newest.id)
            .await
            .map_err(|e| e.to_string())?,
        _ => Default::default(),
    };
    let mut messages = Vec::with_capacity(page.messages.len());
    for message in page.messages {
        let changed = changes.get(&message.id);
        if changed.is_some_and(|c| !c.visible_to(&query.reader)) {
            continue;
        }
        let status = (message.from == query.reader).then(|| ticks(&message.id, &marks));
        let reply_to = message.reply_to.clone();
        let mut shown = match changed {
            Some(changes) => changes.show(message, &query.reader),
            None => HistoryMessage::plain(message),
        };
        shown.status = status;
        if let Some(reply_to) = reply_to.filter(|_| shown.deleted.is_none()) {
            shown.quote = history
                .quote(&query.conv, &reply_to, &query.reader)
                .await
                .map_err(|e| e.to_string())?;
        }
        messages.push(shown);
    }
    Ok(HistoryAnswer::Page {
        messages,
        more: page.more,
    })
}

/// A message by id, as sent, and whether it was deleted for everyone.
async fn lookup(history: &History<Store>, id: &str) -> Result<MessageAnswer, String> {
    let Some(message) = history.message(id).await.map_err(|e| e.to_string())? else {
        return Ok(MessageAnswer::NotFound);
    };
    let changes = history
        .changes(&message.conv, id, id)
        .await
        .map_err(|e| e.to_string())?;
    let deleted = changes.get(id).is_some_and(|c| c.deleted.is_some());
    Ok(MessageAnswer::Found {
        message: Box::new(message),
        deleted,
    })
}

/// Deletes messages older than `days`, once an hour.
async fn sweep(history: History<Store>, days: u64, stop: CancellationToken) {
    loop {
        let cutoff = natter_fabric::now_millis().saturating_sub(days * 24 * 3600 * 1000);
        match history.forget_before(cutoff).await {
            Ok(conversations) => tracing::info!(conversations, "history retention sweep done"),
            Err(err) => tracing::warn!(error = %err, "history retention sweep failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}
