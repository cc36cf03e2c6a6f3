// What the server keeps for the user beyond the inbox, as this device holds it: the chat
// list (`conversations`), the privacy settings and mutes (`settings`), and the users one
// blocked (`blocked`). Plain functions on the state of store.js, tested without a browser.
//
// - `state.muted` {conv: until (ms since the epoch)} is replaced by each `settings` answer
//   (it names every mute) and kept up to date per conversation by the chat list's
//   `muted_until`; a mute counts while `until` is in the future (18446744073709551615,
//   read as 1.8e19, is for good).
// - `state.blocked` [user] is replaced by each `blocked` answer.
// - `state.privacy` {last_seen, online, read_receipts} is the last `settings` answer's.

import { applyLatest, conversation } from './store.js';

/** The `until` the server sends for a mute with no end (u64::MAX, as JSON reads it). */
export const FOREVER = 18446744073709551615;
/** The choices of the privacy settings, in the order shown. */
export const AUDIENCES = ['everyone', 'contacts', 'nobody'];
/** Mute choices as WhatsApp offers them: `hours` null is always. */
export const MUTE_CHOICES = [
  { label: 'Mute for 8 hours', hours: 8 },
  { label: 'Mute for 1 week', hours: 7 * 24 },
  { label: 'Mute always', hours: null },
];

/**
 * Merges a page of the chat list: names of groups, the latest message (a preview until
 * the chat is opened), mutes and unread counts. The server's `unread` counts the
 * messages up to the listed one; those this device holds that are newer (the list is a
 * few milliseconds behind the inbox) are added, unless read here, and the inbox then
 * counts only messages newer than the listed one. The chat on screen (`viewing`) stays
 * at 0. Returns the conversations changed.
 */
export function applyConversations(state, me, page, { viewing } = {}) {
  state.muted ??= {};
  return page.conversations.map((entry) => {
    const c = conversation(state, me, entry.conv);
    if (entry.name) c.name = entry.name;
    const at = idTime(entry.at);
    if (at > (c.listedTs ?? 0)) c.listedTs = at;
    if (entry.muted_until != null) state.muted[entry.conv] = entry.muted_until;
    else delete state.muted[entry.conv];
    const upTo = entry.last?.id;
    if (entry.last) applyLatest(state, me, entry.conv, entry.last);
    if (entry.conv === viewing) {
      c.unread = 0;
    } else {
      const newer = c.messages.filter((m) => m.id && m.from !== me && !m.partial &&
        (!upTo || m.id > upTo) && (!c.readUpTo || m.id > c.readUpTo));
      c.unread = entry.unread + newer.length;
    }
    if (upTo && !(c.countedUpTo >= upTo)) c.countedUpTo = upTo;
    return c;
  });
}

/** The time in a UUIDv7 id (its first 48 bits, ms since the epoch), or 0. */
export function idTime(id) {
  const ms = parseInt(String(id ?? '').replaceAll('-', '').slice(0, 12), 16);
  return Number.isFinite(ms) ? ms : 0;
}

/** A `settings` answer: privacy, and every mute (those that ran out are not named). */
export function applySettings(state, settings) {
  const { last_seen, online, read_receipts } = settings;
  state.privacy = { last_seen, online, read_receipts: read_receipts ?? true };
  state.muted = { ...(settings.muted ?? {}) };
}

/** A `blocked` answer: every user one blocked. */
export function applyBlocked(state, users) {
  state.blocked = [...users];
}

/** Whether `conv` is muted at `now`. */
export function isMuted(state, conv, now) {
  return (state.muted?.[conv] ?? 0) > now;
}

/** The `until` of a mute `hours` long from `now`, or undefined for always. */
export function muteUntil(hours, now) {
  return hours == null ? undefined : now + hours * 60 * 60 * 1000;
}

/** Whether the one-on-one conversation `c` is with someone one blocked. */
export function isBlocked(state, c) {
  return Boolean(c) && c.kind === 'dm' && (state.blocked ?? []).includes(c.peer);
}

/** "Muted", or "Muted until <when>" for a mute that ends (for a tooltip). */
export function mutedLabel(until, format = (ts) => new Date(ts).toLocaleString()) {
  return until >= FOREVER / 2 ? 'Muted' : `Muted until ${format(until)}`;
}
