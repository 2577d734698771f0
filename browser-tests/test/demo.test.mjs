// The demo in a real browser: `backchannel serve --demo` and Debian's Chromium. Carol's
// widget and the consoles of Alice and Bob (each in its own browser context) play the
// issue's scenario: a customer message reaches both consoles; Alice writes a note
// mentioning Bob (picked from the @ completion); Bob sees the note and a notification;
// the widget's page never shows the note and its raw WebSocket frames never carry it;
// a transfer with a handoff note reaches Bob. Then tags and fields, presence, the
// supervisor's floor and a coaching note, and the one-tag embed.
//
// Screenshots of every page are written to target/screenshots/ on every run, pass or
// fail. Every wait is bounded (STEP); the server is stopped at the end whatever happens.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { STEP, launchBrowser, marker, openPage, screenshots, startServer, waitForText, waitUntil } from '../lib/harness.mjs';

const CONSOLE = { width: 1440, height: 900 };
const WIDGET = { width: 480, height: 760 };

const MESSAGE = marker('CUSTOMER-MESSAGE');
const NOTE = marker('SECRET-NOTE');
const REPLY = marker('PUBLIC-REPLY');
const HANDOFF = marker('HANDOFF-NOTE');
const COACH = marker('COACHING-NOTE');
/** What the customer's side must never receive or show. */
const INTERNAL = [NOTE, HANDOFF, COACH];

let server;
let browser;
const pages = {};
/** Every text frame the widget's page received, raw. */
const widgetFrames = [];
let conversationId;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  const saved = await screenshots(pages);
  if (saved.length) console.log(`screenshots:\n  ${saved.join('\n  ')}`);
  await browser?.close().catch(() => {});
  await server?.stop();
});

// Steps run in order; once one fails the rest are skipped (they build on it).
let broken = null;
function step(t, name, fn) {
  if (broken !== null) return t.test(name, { skip: `an earlier step failed: ${broken}` }, () => {});
  return t.test(name, async () => {
    try {
      await fn();
    } catch (error) {
      broken = name;
      throw error;
    }
  });
}

const timeline = (kind) => `#timeline li[data-kind="${kind}"]`;

/** The widget never got an internal marker: not in a frame, not in the page. */
async function assertWidgetClean() {
  const raw = widgetFrames.join('\n');
  const html = await pages.widget.content();
  for (const secret of INTERNAL) {
    assert.ok(!raw.includes(secret), `a frame to the widget carried ${secret}`);
    assert.ok(!html.includes(secret), `the widget's page shows ${secret}`);
  }
  for (const frame of widgetFrames) {
    const parsed = JSON.parse(frame);
    if (parsed.type === 'event') {
      assert.ok(['conversation_opened', 'message'].includes(parsed.event.kind), `the widget got a ${parsed.event.kind} event`);
    }
    assert.notEqual(parsed.type, 'presence', 'the widget got a presence frame');
    assert.notEqual(parsed.type, 'notification', 'the widget got a notification');
  }
}

