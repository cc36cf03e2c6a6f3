// The web client's screen: sign-in, the conversation list and the open chat.
//
// It wires three things together: `Connection` (protocol.js) brings frames and sends
// them, the state rules (store.js) decide what they change, and the render functions
// (chat-list.js, chat-view.js) redraw from the state. The state is saved to localStorage
// after every change, before the inbox item that caused it is acknowledged, so a reload
// shows the same chats and resumes the inbox after the last item stored. The message
// menu and the changes it sends are in message-menu.js; what the modules share is in
// context.js.

import { signIn, upload } from './api.js';
import { renderConversations } from './chat-list.js';
import { forgetFile, renderChat, renderSubtitle } from './chat-view.js';
import { loadAccount, wireChatMenu } from './chat-menu.js';
import { afterChange, app, redrawAll, save, sendRead, visibleConv } from './context.js';
import * as lists from './lists.js';
import { closeMessageMenu, saveEdit, stopEditing, wireMessageMenu } from './message-menu.js';
import { Connection, newClientId } from './protocol.js';
import * as store from './store.js';
import { $, describe, describeFailure, hideNotice, showNotice } from './ui.js';

/** A `start` not renewed within this long counts as a stop (docs/PROTOCOL.md). */
const TYPING_EXPIRES_MS = 6_000;
/** How often `start` is repeated while typing, and how long a pause means a stop. */
const TYPING_RENEW_MS = 3_000;
const ID_RULE = /^[A-Za-z0-9_-]{1,64}$/;

/** A page of the chat list, and how many a new device reads at most. */
const CHAT_LIST_PAGE = 100;
const CHAT_LIST_PAGES = 10;

let typingSince = 0;
/** This device had no cursor: it connects with `after=latest` and reads the whole chat list. */
let newDevice = false;
let typingStopTimer = null;

// ---- sign-in ---------------------------------------------------------------------------

const SESSION_KEY = 'natter:session';

/** This browser's device id for `user`, made once and kept. */
function deviceFor(user) {
  const key = `natter:device:${user}`;
  let id = localStorage.getItem(key);
  if (!id) {
    id = `web-${crypto.randomUUID().slice(0, 8)}`;
    localStorage.setItem(key, id);
  }
  return id;
}

async function start(user) {
  const dev = deviceFor(user);
  const session = await signIn(user, dev);
  app.me = session.user;
  app.device = dev;
  app.token = session.token;
  localStorage.setItem(SESSION_KEY, JSON.stringify({ user: app.me }));
  app.stateKey = `natter:${app.me}:${app.device}:state`;
  app.state = store.loadState(localStorage, app.stateKey);
  $('me-name').textContent = app.me;
  $('sign-in').hidden = true;
  $('app').hidden = false;
  app.connection = new Connection({
    base: location.origin, user: app.me, device: app.device, token: app.token, storage: localStorage, latestWhenNew: true,
  });
  newDevice = app.connection.fromLatest;
  app.connection.addEventListener('item', (e) => onItem(e.detail));
  app.connection.addEventListener('sent', (e) => onSent(e.detail));
  app.connection.addEventListener('send-failed', (e) => onSendFailed(e.detail));
  app.connection.addEventListener('server-error', (e) => onServerError(e.detail));
  app.connection.addEventListener('frame', (e) => onFrame(e.detail));
  app.connection.addEventListener('hello', (e) => onHello(e.detail));
  app.connection.addEventListener('status', (e) => onStatus(e.detail));
  app.connection.start();
  subscribePresence();
  renderConversations();
  renderChat();
}

function signOut() {
  app.connection?.close();
  localStorage.removeItem(SESSION_KEY);
  location.reload();
}

// ---- what the server says --------------------------------------------------------------

function onItem(item) {
  if (item.type === 'delete') forgetFile(item.conv, item.id);
  const c = store.applyItem(app.state, app.me, item, { viewing: visibleConv() });
  if (c && item.type === 'msg' && item.from !== app.me) stopTyping(c.id, item.from);
  // A first message can make someone's presence visible (it is private until then).
  if (c && (item.type === 'msg' || item.type === 'group_event')) subscribePresence();
  if (app.editing && item.type === 'delete' && item.id === app.editing.id) stopEditing();
  afterChange(c);
}


function onSent(sent) {
  afterChange(store.markSent(app.state, app.me, sent));
  subscribePresence();
}

