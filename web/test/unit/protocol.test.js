// Unit tests of web/src/protocol.js against a fake WebSocket and hand-driven timers: the
// resume cursor, acks, client ids kept across reconnects, backoff and dead-socket
// detection. (The browser tests in ../browser run the real client against real servers.)

import assert from 'node:assert/strict';
import { beforeEach, describe, it } from 'node:test';

import { Connection, backoffMs, socketProtocols, socketUrl } from '../../src/protocol.js';

/** A WebSocket stand-in: records what the client sent and lets a test play the server. */
class FakeSocket {
  static all = [];

  constructor(url, protocols) {
    this.url = new URL(url);
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }

  send(text) {
    assert.equal(this.readyState, 1, 'sent on a socket that is not open');
    this.sent.push(JSON.parse(text));
  }

  close() {
    this.readyState = 3;
  }

  // What the server side does:
  accept() {
    this.readyState = 1;
    this.onopen?.();
  }

  deliver(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  drop() {
    this.readyState = 3;
    this.onclose?.({ code: 1006 });
  }

  frames(type) {
    return this.sent.filter((f) => f.type === type);
  }

  static last() {
    return FakeSocket.all.at(-1);
  }
}

/** Timers a test moves forward by hand. */
class Clock {
  constructor() {
    this.now = 0;
    this.nextId = 1;
    this.pending = new Map();
  }

  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.pending.set(id, { fn, at: this.now + ms });
    return id;
  }

  setInterval(fn, ms) {
    const id = this.nextId++;
    this.pending.set(id, { fn, at: this.now + ms, every: ms });
    return id;
  }

  clearTimeout(id) {
    this.pending.delete(id);
  }

  clearInterval(id) {
    this.pending.delete(id);
  }

  advance(ms) {
    const until = this.now + ms;
    for (;;) {
      const due = [...this.pending].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      const [id, timer] = due;
      this.now = timer.at;
      if (timer.every) timer.at += timer.every;
      else this.pending.delete(id);
      timer.fn();
    }
    this.now = until;
  }
}

class MemoryStorage {
  constructor() {
    this.map = new Map();
  }

  getItem(key) {
    return this.map.has(key) ? this.map.get(key) : null;
  }

  setItem(key, value) {
    this.map.set(key, String(value));
  }
}

let clock;
let storage;

function connection(options = {}) {
  const c = new Connection({
    base: 'http://127.0.0.1:8080',
    user: 'alice',
    device: 'laptop',
    token: 'jwt',
    storage,
    WebSocket: FakeSocket,
    timers: clock,
    pingEveryMs: 1_000,
    pongWithinMs: 500,
    requestTimeoutMs: 2_000,
    ...options,
  });
  return c;
}

function collect(conn, type) {
  const seen = [];
  conn.addEventListener(type, (e) => seen.push(e.detail));
  return seen;
}

const msg = (seq, text) => ({
  type: 'msg', seq, id: `m${seq}`, conv: 'dm:alice:bob', from: 'bob', ts: seq, body: { kind: 'text', text },
});

beforeEach(() => {
  FakeSocket.all = [];
  clock = new Clock();
  storage = new MemoryStorage();
});

describe('socketUrl', () => {
  it('puts device and cursor in the query, never the token, and follows the page scheme', () => {
    const plain = new URL(socketUrl('http://h:1', { device: 'd', after: 7 }));
    assert.equal(plain.protocol, 'ws:');
    assert.equal(plain.pathname, '/v1/ws');
    assert.equal(plain.searchParams.get('token'), null);
    assert.equal(plain.searchParams.get('device'), 'd');
    assert.equal(plain.searchParams.get('after'), '7');
    assert.equal(new URL(socketUrl('https://h', { device: 'd', after: 0 })).protocol, 'wss:');
  });

  it('offers the token as a subprotocol next to natter.v1', () => {
    assert.deepEqual(socketProtocols('a.b.c'), ['natter.v1', 'bearer.a.b.c']);
  });
});

