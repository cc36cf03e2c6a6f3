// The open chat's menu (the ⋮ button in its header): mute or unmute it, and in a
// one-on-one chat block or unblock the contact; and the privacy settings dialog.
//
// Mutes, blocks and privacy live on the server (docs/PROTOCOL.md, "Settings: privacy and
// mute", "Blocking"): each request's answer (`settings`, `blocked`) is the whole new
// state and replaces what the device held (lists.js). They are read again on every
// connection (`loadAccount`), so changes made on another device show after a reconnect.

import { app, redrawAll } from './context.js';
import * as lists from './lists.js';
import { $, describeFailure, element, onMenuKey, placeMenu, showNotice } from './ui.js';

/** Reads the settings (privacy, mutes) and the users one blocked. */
export async function loadAccount() {
  const connection = app.connection;
  const [settings, blocked] = await Promise.allSettled([connection.settings(), connection.blocks()]);
  if (settings.status === 'fulfilled') lists.applySettings(app.state, settings.value);
  if (blocked.status === 'fulfilled') lists.applyBlocked(app.state, blocked.value.users);
  redrawAll();
}

async function ask(failed, call, apply) {
  try {
    apply(await call());
    redrawAll();
  } catch (error) {
    showNotice(`${failed}: ${describeFailure(error)}`);
  }
}

function mute(conv, hours) {
  const until = lists.muteUntil(hours, Date.now());
  ask('Not muted', () => app.connection.mute(conv, until), (s) => lists.applySettings(app.state, s));
}

function unmute(conv) {
  ask('Not unmuted', () => app.connection.unmute(conv), (s) => lists.applySettings(app.state, s));
}

function block(user) {
  ask('Not blocked', () => app.connection.block(user), (b) => lists.applyBlocked(app.state, b.users));
}

export function unblock(user) {
  ask('Not unblocked', () => app.connection.unblock(user), (b) => lists.applyBlocked(app.state, b.users));
}

/** The menu of the open chat, rebuilt on each opening from what the device holds now. */
function openChatMenu() {
  const c = app.state.convs[app.openConv];
  if (!c) return;
  const menu = $('chat-menu');
  const items = [];
  if (lists.isMuted(app.state, c.id, Date.now())) {
    items.push(menuItem('Unmute', () => unmute(c.id)));
  } else {
    for (const { label, hours } of lists.MUTE_CHOICES) items.push(menuItem(label, () => mute(c.id, hours)));
  }
  if (c.kind === 'dm' && c.peer !== app.me) {
    if (lists.isBlocked(app.state, c)) items.push(menuItem(`Unblock ${c.peer}`, () => unblock(c.peer)));
    else items.push(menuItem(`Block ${c.peer}…`, () => openBlockDialog(c.peer)));
  }
  menu.replaceChildren(...items);
  $('chat-menu-button').setAttribute('aria-expanded', 'true');
  placeMenu(menu, $('chat-menu-button').getBoundingClientRect());
}

function menuItem(label, action) {
  const button = element('button', { type: 'button', role: 'menuitem' }, label);
  button.addEventListener('click', () => {
    closeChatMenu({ refocus: false });
    action();
  });
  return button;
}

function closeChatMenu({ refocus = true } = {}) {
  const menu = $('chat-menu');
  if (menu.hidden) return;
  menu.hidden = true;
  $('chat-menu-button').setAttribute('aria-expanded', 'false');
  if (refocus) $('chat-menu-button').focus();
}

/** WhatsApp's "Block <name>?", with what it means for their messages. */
function openBlockDialog(user) {
  $('block-title').textContent = `Block ${user}?`;
  $('block-dialog').dataset.user = user;
  $('block-dialog').showModal();
}

/** The privacy dialog: read from the server when opened, each change sent at once. */
async function openSettings() {
  const selects = [$('privacy-last-seen'), $('privacy-online'), $('privacy-read-receipts')];
  const status = $('settings-status');
  selects.forEach((s) => (s.disabled = true));
  status.textContent = 'Loading…';
  $('settings-dialog').showModal();
  try {
    lists.applySettings(app.state, await app.connection.settings());
    showPrivacy();
    status.textContent = '';
    selects.forEach((s) => (s.disabled = false));
  } catch (error) {
    status.textContent = `Could not read the settings: ${describeFailure(error)}`;
  }
}

function showPrivacy() {
  $('privacy-last-seen').value = app.state.privacy?.last_seen ?? 'everyone';
  $('privacy-online').value = app.state.privacy?.online ?? 'everyone';
  $('privacy-read-receipts').checked = app.state.privacy?.read_receipts ?? true;
}

async function changePrivacy(select) {
  const status = $('settings-status');
  status.textContent = 'Saving…';
  try {
    const value = select.type === 'checkbox' ? select.checked : select.value;
    lists.applySettings(app.state, await app.connection.settings({ [select.name]: value }));
    status.textContent = 'Saved';
    redrawAll();
  } catch (error) {
    status.textContent = `Not saved: ${describeFailure(error)}`;
  }
  showPrivacy();
}

/** Listens to the header menu, the block dialog, the blocked bar and the settings (once). */
export function wireChatMenu() {
  $('chat-menu-button').addEventListener('click', () => {
    if ($('chat-menu').hidden) openChatMenu();
    else closeChatMenu();
  });
  $('chat-menu').addEventListener('keydown', (event) => onMenuKey($('chat-menu'), event, closeChatMenu));
  document.addEventListener('pointerdown', (event) => {
    if (!event.target.closest('#chat-menu, #chat-menu-button')) closeChatMenu({ refocus: false });
  });
  window.addEventListener('resize', () => closeChatMenu({ refocus: false }));
  $('block-dialog').addEventListener('click', (event) => {
    const choice = event.target.closest('button')?.dataset.choice;
    if (!choice) return;
    $('block-dialog').close();
    if (choice === 'block') block($('block-dialog').dataset.user);
  });
  $('blocked-unblock').addEventListener('click', () => {
    const c = app.state.convs[app.openConv];
    if (c?.kind === 'dm') unblock(c.peer);
  });
  $('open-settings').addEventListener('click', openSettings);
  for (const select of [$('privacy-last-seen'), $('privacy-online'), $('privacy-read-receipts')]) {
    select.addEventListener('change', () => changePrivacy(select));
  }
}
