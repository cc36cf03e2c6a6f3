// Unit tests of web/src/lists.js (and the parts of store.js it relies on): the chat list
// from `conversations` on a new device and after a reconnect, unread counts that neither
// miss nor double count what the inbox brings, mutes, blocks and privacy.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import * as lists from '../../src/lists.js';
import * as store from '../../src/store.js';

const ME = 'alice';
const DM = 'dm:alice:bob';
const GROUP = 'group:g1';
const text = (t) => ({ kind: 'text', text: t });
/** A UUIDv7-like id at `ms`, with `n` to order ids of the same time. */
const id = (ms, n = 0) => `${ms.toString(16).padStart(12, '0').replace(/^(.{8})/, '$1-')}-7000-8000-${String(n).padStart(12, '0')}`;
const msg = (mid, from, t, conv = DM) => ({ type: 'msg', seq: 1, id: mid, conv, from, ts: 1, body: text(t) });
const last = (mid, from, t, extra = {}) => ({ id: mid, conv: DM, from, ts: 5, body: text(t), ...extra });
const page = (...conversations) => ({ type: 'conversations', conversations, more: false });

describe('chat list', () => {
  it('fills a new device: names, previews, unread counts, mutes and order', () => {
    const state = store.emptyState();
    lists.applyConversations(state, ME, page(
      { conv: GROUP, at: id(2_000), name: 'Climbing', unread: 0 },
      { conv: DM, at: id(1_000), last: last(id(1_000), 'bob', 'See you at 8'), unread: 3, muted_until: lists.FOREVER },
    ));
    const dm = state.convs[DM];
    assert.equal(dm.unread, 3);
    assert.equal(dm.peer, 'bob');
    assert.deepEqual(dm.messages.map((m) => [m.body.text, m.partial]), [['See you at 8', true]]);
    assert.equal(dm.more, undefined, 'opening it pages history');
    assert.equal(state.convs[GROUP].name, 'Climbing');
    assert.equal(state.convs[GROUP].listedTs, 2_000);
    assert.deepEqual(store.sortedConversations(state).map((c) => c.id), [GROUP, DM], 'an empty group by its `at`');
    assert.equal(lists.isMuted(state, DM, Date.now()), true);
    assert.equal(lists.isMuted(state, GROUP, Date.now()), false);
    assert.equal(store.totalUnread(state), 3);
  });

  it('replaces the preview with the whole message from history, keeping its ticks', () => {
    const state = store.emptyState();
    const long = `${'x'.repeat(200)}`;
    lists.applyConversations(state, ME, page({ conv: DM, at: id(1), last: last(id(1), ME, long, { status: 'delivered' }), unread: 0 }));
    store.applyHistory(state, ME, { conv: DM, more: false, messages: [
      { id: id(0), conv: DM, from: 'bob', ts: 1, body: text('hi') },
      { id: id(1), conv: DM, from: ME, ts: 5, body: text(`${long}, and the rest`), status: 'read' },
    ] });
    const messages = state.convs[DM].messages;
    assert.deepEqual(messages.map((m) => m.body.text), ['hi', `${long}, and the rest`]);
    assert.equal(messages[1].partial, undefined);
    assert.equal(messages[1].status, 'read');
  });

  it('keeps a deleted or edited last message as the list shows it', () => {
    const state = store.emptyState();
    lists.applyConversations(state, ME, page({ conv: DM, at: id(1), unread: 0,
      last: last(id(1), 'bob', '', { body: { kind: 'deleted' }, deleted: { by: 'bob', ts: 9 } }) }));
    assert.ok(state.convs[DM].messages[0].deleted);
    store.applyItem(state, ME, msg(id(1), 'bob', 'the original'));
    assert.equal(state.convs[DM].messages[0].body.kind, 'deleted', 'an old copy does not bring it back');
  });

  it('counts inbox messages the list already counted once, and newer ones on top', () => {
    // A new device: one message came live before the list, one is replayed after it.
    const state = store.emptyState();
    store.applyItem(state, ME, msg(id(1), 'bob', 'one'));
    lists.applyConversations(state, ME, page({ conv: DM, at: id(2), last: last(id(2), 'bob', 'two'), unread: 2 }));
    assert.equal(state.convs[DM].unread, 2);
    store.applyItem(state, ME, msg(id(2), 'bob', 'two'));
    assert.equal(state.convs[DM].unread, 2, 'the listed message was counted by the server');
    assert.equal(state.convs[DM].messages.at(-1).partial, undefined, 'the item has all of it');
    store.applyItem(state, ME, msg(id(3), 'bob', 'three'));
    assert.equal(state.convs[DM].unread, 3);
  });

  it('after a reconnect takes counts read on other devices, adding what is newer than the list', () => {
    const state = store.emptyState();
    for (let n = 1; n <= 4; n += 1) store.applyItem(state, ME, msg(id(n), 'bob', `m${n}`));
    assert.equal(state.convs[DM].unread, 4);
    // The list is behind the inbox: it knows 3 messages, all read elsewhere.
    lists.applyConversations(state, ME, page({ conv: DM, at: id(3), last: last(id(3), 'bob', 'm3'), unread: 0 }));
    assert.equal(state.convs[DM].unread, 1, 'm4 is newer than the list');
    // ...unless this device read it.
    store.readReported(state, DM, id(4));
    lists.applyConversations(state, ME, page({ conv: DM, at: id(3), last: last(id(3), 'bob', 'm3'), unread: 0 }));
    assert.equal(state.convs[DM].unread, 0);
    assert.deepEqual(state.convs[DM].messages.map((m) => m.body.text), ['m1', 'm2', 'm3', 'm4'], 'held messages are kept');
  });

  it('leaves the chat on screen at 0 unread', () => {
    const state = store.emptyState();
    lists.applyConversations(state, ME, page({ conv: DM, at: id(1), last: last(id(1), 'bob', 'hi'), unread: 1 }), { viewing: DM });
    assert.equal(state.convs[DM].unread, 0);
  });

  it('reads the time of a UUIDv7 id', () => {
    assert.equal(lists.idTime('0192f6a3-7b00-7000-8000-000000000000'), 0x0192f6a37b00);
    assert.equal(lists.idTime('nonsense'), 0);
  });
});

