// The demo pages where the network and history are not kind, in Debian's Chromium:
// - a message whose `ok` was lost is stored once when the customer presses Send again
//   (the widget retries under the failed attempt's `client_id`);
// - a conversation longer than a replay (1,000 events) shows whole in an agent's console:
//   what the truncated replay left out is paged over HTTP, in `seq` order;
// - a supervisor writing a supervisors-only note shows as such to another supervisor and
//   not at all in an agent's console;
// - the pages' Content-Security-Policy allows a WebSocket to the node only.
//
// Every wait is bounded; the server is stopped at the end whatever happens.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { STEP, launchBrowser, marker, openPage, startServer, waitForText, waitUntil } from '../lib/harness.mjs';

const VIEW = { width: 1280, height: 800 };

let server;
let browser;

before(async () => {
  // A thousand notes are written over HTTP as fast as the test can: no rate limit.
  server = await startServer(['--commands-per-second', '1000000', '--user-commands-per-second', '1000000']);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
});

/** A demo user's token, as the pages get theirs. */
async function demoToken(user) {
  const response = await fetch(`${server.url}/demo/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user }),
  });
  assert.equal(response.status, 200, `token for ${user}`);
  return (await response.json()).token;
}

async function call(token, method, path, body) {
  const response = await fetch(`${server.url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  assert.ok(response.status < 300, `${method} ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

/** Every event of the conversation in `token`'s stream, paged over HTTP. */
async function history(token, conversationId) {
  const events = [];
  for (;;) {
    const after = events.at(-1)?.seq ?? 0;
    const page = await call(token, 'GET', `/v1/conversations/${conversationId}/events?after=${after}&limit=1000`);
    events.push(...page.events);
    if (page.events.length === 0 || events.at(-1).seq >= page.head) return events;
  }
}

test('a message whose answer was lost is stored once when sent again', { timeout: 90_000 }, async () => {
  const text = marker('SENT-TWICE');
  const context = await browser.newContext({ viewport: VIEW });
  context.setDefaultTimeout(STEP);
  const page = await context.newPage();
  // Between the widget and the node: the node's `ok` to the first send of `text` is
  // dropped, as if the connection lost it after the message was stored.
  let droppedRef;
  await page.routeWebSocket(/\/v1\/ws$/, (socket) => {
    const node = socket.connectToServer();
    socket.onMessage((message) => {
      const frame = JSON.parse(message);
      if (frame.type === 'send' && frame.body === text && droppedRef === undefined) droppedRef = frame.ref;
      node.send(message);
    });
    node.onMessage((message) => {
      const frame = JSON.parse(message);
      if (frame.type === 'ok' && droppedRef !== undefined && frame.ref === droppedRef && !socket.dropped) {
        socket.dropped = true;
        return;
      }
      socket.send(message);
    });
  });
  await page.goto(`${server.url}/demo/widget`);
  await waitUntil(page, () => document.body.dataset.ready === 'true', undefined, 'the widget to be ready');
  const conversationId = await page.evaluate(() => document.body.dataset.conversationId);

  await page.fill('#widget-input', text);
  await page.keyboard.press('Enter');
  // The client gives up on the answer after its request timeout (10 s) and the widget
  // puts the text back.
  await page.waitForFunction((t) => document.querySelector('#widget-input').value === t, text, { timeout: 20_000 });
  await waitForText(page, '#toast', 'Not sent');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelector('#widget-input').value === '', undefined, { timeout: STEP });

  const alice = await demoToken('alice');
  const stored = (await history(alice, conversationId)).filter((e) => e.event.body === text);
  assert.equal(stored.length, 1, `stored ${stored.length} times`);
  // Shown once, too (the event arrived live; the retry was a duplicate).
  await page.waitForTimeout(500);
  const shown = await page.evaluate(
    (t) => [...document.querySelectorAll('#messages .msg')].filter((n) => n.textContent.includes(t)).length,
    text,
  );
  assert.equal(shown, 1, `shown ${shown} times`);
  await context.close();
});

test("a conversation longer than a replay shows whole in an agent's console", { timeout: 120_000 }, async () => {
  const carol = await demoToken('carol');
  const alice = await demoToken('alice');
  const first = marker('FIRST-MESSAGE');
  const conversation = await call(carol, 'POST', '/v1/conversations', { inbox_id: 'support', subject: marker('LONG') });
  await call(carol, 'POST', `/v1/conversations/${conversation.id}/messages`, { client_id: 'first', body: first });
  // 1,005 notes: the replay carries the newest 1,000.
  const writes = [];
  for (let i = 0; i < 1005; i += 1) {
    writes.push(() => call(alice, 'POST', `/v1/conversations/${conversation.id}/notes`, { client_id: `n${i}`, body: `note ${i}` }));
  }
  for (let i = 0; i < writes.length; i += 25) await Promise.all(writes.slice(i, i + 25).map((w) => w()));
  const head = (await call(alice, 'GET', `/v1/conversations/${conversation.id}`)).head;
  assert.equal(head, 1007);

  const page = await openPage(browser, `${server.url}/demo/console?user=bob#${conversation.id}`, VIEW);
  await waitForText(page, '#timeline', first);
  await waitUntil(page, (n) => document.querySelectorAll('#timeline li[data-seq]').length === n, head, `${head} events in the timeline`);
  const seqs = await page.evaluate(() => [...document.querySelectorAll('#timeline li[data-seq]')].map((n) => Number(n.dataset.seq)));
  assert.deepEqual(
    seqs,
    Array.from({ length: head }, (_, i) => i + 1),
    'every seq once, in order',
  );
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test("supervisors-only typing shows to supervisors only, and the pages' sockets reach the node only", { timeout: 60_000 }, async () => {
  const carol = await demoToken('carol');
  const conversation = await call(carol, 'POST', '/v1/conversations', { inbox_id: 'support', subject: marker('COACHED') });
  const una = server.token('--role', 'supervisor', '--sub', 'una', '--name', 'Una');

  const sam = await openPage(browser, `${server.url}/demo/supervisor#${conversation.id}`, VIEW);
  const bob = await openPage(browser, `${server.url}/demo/console?user=bob#${conversation.id}`, VIEW);
  await waitUntil(sam, () => document.body.dataset.ready === 'true', undefined, "the supervisor's view to be ready");
  await waitUntil(bob, () => document.body.dataset.ready === 'true', undefined, "Bob's console to be ready");
  await waitUntil(bob, () => document.querySelector('#presence [data-user="sam"]') !== null, undefined, 'Sam in Bob\'s presence');

  // Una types a coaching note for supervisors, from a socket of her own.
  const wsUrl = `${server.url.replace('http', 'ws')}/v1/ws`;
  const typing = await sam.evaluateHandle(
    ([url, token, id]) => {
      const socket = new WebSocket(url);
      socket.onopen = () => {
        socket.send(JSON.stringify({ type: 'hello', token }));
        socket.send(JSON.stringify({ type: 'subscribe', conversation_id: id, ref: 's' }));
        const keepTyping = () => socket.send(JSON.stringify({ type: 'typing', conversation_id: id, audience: 'supervisors' }));
        keepTyping();
        socket.timer = setInterval(keepTyping, 1000);
      };
      return socket;
    },
    [wsUrl, una, conversation.id],
  );
  await waitForText(sam, '#typing-line', 'Una is writing a supervisors-only note');
  // Bob sees Una here, never typing.
  await waitUntil(bob, () => document.querySelector('#presence [data-user="una"]') !== null, undefined, "Una in Bob's presence");
  for (let i = 0; i < 6; i += 1) {
    const seen = await bob.evaluate(() => ({
      line: document.querySelector('#typing-line').textContent,
      flag: document.querySelector('#presence [data-user="una"]')?.dataset.typing ?? '',
    }));
    assert.ok(!seen.line.includes('Una'), `Bob's typing line: ${seen.line}`);
    assert.equal(seen.flag, '', "Bob's presence marks Una as typing");
    await bob.waitForTimeout(250);
  }
  await typing.evaluate((socket) => {
    clearInterval(socket.timer);
    socket.close();
  });

  // The policy lets a page open sockets to its node (above), and to nowhere else.
  const elsewhere = await bob.evaluate(
    () =>
      new Promise((resolve) => {
        document.addEventListener('securitypolicyviolation', (event) => resolve(`blocked: ${event.violatedDirective}`), { once: true });
        try {
          new WebSocket('ws://localhost:9/exfiltrate');
        } catch (error) {
          resolve(`blocked: ${error.name}`);
        }
        setTimeout(() => resolve('allowed'), 2000);
      }),
  );
  assert.match(elsewhere, /^blocked/);
  await sam.context().close();
  await bob.context().close();
});