function onSendFailed({ clientId, error }) {
  afterChange(store.markFailed(app.state, clientId, describe(error)));
  showNotice(`Message not sent: ${describe(error)}`);
}

function onServerError(error) {
  showNotice(describe(error));
}

function onHello(hello) {
  loadChatList({ all: newDevice });
  newDevice = false;
  loadAccount().catch(() => {});
  if (!hello.resumed) {
    showNotice('Some messages expired before this device came back: open a chat to see its history.');
  }
}

function onFrame(frame) {
  if (frame.type === 'typing') {
    onTyping(frame);
  } else if (frame.type === 'presence') {
    app.presence.set(frame.user, { online: frame.online, last_seen: frame.last_seen });
    renderSubtitle();
  }
}

function onStatus({ state: status, retryInMs }) {
  const label = $('connection');
  label.classList.toggle('offline', status === 'offline');
  if (status === 'online') {
    label.textContent = 'Online';
    if (app.openConv) {
      loadNewest(app.openConv);
      sendRead();
    }
  } else if (status === 'connecting') {
    label.textContent = 'Connecting…';
  } else {
    label.textContent = retryInMs
      ? `Offline, retrying in ${Math.ceil(retryInMs / 1000)} s`
      : 'Offline';
  }
}

function onTyping({ conv, from, state: typing }) {
  if (typing === 'start') {
    if (!app.typists.has(conv)) app.typists.set(conv, new Map());
    app.typists.get(conv).set(from, Date.now() + TYPING_EXPIRES_MS);
    setTimeout(renderSubtitle, TYPING_EXPIRES_MS + 50);
  } else {
    stopTyping(conv, from);
  }
  renderSubtitle();
}

function stopTyping(conv, from) {
  app.typists.get(conv)?.delete(from);
}

// ---- what the person does --------------------------------------------------------------

function openChat(conv) {
  if (app.openConv && app.openConv !== conv) sendTyping('stop');
  if (app.editing && app.editing.conv !== conv) stopEditing();
  closeMessageMenu();
  app.openConv = conv;
  sendRead();
  renderConversations();
  renderChat({ toBottom: true });
  if (app.state.convs[conv].more === undefined) loadNewest(conv);
  $('message-text').focus();
}

function startChat(user) {
  if (!ID_RULE.test(user)) {
    showNotice('A user id is 1 to 64 letters, digits, "-" or "_".');
    return;
  }
  store.conversation(app.state, app.me, store.dmId(app.me, user));
  save();
  subscribePresence();
  openChat(store.dmId(app.me, user));
}

async function createGroup(name, members) {
  const bad = members.find((m) => !ID_RULE.test(m));
  if (bad) {
    showNotice(`"${bad}" is not a user id.`);
    return;
  }
  try {
    const group = await app.connection.request({ type: 'group_create', name, members });
    const c = store.applyGroup(app.state, app.me, group, Date.now());
    save();
    openChat(c.id);
  } catch (error) {
    showNotice(`Group not created: ${error.code ? describe(error) : error.message}`);
  }
}

function sendText(text) {
  if (app.editing) {
    saveEdit(text);
    return;
  }
  if (!app.openConv || !text.trim()) return;
  sendBody(app.openConv, { kind: 'text', text });
  sendTyping('stop');
}

function sendBody(conv, body) {
  const clientId = newClientId();
  store.addOutgoing(app.state, app.me, conv, { clientId, body, ts: Date.now() });
  save();
  app.connection.send(store.targetOf(app.me, conv), body, { clientId });
  renderConversations();
  if (conv === app.openConv) renderChat({ toBottom: true });
}

/**
 * Uploads each file, then sends it into the chat that was open: images are shown inline,
 * the rest as a link to download. The caption carries the file name.
 */
async function sendFiles(files) {
  const conv = app.openConv;
  for (const file of files) {
    showNotice(`Uploading ${file.name}…`, { info: true });
    try {
      const stored = await upload(app.token, file);
      const kind = ['image', 'video', 'audio'].find((k) => stored.mime.startsWith(`${k}/`)) ?? 'document';
      sendBody(conv, { kind, media_id: stored.id, mime: stored.mime, caption: file.name });
      hideNotice();
    } catch (error) {
      showNotice(`${file.name} not sent: ${error.message}`);
    }
  }
}

/**
 * The chat list from the server (names of groups, latest messages, unread counts, mutes):
 * all of it on a new device, which connected with `after=latest` and has nothing else;
 * after a reconnect the newest page, which brings what was read on other devices meanwhile.
 */