describe('settings and blocks', () => {
  it('takes mutes and privacy from the settings answer, and mutes from the list', () => {
    const state = store.emptyState();
    const now = 1_000_000;
    lists.applySettings(state, { type: 'settings', last_seen: 'contacts', online: 'nobody', read_receipts: false, muted: { [DM]: now + 10 } });
    assert.deepEqual(state.privacy, { last_seen: 'contacts', online: 'nobody', read_receipts: false });
    assert.equal(lists.isMuted(state, DM, now), true);
    assert.equal(lists.isMuted(state, DM, now + 10), false, 'a mute ends at until');
    lists.applySettings(state, { last_seen: 'everyone', online: 'everyone', muted: {} });
    assert.equal(lists.isMuted(state, DM, now), false, 'unmuted: the answer names every mute');
    lists.applyConversations(state, ME, page({ conv: GROUP, at: id(1), unread: 0, muted_until: now + 5 }));
    assert.equal(lists.isMuted(state, GROUP, now), true);
    lists.applyConversations(state, ME, page({ conv: GROUP, at: id(1), unread: 0 }));
    assert.equal(lists.isMuted(state, GROUP, now), false);
  });

  it('mutes for 8 hours, a week or always', () => {
    assert.deepEqual(lists.MUTE_CHOICES.map((c) => lists.muteUntil(c.hours, 0)), [8 * 3600_000, 7 * 24 * 3600_000, undefined]);
    assert.equal(lists.mutedLabel(lists.FOREVER), 'Muted');
    assert.equal(lists.mutedLabel(5, (ts) => `t${ts}`), 'Muted until t5');
  });

  it('knows which one-on-one chats are with someone blocked', () => {
    const state = store.emptyState();
    const dm = store.conversation(state, ME, DM);
    const group = store.conversation(state, ME, GROUP);
    assert.equal(lists.isBlocked(state, dm), false);
    lists.applyBlocked(state, ['bob']);
    assert.equal(lists.isBlocked(state, dm), true);
    assert.equal(lists.isBlocked(state, group), false);
    assert.equal(lists.isBlocked(state, null), false);
    lists.applyBlocked(state, []);
    assert.equal(lists.isBlocked(state, dm), false);
  });
});
