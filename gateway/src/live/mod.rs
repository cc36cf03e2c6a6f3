//! Live delivery at the gateway: how stored inbox items and notices reach sockets.
//!
//! - [`hub`]: one NATS subscription per online user, one dispatcher for all of them;
//! - [`mailbox`]: each socket's bounded share of what the dispatcher hands out;
//! - [`cursor`]: each socket's place in its inbox (catch-up, gaps, repair);
//! - [`reads`]: the newest sequences of many inboxes in one request;
//! - [`oldest`]: the oldest item the inbox holds, for `hello`'s `resumed`;
//! - [`reconcile`]: when sockets check what they sent against their inbox;
//! - [`wheel`]: one keepalive timer for every socket.

pub(crate) mod cursor;
mod hub;
pub(crate) mod mailbox;
pub(crate) mod oldest;
pub(crate) mod reads;
pub(crate) mod reconcile;
pub(crate) mod wheel;

pub(crate) use hub::{Attached, FlushFailed, LiveHub};
