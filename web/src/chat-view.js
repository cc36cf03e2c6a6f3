// The open chat: its header (name, muted, members, presence, typing), its messages with
// ticks, edits, tombstones, reactions and files (images inline, others to download), and
// the composer, or the bar that says the contact is blocked.

import { downloadMedia, mediaSize } from './api.js';
import { deletedText, titleOf } from './chat-list.js';
import { app } from './context.js';
import { isBlocked, isMuted, mutedLabel } from './lists.js';
import { closeMessageMenu, openMessageMenu, react } from './message-menu.js';
import * as store from './store.js';
import { $, element, mutedIcon, showNotice, time } from './ui.js';

/** media id → Promise of its blob: URL, or of its size: fetched once, redraws reuse them. */
const mediaUrls = new Map();
const mediaSizes = new Map();

/** Redraws the open chat; stays at the bottom if it was there (or `toBottom`). */
export function renderChat({ toBottom = false } = {}) {
  const c = app.openConv && app.state.convs[app.openConv];
  const list = $('messages');
  const blocked = isBlocked(app.state, c);
  $('composer').hidden = !c || c.left || blocked;
  $('blocked-bar').hidden = !blocked;
  $('chat-menu-button').hidden = !c;
  $('chat-title').textContent = c ? titleOf(c) : 'Choose a conversation';
  const muted = c && isMuted(app.state, c.id, Date.now());
  $('chat-muted').replaceChildren(...(muted ? [mutedIcon(mutedLabel(app.state.muted[c.id]))] : []));
  $('load-older').hidden = !c || c.more === false || c.more === undefined;
  renderSubtitle();
  if (!c) {
    list.replaceChildren();
    return;
  }
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren(...store.visibleMessages(c).map((m) => renderMessage(c, m)));
  if (toBottom || atBottom) list.scrollTop = list.scrollHeight;
}

export function renderSubtitle() {
  const c = app.openConv && app.state.convs[app.openConv];
  const line = $('chat-subtitle');
  if (!c) {
    line.textContent = '';
    return;
  }
  const now = Date.now();
  const typing = [...(app.typists.get(c.id) ?? new Map())].filter(([, until]) => until > now).map(([u]) => u);
  if (typing.length > 0) {
    line.textContent = c.kind === 'group' ? `${typing.join(', ')} typing…` : 'typing…';
  } else if (c.kind === 'group') {
    line.textContent = c.left ? 'You are no longer a member' : c.members.join(', ');
  } else if (isBlocked(app.state, c)) {
    // As WhatsApp: nothing of a blocked contact (a subscription made before the block
    // may still bring presence frames until the socket is replaced).
    line.textContent = '';
  } else {
    line.textContent = presenceText(app.presence.get(c.peer));
  }
}

function presenceText(seen) {
  if (!seen) return '';
  if (seen.online) return 'online';
  if (!seen.last_seen) return '';
  const when = new Date(seen.last_seen);
  const today = when.toDateString() === new Date().toDateString();
  return `last seen ${today ? 'today' : when.toLocaleDateString()} at ${time(seen.last_seen)}`;
}

function renderMessage(c, m) {
  const mine = m.from === app.me;
  const li = element('li', { class: mine ? 'message mine' : 'message theirs', 'data-id': m.id ?? m.clientId });
  if (m.deleted) li.classList.add('deleted');
  if (c.kind === 'group' && !mine) li.append(element('span', { class: 'sender' }, m.from));
  li.append(m.deleted ? renderTombstone(m) : renderBody(m.body));
  const meta = element('span', { class: 'meta' });
  if (m.edited != null && !m.deleted) meta.append(element('span', { class: 'edited' }, 'Edited'), ' ');
  meta.append(time(m.ts));
  if (mine && !m.deleted) meta.append(renderTicks(m.status));
  li.append(meta);
  if (m.status === 'failed') li.append(element('span', { class: 'error-text' }, m.error));
  if (m.id) {
    const target = { conv: c.id, id: m.id };
    const open = !$('message-menu').hidden && app.menuTarget?.id === m.id;
    const button = element('button', {
      type: 'button', class: 'menu-button', 'aria-label': 'Message options', 'aria-haspopup': 'menu', 'aria-expanded': String(open),
    }, '⌄');
    button.addEventListener('click', () => {
      if (!$('message-menu').hidden && app.menuTarget?.id === m.id) closeMessageMenu();
      else openMessageMenu(target, button.getBoundingClientRect());
    });
    li.append(button);
    li.addEventListener('contextmenu', (event) => {
      event.preventDefault();
      const at = { left: event.clientX, right: event.clientX, top: event.clientY, bottom: event.clientY };
      openMessageMenu(target, at);
    });
    const reactions = store.reactionsOf(m, app.me);
    if (reactions.length > 0) li.append(renderReactions(target, reactions));
  }
  return li;
}

