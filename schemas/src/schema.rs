//! The JSON Schema of every frame, as checked in under `schemas/json/`.

use schemars::{JsonSchema, Schema, schema_for};

use crate::*;

/// (file stem, schema) for every frame and for the three unions a client parses.
pub fn all() -> Vec<(&'static str, Schema)> {
    fn one<T: JsonSchema>(name: &'static str) -> (&'static str, Schema) {
        (name, schema_for!(T))
    }
    vec![
        one::<ClientFrame>("client_frame"),
        one::<ServerFrame>("server_frame"),
        one::<HttpError>("http_error"),
        one::<Delivered>("inbox_frame"),
        one::<Hello>("hello"),
        one::<Send>("send"),
        one::<Sent>("sent"),
        one::<Edit>("edit"),
        one::<Delete>("delete"),
        one::<React>("react"),
        one::<Changed>("changed"),
        one::<Block>("block"),
        one::<Blocks>("blocks"),
        one::<Blocked>("blocked"),
        one::<ConversationsRequest>("conversations"),
        one::<ConversationsPage>("conversations_page"),
        one::<SettingsChange>("settings"),
        one::<SettingsFrame>("settings_frame"),
        one::<Mute>("mute"),
        one::<Unmute>("unmute"),
        one::<EditItem>("edit_item"),
        one::<DeleteItem>("delete_item"),
        one::<ReactionItem>("reaction_item"),
        one::<Ack>("ack"),
        one::<Read>("read"),
        one::<Typing>("typing"),
        one::<TypingNotice>("typing_notice"),
        one::<HistoryRequest>("history"),
        one::<HistoryPage>("history_page"),
        one::<GroupCreate>("group_create"),
        one::<GroupChange>("group_change"),
        one::<GroupLeave>("group_leave"),
        one::<GroupInfo>("group"),
        one::<GroupEventItem>("group_event"),
        one::<PresenceSubscribe>("presence_subscribe"),
        one::<Presence>("presence"),
        one::<Ping>("ping"),
        one::<Pong>("pong"),
        one::<ErrorFrame>("error"),
        one::<MessageItem>("msg"),
        one::<ReceiptItem>("receipt"),
        one::<Body>("body"),
    ]
}

/// The text written to `schemas/json/<stem>.json`.
pub fn render(schema: &Schema) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("schemas serialize");
    text.push('\n');
    text
}
