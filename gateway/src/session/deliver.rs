//! How inbox items reach the socket: catch-up at open, then whatever the mailbox holds
//! (live items, notices, the reconciler's newest sequences), each through the cursor so a
//! device sees every item once and in order.

use natter_fabric::{StoredItem, now_millis};
use natter_schemas::inbox::message_ts;

use super::{End, Session};
use crate::live::{cursor::DeliveryError, mailbox::Live};

impl Session {
    /// Everything from the cursor up to `newest`; later items come live.
    pub(super) async fn catch_up(&mut self, newest: u64) -> Result<(), End> {
        loop {
            let items = self
                .cursor
                .catch_up_page(&self.user, &self.app.inbox, newest)
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

    /// Everything the mailbox holds, in order; then a repair from the inbox if the
    /// mailbox had to drop items.
    pub(super) async fn on_mailbox(&mut self) -> Result<(), End> {
        let drained = self.mailbox.drain();
        for live in drained.items {
            match live {
                Live::Item { seq, prev, payload } => {
                    let items = self
                        .cursor
                        .on_live(&self.user, &self.app.inbox, (seq, prev, payload))
                        .await;
                    self.forward(items, true).await?;
                }
                Live::Notice(notice) => match String::from_utf8(notice.to_vec()) {
                    Ok(text) => self.write(text).await?,
                    Err(_) => tracing::warn!("a notice that is not UTF-8; dropped"),
                },
                Live::Newest(newest) => {
                    let items = self
                        .cursor
                        .reconcile_to(&self.user, &self.app.inbox, newest)
                        .await;
                    self.forward(items, false).await?;
                }
            }
        }
        if drained.repair {
            metrics::counter!("natter_gateway_mailbox_repairs_total").increment(1);
            match self.app.inbox.last_seq(&self.user).await {
                Ok(newest) => {
                    let items = self
                        .cursor
                        .reconcile_to(&self.user, &self.app.inbox, newest)
                        .await;
                    self.forward(items, false).await?;
                }
                Err(err) => self.retry_later(&err),
            }
        }
        Ok(())
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
                self.retry_later(&err);
                Ok(())
            }
        }
    }

    /// An inbox read failed (mid-election, say): the reconciler checks again in a second.
    fn retry_later(&self, err: &natter_fabric::InboxError) {
        tracing::warn!(error = %err, "inbox read failed; retrying shortly");
        self.app.opened.note(&self.user);
    }

    async fn write_items(&mut self, items: &[StoredItem]) -> Result<(), End> {
        for item in items {
            self.unacked.track(&self.user, item.seq, &item.payload);
            match natter_schemas::inbox::with_seq(item.seq, &item.payload) {
                Some(frame) => self.write(frame).await?,
                None => tracing::error!(seq = item.seq, "inbox item is not a JSON object; skipped"),
            }
        }
        self.mailbox.set_sent(self.cursor.last());
        Ok(())
    }
}
