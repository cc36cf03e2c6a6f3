// The web client's screen: sign-in, the conversation list and the open chat.
//
// It wires three things together: `Connection` (protocol.js) brings frames and sends
// them, the state rules (store.js) decide what they change, and the render functions
// below redraw from the state. The state is saved to localStorage after every change,
// before the inbox item that caused it is acknowledged, so a reload shows the same chats
// and resumes the inbox after the last item stored.

import { downloadMedia, mediaSize, signIn, upload } from './api.js';
import { Connection, newClientId } from './protocol.js';
import * as store from './store.js';

/** A `start` not renewed within this long counts as a stop (docs/PROTOCOL.md). */
const TYPING_EXPIRES_MS = 6_000;
/** How often `start` is repeated while typing, and how long a pause means a stop. */
const TYPING_RENEW_MS = 3_000;
const ID_RULE = /^[A-Za-z0-9_-]{1,64}$/;

const $ = (id) => document.getElementById(id);

let me = null;
let device = null;
let token = null;
let connection = null;
let state = store.emptyState();
let stateKey = null;
let openConv = null;
/** user → {online, last_seen} from `presence` frames (not kept: the server repeats them). */
const presence = new Map();
/** conv → Map(from → expiry time) of who is typing there. */
const typists = new Map();
/** media id → Promise of its blob: URL, or of its size: fetched once, redraws reuse them. */
const mediaUrls = new Map();
const mediaSizes = new Map();
let typingSince = 0;
let typingStopTimer = null;
let noticeTimer = null;

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
  me = session.user;
  device = dev;
  token = session.token;
  localStorage.setItem(SESSION_KEY, JSON.stringify({ user: me }));
  stateKey = `natter:${me}:${device}:state`;
  state = store.loadState(localStorage, stateKey);
  $('me-name').textContent = me;
  $('sign-in').hidden = true;
  $('app').hidden = false;
  connection = new Connection({ base: location.origin, user: me, device, token, storage: localStorage });
  connection.addEventListener('item', (e) => onItem(e.detail));
  connection.addEventListener('sent', (e) => onSent(e.detail));
  connection.addEventListener('send-failed', (e) => onSendFailed(e.detail));
  connection.addEventListener('server-error', (e) => onServerError(e.detail));
  connection.addEventListener('frame', (e) => onFrame(e.detail));
  connection.addEventListener('hello', (e) => onHello(e.detail));
  connection.addEventListener('status', (e) => onStatus(e.detail));
  connection.start();
  subscribePresence();
  renderConversations();
  renderChat();
}

function signOut() {
  connection?.close();
  localStorage.removeItem(SESSION_KEY);
  location.reload();
}

// ---- what the server says --------------------------------------------------------------

function onItem(item) {
  const c = store.applyItem(state, me, item, { viewing: visibleConv() });
  if (c && item.type === 'msg' && item.from !== me) stopTyping(c.id, item.from);
  // A first message can make someone's presence visible (it is private until then).
  if (c && item.type !== 'receipt') subscribePresence();
  afterChange(c);
}

function onSent(sent) {
  afterChange(store.markSent(state, me, sent));
  subscribePresence();
}

function onSendFailed({ clientId, error }) {
  afterChange(store.markFailed(state, clientId, describe(error)));
  showNotice(`Message not sent: ${describe(error)}`);
}

function onServerError(error) {
  showNotice(describe(error));
}

function onHello(hello) {
  if (!hello.resumed) {
    showNotice('Some messages expired before this device came back: open a chat to see its history.');
  }
}

function onFrame(frame) {
  if (frame.type === 'typing') {
    onTyping(frame);
  } else if (frame.type === 'presence') {
    presence.set(frame.user, { online: frame.online, last_seen: frame.last_seen });
    renderSubtitle();
  }
}