test('the demo in Chromium: widget, two agent consoles, supervisor', { timeout: 240_000 }, async (t) => {
  await step(t, "the widget opens Carol's conversation", async () => {
    pages.widget = await openPage(browser, 'about:blank', WIDGET);
    pages.widget.on('websocket', (ws) => {
      ws.on('framereceived', ({ payload }) => widgetFrames.push(String(payload)));
    });
    await pages.widget.goto(`${server.url}/demo/widget`);
    await pages.widget.waitForSelector('body[data-ready="true"]');
    conversationId = await pages.widget.evaluate(() => document.body.dataset.conversationId);
    assert.match(conversationId, /^[0-9a-f-]{36}$/);
    assert.ok(widgetFrames.some((f) => f.includes('"welcome"')), 'the widget page said hello over a WebSocket');
  });

  await step(t, 'two agent consoles open it', async () => {
    for (const user of ['alice', 'bob']) {
      const page = await openPage(browser, `${server.url}/demo/console?user=${user}`, CONSOLE);
      pages[`console-${user}`] = page;
      await page.waitForSelector('body[data-ready="true"]');
      await page.click(`#conv-list li[data-id="${conversationId}"] button`);
      await page.waitForSelector(timeline('conversation_opened'));
      assert.equal(await page.textContent('#me-name'), user === 'alice' ? 'Alice' : 'Bob');
    }
  });
  const alice = () => pages['console-alice'];
  const bob = () => pages['console-bob'];

  await step(t, 'a customer message appears in both consoles', async () => {
    await pages.widget.fill('#widget-input', `Hello, my invoice is wrong ${MESSAGE}`);
    await pages.widget.press('#widget-input', 'Enter');
    await waitForText(pages.widget, '#messages .msg.mine', MESSAGE);
    for (const page of [alice(), bob()]) {
      await waitForText(page, timeline('message'), MESSAGE);
      const side = await page.getAttribute(`${timeline('message')}:last-child`, 'class');
      assert.match(side, /from-customer/);
    }
  });

  await step(t, 'each console shows who else is viewing, and who is typing what', async () => {
    for (const [page, other] of [[alice(), 'bob'], [bob(), 'alice']]) {
      await page.waitForSelector(`#presence .viewer[data-user="${other}"]`);
      await page.waitForSelector('#presence .viewer[data-user="carol"]');
    }
    await bob().click('[data-mode-button="note"]');
    await bob().locator('#composer-input').pressSequentially('thinking');
    await alice().waitForSelector('#presence .viewer[data-user="bob"][data-typing="internal"]');
    await waitForText(alice(), '#typing-line', 'Bob is writing a note');
    await bob().fill('#composer-input', '');
    await bob().click('[data-mode-button="reply"]');
  });

  await step(t, 'Alice writes a note mentioning Bob, picked from the @ completion', async () => {
    await alice().click('[data-mode-button="note"]');
    assert.equal(await alice().getAttribute('#composer', 'data-mode'), 'note');
    assert.match(await alice().textContent('#composer-hint'), /Internal note/);
    await alice().locator('#composer-input').pressSequentially('Heads up @bo');
    await alice().waitForSelector('#mentions li[data-handle="bob"]');
    assert.equal(await alice().getAttribute('#composer-input', 'aria-expanded'), 'true');
    await alice().press('#composer-input', 'Enter');
    assert.equal(await alice().inputValue('#composer-input'), 'Heads up @bob ');
    await alice().locator('#composer-input').pressSequentially(`can you check the refund? ${NOTE}`);
    await alice().press('#composer-input', 'Enter');
    await waitForText(alice(), timeline('note'), NOTE);
    const note = alice().locator(timeline('note'), { hasText: NOTE });
    assert.match(await note.textContent(), /Internal note — customers can’t see this/);
    assert.equal(await note.locator('.mention').first().textContent(), '@bob');
    const background = await note.locator('.note-card').evaluate((n) => getComputedStyle(n).backgroundColor);
    assert.equal(background, 'rgb(255, 246, 213)', 'notes are yellow');
  });

  await step(t, 'Bob sees the note and a notification', async () => {
    await waitForText(bob(), timeline('note'), NOTE);
    await waitUntil(bob(), () => document.getElementById('bell-count').textContent === '1' && !document.getElementById('bell-count').hidden, undefined, "Bob's bell to show 1 unread");
    assert.equal(await bob().getAttribute('#bell', 'aria-label'), 'Notifications, 1 unread');
    await bob().click('#bell');
    await waitForText(bob(), '#notif-list li[data-kind="mention"].unread', 'Alice mentioned you');
    await bob().click('#notif-list li[data-kind="mention"] button');
    await waitUntil(bob(), () => document.getElementById('bell-count').hidden, undefined, "Bob's bell to clear once the notification is read");
  });

  await step(t, 'Alice replies: the widget gets the reply and never the note', async () => {
    await alice().click('[data-mode-button="reply"]');
    assert.equal(await alice().getAttribute('#composer', 'data-mode'), 'reply');
    await alice().fill('#composer-input', `We are on it ${REPLY}`);
    await alice().press('#composer-input', 'Enter');
    // The note was committed before the reply, and each stream is delivered in order:
    // once the reply is on the widget, a leaked note would have come first.
    await waitForText(pages.widget, '#messages .msg.theirs', REPLY);
    await waitForText(bob(), timeline('message'), REPLY);
    assert.ok(widgetFrames.some((f) => f.includes(REPLY)), 'the frame capture sees the reply');
    assert.ok(widgetFrames.some((f) => f.includes(MESSAGE)), 'the frame capture sees the message');
    await assertWidgetClean();
  });

  await step(t, 'a transfer with a handoff note reaches Bob', async () => {
    await alice().click('#transfer-open');
    await alice().waitForSelector('#transfer-dialog[open]');
    await alice().selectOption('#transfer-to', 'bob');
    await alice().fill('#transfer-note', `Customer wants a refund of the second charge ${HANDOFF}`);
    await alice().click('#transfer-submit');
    await alice().waitForSelector('#transfer-dialog', { state: 'hidden' });
    await waitForText(bob(), `${timeline('note')}.transfer`, HANDOFF);
    await waitForText(bob(), timeline('assigned'), 'assigned the conversation to Bob');
    await waitForText(bob(), '#assignee', 'Bob');
    await waitUntil(bob(), () => document.getElementById('bell-count').textContent === '1' && !document.getElementById('bell-count').hidden, undefined, "Bob's bell to show the assignment");
    await bob().click('#bell');
    await waitForText(bob(), '#notif-list li[data-kind="assigned"]', 'Alice assigned you a conversation');
    await bob().click('#bell');
    await waitForText(alice(), '#assignee', 'Bob');
  });

  await step(t, 'tags and custom fields reach the other console', async () => {
    await alice().selectOption('#tag-add', 'vip');
    await alice().click('#tag-add-button');
    await bob().waitForSelector('#tags .chip[data-tag="vip"]');
    await alice().selectOption('#field-conversation-plan', 'pro');
    await waitUntil(bob(), () => document.getElementById('field-conversation-plan')?.value === 'pro', undefined, "Bob's plan field to read pro");
    await waitForText(bob(), timeline('fields_changed'), 'set Plan to pro');
    await alice().selectOption('#field-contact-account_tier', 'gold');
    await waitUntil(bob(), () => document.getElementById('field-contact-account_tier')?.value === 'gold', undefined, "Bob's account tier to read gold");
  });

  await step(t, 'the supervisor sees the floor and writes a coaching note agents never see', async () => {
    pages.supervisor = await openPage(browser, `${server.url}/demo/supervisor`, CONSOLE);
    const sup = pages.supervisor;
    await sup.waitForSelector('body[data-ready="true"]');
    for (const agent of ['alice', 'bob']) {
      await sup.waitForSelector(`#agents li[data-id="${agent}"][data-status="online"]`);
    }
    await waitForText(sup, '#agents li[data-id="alice"]', 'Viewing');
    await sup.click(`#conv-list li[data-id="${conversationId}"] button`);
    await waitForText(sup, timeline('note'), NOTE);
    await sup.fill('#coach-input', `Nice catch on the double charge ${COACH}`);
    await sup.click('#coach-send');
    await waitForText(sup, `${timeline('note')}.supervisors`, COACH);
    // A later note as a barrier: once Alice has it, the coaching note would have come first.
    const barrier = marker('BARRIER');
    await alice().click('[data-mode-button="note"]');
    await alice().fill('#composer-input', barrier);
    await alice().press('#composer-input', 'Enter');
    await waitForText(sup, timeline('note'), barrier);
    await waitForText(bob(), timeline('note'), barrier);
    for (const page of [alice(), bob()]) {
      assert.ok(!(await page.content()).includes(COACH), 'an agent console shows the coaching note');
    }
    await alice().click('[data-mode-button="reply"]');
    await assertWidgetClean();
  });

  await step(t, 'one script tag embeds the widget as a chat bubble', async () => {
    const page = await openPage(browser, `${server.url}/`, { width: 1280, height: 900 });
    pages.index = page;
    const bubble = page.getByRole('button', { name: 'Chat with support' });
    await bubble.click();
    const frame = page.frameLocator('iframe[title="Support chat"]');
    await frame.locator('body[data-ready="true"]').waitFor({ timeout: STEP });
    // The embedded widget reuses Carol's open conversation.
    await frame.locator('#messages .msg', { hasText: REPLY }).waitFor({ timeout: STEP });
    assert.ok(!(await frame.locator('body').innerHTML()).includes(NOTE));
  });

  await step(t, 'typing indicators go away once nobody types', async () => {
    // The server keeps an indicator 5 s after the last `typing` frame.
    for (const name of ['console-alice', 'console-bob', 'supervisor']) {
      await waitUntil(
        pages[name],
        () =>
          document.getElementById('typing-line').textContent.trim() === '' &&
          !document.querySelector('#presence [data-typing="internal"], #presence [data-typing="public"]'),
        undefined,
        `the typing line of ${name} to clear`,
      );
    }
  });

  await step(t, 'no page had an uncaught error', async () => {
    for (const [name, page] of Object.entries(pages)) {
      const uncaught = page.problems.filter((p) => p.startsWith('uncaught'));
      assert.deepEqual(uncaught, [], `${name}: ${uncaught.join('; ')}`);
    }
  });
});
