// What one device knows about its conversations, and the rules that change it.
//
// The state is a plain object (so it can be saved as JSON in localStorage and tested
// without a browser): `convs` maps a conversation id (`dm:<a>:<b>` or `group:<gid>`) to
//   {id, kind: "dm" | "group", peer?, name?, members?, left?, unread, readUpTo?,
//    more?: boolean (older messages in history; absent until the first page),
//    admins?: [user], hidden?: [message id], listedTs?, countedUpTo?: message id,
//    messages: [{id?, clientId?, from, ts, body, status?, error?, edited?, editRev?,
//                deleted?: {by, ts}, reactions?: {member: {emoji, rev}},
//                reactionsUnnamed?: {emoji: count}, partial?: true}]}
// and `muted` {conv: until}, `blocked` [user], `privacy` {last_seen, online} are what the
// server last said of the user's settings (lists.js).
// Messages are kept in id order (server ids are UUIDv7: time-ordered as strings), with
// the ones still waiting for `sent` (no id yet) at the end. `status` on one's own
// messages is the ticks: pending → sent → delivered → read, never backwards (receipts
// can come in any order), or failed.
//
// Changes (`edit`, `delete`, `reaction` items) follow the server's rules, so they can be
// applied in any order and more than once: of two edits, or two reactions by one member,
// the higher `rev` wins; a deletion is final and leaves a tombstone. A change for a
// message this device does not hold waits in `state.pending` (bounded) until the message
// comes, by the inbox or a history page.
//
// Reactions are kept per member where the device saw them as items (`reactions`), but a
// history page only counts them by emoji: the part of a page's counts that no known member
// explains is kept as `reactionsUnnamed`. Shown counts are the two added up.
//
// The chat list (`conversations`) brings each conversation's latest message, held as
// `partial` (a long text is cut) until the inbox or a history page brings all of it, and
// an unread count that covers the messages up to it (`countedUpTo`): the inbox then counts
// only the newer ones.

/** Messages kept per conversation; older ones are paged from history again. */
export const KEPT_PER_CONV = 300;

/** Changes waiting for a message not held yet (over all conversations). */
export const PENDING_CHANGES_KEPT = 500;
/** Messages hidden with "delete for me", remembered per conversation. */
export const HIDDEN_KEPT = 1_000;
/** The server's windows (docs/PROTOCOL.md): the menu offers only what it would take. */
export const EDIT_WINDOW_MS = 15 * 60 * 1000;
export const DELETE_WINDOW_MS = 48 * 60 * 60 * 1000;
/** The reactions offered at a tap (as WhatsApp's); others sent by other clients show too. */
export const QUICK_REACTIONS = ['👍', '❤️', '😂', '😮', '😢', '🙏'];

const RANK = { failed: -1, pending: 0, sent: 1, delivered: 2, read: 3 };

export function emptyState() {
  return { convs: {}, pending: {} };
}

export function loadState(storage, key) {
  try {
    const state = JSON.parse(storage.getItem(key)) ?? emptyState();
    // Saved by a client that did not know changes yet.
    state.pending ??= {};
    return state;
  } catch {
    return emptyState();
  }
}

export function saveState(storage, key, state) {
  storage.setItem(key, JSON.stringify(state));
}

/** The one-on-one conversation id of `me` and `other` (byte order, as the server does). */
export function dmId(me, other) {
  return me < other ? `dm:${me}:${other}` : `dm:${other}:${me}`;
}

/** The `to` of a send into `conv`. */
export function targetOf(me, conv) {
  if (conv.startsWith('group:')) return conv;
  return `user:${peerOf(me, conv)}`;
}

/** The other person of a one-on-one conversation (oneself for a note to self). */
export function peerOf(me, conv) {
  const [, a, b] = conv.split(':');
  return a === me ? b : a;
}

