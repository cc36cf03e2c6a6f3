// The changes UI: each message's menu (react, edit, delete), editing in the composer,
// and the "Delete message?" dialog.
//
// Each message has a menu (the ⌄ button on hover or focus, or a right-click): react,
// edit, delete. A change is sent as a request, and its `changed` answer is applied at
// once; the inbox item that follows is the same change again, which the store ignores.

import { forgetFile } from './chat-view.js';
import { afterChange, app, heldMessage } from './context.js';
import * as store from './store.js';
import { $, describeChange, element, onMenuKey, placeMenu, showNotice } from './ui.js';

/**
 * Sends a change with `call` and applies the `changed` answer as the item it announces;
 * a refusal is a notice starting with `failed` ("Not edited", …).
 */
async function requestChange(failed, conv, call, change) {
  try {
    const changed = await call();
    if (change.type === 'delete') forgetFile(changed.conv, changed.id);
    afterChange(store.applyChange(app.state, { ...change, id: changed.id, conv: changed.conv, from: app.me, rev: changed.rev, ts: changed.ts }));
  } catch (error) {
    showNotice(`${failed}: ${describeChange(error)}`);
  }
}

/** Reacts with `emoji`; one's current reaction again takes it back (as in WhatsApp). */
export function react(target, emoji) {
  const held = heldMessage(target);
  if (!held) return;
  const next = store.myReaction(held.m, app.me) === emoji ? null : emoji;
  requestChange('Reaction not sent', target.conv, () => app.connection.react(target.id, next), { type: 'reaction', emoji: next });
}

/** Puts the message into the composer to be edited; Send then saves it. */
export function startEditing(target) {
  const held = heldMessage(target);
  if (!held || !store.canEdit(held.m, app.me, Date.now())) return;
  app.editing = target;
  const body = held.m.body;
  const current = body.kind === 'text' ? body.text : body.caption ?? '';
  $('edit-original').textContent = current;
  $('edit-bar').hidden = false;
  $('send').textContent = 'Save';
  $('message-text').value = current;
  $('message-text').focus();
  $('message-text').select();
}

export function stopEditing() {
  app.editing = null;
  $('edit-bar').hidden = true;
  $('send').textContent = 'Send';
  $('message-text').value = '';
}

/** A text gets the new text; a media message keeps its file and gets a new caption. */
export function saveEdit(text) {
  const target = app.editing;
  const held = heldMessage(target);
  stopEditing();
  if (!held) return;
  const old = held.m.body;
  let body;
  if (old.kind === 'text') {
    if (!text.trim()) {
      showNotice('Not edited: a message cannot be empty (delete it instead).');
      return;
    }
    body = { kind: 'text', text };
  } else {
    body = { ...old, caption: text };
    if (!text.trim()) delete body.caption;
  }
  if ((body.text ?? body.caption ?? '') === (old.text ?? old.caption ?? '')) return;
  requestChange('Not edited', target.conv, () => app.connection.edit(target.id, body), { type: 'edit', body });
}

function deleteForEveryone(target) {
  if (app.editing?.id === target.id) stopEditing();
  requestChange('Not deleted', target.conv, () => app.connection.deleteForEveryone(target.id), { type: 'delete' });
}

function deleteForMe(target) {
  if (app.editing?.id === target.id) stopEditing();
  afterChange(store.hideMessage(app.state, target.conv, target.id));
}

/**
 * Opens the menu of message `target` next to `anchor` (its ⌄ button's box, or the
 * pointer of a right-click). It is rebuilt on each opening, so it offers only what the
 * server would take now (a redraw of the chat does not close it).
 */
export function openMessageMenu(target, anchor) {
  const held = heldMessage(target);
  if (!held) return;
  const { c, m } = held;
  closeMessageMenu({ refocus: false });
  app.menuTarget = target;
  const menu = $('message-menu');
  const items = [];
  if (!m.deleted && !c.left) {
    const mine = store.myReaction(m, app.me);
    const picker = element('div', { class: 'reaction-picker', role: 'group', 'aria-label': 'React' });
    for (const emoji of store.QUICK_REACTIONS) {
      const button = menuItem(emoji, () => react(target, emoji), {
        role: 'menuitemcheckbox',
        'aria-checked': String(emoji === mine),
        'aria-label': emoji === mine ? `Remove reaction ${emoji}` : `React ${emoji}`,
      });
      picker.append(button);
    }
    items.push(picker);
  }
  const now = Date.now();
  if (store.canEdit(m, app.me, now) && !c.left) items.push(menuItem('Edit', () => startEditing(target)));
  items.push(menuItem('Delete…', () => openDeleteDialog(target)));
  menu.replaceChildren(...items);
  menuButtonOf(target.id)?.setAttribute('aria-expanded', 'true');
  placeMenu(menu, anchor);
}

function menuItem(label, action, attributes = {}) {
  const button = element('button', { type: 'button', role: 'menuitem', ...attributes }, label);
  button.addEventListener('click', () => {
    closeMessageMenu({ refocus: false });
    action();
  });
  return button;
}

export function closeMessageMenu({ refocus = true } = {}) {
  const menu = $('message-menu');
  if (menu.hidden) return;
  menu.hidden = true;
  menuButtonOf(app.menuTarget.id)?.setAttribute('aria-expanded', 'false');
  if (refocus) menuButtonOf(app.menuTarget.id)?.focus();
}

function menuButtonOf(id) {
  return $('messages').querySelector(`li[data-id="${CSS.escape(id)}"] .menu-button`);
}

/** WhatsApp's "Delete message?": for everyone when the server would take it, or for me. */
function openDeleteDialog(target) {
  const held = heldMessage(target);
  if (!held) return;
  app.menuTarget = target;
  $('delete-everyone').hidden = !store.canDeleteForEveryone(held.c, held.m, app.me, Date.now());
  $('delete-dialog').showModal();
}

function onDeleteChoice(choice) {
  const target = app.menuTarget;
  $('delete-dialog').close();
  if (!target) return;
  if (choice === 'everyone') deleteForEveryone(target);
  else if (choice === 'me') deleteForMe(target);
  menuButtonOf(target.id)?.focus();
}

/** Listens to the menu, the dialog and the edit bar (once, at load). */
export function wireMessageMenu() {
  $('edit-cancel').addEventListener('click', () => {
    stopEditing();
    $('message-text').focus();
  });
  $('message-menu').addEventListener('keydown', (event) => onMenuKey($('message-menu'), event, closeMessageMenu));
  // The menu is placed by its message and would stay behind when the person scrolls (a
  // redraw that scrolls, a new message coming, leaves it open).
  for (const type of ['wheel', 'touchmove']) {
    $('messages').addEventListener(type, () => closeMessageMenu({ refocus: false }), { passive: true });
  }
  window.addEventListener('resize', () => closeMessageMenu({ refocus: false }));
  document.addEventListener('pointerdown', (event) => {
    if (!event.target.closest('#message-menu, .menu-button')) closeMessageMenu({ refocus: false });
  });
  $('delete-dialog').addEventListener('click', (event) => {
    const choice = event.target.closest('button')?.dataset.choice;
    if (choice) onDeleteChoice(choice);
  });
}
