// Unit tests of web/src/store.js: how inbox items, answers and history pages change what
// a device shows (order, ticks, unread counts, groups, edits, deletions, reactions).

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

  it('takes its own read from another device as a read position, never as ticks', () => {
    const state = store.emptyState();
    store.applyItem(state, 'bob', msg('01', 'bob', 'mine'));
    for (const id of ['02', '03', '04']) store.applyItem(state, 'bob', msg(id, 'alice', id));
    assert.equal(state.convs[CONV].unread, 3);
    store.applyItem(state, 'bob', receipt('03', 'read'));
    assert.deepEqual(statuses(state), ['sent', undefined, undefined, undefined], 'bob\'s own message is not ticked read');
    assert.equal(state.convs[CONV].unread, 1, 'only 04 is after the read');
    assert.equal(store.markRead(state, 'bob', CONV), '04');
    store.applyItem(state, 'bob', receipt('02', 'read'));
    assert.equal(state.convs[CONV].readUpTo, '03', 'an older read changes nothing');
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

  describe('changes', () => {
    const change = (type, id, from, rev, extra = {}) => ({ type, seq: 1, id, conv: CONV, from, rev, ts: Number(rev.slice(1)), ...extra });
    const edit = (id, rev, t) => change('edit', id, 'alice', rev, { body: text(t) });
    const react = (id, from, rev, emoji) => change('reaction', id, from, rev, emoji ? { emoji } : {});
    const del = (id, rev, from = 'alice') => change('delete', id, from, rev);
    const message = (state, id = '01') => state.convs[CONV].messages.find((m) => m.id === id);
    const counts = (state, me = 'alice', id = '01') => store.reactionsOf(message(state, id), me).map((r) => `${r.emoji}${r.count}${r.mine ? '*' : ''}`);
    /** Every order of `items`, each applied to a fresh state holding message 01. */
    const everyOrder = (items) => {
      const orders = items.length <= 1 ? [items] : items.flatMap((x, i) => everyOrder([...items.slice(0, i), ...items.slice(i + 1)]).map((rest) => [x, ...rest]));
      return orders;
    };
    const holding = () => {
      const state = store.emptyState();
      store.applyItem(state, 'bob', msg('01', 'alice', 'tpyo'));
      return state;
    };

    it('shows the edit with the highest rev, whatever order edits come in, and marks it edited', () => {
      for (const order of everyOrder([edit('01', 'r1', 'typo?'), edit('01', 'r3', 'typo!'), edit('01', 'r2', 'typo.')])) {
        const state = holding();
        for (const item of [...order, order[0]]) store.applyItem(state, 'bob', item);
        assert.equal(message(state).body.text, 'typo!');
        assert.equal(message(state).edited, 3);
      }
      const state = holding();
      store.applyItem(state, 'bob', { ...edit('01', 'r1', 'x'), type: 'sparkles' });
      assert.equal(message(state).edited, undefined, 'unknown items change nothing');
    });

    it('keeps one reaction per member: the latest rev, taken back by a reaction without emoji', () => {
      const items = [react('01', 'bob', 'r1', '👍'), react('01', 'bob', 'r3'), react('01', 'cat', 'r2', '👍'), react('01', 'bob', 'r2', '❤️')];
      for (const order of everyOrder(items)) {
        const state = holding();
        for (const item of [...order, ...order]) store.applyItem(state, 'bob', item);
        assert.deepEqual(counts(state, 'bob'), ['👍1'], `order ${order.map((i) => i.rev + (i.emoji ?? '-')).join(' ')}`);
        assert.deepEqual(counts(state, 'cat'), ['👍1*'], 'the reader\'s own reaction is marked');
        assert.equal(store.myReaction(message(state), 'bob'), null);
      }
      const state = holding();
      for (const from of ['bob', 'cat', 'dan']) store.applyItem(state, 'bob', react('01', from, 'r1', from === 'dan' ? '😂' : '🙏'));
      assert.deepEqual(counts(state, 'dan'), ['🙏2', '😂1*'], 'most frequent first');
    });

    it('turns a deleted message into a tombstone for good: no text, file or reactions, whatever the order', () => {
      const items = [edit('01', 'r1', 'edited'), react('01', 'bob', 'r2', '👍'), del('01', 'r3'), edit('01', 'r4', 'too late')];
      for (const order of everyOrder(items)) {
        const state = holding();
        for (const item of [...order, order.at(-1)]) store.applyItem(state, 'bob', item);
        const m = message(state);
        assert.deepEqual(m.body, { kind: 'deleted' });
        assert.deepEqual(m.deleted, { by: 'alice', ts: 3 });
        assert.deepEqual(store.reactionsOf(m, 'bob'), []);
        assert.equal(m.edited, undefined);
      }
      const state = store.emptyState();
      store.applyItem(state, 'bob', { ...msg('02', 'alice', ''), body: { kind: 'image', media_id: 'f1', mime: 'image/png', caption: 'cat.png' } });
      store.applyItem(state, 'bob', del('02', 'r5', 'admin'));
      store.applyItem(state, 'bob', del('02', 'r4', 'alice'));
      assert.deepEqual(message(state, '02').body, { kind: 'deleted' }, 'the file is gone with it');
      assert.deepEqual(message(state, '02').deleted, { by: 'alice', ts: 4 }, 'the first deletion is the one kept');
    });

    it('keeps a change for a message not held yet and applies it once the message comes', () => {
      const state = store.emptyState();
      store.applyItem(state, 'bob', msg('00', 'alice', 'older'));
      assert.equal(store.applyItem(state, 'bob', edit('01', 'r2', 'fixed')), null);
      store.applyItem(state, 'bob', react('01', 'cat', 'r1', '😮'));
      store.applyItem(state, 'bob', react('01', 'cat', 'r1', '😮'));
      assert.equal(state.convs[CONV].messages.length, 1, 'nothing shown for it yet');
      store.applyItem(state, 'bob', msg('01', 'alice', 'tpyo'));
      assert.equal(message(state).body.text, 'fixed');
      assert.deepEqual(counts(state, 'bob'), ['😮1']);
      assert.deepEqual(state.pending, {}, 'nothing left waiting');
      // Changes to a conversation the device does not know wait too, without making a chat.
      store.applyItem(state, 'bob', { ...del('09', 'r3'), conv: 'dm:alice:zed' });
      assert.equal(state.convs['dm:alice:zed'], undefined);
    });

    it('keeps a bounded number of waiting changes, dropping the oldest', () => {
      const state = store.emptyState();
      for (let i = 0; i < store.PENDING_CHANGES_KEPT + 3; i += 1) store.applyItem(state, 'bob', react(`x${i}`, 'cat', 'r1', '👍'));
      const waiting = Object.keys(state.pending);
      assert.equal(waiting.length, store.PENDING_CHANGES_KEPT);
      assert.equal(waiting[0], 'x3');
    });

    it('reads edited, deleted, reactions and my_reaction from history pages', () => {
      const state = store.emptyState();
      store.applyHistory(state, 'bob', {
        conv: CONV,
        more: false,
        messages: [
          { id: '01', conv: CONV, from: 'alice', ts: 1, body: text('fixed'), edited: 5, reactions: { '👍': 2, '❤️': 1 }, my_reaction: '👍' },
          { id: '02', conv: CONV, from: 'alice', ts: 2, body: { kind: 'deleted' }, deleted: { by: 'alice', ts: 6 } },
        ],
      });
      assert.equal(message(state).edited, 5);
      assert.deepEqual(counts(state, 'bob'), ['👍2*', '❤️1']);
      assert.deepEqual(message(state, '02').deleted, { by: 'alice', ts: 6 });
      // bob takes his 👍 back, then cat (counted by the page, not named) adds one.
      store.applyItem(state, 'bob', react('01', 'bob', 'r7'));
      assert.deepEqual(counts(state, 'bob'), ['👍1', '❤️1']);
      store.applyItem(state, 'bob', react('01', 'cat', 'r8', '😢'));
      assert.deepEqual(counts(state, 'bob'), ['👍1', '❤️1', '😢1']);
      // An edit older than the page's (a replay) loses; a newer one wins.
      store.applyItem(state, 'bob', edit('01', 'r4', 'older'));
      assert.equal(message(state).body.text, 'fixed');
      store.applyItem(state, 'bob', edit('01', 'r9', 'newer'));
      assert.equal(message(state).body.text, 'newer');
      // Nothing revives a message the page says was deleted.
      store.applyItem(state, 'bob', edit('02', 'r9', 'back?'));
      assert.deepEqual(message(state, '02').body, { kind: 'deleted' });
    });

    it('does not count a reaction twice when both its item and a history page bring it', () => {
      const page = (reactions, extra = {}) => ({ conv: CONV, more: false, messages: [{ id: '01', conv: CONV, from: 'alice', ts: 1, body: text('tpyo'), reactions, ...extra }] });
      // The items first, then a page that has them too.
      const state = holding();
      store.applyItem(state, 'bob', react('01', 'cat', 'r1', '👍'));
      store.applyItem(state, 'bob', react('01', 'bob', 'r2', '👍'));
      store.applyHistory(state, 'bob', page({ '👍': 3 }, { my_reaction: '👍' }));
      assert.deepEqual(counts(state, 'bob'), ['👍3*'], 'one member only the page knows');
      // A page a moment behind the inbox (history is written after it) takes nothing away.
      store.applyItem(state, 'bob', react('01', 'dan', 'r3', '❤️'));
      store.applyHistory(state, 'bob', page({ '👍': 3 }, { my_reaction: '👍' }));
      assert.deepEqual(counts(state, 'bob'), ['👍3*', '❤️1']);
      // The message first known from a page, with a reaction that came before it.
      const fresh = store.emptyState();
      store.applyItem(fresh, 'bob', react('01', 'cat', 'r1', '👍'));
      store.applyHistory(fresh, 'bob', page({ '👍': 1 }));
      assert.deepEqual(counts(fresh, 'bob'), ['👍1']);
      assert.deepEqual(fresh.pending, {});
    });

    it('offers edit to the author within 15 minutes, and delete for everyone within 48 hours or to group admins', () => {
      const minute = 60_000;
      const dm = { kind: 'dm', messages: [] };
      const mine = { id: '01', from: 'alice', ts: 0, body: text('x') };
      assert.equal(store.canEdit(mine, 'alice', 14 * minute), true);
      assert.equal(store.canEdit(mine, 'alice', 15 * minute), false);
      assert.equal(store.canEdit(mine, 'bob', minute), false);
      assert.equal(store.canEdit({ ...mine, id: undefined }, 'alice', minute), false, 'not sent yet');
      assert.equal(store.canDeleteForEveryone(dm, mine, 'alice', 47 * 60 * minute), true);
      assert.equal(store.canDeleteForEveryone(dm, mine, 'alice', 48 * 60 * minute), false);
      assert.equal(store.canDeleteForEveryone(dm, mine, 'bob', minute), false);

      const state = store.emptyState();
      const event = (kind, members, admins) => ({ type: 'group_event', seq: 1, group: 'g1', event: kind, members, by: 'alice', ts: 1, admins });
      store.applyItem(state, 'bob', event('created', ['alice', 'bob', 'cat'], ['alice']));
      const group = state.convs['group:g1'];
      const hers = { id: '01', from: 'cat', ts: 0, body: text('x') };
      assert.equal(store.canDeleteForEveryone(group, hers, 'bob', minute), false);
      assert.equal(store.canDeleteForEveryone(group, hers, 'alice', 100 * 60 * minute), true, 'an admin, any time');
      store.applyItem(state, 'bob', event('left', ['alice'], ['bob']));
      assert.deepEqual(group.admins, ['bob']);
      assert.equal(store.canDeleteForEveryone(group, hers, 'bob', minute), true);
      store.applyItem(state, 'bob', event('removed', ['bob']));
      assert.deepEqual(group.admins, [], 'someone removed is no admin');
      assert.equal(store.canDeleteForEveryone(group, { ...hers, from: 'bob' }, 'bob', minute), false, 'not after leaving');
    });

    it('hides a message deleted for me, on this device only', () => {
      const state = holding();
      store.applyItem(state, 'bob', msg('02', 'alice', 'keep'));
      store.hideMessage(state, CONV, '01');
      store.hideMessage(state, CONV, '01');
      assert.deepEqual(store.visibleMessages(state.convs[CONV]).map((m) => m.id), ['02']);
      assert.equal(state.convs[CONV].messages.length, 2, 'still held, so later changes still apply');
      store.applyHistory(state, 'bob', { conv: CONV, more: false, messages: [{ id: '01', conv: CONV, from: 'alice', ts: 1, body: text('tpyo') }] });
      assert.deepEqual(store.visibleMessages(state.convs[CONV]).map((m) => m.id), ['02'], 'paging history does not bring it back');
    });

    it('loads a state saved before changes existed', () => {
      const adapter = { getItem: () => JSON.stringify({ convs: {} }), setItem: () => {} };
      const state = store.loadState(adapter, 'k');
      store.applyItem(state, 'bob', edit('01', 'r1', 'x'));
      assert.equal(Object.keys(state.pending).length, 1);
    });
  });
});
