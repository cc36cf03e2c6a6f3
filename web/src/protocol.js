// The client side of Natter's WebSocket protocol (shared/PROTOCOL.md), without any UI.
//
// A `Connection` keeps one socket open for one user's device and hides the parts every
// client must get right:
// - resume: it connects with `after=<cursor>`, the last inbox sequence this device stored,
//   kept in `storage` per user and device, so a reload or a reconnect gets each item once;
//   a device with no cursor yet connects with `after=latest` when `latestWhenNew` is set
//   (nothing older is replayed: it shows the chat list and pages history instead);
// - ack: an inbox item is handed to the listeners (which store it) before the cursor
//   moves past it and the server is told with `ack`;
// - sends: each carries a client id and stays in an outbox (also in `storage`) until its
//   `sent` comes; after a reconnect or a reload the outbox is sent again with the same
//   ids, and the server's deduplication makes that safe (so is a send the server did not
//   store, `unavailable`, or took too fast, `rate_limited`);
// - liveness: an application `ping` every `pingEveryMs`; no answer within `pongWithinMs`
//   means the socket is dead (e.g. the network dropped silently) and is replaced;
// - reconnect: with exponential backoff and jitter, reset once a socket opens.
//
// Everything it learns is an event on the `Connection` (an EventTarget); `event.detail` is
// the frame or a small object:
// - `hello` {after, newest, oldest, resumed}: the first frame of every socket; the cursor
//   becomes `after` (the server moves a cursor beyond the inbox back to its newest item,
//   and `after=latest` starts at it),
//   and `resumed: false` says items expired before this device came back;
// - `item`: an inbox item (`msg`, `receipt`, `group_event`, `edit`, `delete`,
//   `reaction`), once each, in `seq` order;
// - `sent` {clientId, id, conv, ts}: a send became durable;
// - `send-failed` {clientId, error}: the server refused a send for good;
// - `frame`: every other server frame (`typing`, `presence`, `group`, `history`, …);
// - `server-error`: an `error` frame that answers no request or send (those reject the
//   request, with its `code` and `retryAfterMs`, or become `send-failed`); presence
//   errors are dropped, since presence is
//   optional (`unsupported`) or private until a conversation is shared (`forbidden`);
// - `status` {state: "connecting" | "online" | "offline", retryInMs?}.
//
// The socket class, the timers and the storage are parameters so the unit tests can run
// it against a fake socket.

