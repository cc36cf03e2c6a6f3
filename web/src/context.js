// What the screen's modules share: who is signed in, the connection, the state and the
// open chat, and the steps every change ends with (report what was read, save, redraw).

import { renderChat } from './chat-view.js';
import { renderConversations } from './chat-list.js';
import * as store from './store.js';

export const app = {
  me: null,
  device: null,
  token: null,
  /** The `Connection` (protocol.js), once signed in. */
  connection: null,
  state: store.emptyState(),
  stateKey: null,
  /** The conversation on screen, or null. */
  openConv: null,
  /** user → {online, last_seen} from `presence` frames (not kept: the server repeats them). */
  presence: new Map(),
  /** conv → Map(from → expiry time) of who is typing there. */
  typists: new Map(),
  /** The message being edited in the composer: {conv, id}, or null. */
  editing: null,
  /** The message the open menu or delete dialog is about: {conv, id}, or null. */
  menuTarget: null,
};

/** The open conversation if the page is on screen (messages there count as read). */
export function visibleConv() {
  return document.visibilityState === 'visible' ? app.openConv : null;
}

export function save() {
  store.saveState(localStorage, app.stateKey, app.state);
}

/** The message `target` {conv, id} and its conversation, when held: {c, m}, or null. */
export function heldMessage(target) {
  const c = target && app.state.convs[target.conv];
  const m = c?.messages.find((x) => x.id === target.id);
  return m ? { c, m } : null;
}

/** Tells the others up to where the open chat was read, when it is on screen. */
export function sendRead() {
  const conv = visibleConv();
  if (!conv) return;
  const upTo = store.markRead(app.state, app.me, conv);
  if (upTo && app.connection.online) {
    app.connection.read(conv, upTo);
    store.readReported(app.state, conv, upTo);
  }
  save();
}

/** After conversation `c` (or none) changed: read, save, redraw. */
export function afterChange(c) {
  if (c && c.id === visibleConv()) sendRead();
  save();
  renderConversations();
  if (c && c.id === app.openConv) renderChat();
}

/** After something that can change any conversation (mutes, blocks, the chat list). */
export function redrawAll() {
  save();
  renderConversations();
  renderChat();
}
