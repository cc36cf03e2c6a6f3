// The chat list: each conversation with its name, unread count, latest message and a
// bell with a slash when muted, the newest first. A click on one is handled by the page (app.js: it opens the chat).

import { app } from './context.js';
import { isMuted, mutedLabel } from './lists.js';
import * as store from './store.js';
import { $, element, mutedIcon } from './ui.js';

export function titleOf(c) {
  if (c.kind === 'group') return c.name;
  return c.peer === app.me ? `${app.me} (you)` : c.peer;
}

function preview(message) {
  if (!message) return '';
  const body = message.body;
  if (message.deleted) return deletedText(message);
  const text = body.kind === 'text' ? body.text : `${KIND_NAMES[body.kind] ?? 'File'}: ${body.caption ?? ''}`;
  return message.from === app.me ? `You: ${text}` : text;
}

/** A tombstone's words, as WhatsApp's: who deleted it, when it was not its author. */
export function deletedText(m) {
  const by = m.deleted?.by ?? m.from;
  if (by === app.me) return 'You deleted this message';
  return by === m.from ? 'This message was deleted' : `This message was deleted by ${by}`;
}

const KIND_NAMES = { image: 'Photo', video: 'Video', audio: 'Audio', document: 'File', media: 'File' };

/** Redraws the chat list, and the page title with the unread count. */
export function renderConversations() {
  const list = $('conversations');
  const now = Date.now();
  list.replaceChildren(
    ...store.sortedConversations(app.state).map((c) => {
      const button = element('button', { type: 'button', 'data-conv': c.id });
      if (c.id === app.openConv) button.setAttribute('aria-current', 'true');
      button.append(element('span', { class: 'conv-name' }, titleOf(c)));
      const until = app.state.muted?.[c.id];
      if (isMuted(app.state, c.id, now)) button.append(element('span', { class: 'conv-muted' }, mutedIcon(mutedLabel(until))));
      if (c.unread > 0) {
        button.append(element('span', { class: 'unread', 'aria-label': `${c.unread} unread` }, String(c.unread)));
      }
      button.append(element('span', { class: 'conv-last' }, preview(store.visibleMessages(c).at(-1))));
      return element('li', {}, button);
    }),
  );
  const unread = store.totalUnread(app.state);
  document.title = unread > 0 ? `(${unread}) Natter` : 'Natter';
}
