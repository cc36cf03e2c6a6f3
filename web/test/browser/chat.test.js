// Browser end-to-end tests: the web client in headless Chromium (Playwright) against a
// real Natter at NATTER_URL (e2e/tests/browser.rs starts one and runs this file). Each
// person is a browser context of their own, signed in through the UI; user ids get a
// random suffix because the server keeps its state between runs.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { deflateSync } from 'node:zlib';

import { chromium } from 'playwright-core';

const BASE = process.env.NATTER_URL;
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = new URL('../../test-artifacts/', import.meta.url);
/** How long any one expected change on a page may take. */
const PATIENCE_MS = 20_000;
const TEST_LIMIT = { timeout: 120_000 };
const RUN = Math.random().toString(36).slice(2, 8);

let browser;
/** Every page's uncaught errors and CSP refusals: none are allowed. */
const pageProblems = [];

before(async () => {
  assert.ok(BASE, 'set NATTER_URL to the gateway, e.g. http://127.0.0.1:8080');
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
    timeout: 60_000,
  });
});

after(async () => {
  await browser?.close();
});

/** A user id unique to this run. */
function user(name) {
  return `${name}-${RUN}`;
}

/**
 * Opens the client in a new context (or one restored from `storageState`). `frames` gets
 * every frame the page's sockets receive, `sockets` the URL of each socket opened.
 */
async function openClient({ storageState } = {}) {
  const context = await browser.newContext({ storageState, viewport: { width: 1100, height: 700 } });
  context.setDefaultTimeout(PATIENCE_MS);
  const page = await context.newPage();
  const frames = [];
  const sockets = [];
  page.on('websocket', (socket) => {
    sockets.push(new URL(socket.url()));
    socket.on('framereceived', ({ payload }) => frames.push(JSON.parse(payload)));
  });
  page.on('pageerror', (error) => pageProblems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.text().includes('Content Security Policy')) pageProblems.push(message.text());
  });
  await page.goto(BASE);
  return { context, page, frames, sockets };
}

/** A person signed in through the form, connected. */
async function signedIn(name) {
  const client = await openClient();
  await client.page.getByLabel('User id', { exact: true }).fill(name);
  await client.page.getByRole('button', { name: 'Sign in' }).click();
  await online(client.page);
  return client;
}

async function online(page) {
  await page.locator('#connection', { hasText: /^Online$/ }).waitFor();
}

async function startChat(page, other) {
  await page.getByLabel('Start a chat with user id').fill(other);
  await page.getByRole('button', { name: 'Chat', exact: true }).click();
  await page.getByRole('heading', { name: other }).waitFor();
}

async function openConversation(page, title) {
  await conversationButton(page, title).click();
  await page.getByRole('heading', { name: title }).waitFor();
}

function conversationButton(page, title) {
  return page.getByRole('navigation', { name: 'Conversations' }).getByRole('button', { name: title });
}

async function say(page, text) {
  await page.getByLabel('Message', { exact: true }).fill(text);
  await page.getByLabel('Message', { exact: true }).press('Enter');
}

function bubbles(page, text) {
  return page.getByRole('log', { name: 'Messages' }).locator('li', { hasText: text });
}

/** The ticks on one's own message `text`: pending, sent, delivered or read. */
async function ticks(page, text) {
  return bubbles(page, text).locator('.ticks').getAttribute('data-status');
}

/** Waits until `check()` is true (polling), failing with `what` after PATIENCE_MS. */
async function until(what, check) {
  const deadline = Date.now() + PATIENCE_MS;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last === true) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.fail(`${what} did not happen within ${PATIENCE_MS} ms (last: ${last})`);
}

async function untilTicks(page, text, status) {
  await until(`"${text}" shown as ${status}`, async () => {
    const now = await ticks(page, text);
    return now === status || `ticks ${now}`;
  });
}

/** Waits until `text` shows exactly once. */
async function shownOnce(page, text) {
  await until(`"${text}" shown once`, async () => (await bubbles(page, text).count()) === 1);
}

/** Opens the menu of the message showing `text` with its ⌄ button (shown on hover). */
async function openMenu(page, text) {
  const bubble = bubbles(page, text);
  await bubble.hover();
  await bubble.getByRole('button', { name: 'Message options' }).click();
  await page.getByRole('menu', { name: 'Message options' }).waitFor();
}

/** The reaction chip `name` (e.g. "👍 2, yours") under the message showing `text`. */
function chip(page, text, name) {
  return bubbles(page, text).getByRole('group', { name: 'Reactions' }).getByRole('button', { name, exact: true });
}