/** The conversation `id`, created empty when new. */
export function conversation(state, me, id) {
  if (!state.convs[id]) {
    state.convs[id] = id.startsWith('group:')
      ? { id, kind: 'group', name: id.slice('group:'.length), members: [], unread: 0, messages: [] }
      : { id, kind: 'dm', peer: peerOf(me, id), unread: 0, messages: [] };
  }
  return state.convs[id];
}

/** Conversations, the one with the newest message first. */
export function sortedConversations(state) {
  const latest = (c) => c.messages.at(-1)?.ts ?? c.listedTs ?? c.createdTs ?? 0;
  return Object.values(state.convs).sort((a, b) => latest(b) - latest(a));
}

/** Adds one's own message, not sent yet. */
export function addOutgoing(state, me, conv, { clientId, body, ts }) {
  const c = conversation(state, me, conv);
  c.messages.push({ clientId, from: me, ts, body, status: 'pending' });
  return c;
}

/** A send became durable: the pending message gets its server id. */
export function markSent(state, me, { clientId, id, conv, ts }) {
  const c = conversation(state, me, conv);
  const pending = c.messages.findIndex((m) => m.clientId === clientId && !m.id);
  const message = pending >= 0 ? c.messages.splice(pending, 1)[0] : null;
  const echoed = c.messages.find((m) => m.id === id);
  if (echoed) {
    raise(echoed, 'sent');
  } else if (message) {
    const sent = { ...message, id, ts, status: 'sent' };
    insert(c, sent);
    applyPending(state, sent);
  }
  return c;
}

export function markFailed(state, clientId, message) {
  for (const c of Object.values(state.convs)) {
    const m = c.messages.find((x) => x.clientId === clientId && !x.id);
    if (m) {
      m.status = 'failed';
      m.error = message;
      return c;
    }
  }
  return null;
}

/**
 * Applies an inbox item (`msg`, `receipt`, `group_event`, `edit`, `delete`, `reaction`).
 * `viewing` is the conversation on screen (its new messages do not count as unread).
 * Returns the conversation changed, or null.
 */
export function applyItem(state, me, item, { viewing } = {}) {
  switch (item.type) {
    case 'msg':
      return applyMessage(state, me, item, viewing);
    case 'receipt':
      return applyReceipt(state, me, item);
    case 'group_event':
      return applyGroupEvent(state, me, item);
    case 'edit':
    case 'delete':
    case 'reaction':
      return applyChange(state, item);
    default:
      return null;
  }
}

function applyMessage(state, me, item, viewing) {
  const c = conversation(state, me, item.conv);
  const held = c.messages.find((m) => m.id === item.id);
  if (held) {
    // The chat list's preview of it: the item has all of it (unless changed since).
    if (held.partial && !held.deleted && held.edited == null) {
      held.body = item.body;
      delete held.partial;
    }
    return c;
  }
  let message = { id: item.id, from: item.from, ts: item.ts, body: item.body };
  if (item.reply_to) message.reply_to = item.reply_to;
  if (item.from === me) {
    message.status = 'sent';
    // One's own message can come back through the inbox before its `sent` (both copies
    // are stored before `sent` is answered): the oldest pending one with the same body is
    // that message and takes its id, so it never shows twice. Should it be another
    // device's look-alike instead, this device's own copy still arrives under its own id.
    const twin = c.messages.findIndex((m) => !m.id && m.status === 'pending' && sameBody(m.body, item.body));
    if (twin >= 0) message = { ...c.messages.splice(twin, 1)[0], ...message };
  }
  insert(c, message);
  applyPending(state, message);
  // The chat list's count covers messages up to `countedUpTo` already.
  const counted = c.countedUpTo && item.id <= c.countedUpTo;
  if (item.from !== me && item.conv !== viewing && !counted) c.unread += 1;
  return c;
}