describe('backoffMs', () => {
  it('doubles from half a second and stops growing at 30 s', () => {
    const top = (n) => backoffMs(n, () => 1);
    assert.deepEqual([0, 1, 2, 3].map(top), [500, 1000, 2000, 4000]);
    assert.equal(top(20), 30_000);
    assert.equal(backoffMs(3, () => 0), 2000, 'jitter keeps at least half');
  });
});

describe('Connection', () => {
  it('hands each inbox item over once, then stores the cursor and acks it', () => {
    const conn = connection();
    const items = collect(conn, 'item');
    conn.addEventListener('item', () => {
      assert.equal(storage.getItem('natter:alice:laptop:cursor'), items.length > 1 ? String(items.length - 1) : null,
        'the cursor moves only after the listeners had the item');
    });
    conn.start();
    const socket = FakeSocket.last();
    assert.equal(socket.url.searchParams.get('after'), '0');
    assert.deepEqual(socket.protocols, ['natter.v1', 'bearer.jwt']);
    socket.accept();
    socket.deliver(msg(1, 'one'));
    socket.deliver(msg(2, 'two'));
    socket.deliver(msg(2, 'two again'));
    assert.deepEqual(items.map((i) => i.body.text), ['one', 'two']);
    assert.deepEqual(socket.frames('ack'), [{ type: 'ack', seq: 1 }, { type: 'ack', seq: 2 }]);
    assert.equal(storage.getItem('natter:alice:laptop:cursor'), '2');
  });

  it('takes the resume point hello gives, so a cursor beyond the inbox gets new items', () => {
    storage.setItem('natter:alice:laptop:cursor', '90');
    const conn = connection();
    const hellos = collect(conn, 'hello');
    const items = collect(conn, 'item');
    conn.start();
    const socket = FakeSocket.last();
    assert.equal(socket.url.searchParams.get('after'), '90');
    socket.accept();
    socket.deliver({ type: 'hello', after: 7, newest: 7, oldest: 1, resumed: true });
    socket.deliver(msg(8, 'new'));
    assert.deepEqual(items.map((i) => i.body.text), ['new']);
    assert.equal(hellos.length, 1);
    assert.equal(storage.getItem('natter:alice:laptop:cursor'), '8');
  });

  it('resumes after the stored cursor, on reconnect and in a new page', () => {
    const conn = connection();
    conn.start();
    FakeSocket.last().accept();
    FakeSocket.last().deliver(msg(1, 'one'));
    FakeSocket.last().deliver(msg(2, 'two'));
    FakeSocket.last().drop();
    clock.advance(30_000);
    assert.equal(FakeSocket.last().url.searchParams.get('after'), '2');
    conn.close();

    const reloaded = connection();
    reloaded.start();
    assert.equal(FakeSocket.last().url.searchParams.get('after'), '2');
  });

  it('keeps a send until its sent answer and sends it again, same id, after a reconnect', () => {
    const conn = connection();
    const sent = collect(conn, 'sent');
    conn.start();
    const first = FakeSocket.last();
    const id = conn.send('user:bob', { kind: 'text', text: 'hi' });
    assert.equal(first.sent.length, 0, 'nothing goes before the socket is open');
    first.accept();
    assert.deepEqual(first.frames('send'), [
      { type: 'send', id, ref: id, to: 'user:bob', body: { kind: 'text', text: 'hi' } },
    ]);
    first.drop();
    clock.advance(30_000);
    const second = FakeSocket.last();
    assert.notEqual(second, first);
    second.accept();
    assert.deepEqual(second.frames('send').map((f) => f.id), [id]);
    second.deliver({ type: 'sent', ref: id, id: 'server-1', conv: 'dm:alice:bob', ts: 5 });
    assert.deepEqual(sent, [{ clientId: id, id: 'server-1', conv: 'dm:alice:bob', ts: 5 }]);
    assert.deepEqual(conn.unsent(), []);
    second.drop();
    clock.advance(30_000);
    FakeSocket.last().accept();
    assert.deepEqual(FakeSocket.last().frames('send'), [], 'a durable send is not repeated');
  });

  it('keeps unsent messages across a reload, in the order they were made', () => {
    const conn = connection();
    const a = conn.send('user:bob', { kind: 'text', text: 'a' });
    const b = conn.send('group:g1', { kind: 'text', text: 'b' });
    conn.close();
    const reloaded = connection();
    reloaded.start();
    FakeSocket.last().accept();
    assert.deepEqual(FakeSocket.last().frames('send').map((f) => f.id), [a, b]);
  });

  it('drops a refused send and reports it, but retries an unavailable one', () => {
    const conn = connection();
    const failed = collect(conn, 'send-failed');
    const shown = collect(conn, 'server-error');
    conn.start();
    FakeSocket.last().accept();
    const refused = conn.send('user:bob', { kind: 'text', text: '' });
    const retried = conn.send('user:bob', { kind: 'text', text: 'x' });
    FakeSocket.last().deliver({ type: 'error', code: 'bad_request', message: 'empty text', ref: refused });
    assert.equal(failed.length, 1);
    assert.equal(failed[0].clientId, refused);
    FakeSocket.last().deliver({ type: 'error', code: 'unavailable', message: 'retry', ref: retried });
    clock.advance(30_000);
    FakeSocket.last().accept();
    assert.deepEqual(FakeSocket.last().frames('send').map((f) => f.id), [retried]);
    assert.deepEqual(shown, [], 'errors that answer a send are not shown twice');
  });

  it('sends a rate-limited message again once the server allows it', () => {
    const conn = connection({ pingEveryMs: 60_000 });
    const failed = collect(conn, 'send-failed');
    conn.start();
    const socket = FakeSocket.last();
    socket.accept();
    const id = conn.send('user:bob', { kind: 'text', text: 'fast' });
    socket.deliver({ type: 'error', code: 'rate_limited', message: 'slow down', ref: id, retry_after_ms: 700 });
    clock.advance(600);
    assert.equal(socket.frames('send').length, 1);
    clock.advance(100);
    assert.deepEqual(socket.frames('send').map((f) => f.id), [id, id]);
    assert.deepEqual(failed, []);
  });

  it('backs off longer after each failed attempt and starts over once connected', () => {
    const conn = connection();
    const statuses = collect(conn, 'status');
    conn.start();
    for (let i = 0; i < 4; i += 1) {
      FakeSocket.last().drop();
      clock.advance(60_000);
    }
    const waits = statuses.filter((s) => s.state === 'offline').map((s) => s.retryInMs);
    assert.equal(waits.length, 4);
    waits.forEach((w, i) => {
      assert.ok(w >= 250 * 2 ** i && w <= 500 * 2 ** i, `attempt ${i} waited ${w}`);
    });
    FakeSocket.last().accept();
    FakeSocket.last().drop();
    assert.ok(statuses.at(-1).retryInMs <= 500, 'backoff starts over after a good connection');
  });

  it('replaces a socket that stops answering pings', () => {
    const conn = connection();
    conn.start();
    const quiet = FakeSocket.last();
    quiet.accept();
    clock.advance(1_000);
    assert.equal(quiet.frames('ping').length, 1);
    quiet.deliver({ type: 'pong' });
    clock.advance(1_000);
    assert.equal(quiet.frames('ping').length, 2);
    clock.advance(500);
    assert.equal(quiet.readyState, 3, 'no pong within 500 ms: closed');
    clock.advance(1_000);
    assert.notEqual(FakeSocket.last(), quiet, 'and a new socket opened');
  });

  it('answers requests by ref, and rejects on error, timeout or a lost socket', async () => {
    const conn = connection({ pingEveryMs: 60_000 });
    const shown = collect(conn, 'server-error');
    conn.start();
    await assert.rejects(conn.history('dm:alice:bob'), /not connected/);
    const socket = FakeSocket.last();
    socket.accept();

    const page = conn.history('dm:alice:bob', { before: 'm9', limit: 20 });
    const asked = socket.frames('history')[0];
    assert.deepEqual({ ...asked, ref: undefined }, { type: 'history', conv: 'dm:alice:bob', before: 'm9', limit: 20, ref: undefined });
    socket.deliver({ type: 'history', ref: asked.ref, conv: 'dm:alice:bob', messages: [], more: false });
    assert.equal((await page).more, false);

    const refused = conn.request({ type: 'group_create', name: 'x', members: ['bad id'] });
    socket.deliver({ type: 'error', code: 'bad_id', message: 'bad member', ref: socket.sent.at(-1).ref });
    await assert.rejects(refused, (e) => e.code === 'bad_id');

    const late = conn.request({ type: 'group_leave', group: 'g' });
    clock.advance(2_000);
    await assert.rejects(late, /no answer/);

    const lost = conn.request({ type: 'group_leave', group: 'g' });
    socket.drop();
    await assert.rejects(lost, /connection lost/);
    assert.deepEqual(shown, []);
  });

  it('shows other errors, but not presence refusals, and asks again for a refused user', () => {
    const conn = connection();
    const shown = collect(conn, 'server-error');
    conn.start();
    const socket = FakeSocket.last();
    socket.accept();
    conn.subscribePresence(['bob', 'cat']);
    assert.deepEqual(socket.frames('presence_subscribe'), [
      { type: 'presence_subscribe', users: ['bob'], ref: 'presence:bob' },
      { type: 'presence_subscribe', users: ['cat'], ref: 'presence:cat' },
    ]);
    socket.deliver({ type: 'error', code: 'forbidden', message: 'private', ref: 'presence:bob' });
    socket.deliver({ type: 'error', code: 'unsupported', message: 'no presence', ref: 'presence:cat' });
    socket.deliver({ type: 'error', code: 'forbidden', message: 'not a member' });
    assert.deepEqual(shown.map((e) => e.code), ['forbidden']);
    conn.subscribePresence(['bob', 'cat']);
    assert.deepEqual(socket.frames('presence_subscribe').map((f) => f.ref),
      ['presence:bob', 'presence:cat', 'presence:bob'], 'refused: asked again; unsupported: not');
  });

  it('subscribes presence again after a reconnect, and passes other frames on', () => {
    const conn = connection();
    const frames = collect(conn, 'frame');
    conn.start();
    FakeSocket.last().accept();
    conn.subscribePresence(['bob', 'cat']);
    conn.subscribePresence(['bob']);
    FakeSocket.last().drop();
    clock.advance(30_000);
    const socket = FakeSocket.last();
    socket.accept();
    assert.deepEqual(socket.frames('presence_subscribe').map((f) => f.users), [['bob'], ['cat']]);
    socket.deliver({ type: 'presence', user: 'bob', online: true, last_seen: 1 });
    socket.deliver({ type: 'typing', conv: 'dm:alice:bob', from: 'bob', state: 'start' });
    assert.deepEqual(frames.map((f) => f.type), ['presence', 'typing']);
  });

  it('sends edit, delete and react with a ref, and resolves with their changed answer', async () => {
    const conn = connection({ pingEveryMs: 60_000 });
    conn.start();
    const socket = FakeSocket.last();
    socket.accept();
    const answer = (frame) => ({ type: 'changed', ref: frame.ref, id: frame.id, conv: 'dm:alice:bob', rev: 'r1', ts: 9 });

    const edited = conn.edit('m1', { kind: 'text', text: 'fixed' });
    const edit = socket.sent.at(-1);
    assert.deepEqual({ ...edit, ref: undefined }, { type: 'edit', id: 'm1', body: { kind: 'text', text: 'fixed' }, ref: undefined });
    socket.deliver(answer(edit));
    assert.equal((await edited).rev, 'r1');

    const deleted = conn.deleteForEveryone('m2');
    assert.deepEqual(Object.keys(socket.sent.at(-1)).sort(), ['id', 'ref', 'type']);
    socket.deliver(answer(socket.sent.at(-1)));
    assert.equal((await deleted).id, 'm2');

    const reacted = conn.react('m1', '👍');
    assert.equal(socket.sent.at(-1).emoji, '👍');
    socket.deliver(answer(socket.sent.at(-1)));
    await reacted;
    const takenBack = conn.react('m1', null);
    assert.equal('emoji' in socket.sent.at(-1), false, 'taking a reaction back leaves emoji out');
    socket.deliver(answer(socket.sent.at(-1)));
    await takenBack;
    assert.equal(new Set(socket.sent.filter((f) => f.ref).map((f) => f.ref)).size, 4, 'a fresh ref each');
  });

  it('tries a change again after rate_limited or unavailable, and rejects other refusals with their code', async () => {
    const conn = connection({ pingEveryMs: 60_000 });
    const shown = collect(conn, 'server-error');
    conn.start();
    const socket = FakeSocket.last();
    socket.accept();
    const settle = () => new Promise((resolve) => setImmediate(resolve));

    const reacted = conn.react('m1', '❤️');
    socket.deliver({ type: 'error', code: 'rate_limited', message: 'slow down', retry_after_ms: 700, ref: socket.sent.at(-1).ref });
    await settle();
    clock.advance(600);
    assert.equal(socket.frames('react').length, 1, 'not before retry_after_ms');
    clock.advance(100);
    await settle();
    assert.equal(socket.frames('react').length, 2);
    socket.deliver({ type: 'changed', ref: socket.sent.at(-1).ref, id: 'm1', conv: 'dm:alice:bob', rev: 'r2', ts: 3 });
    assert.equal((await reacted).rev, 'r2');

    const busy = assert.rejects(conn.deleteForEveryone('m1'), (e) => e.code === 'unavailable');
    for (let attempt = 0; attempt < 3; attempt += 1) {
      socket.deliver({ type: 'error', code: 'unavailable', message: 'busy', ref: socket.sent.at(-1).ref });
      await settle();
      clock.advance(10_000);
      await settle();
    }
    await busy;
    assert.equal(socket.frames('delete').length, 3, 'tried three times in all');

    const refused = conn.edit('m1', { kind: 'text', text: 'late' });
    socket.deliver({ type: 'error', code: 'forbidden', message: 'the edit window is over', ref: socket.sent.at(-1).ref });
    await assert.rejects(refused, (e) => e.code === 'forbidden' && /window/.test(e.message));
    assert.equal(socket.frames('edit').length, 1, 'a refusal is not repeated');
    assert.deepEqual(shown, [], 'refusals go to whoever asked, not to the listeners');
  });

  it('hands change items over like messages, and passes frames of unknown types on untouched', () => {
    const conn = connection();
    const items = collect(conn, 'item');
    const frames = collect(conn, 'frame');
    conn.start();
    const socket = FakeSocket.last();
    socket.accept();
    const change = { conv: 'dm:alice:bob', id: 'm1', from: 'bob', rev: 'r1', ts: 2 };
    socket.deliver({ type: 'edit', seq: 1, ...change, body: { kind: 'text', text: 'x' } });
    socket.deliver({ type: 'reaction', seq: 2, ...change, emoji: '👍' });
    socket.deliver({ type: 'delete', seq: 3, ...change });
    socket.deliver({ type: 'delete', seq: 3, ...change });
    socket.deliver({ type: 'sparkles', colour: 'gold' });
    assert.deepEqual(items.map((i) => i.type), ['edit', 'reaction', 'delete']);
    assert.deepEqual(socket.frames('ack').map((a) => a.seq), [1, 2, 3]);
    assert.deepEqual(frames.map((f) => f.type), ['sparkles']);
  });

  it('connects a device with no cursor with after=latest, and resumes with a number once hello gave one', () => {
    const conn = connection({ latestWhenNew: true });
    conn.start();
    let socket = FakeSocket.last();
    assert.equal(socket.url.searchParams.get('after'), 'latest');
    socket.accept();
    socket.deliver({ type: 'hello', after: 40, newest: 40, oldest: 1, resumed: true });
    assert.equal(storage.getItem('natter:alice:laptop:cursor'), '40');
    socket.drop();
    clock.advance(30_000);
    assert.equal(FakeSocket.last().url.searchParams.get('after'), '40');
    conn.close();

    // A device that has a cursor resumes from it, even asked for latest.
    const again = connection({ latestWhenNew: true });
    again.start();
    assert.equal(FakeSocket.last().url.searchParams.get('after'), '40');
    again.close();
    // Without the option a new device still replays the inbox (after=0).
    storage = new MemoryStorage();
    connection().start();
    assert.equal(FakeSocket.last().url.searchParams.get('after'), '0');
  });

  it('asks for the chat list, settings, mutes and blocks with a ref, and resolves with the answers', async () => {
    const conn = connection({ pingEveryMs: 60_000 });
    conn.start();
    const socket = FakeSocket.last();
    socket.accept();
    const settings = { type: 'settings', last_seen: 'everyone', online: 'nobody', muted: {} };
    const cases = [
      [() => conn.conversations(), { type: 'conversations' }, { type: 'conversations', conversations: [], more: false }],
      [() => conn.conversations({ before: 'x', limit: 100 }), { type: 'conversations', before: 'x', limit: 100 }, { type: 'conversations', conversations: [], more: false }],
      [() => conn.settings(), { type: 'settings' }, settings],
      [() => conn.settings({ online: 'nobody' }), { type: 'settings', online: 'nobody' }, settings],
      [() => conn.mute('g', 99), { type: 'mute', conv: 'g', until: 99 }, settings],
      [() => conn.mute('g'), { type: 'mute', conv: 'g' }, settings],
      [() => conn.unmute('g'), { type: 'unmute', conv: 'g' }, settings],
      [() => conn.block('bob'), { type: 'block', user: 'bob' }, { type: 'blocked', users: ['bob'] }],
      [() => conn.unblock('bob'), { type: 'unblock', user: 'bob' }, { type: 'blocked', users: [] }],
      [() => conn.blocks(), { type: 'blocks' }, { type: 'blocked', users: [] }],
    ];
    for (const [call, frame, answer] of cases) {
      const promise = call();
      const sent = socket.sent.at(-1);
      assert.deepEqual({ ...sent, ref: undefined }, { ...frame, ref: undefined });
      socket.deliver({ ...answer, ref: sent.ref });
      assert.deepEqual(await promise, { ...answer, ref: sent.ref });
    }
    const refused = conn.block('alice');
    socket.deliver({ type: 'error', code: 'bad_request', message: 'not yourself', ref: socket.sent.at(-1).ref });
    await assert.rejects(refused, { code: 'bad_request' });
  });

  it('sends read, typing and no reconnect after close', () => {
    const conn = connection();
    conn.start();
    const socket = FakeSocket.last();
    socket.accept();
    conn.read('dm:alice:bob', 'm3');
    conn.typing('dm:alice:bob', 'start');
    assert.deepEqual(socket.sent, [
      { type: 'read', conv: 'dm:alice:bob', up_to: 'm3' },
      { type: 'typing', conv: 'dm:alice:bob', state: 'start' },
    ]);
    conn.close();
    clock.advance(60_000);
    assert.equal(FakeSocket.all.length, 1);
  });
});
