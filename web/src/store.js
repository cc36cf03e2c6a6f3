// What one device knows about its conversations, and the rules that change it.
//
// The state is a plain object (so it can be saved as JSON in localStorage and tested
// without a browser): `convs` maps a conversation id (`dm:<a>:<b>` or `group:<gid>`) to
//   {id, kind: "dm" | "group", peer?, name?, members?, left?, unread, readUpTo?,
//    more?: boolean (older messages in history; absent until the first page),
//    messages: [{id?, clientId?, from, ts, body, status?, error?}]}
// Messages are kept in id order (server ids are UUIDv7: time-ordered as strings), with
// the ones still waiting for `sent` (no id yet) at the end. `status` on one's own
// messages is the ticks: pending → sent → delivered → read, never backwards (receipts
// can come in any order), or failed.

/** Messages kept per conversation; older ones are paged from history again. */
export const KEPT_PER_CONV = 300;

const RANK = { failed: -1, pending: 0, sent: 1, delivered: 2, read: 3 };

export function emptyState() {
  return { convs: {} };
}

export function loadState(storage, key) {
  try {
    return JSON.parse(storage.getItem(key)) ?? emptyState();
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
  const latest = (c) => c.messages.at(-1)?.ts ?? c.createdTs ?? 0;
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
    insert(c, { ...message, id, ts, status: 'sent' });
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
 * Applies an inbox item (`msg`, `receipt`, `group_event`). `viewing` is the conversation
 * on screen (its new messages do not count as unread). Returns the conversation changed.
 */
export function applyItem(state, me, item, { viewing } = {}) {
  switch (item.type) {
    case 'msg':
      return applyMessage(state, me, item, viewing);
    case 'receipt':
      return applyReceipt(state, me, item);
    case 'group_event':
      return applyGroupEvent(state, me, item);
    default:
      return null;
  }
}

function applyMessage(state, me, item, viewing) {
  const c = conversation(state, me, item.conv);
  if (c.messages.some((m) => m.id === item.id)) return c;
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
  if (item.from !== me && item.conv !== viewing) c.unread += 1;
  return c;
}

function applyReceipt(state, me, receipt) {
  const c = state.convs[receipt.conv];
  if (!c) return null;
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
    if (event.members.includes(me)) c.left = true;
  }
  return c;
}

/** A `group` answer (after creating or changing a group). */
export function applyGroup(state, me, group, ts) {
  const c = conversation(state, me, `group:${group.id}`);
  c.name = group.name;
  c.members = [...group.members];
  c.left = !group.members.includes(me);
  c.createdTs ??= ts;
  return c;
}

/** Merges a `history` page; its messages are older than or equal to what is held. */
export function applyHistory(state, me, page) {
  const c = conversation(state, me, page.conv);
  for (const h of page.messages) {
    const held = c.messages.find((m) => m.id === h.id);
    if (held) {
      if (h.status) raise(held, h.status);
      continue;
    }
    const message = { id: h.id, from: h.from, ts: h.ts, body: h.body };
    if (h.reply_to) message.reply_to = h.reply_to;
    if (h.from === me) message.status = h.status ?? 'sent';
    insert(c, message, { older: true });
  }
  c.more = page.more;
  return c;
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