function applyReceipt(state, me, receipt) {
  const c = state.convs[receipt.conv];
  if (!c) return null;
  // Your own read on another device, kept from the peer (read receipts off): no ticks.
  if (receipt.by === me) {
    if (receipt.status !== 'read' || (c.readUpTo && c.readUpTo >= receipt.id)) return c;
    c.readUpTo = receipt.id;
    const newer = c.messages.filter((m) => m.id > receipt.id && m.from !== me).length;
    c.unread = Math.min(c.unread, newer);
    return c;
  }
  // Ticks in a group show what every member did: only receipts that say `all` count.
  if (c.kind === 'group' && !receipt.all) return c;
  // Every receipt is a watermark: it covers the message it names and each earlier one.
  for (const m of c.messages) {
    if (m.from === me && m.id && m.id <= receipt.id) raise(m, receipt.status);
  }
  return c;
}

function applyGroupEvent(state, me, event) {
  const c = conversation(state, me, `group:${event.group}`);
  if (event.name) c.name = event.name;
  c.createdTs ??= event.ts;
  const members = new Set(c.members);
  if (event.event === 'created') {
    c.members = [...event.members];
    c.left = false;
  } else if (event.event === 'added') {
    event.members.forEach((u) => members.add(u));
    c.members = [...members];
    if (event.members.includes(me)) c.left = false;
  } else {
    event.members.forEach((u) => members.delete(u));
    c.members = [...members];
    // Events name the admins only when they changed them: someone gone is no admin.
    if (c.admins) c.admins = c.admins.filter((u) => !event.members.includes(u));
    if (event.members.includes(me)) c.left = true;
  }
  if (event.admins) c.admins = [...event.admins];
  return c;
}

/** A `group` answer (after creating or changing a group). */
export function applyGroup(state, me, group, ts) {
  const c = conversation(state, me, `group:${group.id}`);
  c.name = group.name;
  c.members = [...group.members];
  if (group.admins) c.admins = [...group.admins];
  c.left = !group.members.includes(me);
  c.createdTs ??= ts;
  return c;
}

/** Merges a `history` page; its messages are older than or equal to what is held. */
export function applyHistory(state, me, page) {
  const c = conversation(state, me, page.conv);
  for (const h of page.messages) {
    const held = c.messages.find((m) => m.id === h.id);
    if (held && !held.partial) {
      if (h.status) raise(held, h.status);
      mergeHistory(held, h, me);
      continue;
    }
    const message = fromPage(h, me);
    if (held) {
      // The chat list's preview: the page has all of it, and is as new.
      if (held.reactions) message.reactions = held.reactions;
      raise(message, held.status);
      c.messages[c.messages.indexOf(held)] = message;
    } else {
      insert(c, message, { older: true });
    }
    // Changes that came first count before the page's reaction counts are split up.
    applyPending(state, message);
    mergeHistory(message, h, me);
  }
  c.more = page.more;
  return c;
}

/**
 * The latest message of a conversation as the chat list shows it (`last`, in history's
 * form, a long text cut to 200 characters). One held already only gets newer ticks;
 * otherwise it is held as `partial` until the inbox or a history page brings all of it.
 */
export function applyLatest(state, me, conv, h) {
  const c = conversation(state, me, conv);
  const held = c.messages.find((m) => m.id === h.id);
  if (held && !held.partial) {
    if (h.status) raise(held, h.status);
    return c;
  }
  if (held) c.messages.splice(c.messages.indexOf(held), 1);
  const message = { ...fromPage(h, me), partial: true };
  insert(c, message, { older: true });
  applyPending(state, message);
  mergeHistory(message, h, me);
  return c;
}

/** A message of a history page (or the chat list) as this device holds it. */
function fromPage(h, me) {
  const message = { id: h.id, from: h.from, ts: h.ts, body: h.body };
  if (h.reply_to) message.reply_to = h.reply_to;
  if (h.edited != null) message.edited = h.edited;
  if (h.from === me) message.status = h.status ?? 'sent';
  return message;
}

/**
 * What a history page says about a message (its latest body, `edited`, `deleted`,
 * `reactions`, `my_reaction`) merged into what the device holds. The page carries no
 * `rev`s, so it is weighed by time: a page can be a few milliseconds behind the inbox
 * (history is written after it), and then what the items said stays.
 */