async function loadChatList({ all }) {
  let before;
  for (let pages = 0; pages < (all ? CHAT_LIST_PAGES : 1); pages += 1) {
    let page;
    try {
      page = await app.connection.conversations({ before, limit: CHAT_LIST_PAGE });
    } catch (error) {
      if (all) showNotice(`The chat list could not be loaded: ${describeFailure(error)}`);
      return;
    }
    lists.applyConversations(app.state, app.me, page, { viewing: visibleConv() });
    redrawAll();
    subscribePresence();
    if (!page.more || page.conversations.length === 0) return;
    before = page.conversations.at(-1).at;
  }
}

async function loadNewest(conv) {
  const c = app.state.convs[conv];
  if (!c || c.more !== undefined || !app.connection.online) return;
  await loadHistory(conv, undefined);
}

async function loadOlder() {
  const c = app.state.convs[app.openConv];
  if (!c || c.more === false) return;
  await loadHistory(app.openConv, store.oldestId(c));
}

async function loadHistory(conv, before) {
  try {
    const page = await app.connection.history(conv, { before });
    const list = $('messages');
    const fromBottom = list.scrollHeight - list.scrollTop;
    afterChange(store.applyHistory(app.state, app.me, page));
    if (before && conv === app.openConv) list.scrollTop = list.scrollHeight - fromBottom;
  } catch (error) {
    showNotice(`Older messages could not be loaded: ${error.code ? describe(error) : error.message}`);
  }
}


/** `start` at most every TYPING_RENEW_MS while keys come, `stop` after a pause or a send. */
function onKeystroke() {
  if (!app.openConv || app.editing) return;
  const now = Date.now();
  if (now - typingSince > TYPING_RENEW_MS) {
    typingSince = now;
    app.connection.typing(app.openConv, 'start');
  }
  clearTimeout(typingStopTimer);
  typingStopTimer = setTimeout(() => sendTyping('stop'), TYPING_RENEW_MS);
}

function sendTyping(typing) {
  if (typing === 'stop') {
    clearTimeout(typingStopTimer);
    if (!typingSince || !app.openConv) return;
    typingSince = 0;
  }
  app.connection.typing(app.openConv, typing);
}

function subscribePresence() {
  const peers = Object.values(app.state.convs)
    .filter((c) => c.kind === 'dm' && c.peer !== app.me)
    .map((c) => c.peer);
  app.connection.subscribePresence(peers);
}

// ---- wiring ----------------------------------------------------------------------------

$('sign-in-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  try {
    await start($('sign-in-user').value.trim());
  } catch (error) {
    showNotice(`Sign-in failed: ${error.message}`);
  }
});
$('sign-out').addEventListener('click', signOut);
$('notice-close').addEventListener('click', hideNotice);
$('new-chat-form').addEventListener('submit', (event) => {
  event.preventDefault();
  startChat($('new-chat-user').value.trim());
  $('new-chat-user').value = '';
});
$('new-group-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const members = $('new-group-members').value.split(/[\s,]+/).filter(Boolean);
  createGroup($('new-group-name').value.trim(), members);
  event.target.reset();
  event.target.closest('details').open = false;
});
$('conversations').addEventListener('click', (event) => {
  const conv = event.target.closest('button[data-conv]')?.dataset.conv;
  if (conv) openChat(conv);
});
wireMessageMenu();
wireChatMenu();
$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  sendText($('message-text').value);
  $('message-text').value = '';
});
$('message-text').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $('composer').requestSubmit();
  } else if (event.key === 'Escape' && app.editing) {
    event.preventDefault();
    stopEditing();
  }
});
$('message-text').addEventListener('input', onKeystroke);
$('attach').addEventListener('change', (event) => {
  sendFiles([...event.target.files]);
  event.target.value = '';
});
$('load-older').addEventListener('click', loadOlder);
$('messages').addEventListener('scroll', () => {
  if ($('messages').scrollTop === 0 && !$('load-older').hidden) loadOlder();
});
document.addEventListener('visibilitychange', sendRead);
window.addEventListener('online', () => app.connection?.reconnectNow());
window.addEventListener('offline', () => app.connection?.restart());

const saved = JSON.parse(localStorage.getItem(SESSION_KEY) ?? 'null');
if (saved?.user) {
  start(saved.user).catch((error) => showNotice(`Sign-in failed: ${error.message}`));
}
