// Unit tests of web/src/store.js: how inbox items, answers and history pages change what
// a device shows (order, ticks, unread counts, groups).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import * as store from '../../src/store.js';

const CONV = 'dm:alice:bob';
const text = (t) => ({ kind: 'text', text: t });
const msg = (id, from, t, conv = CONV) => ({ type: 'msg', seq: 1, id, conv, from, ts: 1, body: text(t) });
const receipt = (id, status, extra = {}) => ({ type: 'receipt', seq: 1, conv: CONV, id, by: 'bob', status, ts: 1, ...extra });
const statuses = (state, conv = CONV) => state.convs[conv].messages.map((m) => m.status);

describe('store', () => {
  it('names one-on-one conversations as the server does', () => {
    assert.equal(store.dmId('bob', 'alice'), CONV);
    assert.equal(store.dmId('alice', 'bob'), CONV);
    assert.equal(store.targetOf('alice', CONV), 'user:bob');
    assert.equal(store.targetOf('alice', 'group:g1'), 'group:g1');
    assert.equal(store.targetOf('alice', 'dm:alice:alice'), 'user:alice');
  });

  it('keeps messages in id order, once each, pending ones last', () => {
    const state = store.emptyState();
    store.addOutgoing(state, 'alice', CONV, { clientId: 'c1', body: text('mine'), ts: 9 });
    store.applyItem(state, 'alice', msg('02', 'bob', 'second'));
    store.applyItem(state, 'alice', msg('01', 'bob', 'first'));
    store.applyItem(state, 'alice', msg('02', 'bob', 'second'));
    const shown = state.convs[CONV].messages.map((m) => m.body.text);
    assert.deepEqual(shown, ['first', 'second', 'mine']);
  });

  it('turns a pending message into a sent one, whichever of sent and its echo comes first', () => {
    for (const echoFirst of [false, true]) {
      const state = store.emptyState();
      store.addOutgoing(state, 'alice', CONV, { clientId: 'c1', body: text('hi'), ts: 1 });
      assert.deepEqual(statuses(state), ['pending']);
      const sent = { clientId: 'c1', id: '05', conv: CONV, ts: 2 };
      if (echoFirst) store.applyItem(state, 'alice', msg('05', 'alice', 'hi'));
      store.markSent(state, 'alice', sent);
      store.applyItem(state, 'alice', msg('05', 'alice', 'hi'));
      assert.deepEqual(state.convs[CONV].messages.map((m) => [m.id, m.status]), [['05', 'sent']]);
      assert.equal(state.convs[CONV].unread, 0, 'one\'s own messages are never unread');
    }
  });

  it('shows one\'s own message once while its echo has come and its sent has not', () => {
    const state = store.emptyState();
    store.addOutgoing(state, 'alice', CONV, { clientId: 'c1', body: text('hi'), ts: 1 });
    store.addOutgoing(state, 'alice', CONV, { clientId: 'c2', body: text('there'), ts: 1 });
    store.applyItem(state, 'alice', msg('05', 'alice', 'hi'));
    const shown = () => state.convs[CONV].messages.map((m) => [m.id, m.body.text, m.status]);
    assert.deepEqual(shown(), [['05', 'hi', 'sent'], [undefined, 'there', 'pending']]);
    store.markSent(state, 'alice', { clientId: 'c1', id: '05', conv: CONV, ts: 2 });
    store.markSent(state, 'alice', { clientId: 'c2', id: '06', conv: CONV, ts: 2 });
    store.applyItem(state, 'alice', msg('06', 'alice', 'there'));
    assert.deepEqual(shown(), [['05', 'hi', 'sent'], ['06', 'there', 'sent']]);
    // Another device's message with the same text as a pending one: both end up shown.
    store.addOutgoing(state, 'alice', CONV, { clientId: 'c3', body: text('ok'), ts: 3 });
    store.applyItem(state, 'alice', msg('07', 'alice', 'ok'));
    store.markSent(state, 'alice', { clientId: 'c3', id: '08', conv: CONV, ts: 3 });
    store.applyItem(state, 'alice', msg('08', 'alice', 'ok'));
    assert.deepEqual(shown().slice(2), [['07', 'ok', 'sent'], ['08', 'ok', 'sent']]);
  });

  it('raises ticks and never lowers them; a receipt covers earlier messages', () => {
    const state = store.emptyState();
    for (const id of ['01', '02', '03', '04']) store.applyItem(state, 'alice', msg(id, 'alice', id));
    store.applyItem(state, 'alice', receipt('02', 'delivered'));
    assert.deepEqual(statuses(state), ['delivered', 'delivered', 'sent', 'sent']);
    store.applyItem(state, 'alice', receipt('03', 'read'));
    assert.deepEqual(statuses(state), ['read', 'read', 'read', 'sent']);
    store.applyItem(state, 'alice', receipt('03', 'delivered'));
    assert.deepEqual(statuses(state), ['read', 'read', 'read', 'sent']);
  });

  it('shows group ticks only when every member got there', () => {
    const state = store.emptyState();
    const conv = 'group:g1';
    store.applyItem(state, 'alice', { type: 'group_event', seq: 1, group: 'g1', event: 'created', members: ['alice', 'bob', 'cat'], by: 'alice', name: 'Climbing', ts: 1 });
    store.applyItem(state, 'alice', msg('01', 'alice', 'hi', conv));
    store.applyItem(state, 'alice', msg('02', 'alice', 'later', conv));
    const groupReceipt = (status, all) => ({ ...receipt('01', status, { all }), conv });
    store.applyItem(state, 'alice', groupReceipt('delivered', false));
    assert.deepEqual(statuses(state, conv), ['sent', 'sent']);
    store.applyItem(state, 'alice', groupReceipt('delivered', true));
    store.applyItem(state, 'alice', groupReceipt('read', false));
    assert.deepEqual(statuses(state, conv), ['delivered', 'sent']);
    store.applyItem(state, 'alice', groupReceipt('read', true));
    assert.deepEqual(statuses(state, conv), ['read', 'sent']);
    assert.equal(state.convs[conv].name, 'Climbing');
  });

  it('follows group membership, including one\'s own leaving', () => {
    const state = store.emptyState();
    const event = (kind, members) => ({ type: 'group_event', seq: 1, group: 'g1', event: kind, members, by: 'alice', ts: 1 });
    store.applyItem(state, 'bob', event('created', ['alice', 'bob']));
    store.applyItem(state, 'bob', event('added', ['cat']));
    assert.deepEqual(state.convs['group:g1'].members, ['alice', 'bob', 'cat']);
    store.applyItem(state, 'bob', event('removed', ['bob']));
    assert.deepEqual(state.convs['group:g1'].members, ['alice', 'cat']);
    assert.equal(state.convs['group:g1'].left, true);
  });

  it('counts unread messages of chats not on screen, and reports read once', () => {
    const state = store.emptyState();
    store.applyItem(state, 'alice', msg('01', 'bob', 'a'));
    store.applyItem(state, 'alice', msg('02', 'bob', 'b'), { viewing: 'dm:alice:cat' });
    assert.equal(state.convs[CONV].unread, 2);
    assert.equal(store.totalUnread(state), 2);
    assert.equal(store.markRead(state, 'alice', CONV), '02');
    store.readReported(state, CONV, '02');
    assert.equal(state.convs[CONV].unread, 0);
    assert.equal(store.markRead(state, 'alice', CONV), null, 'nothing new to report');
    store.applyItem(state, 'alice', msg('03', 'bob', 'c'), { viewing: CONV });
    assert.equal(state.convs[CONV].unread, 0, 'a message into the open chat is not unread');
    assert.equal(store.markRead(state, 'alice', CONV), '03');
  });

  it('merges history pages under what is held, with the ticks they carry', () => {
    const state = store.emptyState();
    store.applyItem(state, 'alice', msg('03', 'bob', 'newest'));
    store.applyHistory(state, 'alice', {
      conv: CONV,
      more: true,
      messages: [
        { id: '01', conv: CONV, from: 'alice', ts: 1, body: text('old mine'), status: 'read' },
        { id: '02', conv: CONV, from: 'bob', ts: 2, body: text('old theirs') },
        { id: '03', conv: CONV, from: 'bob', ts: 3, body: text('newest') },
      ],
    });
    const c = state.convs[CONV];
    assert.deepEqual(c.messages.map((m) => m.id), ['01', '02', '03']);
    assert.equal(c.messages[0].status, 'read');
    assert.equal(c.more, true);
    assert.equal(store.oldestId(c), '01');
  });

  it('keeps a bounded number of messages and then knows history has more', () => {
    const state = store.emptyState();
    for (let i = 0; i < store.KEPT_PER_CONV + 5; i += 1) {
      store.applyItem(state, 'alice', msg(String(i).padStart(4, '0'), 'bob', `m${i}`));
    }
    const c = state.convs[CONV];
    assert.equal(c.messages.length, store.KEPT_PER_CONV);
    assert.equal(c.messages[0].id, '0005');
    assert.equal(c.more, true);
  });

  it('survives a save and load, and starts empty on nothing or garbage', () => {
    const storage = new Map();
    const adapter = { getItem: (k) => storage.get(k) ?? null, setItem: (k, v) => storage.set(k, v) };
    const state = store.emptyState();
    store.applyItem(state, 'alice', msg('01', 'bob', 'kept'));
    store.saveState(adapter, 'k', state);
    assert.deepEqual(store.loadState(adapter, 'k'), state);
    assert.deepEqual(store.loadState(adapter, 'none'), store.emptyState());
    storage.set('bad', '{');
    assert.deepEqual(store.loadState(adapter, 'bad'), store.emptyState());
  });
});