function renderTombstone(m) {
  // ⊘ rather than an emoji: it needs no emoji font, and it is not read out.
  return element('span', { class: 'tombstone' }, element('span', { class: 'tombstone-mark', 'aria-hidden': 'true' }, '⊘'), ' ', deletedText(m));
}

/** The chips under a message: each emoji with its count, one's own highlighted; a tap
 * on a chip reacts with it (or takes one's own back). */
function renderReactions(target, reactions) {
  const row = element('div', { class: 'reactions', role: 'group', 'aria-label': 'Reactions' });
  for (const { emoji, count, mine } of reactions) {
    const label = `${emoji} ${count}${mine ? ', yours' : ''}`;
    const chip = element('button', { type: 'button', class: 'reaction', 'aria-pressed': String(mine), 'aria-label': label },
      emoji, element('span', { class: 'count' }, String(count)));
    chip.addEventListener('click', () => react(target, emoji));
    row.append(chip);
  }
  return row;
}

const TICKS = {
  pending: ['◷', 'Sending'],
  sent: ['✓', 'Sent'],
  delivered: ['✓✓', 'Delivered'],
  read: ['✓✓', 'Read'],
  failed: ['!', 'Not sent'],
};

function renderTicks(status) {
  const [mark, label] = TICKS[status] ?? TICKS.sent;
  return element('span', { class: 'ticks', 'data-status': status, role: 'img', 'aria-label': label }, mark);
}

function renderBody(body) {
  if (body.kind === 'text') return element('span', { class: 'text' }, body.text);
  const name = body.caption || body.kind;
  if (body.kind === 'image') {
    const img = element('img', { alt: name });
    if (body.thumbnail) img.src = body.thumbnail;
    mediaUrl(body.media_id).then((url) => (img.src = url), () => (img.alt = `${name} (could not be loaded)`));
    return img;
  }
  const link = element('a', { class: 'file', href: '#', download: name }, `↓ ${name}`);
  fetchOnce(mediaSizes, body.media_id, () => mediaSize(app.token, body.media_id)).then(
    (size) => link.append(` (${formatSize(size)})`),
    () => {},
  );
  link.addEventListener('click', async (event) => {
    if (link.getAttribute('href') !== '#') return;
    event.preventDefault();
    try {
      link.href = await mediaUrl(body.media_id);
      link.click();
    } catch (error) {
      showNotice(`${name} could not be downloaded: ${error.message}`);
    }
  });
  return link;
}

function mediaUrl(id) {
  return fetchOnce(mediaUrls, id, async () => URL.createObjectURL(await downloadMedia(app.token, id)));
}

/** `load()` once per `id` (a failure is forgotten, so a later redraw tries again). */
function fetchOnce(cache, id, load) {
  if (!cache.has(id)) {
    const promise = retryNotFound(load);
    promise.catch(() => cache.delete(id));
    cache.set(id, promise);
  }
  return cache.get(id);
}

/**
 * A file that just arrived can answer 404 for a moment (the server records who may see
 * it as the message is fanned out): retry then, 4 times over about 4 s.
 */
async function retryNotFound(load) {
  for (let attempt = 0; ; attempt += 1) {
    try {
      return await load();
    } catch (error) {
      if (error.status !== 404 || attempt === 4) throw error;
      await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempt));
    }
  }
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** A deleted message's file is gone for this conversation: drop the copy made for it. */
export function forgetFile(conv, id) {
  const mediaId = app.state.convs[conv]?.messages.find((m) => m.id === id)?.body.media_id;
  if (!mediaId || !mediaUrls.has(mediaId)) return;
  mediaUrls.get(mediaId).then((url) => URL.revokeObjectURL(url), () => {});
  mediaUrls.delete(mediaId);
}