function mergeHistory(m, h, me) {
  if (h.deleted) {
    if (!m.deleted) tombstone(m, h.deleted);
    return;
  }
  if (m.deleted) return;
  if (h.edited != null && (m.edited == null || h.edited > m.edited)) {
    m.body = h.body;
    m.edited = h.edited;
    // The page's edit is newer than any item held: from now on time decides.
    delete m.editRev;
  }
  // One's own reaction is named by the page; any item about it (rev > '') is newer.
  if (h.my_reaction && !m.reactions?.[me]) {
    m.reactions = { ...m.reactions, [me]: { emoji: h.my_reaction, rev: '' } };
  }
  const named = tally(m.reactions);
  const unnamed = {};
  for (const [emoji, count] of Object.entries(h.reactions ?? {})) {
    const rest = count - (named[emoji] ?? 0);
    if (rest > 0) unnamed[emoji] = rest;
  }
  if (Object.keys(unnamed).length > 0) m.reactionsUnnamed = unnamed;
  else delete m.reactionsUnnamed;
}

/**
 * An `edit`, `delete` or `reaction` item (or the same built from a `changed` answer).
 * Returns the conversation changed, or null when the message is not held (the change
 * then waits for it).
 */
export function applyChange(state, change) {
  const c = state.convs[change.conv];
  const m = c?.messages.find((x) => x.id === change.id);
  if (!m) {
    keepPending(state, change);
    return null;
  }
  changeMessage(m, change);
  return c;
}

function changeMessage(m, change) {
  if (change.type === 'delete') {
    // The first deletion is the one kept (as history keeps it); a second changes nothing.
    if (!m.deleted || (m.deleteRev && change.rev < m.deleteRev)) {
      tombstone(m, { by: change.from, ts: change.ts });
      m.deleteRev = change.rev;
    }
    return;
  }
  if (m.deleted) return;
  if (change.type === 'edit' && newerEdit(m, change)) {
    m.body = change.body;
    m.edited = change.ts;
    m.editRev = change.rev;
  } else if (change.type === 'reaction') {
    const held = m.reactions?.[change.from];
    if (!held || held.rev < change.rev) {
      // A taken-back reaction is kept as `emoji: null`, so an older one replayed loses.
      m.reactions = { ...m.reactions, [change.from]: { emoji: change.emoji ?? null, rev: change.rev } };
    }
  }
}

/** Whether `edit` is newer than the body held: by `rev`, or by time for a page's edit. */
function newerEdit(m, edit) {
  if (m.editRev) return edit.rev > m.editRev;
  if (m.edited != null) return edit.ts >= m.edited;
  return true;
}

/** A message deleted for everyone: nothing of it stays but who deleted it and when. */
function tombstone(m, deleted) {
  m.body = { kind: 'deleted' };
  m.deleted = { by: deleted.by, ts: deleted.ts };
  for (const key of ['edited', 'editRev', 'reactions', 'reactionsUnnamed', 'reply_to']) delete m[key];
}

function keepPending(state, change) {
  state.pending ??= {};
  const waiting = (state.pending[change.id] ??= []);
  if (waiting.some((w) => w.type === change.type && w.rev === change.rev)) return;
  waiting.push(change);
  // Keys keep their insertion order (ids are not integers): the oldest wait is dropped.
  const ids = Object.keys(state.pending);
  for (const id of ids.slice(0, Math.max(0, ids.length - PENDING_CHANGES_KEPT))) delete state.pending[id];
}

/** The changes that came before `message` itself, applied now that it is held. */
function applyPending(state, message) {
  const waiting = state.pending?.[message.id];
  if (!waiting) return;
  delete state.pending[message.id];
  for (const change of waiting) changeMessage(message, change);
}

/** Members' reactions counted by emoji. */
function tally(reactions = {}) {
  const counts = {};
  for (const { emoji } of Object.values(reactions)) {
    if (emoji) counts[emoji] = (counts[emoji] ?? 0) + 1;
  }
  return counts;
}

