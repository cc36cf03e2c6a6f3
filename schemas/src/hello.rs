//! `hello`: the first frame of every socket, before any inbox item.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Server → client, once, as a socket opens: where its inbox items resume and whether
/// nothing is missing in between.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Hello {
    /// Inbox items come after this sequence: the `after` the device asked for, or the
    /// inbox's newest item when `after` was beyond it.
    pub after: u64,
    /// The inbox's newest sequence as the socket opened: catch-up is over once the device
    /// has it (0: the inbox is empty).
    pub newest: u64,
    /// The oldest sequence the inbox still holds (of any user: sequences are shared);
    /// items below it expired.
    pub oldest: u64,
    /// `false` when items after `after` may have expired (the inbox keeps 30 days) before
    /// the device came back: its local state has a gap, to fill from history.
    pub resumed: bool,
}
