//! Group management frames.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Client → server: a new group with the sender as its admin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupCreate {
    pub name: String,
    pub members: Vec<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Client → server: `group_add` or `group_remove` (admins only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupChange {
    pub group: String,
    pub members: Vec<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupLeave {
    pub group: String,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// Server → client: a group as it stands after the caller's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupInfo {
    pub id: String,
    pub name: String,
    /// Members in the order they joined.
    pub members: Vec<String>,
    pub admins: Vec<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
}

/// What happened to a group's membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupEventKind {
    Created,
    Added,
    Removed,
    Left,
}

/// An inbox item in the inbox of every member a change concerns (the members after it,
/// and whoever was removed or left), so all their devices converge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupEventItem {
    pub group: String,
    pub event: GroupEventKind,
    /// `created`: every member; `added`/`removed`: the members added or removed;
    /// `left`: the member who left.
    pub members: Vec<String>,
    pub by: String,
    pub ts: crate::Millis,
    /// The group's name (on `created`, and whenever a client may not know it yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The admins after the change, when it changed them (the last admin left and
    /// another member was promoted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admins: Option<Vec<String>>,
}