/**
 * The reactions to show under `m`: [{emoji, count, mine}], the most frequent first, ties
 * in the picker's order (so chips do not swap places as items and pages come).
 */
export function reactionsOf(m, me) {
  const counts = tally(m.reactions);
  for (const [emoji, count] of Object.entries(m.reactionsUnnamed ?? {})) {
    counts[emoji] = (counts[emoji] ?? 0) + count;
  }
  const mine = myReaction(m, me);
  const place = (emoji) => (QUICK_REACTIONS.indexOf(emoji) + QUICK_REACTIONS.length + 1) % (QUICK_REACTIONS.length + 1);
  return Object.entries(counts)
    .map(([emoji, count]) => ({ emoji, count, mine: emoji === mine }))
    .sort((a, b) => b.count - a.count || place(a.emoji) - place(b.emoji) || (a.emoji < b.emoji ? -1 : 1));
}

/** One's own reaction to `m`, or null. */
export function myReaction(m, me) {
  return m.reactions?.[me]?.emoji ?? null;
}

/** Whether the server would take an edit of `m` from `me` now (author, kind, window). */
export function canEdit(m, me, now) {
  return Boolean(m.id) && m.from === me && !m.deleted && m.body.kind !== 'deleted' &&
    now - m.ts < EDIT_WINDOW_MS;
}

/**
 * Whether to offer "delete for everyone": one's own message within the window, or any
 * message in a group where this device knows `me` is an admin (else the server decides).
 */
export function canDeleteForEveryone(c, m, me, now) {
  if (!m.id || m.deleted || c.left) return false;
  if (m.from === me && now - m.ts < DELETE_WINDOW_MS) return true;
  return c.kind === 'group' && (c.admins ?? []).includes(me);
}

/** "Delete for me": the message stays on the server and is no longer shown here. */
export function hideMessage(state, conv, id) {
  const c = state.convs[conv];
  if (!c) return null;
  c.hidden = [...(c.hidden ?? []).filter((x) => x !== id), id].slice(-HIDDEN_KEPT);
  return c;
}

/** The messages to show: all but those deleted for me. */
export function visibleMessages(c) {
  if (!c.hidden?.length) return c.messages;
  const hidden = new Set(c.hidden);
  return c.messages.filter((m) => !hidden.has(m.id));
}

/**
 * The conversation is on screen: unread drops to 0. Answers the id to send in `read`
 * (the newest message from someone else not reported yet), or null.
 */
export function markRead(state, me, conv) {
  const c = state.convs[conv];
  if (!c) return null;
  c.unread = 0;
  const newest = c.messages.findLast((m) => m.id && m.from !== me);
  if (!newest || (c.readUpTo && c.readUpTo >= newest.id)) return null;
  return newest.id;
}

/** A `read` up to `id` went to the server. */
export function readReported(state, conv, id) {
  state.convs[conv].readUpTo = id;
}

/** The oldest server id held, for `history` `before`. */
export function oldestId(c) {
  return c.messages.find((m) => m.id)?.id;
}

/** Total unread over every conversation (for the title). */
export function totalUnread(state) {
  return Object.values(state.convs).reduce((n, c) => n + c.unread, 0);
}

function sameBody(a, b) {
  return ['kind', 'text', 'media_id', 'caption'].every((k) => (a?.[k] ?? null) === (b?.[k] ?? null));
}

function raise(message, status) {
  if ((RANK[status] ?? 0) > (RANK[message.status] ?? 0)) message.status = status;
}

/**
 * Puts `message` (which has an id) in id order before the pending ones, keeping at most
 * KEPT_PER_CONV. Dropping the oldest means there is history to page again.
 */
function insert(c, message, { older = false } = {}) {
  let at = c.messages.length;
  while (at > 0 && (!c.messages[at - 1].id || c.messages[at - 1].id > message.id)) at -= 1;
  c.messages.splice(at, 0, message);
  if (c.messages.length > KEPT_PER_CONV && !older) {
    c.messages.splice(0, c.messages.length - KEPT_PER_CONV);
    c.more = true;
  }
}