function onStatus({ state: status, retryInMs }) {
  const label = $('connection');
  label.classList.toggle('offline', status === 'offline');
  if (status === 'online') {
    label.textContent = 'Online';
    if (openConv) {
      loadNewest(openConv);
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
    if (!typists.has(conv)) typists.set(conv, new Map());
    typists.get(conv).set(from, Date.now() + TYPING_EXPIRES_MS);
    setTimeout(renderSubtitle, TYPING_EXPIRES_MS + 50);
  } else {
    stopTyping(conv, from);
  }
  renderSubtitle();
}

function stopTyping(conv, from) {
  typists.get(conv)?.delete(from);
}

/** The error as a sentence a person understands. */
function describe(error) {
  const what = {
    forbidden: 'Not allowed',
    bad_id: 'Not a valid id',
    bad_request: 'Refused',
    bad_frame: 'The client sent something the server did not understand',
    unavailable: 'The server could not store it; it will be retried',
    limit_exceeded: 'Limit reached',
    unsupported: 'Not supported by this server',
    rate_limited: 'Too fast, slow down',
  }[error.code];
  return what ? `${what}: ${error.message}` : error.message;
}

// ---- what the person does --------------------------------------------------------------

function openChat(conv) {
  if (openConv && openConv !== conv) sendTyping('stop');
  openConv = conv;
  sendRead();
  renderConversations();
  renderChat({ toBottom: true });
  if (state.convs[conv].more === undefined) loadNewest(conv);
  $('message-text').focus();
}

function startChat(user) {
  if (!ID_RULE.test(user)) {
    showNotice('A user id is 1 to 64 letters, digits, "-" or "_".');
    return;
  }
  store.conversation(state, me, store.dmId(me, user));
  save();
  subscribePresence();
  openChat(store.dmId(me, user));
}

async function createGroup(name, members) {
  const bad = members.find((m) => !ID_RULE.test(m));
  if (bad) {
    showNotice(`"${bad}" is not a user id.`);
    return;
  }
  try {
    const group = await connection.request({ type: 'group_create', name, members });
    const c = store.applyGroup(state, me, group, Date.now());
    save();
    openChat(c.id);
  } catch (error) {
    showNotice(`Group not created: ${error.code ? describe(error) : error.message}`);
  }
}

function sendText(text) {
  if (!openConv || !text.trim()) return;
  sendBody(openConv, { kind: 'text', text });
  sendTyping('stop');
}

function sendBody(conv, body) {
  const clientId = newClientId();
  store.addOutgoing(state, me, conv, { clientId, body, ts: Date.now() });
  save();
  connection.send(store.targetOf(me, conv), body, { clientId });
  renderConversations();
  if (conv === openConv) renderChat({ toBottom: true });
}

/**
 * Uploads each file, then sends it into the chat that was open: images are shown inline,
 * the rest as a link to download. The caption carries the file name.
 */
async function sendFiles(files) {
  const conv = openConv;
  for (const file of files) {
    showNotice(`Uploading ${file.name}…`, { info: true });
    try {
      const stored = await upload(token, file);
      const kind = ['image', 'video', 'audio'].find((k) => stored.mime.startsWith(`${k}/`)) ?? 'document';
      sendBody(conv, { kind, media_id: stored.id, mime: stored.mime, caption: file.name });
      hideNotice();
    } catch (error) {
      showNotice(`${file.name} not sent: ${error.message}`);
    }
  }
}

async function loadNewest(conv) {
  const c = state.convs[conv];
  if (!c || c.more !== undefined || !connection.online) return;
  await loadHistory(conv, undefined);
}

async function loadOlder() {
  const c = state.convs[openConv];
  if (!c || c.more === false) return;
  await loadHistory(openConv, store.oldestId(c));
}

async function loadHistory(conv, before) {
  try {
    const page = await connection.history(conv, { before });
    const list = $('messages');
    const fromBottom = list.scrollHeight - list.scrollTop;
    afterChange(store.applyHistory(state, me, page));
    if (before && conv === openConv) list.scrollTop = list.scrollHeight - fromBottom;
  } catch (error) {
    showNotice(`Older messages could not be loaded: ${error.code ? describe(error) : error.message}`);
  }
}

/** Tells the others up to where the open chat was read, when it is on screen. */
function sendRead() {
  const conv = visibleConv();
  if (!conv) return;
  const upTo = store.markRead(state, me, conv);
  if (upTo && connection.online) {
    connection.read(conv, upTo);
    store.readReported(state, conv, upTo);
  }
  save();
}

/** `start` at most every TYPING_RENEW_MS while keys come, `stop` after a pause or a send. */
function onKeystroke() {
  if (!openConv) return;
  const now = Date.now();
  if (now - typingSince > TYPING_RENEW_MS) {
    typingSince = now;
    connection.typing(openConv, 'start');
  }
  clearTimeout(typingStopTimer);
  typingStopTimer = setTimeout(() => sendTyping('stop'), TYPING_RENEW_MS);
}

function sendTyping(typing) {
  if (typing === 'stop') {
    clearTimeout(typingStopTimer);
    if (!typingSince || !openConv) return;
    typingSince = 0;
  }
  connection.typing(openConv, typing);
}

function subscribePresence() {
  const peers = Object.values(state.convs)
    .filter((c) => c.kind === 'dm' && c.peer !== me)
    .map((c) => c.peer);
  connection.subscribePresence(peers);
}

/** The open conversation if the page is on screen (messages there count as read). */
function visibleConv() {
  return document.visibilityState === 'visible' ? openConv : null;
}

function afterChange(c) {
  if (c && c.id === visibleConv()) sendRead();
  save();
  renderConversations();
  if (c && c.id === openConv) renderChat();
}

function save() {
  store.saveState(localStorage, stateKey, state);
}

// ---- drawing ---------------------------------------------------------------------------

function titleOf(c) {
  if (c.kind === 'group') return c.name;
  return c.peer === me ? `${me} (you)` : c.peer;
}

function preview(message) {
  if (!message) return '';
  const body = message.body;
  const text = body.kind === 'text' ? body.text : `${KIND_NAMES[body.kind] ?? 'File'}: ${body.caption ?? ''}`;
  return message.from === me ? `You: ${text}` : text;
}

const KIND_NAMES = { image: 'Photo', video: 'Video', audio: 'Audio', document: 'File', media: 'File' };

function renderConversations() {
  const list = $('conversations');
  list.replaceChildren(
    ...store.sortedConversations(state).map((c) => {
      const button = element('button', { type: 'button', 'data-conv': c.id });
      if (c.id === openConv) button.setAttribute('aria-current', 'true');
      button.append(element('span', { class: 'conv-name' }, titleOf(c)));
      if (c.unread > 0) {
        button.append(element('span', { class: 'unread', 'aria-label': `${c.unread} unread` }, String(c.unread)));
      }
      button.append(element('span', { class: 'conv-last' }, preview(c.messages.at(-1))));
      button.addEventListener('click', () => openChat(c.id));
      return element('li', {}, button);
    }),
  );
  const unread = store.totalUnread(state);
  document.title = unread > 0 ? `(${unread}) Natter` : 'Natter';
}

/** Redraws the open chat; stays at the bottom if it was there (or `toBottom`). */
function renderChat({ toBottom = false } = {}) {
  const c = openConv && state.convs[openConv];
  const list = $('messages');
  $('composer').hidden = !c || c.left;
  $('chat-title').textContent = c ? titleOf(c) : 'Choose a conversation';
  $('load-older').hidden = !c || c.more === false || c.more === undefined;
  renderSubtitle();
  if (!c) {
    list.replaceChildren();
    return;
  }
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren(...c.messages.map((m) => renderMessage(c, m)));
  if (toBottom || atBottom) list.scrollTop = list.scrollHeight;
}

function renderSubtitle() {
  const c = openConv && state.convs[openConv];
  const line = $('chat-subtitle');
  if (!c) {
    line.textContent = '';
    return;
  }
  const now = Date.now();
  const typing = [...(typists.get(c.id) ?? new Map())].filter(([, until]) => until > now).map(([u]) => u);
  if (typing.length > 0) {
    line.textContent = c.kind === 'group' ? `${typing.join(', ')} typing…` : 'typing…';
  } else if (c.kind === 'group') {
    line.textContent = c.left ? 'You are no longer a member' : c.members.join(', ');
  } else {
    line.textContent = presenceText(presence.get(c.peer));
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
  const mine = m.from === me;
  const li = element('li', { class: mine ? 'message mine' : 'message theirs', 'data-id': m.id ?? m.clientId });
  if (c.kind === 'group' && !mine) li.append(element('span', { class: 'sender' }, m.from));
  li.append(renderBody(m.body));
  const meta = element('span', { class: 'meta' }, time(m.ts));
  if (mine) meta.append(renderTicks(m.status));
  li.append(meta);
  if (m.status === 'failed') li.append(element('span', { class: 'error-text' }, m.error));
  return li;
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
  fetchOnce(mediaSizes, body.media_id, () => mediaSize(token, body.media_id)).then(
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
  return fetchOnce(mediaUrls, id, async () => URL.createObjectURL(await downloadMedia(token, id)));
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

function time(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

function showNotice(text, { info = false } = {}) {
  $('notice-text').textContent = text;
  $('notice').classList.toggle('info', info);
  $('notice').setAttribute('role', info ? 'status' : 'alert');
  $('notice').hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(hideNotice, info ? 30_000 : 10_000);
}

function hideNotice() {
  $('notice').hidden = true;
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
$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  sendText($('message-text').value);
  $('message-text').value = '';
});
$('message-text').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $('composer').requestSubmit();
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
window.addEventListener('online', () => connection?.reconnectNow());
window.addEventListener('offline', () => connection?.restart());

const saved = JSON.parse(localStorage.getItem(SESSION_KEY) ?? 'null');
if (saved?.user) {
  start(saved.user).catch((error) => showNotice(`Sign-in failed: ${error.message}`));
}