/** A valid `size`×`size` PNG of one colour (8-bit RGB), made here so no file is needed. */
function png(size, [r, g, b]) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc32 = (bytes) => {
    let c = 0xffffffff;
    for (const byte of bytes) c = crcTable[(c ^ byte) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(size, 0);
  header.writeUInt32BE(size, 4);
  header.set([8, 2, 0, 0, 0], 8);
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array(size).fill([r, g, b]).flat())]);
  const pixels = deflateSync(Buffer.concat(Array(size).fill(row)));
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', pixels),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

describe('web client', () => {
  after(() => {
    assert.deepEqual(pageProblems, [], 'pages threw or the CSP refused something');
  });

  it('one-on-one: ticks go sent → delivered → read (blue), typing and presence show, a screenshot is saved', TEST_LIMIT, async (t) => {
    const [alice, bob] = [user('alice'), user('bob')];
    const a = await signedIn(alice);
    const b = await signedIn(bob);

    await startChat(a.page, bob);
    await say(a.page, 'Hello Bob!');
    await untilTicks(a.page, 'Hello Bob!', 'delivered');

    // Bob has not opened the chat: it waits as unread in his list.
    await conversationButton(b.page, alice).getByLabel('1 unread').waitFor();
    assert.equal(await ticks(a.page, 'Hello Bob!'), 'delivered', 'not read before Bob opens it');
    await openConversation(b.page, alice);
    await shownOnce(b.page, 'Hello Bob!');
    await untilTicks(a.page, 'Hello Bob!', 'read');
    const blue = await bubbles(a.page, 'Hello Bob!').locator('.ticks').evaluate((e) => getComputedStyle(e).color);
    assert.equal(blue, 'rgb(26, 140, 216)', 'read ticks are blue');

    // Bob types: Alice's header says so. Typing is best effort (a notice can be missed
    // just after connecting), so Bob keeps typing, and the client repeats `start`.
    const typing = a.page.locator('#chat-subtitle', { hasText: 'typing…' });
    for (let i = 0; i < 12 && !(await typing.isVisible()); i += 1) {
      await b.page.getByLabel('Message', { exact: true }).pressSequentially('hi ', { delay: 30 });
      await typing.waitFor({ timeout: 1_500 }).catch(() => {});
    }
    await typing.waitFor({ timeout: 1_000 });
    await say(b.page, 'Hi Alice, all good');
    await shownOnce(a.page, 'Hi Alice, all good');
    await untilTicks(b.page, 'Hi Alice, all good', 'read');

    // Presence, where the gateway serves it (until then it answers `unsupported`).
    const presenceAnswer = () => a.frames.find((f) => f.type === 'presence' || f.code === 'unsupported');
    await until('presence, or that it is unsupported', () => presenceAnswer() !== undefined);
    const servesPresence = presenceAnswer().type === 'presence';
    if (servesPresence) await a.page.locator('#chat-subtitle', { hasText: /^online$/ }).waitFor();
    await a.page.screenshot({ path: new URL('chat.png', ARTIFACTS).pathname });
    await b.context.close();
    if (servesPresence) {
      await a.page.locator('#chat-subtitle', { hasText: /^last seen / }).waitFor();
    } else {
      t.diagnostic('this gateway does not serve presence yet: online / last seen not checked');
    }
    await a.context.close();
  });

  it('group of three: created in the UI, everyone sees every message, ticks need everyone', TEST_LIMIT, async () => {
    const [amy, ben, cat] = [user('amy'), user('ben'), user('cat')];
    const [a, b, c] = [await signedIn(amy), await signedIn(ben), await signedIn(cat)];
    const name = `Climbing ${RUN}`;

    await a.page.getByText('New group').click();
    await a.page.getByLabel('Group name').fill(name);
    await a.page.getByLabel(/^Members/).fill(`${ben}, ${cat}`);
    await a.page.getByRole('button', { name: 'Create group' }).click();
    await a.page.getByRole('heading', { name }).waitFor();
    await a.page.locator('#chat-subtitle', { hasText: `${amy}, ${ben}, ${cat}` }).waitFor();

    await say(a.page, 'Who is climbing on Sunday?');
    for (const other of [b, c]) {
      await openConversation(other.page, name);
      await shownOnce(other.page, 'Who is climbing on Sunday?');
    }
    await untilTicks(a.page, 'Who is climbing on Sunday?', 'read');

    await say(b.page, 'Me!');
    await say(c.page, 'Count me in');
    for (const page of [a.page, b.page, c.page]) {
      await shownOnce(page, 'Me!');
      await shownOnce(page, 'Count me in');
    }
    assert.match(await bubbles(a.page, 'Me!').locator('.sender').innerText(), new RegExp(ben));
    for (const client of [a, b, c]) await client.context.close();
  });

  it('media: an image shows inline on both sides, a document downloads with its name', TEST_LIMIT, async () => {
    const [alice, bob] = [user('alice-media'), user('bob-media')];
    const a = await signedIn(alice);
    const b = await signedIn(bob);
    await startChat(a.page, bob);

    await a.page.getByLabel('Attach files').setInputFiles({ name: 'green.png', mimeType: 'image/png', buffer: png(96, [0, 160, 80]) });
    await startChat(b.page, alice);
    for (const page of [a.page, b.page]) {
      const image = page.getByRole('log').getByRole('img', { name: 'green.png' });
      await until('the image decoded', () => image.evaluate((img) => img.complete && img.naturalWidth === 96));
      assert.match(await image.getAttribute('src'), /^blob:/);
    }

    const notes = 'Route notes: 6a, 6b+, 7a\n';
    await a.page.getByLabel('Attach files').setInputFiles({ name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from(notes) });
    const link = b.page.getByRole('link', { name: /notes\.txt/ });
    await b.page.getByRole('link', { name: `↓ notes.txt (${notes.length} B)` }).waitFor();
    const [download] = await Promise.all([b.page.waitForEvent('download'), link.click()]);
    assert.equal(download.suggestedFilename(), 'notes.txt');
    const stream = await download.createReadStream();
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    assert.equal(Buffer.concat(chunks).toString(), notes);
    await b.page.screenshot({ path: new URL('media.png', ARTIFACTS).pathname });

    // Editing a file's message changes its caption (the name shown) and keeps the file.
    await openMenu(a.page, 'notes.txt');
    await a.page.getByRole('menuitem', { name: 'Edit' }).click();
    await a.page.getByLabel('Message', { exact: true }).fill('route-notes.txt');
    await a.page.getByLabel('Message', { exact: true }).press('Enter');
    await bubbles(b.page, 'route-notes.txt').getByText('Edited', { exact: true }).waitFor();
    await b.page.getByRole('link', { name: `↓ route-notes.txt (${notes.length} B)` }).waitFor();
    await a.context.close();
    await b.context.close();
  });

  it('history: a chat pages back with "Load older messages", each message once', TEST_LIMIT, async () => {
    const [alice, bob] = [user('alice-history'), user('bob-history')];
    const a = await signedIn(alice);
    await startChat(a.page, bob);
    const count = 60;
    for (let i = 1; i <= count; i += 1) await say(a.page, `Line ${i}.`);
    await untilTicks(a.page, `Line ${count}.`, 'sent');
    await a.context.close();

    // Bob's first device: the chat list brings the chat (nothing is replayed); the newest
    // history page (50) says there is more, and one page back reaches the beginning.
    const b = await signedIn(bob);
    await openConversation(b.page, alice);
    const older = b.page.getByRole('button', { name: 'Load older messages' });
    await older.waitFor();
    await older.click();
    await older.waitFor({ state: 'hidden' });
    for (let i = 1; i <= count; i += 1) await shownOnce(b.page, `Line ${i}.`);
    const order = await b.page.getByRole('log').locator('li .text').allInnerTexts();
    assert.deepEqual(order, Array.from({ length: count }, (_, i) => `Line ${i + 1}.`));
    await b.context.close();
  });

  it('offline: messages sent while a device was away arrive once each when it returns', TEST_LIMIT, async () => {
    const [alice, bob] = [user('alice-away'), user('bob-away')];
    const a = await signedIn(alice);
    let b = await signedIn(bob);
    await startChat(a.page, bob);
    await say(a.page, 'Before you go');
    await conversationButton(b.page, alice).waitFor();
    await untilTicks(a.page, 'Before you go', 'delivered');

    const saved = await b.context.storageState();
    await b.context.close();
    const away = ['Away 1', 'Away 2', 'Away 3'];
    for (const text of away) await say(a.page, text);
    for (const text of away) await untilTicks(a.page, text, 'sent');

    // Same browser profile: same device id and stored cursor; the page signs in by itself.
    b = await openClient({ storageState: saved });
    await online(b.page);
    await conversationButton(b.page, alice).getByLabel('4 unread').waitFor();
    await openConversation(b.page, alice);
    for (const text of ['Before you go', ...away]) await shownOnce(b.page, text);
    for (const text of away) await untilTicks(a.page, text, 'read');
    await b.page.waitForTimeout(1_000);
    for (const text of ['Before you go', ...away]) {
      assert.equal(await bubbles(b.page, text).count(), 1, `"${text}" is shown once`);
    }
    await a.context.close();
    await b.context.close();
  });

  it('changes: an edit, reactions and a delete for everyone show on the other side and on a new device', TEST_LIMIT, async () => {
    const [alice, bob] = [user('alice-change'), user('bob-change')];
    const a = await signedIn(alice);
    const b = await signedIn(bob);
    await startChat(a.page, bob);
    await say(a.page, 'See you at 8');
    await say(a.page, 'Wrong chat, sorry');
    await startChat(b.page, alice);
    await shownOnce(b.page, 'Wrong chat, sorry');
    await say(b.page, 'Great, bring the rope');
    await shownOnce(a.page, 'Great, bring the rope');

    // Alice edits her first message: the menu puts it in the composer, Enter saves.
    await openMenu(a.page, 'See you at 8');
    await a.page.getByRole('menuitem', { name: 'Edit' }).click();
    await a.page.getByText('Edit message', { exact: true }).waitFor();
    await a.page.getByLabel('Message', { exact: true }).fill('See you at 9');
    await a.page.getByLabel('Message', { exact: true }).press('Enter');
    for (const page of [a.page, b.page]) {
      await bubbles(page, 'See you at 9').getByText('Edited', { exact: true }).waitFor();
      await until('the old text gone', async () => (await bubbles(page, 'See you at 8').count()) === 0);
    }

    // Alice reacts to Bob's message; Bob taps her chip to add his own; Alice takes hers back.
    await openMenu(a.page, 'Great, bring the rope');
    await a.page.getByRole('menuitemcheckbox', { name: 'React 👍' }).click();
    await chip(b.page, 'Great, bring the rope', '👍 1').waitFor();
    await chip(a.page, 'Great, bring the rope', '👍 1, yours').waitFor();
    await chip(b.page, 'Great, bring the rope', '👍 1').click();
    await chip(a.page, 'Great, bring the rope', '👍 2, yours').waitFor();
    await chip(b.page, 'Great, bring the rope', '👍 2, yours').waitFor();
    await chip(a.page, 'Great, bring the rope', '👍 2, yours').click();
    await chip(a.page, 'Great, bring the rope', '👍 1').waitFor();
    await chip(b.page, 'Great, bring the rope', '👍 1, yours').waitFor();

    // Bob opens the menu of a message Alice then deletes for everyone (right-click, the
    // dialog): it becomes a tombstone on both sides, and Bob's late reaction is refused.
    await openMenu(b.page, 'Wrong chat, sorry');
    await bubbles(a.page, 'Wrong chat, sorry').click({ button: 'right' });
    await a.page.getByRole('menuitem', { name: 'Delete…' }).click();
    await a.page.getByRole('button', { name: 'Delete for everyone' }).click();
    await bubbles(a.page, 'You deleted this message').waitFor();
    await bubbles(b.page, 'This message was deleted').waitFor();
    assert.equal(await bubbles(b.page, 'Wrong chat').count(), 0, 'nothing of it stays');
    await b.page.getByRole('menuitemcheckbox', { name: 'React 😮' }).click();
    await until('the refusal shown', async () => {
      const notice = await b.page.locator('#notice-text').innerText();
      return notice.startsWith('Reaction not sent: not allowed') || `notice "${notice}", frames ${JSON.stringify(b.frames.filter((f) => f.type === 'error' || f.type === 'changed'))}`;
    });

    // Bob may not edit Alice's message, nor delete it for everyone; he may hide it.
    await openMenu(b.page, 'See you at 9');
    assert.equal(await b.page.getByRole('menuitem', { name: 'Edit' }).count(), 0);
    await b.page.getByRole('menuitem', { name: 'Delete…' }).click();
    assert.equal(await b.page.getByRole('button', { name: 'Delete for everyone' }).isVisible(), false);
    await b.page.getByRole('button', { name: 'Cancel' }).click();
    const dismiss = b.page.getByRole('button', { name: 'Dismiss message' });
    if (await dismiss.isVisible()) await dismiss.click();
    await b.page.screenshot({ path: new URL('changes.png', ARTIFACTS).pathname });
    await openMenu(b.page, 'Great, bring the rope');
    await b.page.screenshot({ path: new URL('changes-menu.png', ARTIFACTS).pathname });
    await b.page.keyboard.press('Escape');
    await b.page.getByRole('menu', { name: 'Message options' }).waitFor({ state: 'hidden' });

    // A new device of Bob's gets the chat from the chat list and reads the history page:
    // each change shows once, and the reaction counts once.
    const b2 = await signedIn(bob);
    await openConversation(b2.page, alice);
    await bubbles(b2.page, 'See you at 9').getByText('Edited', { exact: true }).waitFor();
    await chip(b2.page, 'Great, bring the rope', '👍 1, yours').waitFor();
    await shownOnce(b2.page, 'This message was deleted');
    await b2.page.waitForTimeout(1_000);
    assert.equal(await bubbles(b2.page, 'Great, bring the rope').getByRole('button', { name: /👍/ }).count(), 1);
    assert.equal(await b2.page.getByRole('log').locator('li').count(), 3);
    for (const client of [a, b, b2]) await client.context.close();
  });

  it('new device, mute, block, privacy: the chat list comes from the server, screenshots are saved', TEST_LIMIT, async () => {
    const [alice, bob] = [user('alice-list'), user('bob-list')];
    const group = `Book club ${RUN}`;
    let a = await signedIn(alice);
    const b = await signedIn(bob);
    await startChat(a.page, bob);
    await say(a.page, 'Lunch tomorrow?');
    await conversationButton(b.page, alice).waitFor();
    await openConversation(b.page, alice);
    await shownOnce(b.page, 'Lunch tomorrow?');

    // Alice makes a group (it stays open), and Bob answers her in their chat meanwhile.
    await a.page.getByText('New group').click();
    await a.page.getByLabel('Group name').fill(group);
    await a.page.getByLabel(/^Members/).fill(bob);
    await a.page.getByRole('button', { name: 'Create group' }).click();
    await a.page.getByRole('heading', { name: group }).waitFor();
    await say(b.page, 'Sure, 12:30');
    await say(b.page, 'At the usual place');
    await conversationButton(a.page, bob).getByLabel('2 unread').waitFor();
    await a.context.close();

    // A new browser profile is a new device: it connects with after=latest, nothing is
    // replayed, and the chat list comes from one `conversations` request.
    a = await signedIn(alice);
    const bobRow = conversationButton(a.page, bob);
    await bobRow.getByLabel('2 unread').waitFor();
    await bobRow.getByText('At the usual place').waitFor();
    await conversationButton(a.page, group).waitFor();
    assert.equal(a.sockets[0].searchParams.get('after'), 'latest');
    assert.deepEqual(a.frames.filter((f) => typeof f.seq === 'number'), [], 'no inbox item replayed');
    assert.deepEqual(
      await a.page.getByRole('navigation', { name: 'Conversations' }).locator('.conv-name').allInnerTexts(),
      [bob, group], 'the newest first (Bob answered after the group was made)');
    await a.page.screenshot({ path: new URL('chatlist.png', ARTIFACTS).pathname });

    // Opening the chat pages its history.
    await openConversation(a.page, bob);
    for (const text of ['Lunch tomorrow?', 'Sure, 12:30', 'At the usual place']) await shownOnce(a.page, text);
    await until('the unread count gone', async () => (await bobRow.getByLabel(/unread/).count()) === 0);

    // Mute the group from its header menu: the list shows a muted bell, and so does the
    // list of yet another new device (from the server's muted_until).
    await openConversation(a.page, group);
    await a.page.getByRole('button', { name: 'Chat options' }).click();
    await a.page.getByRole('menuitem', { name: 'Mute always' }).click();
    await conversationButton(a.page, group).getByRole('img', { name: 'Muted' }).waitFor();
    await a.page.locator('#chat-muted').getByRole('img', { name: 'Muted' }).waitFor();

    // Block Bob: the composer gives way to the bar, and what he sends never arrives.
    await openConversation(a.page, bob);
    await a.page.getByRole('button', { name: 'Chat options' }).click();
    await a.page.getByRole('menuitem', { name: `Block ${bob}…` }).click();
    await a.page.getByRole('dialog').getByRole('button', { name: 'Block', exact: true }).click();
    await a.page.getByText('You blocked this contact. Unblock to send.').waitFor();
    assert.equal(await a.page.getByLabel('Message', { exact: true }).isVisible(), false, 'no composer while blocked');
    await say(b.page, 'Are you there?');
    await untilTicks(b.page, 'Are you there?', 'sent');
    await a.page.waitForTimeout(1_500);
    assert.equal(await bubbles(a.page, 'Are you there?').count(), 0, 'a blocked contact\'s message does not arrive');
    assert.equal(await ticks(b.page, 'Are you there?'), 'sent', 'one tick for good');
    await a.page.screenshot({ path: new URL('blocked.png', ARTIFACTS).pathname });
    await a.page.getByRole('button', { name: 'Unblock' }).click();
    await a.page.getByLabel('Message', { exact: true }).waitFor();
    await say(a.page, 'Sorry, wrong button');
    await shownOnce(b.page, 'Sorry, wrong button');

    // Privacy: read from the server when opened, each change saved at once.
    await a.page.getByRole('button', { name: 'Privacy' }).click();
    const lastSeen = a.page.getByLabel('Last seen');
    await until('the settings read', async () => (await lastSeen.isEnabled()) || 'still loading');
    assert.equal(await lastSeen.inputValue(), 'everyone');
    await lastSeen.selectOption('nobody');
    await a.page.getByRole('dialog').getByText('Saved', { exact: true }).waitFor();
    await a.page.getByLabel('Online', { exact: true }).selectOption('contacts');
    await until('both saved', () => a.frames.some((f) => f.type === 'settings' && f.last_seen === 'nobody' && f.online === 'contacts'));
    await a.page.getByLabel('Read receipts').uncheck();
    await until('receipts off saved', () => a.frames.some((f) => f.type === 'settings' && f.read_receipts === false));
    await a.page.screenshot({ path: new URL('settings.png', ARTIFACTS).pathname });
    await a.page.getByRole('button', { name: 'Close' }).click();

    const a2 = await signedIn(alice);
    await conversationButton(a2.page, group).getByRole('img', { name: 'Muted' }).waitFor();
    assert.equal(await conversationButton(a2.page, bob).getByRole('img', { name: 'Muted' }).count(), 0);
    await a2.page.getByRole('button', { name: 'Privacy' }).click();
    await until('the settings read again', async () => (await a2.page.getByLabel('Last seen').inputValue()) === 'nobody' || 'not yet');
    assert.equal(await a2.page.getByLabel('Online', { exact: true }).inputValue(), 'contacts');
    assert.equal(await a2.page.getByLabel('Read receipts').isChecked(), false);
    for (const client of [a, a2, b]) await client.context.close();
  });

  it('network drop: both sides reconnect and nothing sent meanwhile is lost or doubled', TEST_LIMIT, async () => {
    const [alice, bob] = [user('alice-drop'), user('bob-drop')];
    const a = await signedIn(alice);
    const b = await signedIn(bob);
    let sockets = 0;
    b.page.on('websocket', () => (sockets += 1));
    await startChat(a.page, bob);
    await startChat(b.page, alice);
    await say(a.page, 'Still there?');
    await shownOnce(b.page, 'Still there?');

    await b.context.setOffline(true);
    await b.page.locator('#connection', { hasText: /^Offline/ }).waitFor();
    const during = ['Drop 1', 'Drop 2', 'Drop 3'];
    for (const text of during) await say(a.page, text);
    await say(b.page, 'Written in the tunnel');
    assert.equal(await ticks(b.page, 'Written in the tunnel'), 'pending');
    await b.page.waitForTimeout(1_500);
    assert.equal(await bubbles(b.page, 'Drop 1').count(), 0, 'the drop really cut Bob off');

    await b.context.setOffline(false);
    await online(b.page);
    for (const text of during) await shownOnce(b.page, text);
    await shownOnce(a.page, 'Written in the tunnel');
    await untilTicks(b.page, 'Written in the tunnel', 'read');
    for (const text of during) await untilTicks(a.page, text, 'read');
    assert.ok(sockets >= 1, 'Bob opened a new socket after the drop');
    await b.page.waitForTimeout(1_000);
    for (const text of ['Still there?', ...during, 'Written in the tunnel']) {
      assert.equal(await bubbles(b.page, text).count(), 1, `"${text}" is shown once to Bob`);
    }
    assert.equal(await bubbles(a.page, 'Written in the tunnel').count(), 1, 'Bob\'s message reached Alice once');
    await a.context.close();
    await b.context.close();
  });
});