/** Backoff after the n-th failed attempt in a row: 0.5 s, 1 s, 2 s, … up to 30 s. */
export function backoffMs(attempt, random = Math.random) {
  const ceiling = Math.min(30_000, 500 * 2 ** attempt);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** The WebSocket URL for `base` (the page's origin, http or https). The token is not in
 * it (URLs end up in access logs): it goes as a subprotocol, see `socketProtocols`. */
export function socketUrl(base, { device, after }) {
  const url = new URL('/v1/ws', base);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  url.searchParams.set('device', device);
  url.searchParams.set('after', String(after));
  return url.toString();
}

/** The subprotocols a socket offers: Natter's, and the token as `bearer.<jwt>`. */
export function socketProtocols(token) {
  return ['natter.v1', `bearer.${token}`];
}

/** A fresh client id for a send (a UUID fits the id rules). */
export function newClientId() {
  return crypto.randomUUID();
}

const OPEN = 1;
/** How often a change (edit, delete, react) is tried again after `unavailable` or
 * `rate_limited`, and the wait after `unavailable`. Repeating one is safe: an edit or a
 * reaction again is the same result, and deleting again changes nothing more. */
const CHANGE_RETRIES = 2;
const CHANGE_RETRY_MS = 1_000;
/** Presence subscriptions carry `presence:<user>`; presence is optional, errors are not shown. */
const PRESENCE_REF = 'presence:';

function presenceSubscription(user) {
  return { type: 'presence_subscribe', users: [user], ref: `${PRESENCE_REF}${user}` };
}

export class Connection extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.base the gateway's origin, e.g. location.origin
   * @param {string} options.user
   * @param {string} options.device
   * @param {string} options.token
   * @param {Storage} options.storage where the cursor and the outbox live (localStorage)
   * @param {typeof WebSocket} [options.WebSocket]
   * @param {{setTimeout: Function, clearTimeout: Function, setInterval: Function,
   *   clearInterval: Function}} [options.timers]
   * @param {number} [options.pingEveryMs]
   * @param {number} [options.pongWithinMs]
   * @param {number} [options.requestTimeoutMs] how long `request` waits for its answer
   * @param {boolean} [options.latestWhenNew] without a stored cursor, connect with
   *   `after=latest` rather than replaying the whole inbox (`after=0`)
   */
  constructor(options) {
    super();
    this.base = options.base;
    this.user = options.user;
    this.device = options.device;
    this.token = options.token;
    this.storage = options.storage;
    this.Socket = options.WebSocket ?? globalThis.WebSocket;
    this.timers = options.timers ?? globalThis;
    this.pingEveryMs = options.pingEveryMs ?? 15_000;
    this.pongWithinMs = options.pongWithinMs ?? 10_000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 15_000;
    this.key = `natter:${this.user}:${this.device}`;
    const stored = this.storage.getItem(`${this.key}:cursor`);
    this.cursor = Number(stored ?? 0);
    /** No cursor yet, and the first `hello` is to give one: connect with `after=latest`. */
    this.fromLatest = stored === null && Boolean(options.latestWhenNew);
    /** Sends without their `sent` yet, in the order they were made: clientId → frame. */
    this.outbox = new Map(
      JSON.parse(this.storage.getItem(`${this.key}:outbox`) ?? '[]').map((f) => [f.id, f]),
    );
    /** Requests waiting for the answer with their `ref`: ref → {resolve, reject, timer}. */
    this.waiting = new Map();
    this.presenceUsers = new Set();
    this.socket = null;
    /** Whether `socket` has opened (sends wait for it). */
    this.opened = false;
    this.attempt = 0;
    this.nextRef = 0;
    this.stopped = true;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
  }

  /** Opens the socket, and keeps one open until `close()`. */
  start() {
    this.stopped = false;
    this.open();
  }

  /** Closes the socket for good (sign-out). */
  close() {
    this.stopped = true;
    this.timers.clearTimeout(this.retryTimer);
    this.dropSocket();
    this.status('offline');
  }

  /** Reconnects at once instead of waiting for the backoff (the browser came online). */
  reconnectNow() {
    if (this.stopped || this.socket) return;
    this.timers.clearTimeout(this.retryTimer);
    this.open();
  }

  /** Replaces the current socket (it may look open but be dead), resuming after the cursor. */
  restart() {
    if (this.stopped) return;
    this.dropSocket();
    this.scheduleReconnect();
  }

  get online() {
    return this.socket?.readyState === OPEN && this.opened;
  }

  /**
   * Queues a message for `to` ("user:<id>" or "group:<id>") and sends it when connected.
   * Returns the client id the `sent` or `send-failed` event will name.
   */
  send(to, body, { clientId = newClientId(), replyTo } = {}) {
    const frame = { type: 'send', id: clientId, ref: clientId, to, body };
    if (replyTo) frame.reply_to = replyTo;
    this.outbox.set(clientId, frame);
    this.saveOutbox();
    this.transmit(frame);
    return clientId;
  }

  /** The sends still waiting for `sent`, oldest first. */
  unsent() {
    return [...this.outbox.values()];
  }

  /** Tells the others that every message of `conv` up to `upTo` (a message id) was read. */
  read(conv, upTo) {
    this.transmit({ type: 'read', conv, up_to: upTo });
  }

  typing(conv, state) {
    this.transmit({ type: 'typing', conv, state });
  }

  /**
   * Asks for `presence` frames about `users`, now and after every reconnect: one frame
   * per user, so a refusal (their presence is private until a conversation is shared)
   * names whom it is about, and a later call asks again.
   */
  subscribePresence(users) {
    for (const user of users) {
      if (this.presenceUsers.has(user)) continue;
      this.presenceUsers.add(user);
      this.transmit(presenceSubscription(user));
    }
  }

  /**
   * Sends `frame` with a fresh `ref` and resolves with the answer carrying it (rejects on
   * an `error` answer, when not connected, or after `requestTimeoutMs`).
   */
  request(frame) {
    if (!this.online) return Promise.reject(new Error('not connected'));
    this.nextRef += 1;
    const ref = `r${this.nextRef}`;
    return new Promise((resolve, reject) => {
      const timer = this.timers.setTimeout(() => {
        this.waiting.delete(ref);
        reject(new Error(`no answer to ${frame.type} in time`));
      }, this.requestTimeoutMs);
      this.waiting.set(ref, { resolve, reject, timer });
      this.transmit({ ...frame, ref });
    });
  }

  /** Replaces the body of one's own message `id` (a media message: only its caption). */
  edit(id, body) {
    return this.change({ type: 'edit', id, body });
  }

  /** Deletes message `id` for everyone. */
  deleteForEveryone(id) {
    return this.change({ type: 'delete', id });
  }

  /** Reacts to message `id` with `emoji`, replacing one's earlier reaction; null takes it back. */
  react(id, emoji) {
    const frame = { type: 'react', id };
    if (emoji) frame.emoji = emoji;
    return this.change(frame);
  }

  /**
   * Sends a change and resolves with its `changed` answer {id, conv, rev, ts}. A change is
   * not kept in the outbox: it is asked while connected (the person sees the refusal
   * then), and tried again a few times when the server was busy or too fast. Settings,
   * mutes, blocks and the chat list are asked the same way (each is safe to repeat).
   */
  async change(frame) {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await this.request(frame);
      } catch (error) {
        const again = error.code === 'unavailable' || error.code === 'rate_limited';
        if (!again || attempt === CHANGE_RETRIES) throw error;
        const wait = error.retryAfterMs ?? CHANGE_RETRY_MS * 2 ** attempt;
        await new Promise((resolve) => this.timers.setTimeout(resolve, wait));
      }
    }
  }

  /** A page of the chat list, most recent first: {conversations, more}. */
  conversations({ before, limit } = {}) {
    const frame = { type: 'conversations' };
    if (before) frame.before = before;
    if (limit) frame.limit = limit;
    return this.change(frame);
  }

  /** Reads the privacy settings and mutes ({} ), or changes the fields given
   * (`last_seen`, `online`, `read_receipts`); resolves with the `settings` answer. */
  settings(fields = {}) {
    return this.change({ type: 'settings', ...fields });
  }

  /** Mutes `conv` until `until` (ms since the epoch), or for good without it. */
  mute(conv, until) {
    const frame = { type: 'mute', conv };
    if (until != null) frame.until = until;
    return this.change(frame);
  }

  unmute(conv) {
    return this.change({ type: 'unmute', conv });
  }

  /** Blocks `user`; resolves with the `blocked` answer {users}. */
  block(user) {
    return this.change({ type: 'block', user });
  }

  unblock(user) {
    return this.change({ type: 'unblock', user });
  }

  /** The users one blocked: the `blocked` answer {users}. */
  blocks() {
    return this.change({ type: 'blocks' });
  }

  history(conv, { before, limit = 50 } = {}) {
    const frame = { type: 'history', conv, limit };
    if (before) frame.before = before;
    return this.request(frame);
  }

  open() {
    this.status('connecting');
    const after = this.fromLatest ? 'latest' : this.cursor;
    const url = socketUrl(this.base, { device: this.device, after });
    const socket = new this.Socket(url, socketProtocols(this.token));
    this.socket = socket;
    this.opened = false;
    socket.onopen = () => this.socket === socket && this.onOpen();
    socket.onmessage = (event) => this.socket === socket && this.onFrame(event.data);
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.dropSocket();
      this.scheduleReconnect();
    };
    socket.onerror = () => {};
  }

  onOpen() {
    this.opened = true;
    this.attempt = 0;
    this.status('online');
    for (const frame of this.outbox.values()) this.transmit(frame);
    for (const user of this.presenceUsers) this.transmit(presenceSubscription(user));
    this.pingTimer = this.timers.setInterval(() => this.ping(), this.pingEveryMs);
  }

  ping() {
    if (this.pongTimer) return;
    this.transmit({ type: 'ping' });
    this.pongTimer = this.timers.setTimeout(() => this.restart(), this.pongWithinMs);
  }

  onFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (typeof frame.seq === 'number') {
      this.onItem(frame);
    } else if (frame.type === 'hello') {
      this.onHello(frame);
    } else if (frame.type === 'pong') {
      this.timers.clearTimeout(this.pongTimer);
      this.pongTimer = null;
    } else if (frame.type === 'sent' && this.outbox.has(frame.ref)) {
      this.outbox.delete(frame.ref);
      this.saveOutbox();
      this.emit('sent', { clientId: frame.ref, id: frame.id, conv: frame.conv, ts: frame.ts });
    } else if (frame.type === 'error') {
      this.onError(frame);
    } else if (frame.ref && this.waiting.has(frame.ref)) {
      this.settle(frame.ref, (w) => w.resolve(frame));
    } else {
      this.emit('frame', frame);
    }
  }

  onHello(hello) {
    if (Number.isSafeInteger(hello.after) && (hello.after !== this.cursor || this.fromLatest)) {
      this.cursor = hello.after;
      this.fromLatest = false;
      this.storage.setItem(`${this.key}:cursor`, String(this.cursor));
    }
    this.emit('hello', hello);
  }

  onItem(item) {
    if (item.seq <= this.cursor) return;
    this.emit('item', item);
    this.cursor = item.seq;
    this.fromLatest = false;
    this.storage.setItem(`${this.key}:cursor`, String(this.cursor));
    this.transmit({ type: 'ack', seq: item.seq });
  }

  /** An `error` goes to whoever waits for it: a request, a send, or else the listeners. */
  onError(error) {
    const ref = error.ref;
    if (ref && this.waiting.has(ref)) {
      const failure = Object.assign(new Error(error.message), { code: error.code });
      if (error.retry_after_ms != null) failure.retryAfterMs = error.retry_after_ms;
      this.settle(ref, (w) => w.reject(failure));
    } else if (ref && this.outbox.has(ref) && error.code === 'unavailable') {
      // Not stored: the same id goes again on the next socket.
      this.restart();
    } else if (ref && this.outbox.has(ref) && error.code === 'rate_limited') {
      // Too fast: the same send goes again once the server would take it.
      const again = () => this.outbox.has(ref) && this.transmit(this.outbox.get(ref));
      this.timers.setTimeout(again, error.retry_after_ms ?? 1_000);
    } else if (ref && this.outbox.has(ref)) {
      this.outbox.delete(ref);
      this.saveOutbox();
      this.emit('send-failed', { clientId: ref, error });
    } else if (ref?.startsWith(PRESENCE_REF)) {
      // `unsupported`: this server has no presence, asking again is pointless.
      if (error.code !== 'unsupported') this.presenceUsers.delete(ref.slice(PRESENCE_REF.length));
    } else {
      this.emit('server-error', error);
    }
  }

  settle(ref, how) {
    const waiter = this.waiting.get(ref);
    this.waiting.delete(ref);
    this.timers.clearTimeout(waiter.timer);
    how(waiter);
  }

  transmit(frame) {
    if (this.online) this.socket.send(JSON.stringify(frame));
  }

  dropSocket() {
    this.timers.clearInterval(this.pingTimer);
    this.timers.clearTimeout(this.pongTimer);
    this.pingTimer = null;
    this.pongTimer = null;
    for (const ref of [...this.waiting.keys()]) {
      this.settle(ref, (w) => w.reject(new Error('connection lost')));
    }
    const socket = this.socket;
    this.socket = null;
    this.opened = false;
    if (socket && socket.readyState <= OPEN) socket.close();
  }

  scheduleReconnect() {
    if (this.stopped) return;
    const delay = backoffMs(this.attempt);
    this.attempt += 1;
    this.status('offline', { retryInMs: delay });
    this.timers.clearTimeout(this.retryTimer);
    this.retryTimer = this.timers.setTimeout(() => this.open(), delay);
  }

  saveOutbox() {
    this.storage.setItem(`${this.key}:outbox`, JSON.stringify([...this.outbox.values()]));
  }

  status(state, extra = {}) {
    this.emit('status', { state, ...extra });
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
