//! Identity rules: user, group, device and message ids, conversation ids and send targets.
//!
//! Ids end up inside NATS subjects (`inbox.<uid>`), so anything outside
//! `^[A-Za-z0-9_-]{1,64}$` is refused here, never escaped.

use std::fmt;

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why an id, a conversation or a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")]
    BadId { what: &'static str },
    #[error("conversation must be `dm:<a>:<b>` with a < b, or `group:<id>`")]
    BadConversation,
    #[error("`to` must be `user:<id>` or `group:<id>`")]
    BadTarget,
}

/// Checks one id (user, group, device, message or client id).
pub fn check_id(id: &str, what: &'static str) -> Result<(), IdError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(IdError::BadId { what })
    }
}

/// Where a `send` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    Group(String),
}

impl Target {
    pub fn parse(to: &str) -> Result<Self, IdError> {
        if let Some(user) = to.strip_prefix("user:") {
            check_id(user, "user id")?;
            Ok(Self::User(user.to_owned()))
        } else if let Some(group) = to.strip_prefix("group:") {
            check_id(group, "group id")?;
            Ok(Self::Group(group.to_owned()))
        } else {
            Err(IdError::BadTarget)
        }
    }
}

/// A conversation: a one-on-one pair in byte order, or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Conversation {
    Direct { a: String, b: String },
    Group(String),
}

impl Conversation {
    /// The one-on-one conversation of two users, whichever order they come in.
    /// A user writing to themselves gets `dm:<u>:<u>` ("message yourself").
    pub fn direct(x: &str, y: &str) -> Self {
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        Self::Direct {
            a: a.to_owned(),
            b: b.to_owned(),
        }
    }

    /// The conversation a sender reaches with `target`.
    pub fn of_send(sender: &str, target: &Target) -> Self {
        match target {
            Target::User(peer) => Self::direct(sender, peer),
            Target::Group(gid) => Self::Group(gid.clone()),
        }
    }

    pub fn parse(conv: &str) -> Result<Self, IdError> {
        if let Some(pair) = conv.strip_prefix("dm:") {
            let (a, b) = pair.split_once(':').ok_or(IdError::BadConversation)?;
            check_id(a, "user id").map_err(|_| IdError::BadConversation)?;
            check_id(b, "user id").map_err(|_| IdError::BadConversation)?;
            if a > b {
                return Err(IdError::BadConversation);
            }
            Ok(Self::Direct {
                a: a.to_owned(),
                b: b.to_owned(),
            })
        } else if let Some(gid) = conv.strip_prefix("group:") {
            check_id(gid, "group id").map_err(|_| IdError::BadConversation)?;
            Ok(Self::Group(gid.to_owned()))
        } else {
            Err(IdError::BadConversation)
        }
    }

    /// For a one-on-one conversation that `user` is part of, the other user
    /// (`user` again for their own notes). `None` for groups and outsiders.
    pub fn peer_of(&self, user: &str) -> Option<&str> {
        match self {
            Self::Direct { a, b } if a == user => Some(b),
            Self::Direct { a, b } if b == user => Some(a),
            _ => None,
        }
    }
}

impl fmt::Display for Conversation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct { a, b } => write!(f, "dm:{a}:{b}"),
            Self::Group(gid) => write!(f, "group:{gid}"),
        }
    }
}

/// The prefix every message id (a UUIDv7) made at `ms` (milliseconds since the epoch)
/// starts with: `tttttttt-tttt`, 48 bits of time in lowercase hex. Ids made earlier sort
/// below it, so a time bound is an id bound.
pub fn id_prefix_at(ms: u64) -> String {
    let hex = format!("{:012x}", ms & 0xFFFF_FFFF_FFFF);
    format!("{}-{}", &hex[..8], &hex[8..])
}

/// When message id `id` was made (milliseconds since the epoch), if it is one: a UUIDv7
/// in its canonical text form (lowercase hex, dashes at 8, 13, 18, 23).
pub fn message_time(id: &str) -> Option<u64> {
    let bytes = id.as_bytes();
    let shaped = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
        })
        && bytes[14] == b'7';
    if !shaped {
        return None;
    }
    u64::from_str_radix(&format!("{}{}", &id[..8], &id[9..13]), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_alphabet_only() {
        for good in ["alice", "A_b-9", &"x".repeat(64)] {
            assert_eq!(check_id(good, "user id"), Ok(()), "{good}");
        }
        for bad in [
            "",
            "a.b",
            "a*",
            "a>",
            "a b",
            "ü",
            &"x".repeat(65),
            "a\n",
            "inbox.bob",
        ] {
            assert!(check_id(bad, "user id").is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn targets_parse_users_and_groups_and_refuse_the_rest() {
        assert_eq!(Target::parse("user:bob"), Ok(Target::User("bob".into())));
        assert_eq!(Target::parse("group:g1"), Ok(Target::Group("g1".into())));
        assert_eq!(Target::parse("bob"), Err(IdError::BadTarget));
        assert!(Target::parse("user:bob.>").is_err());
        assert!(Target::parse("user:").is_err());
    }

    #[test]
    fn direct_conversations_are_ordered_and_round_trip() {
        let c = Conversation::direct("zed", "amy");
        assert_eq!(c.to_string(), "dm:amy:zed");
        assert_eq!(Conversation::parse("dm:amy:zed"), Ok(c.clone()));
        assert_eq!(c.peer_of("amy"), Some("zed"));
        assert_eq!(c.peer_of("zed"), Some("amy"));
        assert_eq!(c.peer_of("eve"), None);
        assert_eq!(
            Conversation::parse("dm:zed:amy"),
            Err(IdError::BadConversation)
        );
        assert_eq!(Conversation::parse("dm:amy"), Err(IdError::BadConversation));
        assert_eq!(
            Conversation::parse("group:g"),
            Ok(Conversation::Group("g".into()))
        );
        assert!(Conversation::parse("group:g.x").is_err());
        assert!(Conversation::parse("chan:x").is_err());
    }

    #[test]
    fn message_ids_tell_when_they_were_made() {
        let id = "01a2244d-5569-756b-bd19-44adcb231731";
        assert_eq!(message_time(id), Some(0x01a2244d5569));
        assert_eq!(
            message_time(&id_prefix_at(5)[..]),
            None,
            "a prefix is not an id"
        );
        assert_eq!(message_time("zzzz"), None);
        assert_eq!(message_time(&id.replace('7', "4")), None, "not a v7");
        assert_eq!(message_time(&id.to_uppercase()), None);
    }

    #[test]
    fn time_prefixes_order_like_uuid_v7_ids() {
        let id = "01a2244d-5569-756b-bd19-44adcb231731";
        let ms = 0x01a2244d5569;
        assert!(id_prefix_at(ms).as_str() <= id);
        assert!(id_prefix_at(ms + 1).as_str() > id);
        assert_eq!(id_prefix_at(ms), "01a2244d-5569");
    }
}
