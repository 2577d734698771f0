// The client against the real server binary: hello, refs, visibility, idempotent retries,
// dead connections, and resume across server restarts with nothing lost or repeated.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import {
  BackchannelError,
  Client,
  HttpApi,
  httpBaseFromWsUrl,
  type ClientOptions,
  type CloseInfo,
  type EventFrame,
  type NotificationFrame,
  type SubscribedContext,
  type TypingFrame,
} from '@backchannel/client';

import {
  agent,
  customer,
  mintToken,
  next,
  NodeWebSocket,
  openConversation,
  Proxy,
  randomUUID,
  ServerProcess,
  until,
} from './harness.js';

const clients: Client[] = [];
const proxies: Proxy[] = [];
const servers: ServerProcess[] = [];

function newClient(url: string, token: string, options: Partial<ClientOptions> = {}): Client {
  const client = new Client({
    url,
    token,
    WebSocket: NodeWebSocket,
    requestTimeoutMs: 5000,
    backoff: { minMs: 20, maxMs: 250 },
    ...options,
  });
  clients.push(client);
  return client;
}

async function connected(url: string, token: string, options: Partial<ClientOptions> = {}): Promise<Client> {
  const client = newClient(url, token, options);
  client.connect();
  await client.ready();
  return client;
}

function http(server: ServerProcess, token: string): HttpApi {
  return new HttpApi({ baseUrl: httpBaseFromWsUrl(server.wsUrl), token });
}

after(async () => {
  for (const client of clients) client.disconnect();
  await Promise.all(proxies.map((p) => p.close()));
  await Promise.all(servers.map((s) => s.dispose()));
});

describe('against one server (heartbeat 400 ms)', { timeout: 30_000 }, () => {
  let server: ServerProcess;
  before(async () => {
    // Short enough to test dead-link detection quickly, long enough that a loaded 2-core
    // CI machine does not miss a beat.
    server = await ServerProcess.start({ heartbeatMs: 400 });
    servers.push(server);
  });

  test('hello → welcome, and the states a UI shows', async () => {
    const client = newClient(server.wsUrl, mintToken({ sub: 'alice', role: 'agent', name: 'Alice', inboxes: ['support'] }));
    const states: string[] = [];
    client.on('state', ({ newState, oldState }) => states.push(`${oldState}->${newState}`));
    client.connect();
    const welcome = await client.ready();
    assert.deepEqual(welcome.user, { id: 'alice', role: 'agent', name: 'Alice' });
    assert.equal(welcome.heartbeat_ms, 400);
    assert.match(welcome.session_id, /\S/);
    client.disconnect();
    assert.deepEqual(states, ['disconnected->connecting', 'connecting->connected', 'connected->disconnected']);
  });

  test('refs resolve with the ok and reject with the server code', async () => {
    const conversation = await openConversation(server, 'dana');
    const alice = await connected(server.wsUrl, agent('alice'));
    const dana = await connected(server.wsUrl, customer('dana'));
    assert.deepEqual(await alice.request({ type: 'ping' }), {});

    const missing = alice.subscribe(randomUUID());
    await assert.rejects(missing.ready(), (e: unknown) =>
      e instanceof BackchannelError && e.code === 'not_found' && e.message.startsWith('not_found: '));
    assert.equal(missing.state, 'unsubscribed');
    await assert.rejects(alice.send(randomUUID(), 'hi'), (e: unknown) => e instanceof BackchannelError && e.code === 'not_found');
    await assert.rejects(alice.request({ type: 'subscribe', conversation_id: 'not-a-uuid' }),
      (e: unknown) => e instanceof BackchannelError && e.code === 'bad_request');
    await assert.rejects(dana.note(conversation, 'customers cannot write notes'),
      (e: unknown) => e instanceof BackchannelError && e.code === 'forbidden');
    const sent = await dana.send(conversation, 'hello?');
    assert.equal(sent.seq, 2);
    assert.equal(sent.duplicate, undefined);
  });

  test('a note reaches the other agent and never the customer', async () => {
    const conversation = await openConversation(server, 'carol');
    const alice = await connected(server.wsUrl, agent('alice'));
    const bob = await connected(server.wsUrl, agent('bob'));
    const carol = await connected(server.wsUrl, customer('carol'));
    const seen = { bob: [] as EventFrame[], carol: [] as EventFrame[] };
    const typing = { bob: [] as TypingFrame[], carol: [] as TypingFrame[] };
    const notifications = { bob: [] as NotificationFrame[], carol: [] as NotificationFrame[] };
    for (const [name, client] of [['bob', bob], ['carol', carol]] as const) {
      client.on('event', (f) => seen[name].push(f));
      client.on('typing', (f) => typing[name].push(f));
      client.on('notification', (f) => notifications[name].push(f));
    }
    await Promise.all([alice, bob, carol].map((c) => c.subscribe(conversation).ready()));

    alice.typing(conversation, 'internal');
    const note = await alice.note(conversation, 'refund approved, @bob please confirm');
    assert.deepEqual(note.mentioned, ['bob']);
    alice.typing(conversation, 'public');
    await alice.send(conversation, 'Your refund is on its way');
    await until(() => seen.bob.length === 3 && seen.carol.length === 2 && typing.carol.length === 1, 'the message on both sides');

    assert.deepEqual(seen.bob.map((f) => [f.seq, f.event.kind]), [[1, 'conversation_opened'], [2, 'note'], [3, 'message']]);
    assert.equal(seen.bob[1]!.event.body, 'refund approved, @bob please confirm');
    assert.deepEqual(seen.carol.map((f) => [f.seq, f.event.kind]), [[1, 'conversation_opened'], [2, 'message']]);
    assert.equal(JSON.stringify(seen.carol).includes('refund approved'), false);
    assert.deepEqual(typing.bob.map((t) => t.audience), ['internal', 'public']);
    assert.deepEqual(typing.carol.map((t) => t.audience), ['public']);
    await until(() => notifications.bob.length === 1, 'the mention');
    assert.equal(notifications.bob[0]!.kind, 'mention');
    assert.equal(notifications.carol.length, 0);
  });

  test('subscribing again replays from the new since, and the app still sees each event once', async () => {
    const conversation = await openConversation(server, 'lena');
    const alice = await connected(server.wsUrl, agent('alice'));
    const seen: number[] = [];
    alice.on('event', (f) => seen.push(f.seq));
    await alice.send(conversation, 'one');
    await alice.subscribe(conversation).ready();
    assert.deepEqual(await alice.request({ type: 'subscribe', conversation_id: conversation, since: 0 }), { conversation_id: conversation, head: 2 });
    await alice.send(conversation, 'two');
    await until(() => seen.length >= 3, 'the new message');
    await alice.request({ type: 'ping' });
    assert.deepEqual(seen, [1, 2, 3]);
  });

  test('a retried send with the same client_id is stored once', async () => {
    const conversation = await openConversation(server, 'erin');
    const alice = await connected(server.wsUrl, agent('alice'));
    const first = await alice.send(conversation, 'only once', { clientId: 'retry-1' });
    const again = await alice.send(conversation, 'only once', { clientId: 'retry-1' });
    assert.equal(again.duplicate, true);
    assert.equal(again.event_id, first.event_id);
    assert.equal(again.seq, first.seq);
    const history = await http(server, agent('alice')).history(conversation);
    assert.deepEqual(history.events.map((e) => e.event.body ?? e.event.kind), ['conversation_opened', 'only once']);
  });

  test('a send whose answer was lost with the socket is re-sent after the reconnect and stored once', async () => {
    const conversation = await openConversation(server, 'fred');
    const proxy = await Proxy.start(server.port);
    proxies.push(proxy);
    const alice = await connected(proxy.wsUrl, agent('alice'));
    const bob = await connected(server.wsUrl, agent('bob'));
    const bobSeen: EventFrame[] = [];
    bob.on('event', (f) => bobSeen.push(f));
    await bob.subscribe(conversation).ready();

    proxy.muteReplies();
    let settled = 0;
    const sending = alice.send(conversation, 'answer lost', { clientId: 'lost-1' }).finally(() => settled++);
    await until(() => bobSeen.some((f) => f.event.body === 'answer lost'), 'the message stored');
    assert.equal(settled, 0, 'the ok never reached alice');
    proxy.cut();
    const result = await sending;
    assert.equal(result.duplicate, true);
    assert.equal(settled, 1);
    const history = await http(server, agent('bob')).history(conversation);
    assert.deepEqual(history.events.filter((e) => e.event.body === 'answer lost').map((e) => e.event.id), [result.event_id]);
    await bob.request({ type: 'ping' }); // anything stored twice would have been delivered before this answer
    assert.equal(bobSeen.filter((f) => f.event.body === 'answer lost').length, 1);
  });

  test('a dead connection is found by missed heartbeats, replaced, and resumed', async () => {
    const conversation = await openConversation(server, 'gina');
    const proxy = await Proxy.start(server.port);
    proxies.push(proxy);
    const alice = await connected(proxy.wsUrl, agent('alice'));
    const bob = await connected(server.wsUrl, agent('bob'));
    const sub = alice.subscribe(conversation);
    const seen: EventFrame[] = [];
    sub.on('event', (f) => seen.push(f));
    await sub.ready();
    const states: string[] = [];
    alice.on('state', (s) => states.push(s.newState));
    const closes: CloseInfo[] = [];
    alice.on('close', (c) => closes.push(c));
    // Idle for four heartbeat intervals: the server answers the client's pings, and the
    // client answers the server's, so neither side gives the connection up.
    await new Promise((resolve) => setTimeout(resolve, 1600));
    assert.deepEqual(closes, []);
    assert.equal(alice.state, 'connected');
    const closed = next<CloseInfo>((l) => alice.on('close', l), () => true, 6000);

    proxy.silence(); // no FIN, no RST: only the heartbeat can tell
    const started = Date.now();
    await bob.send(conversation, 'written while alice was cut off');
    const close: CloseInfo = await closed;
    assert.equal(close.code, 3001);
    assert.equal(close.action, 'reconnect');
    assert.ok(Date.now() - started < 4000, `found dead after ${Date.now() - started} ms`);
    await until(() => seen.length === 2, 'the message after resuming', 5000);
    assert.deepEqual(seen.map((f) => [f.seq, f.event.body ?? f.event.kind]), [
      [1, 'conversation_opened'],
      [2, 'written while alice was cut off'],
    ]);
    assert.deepEqual(states, ['connecting', 'connected']);
  });

  test('a refused token ends in disconnected with unauthorized; getToken gets one more chance', async () => {
    const forged = mintToken({ sub: 'mallory', role: 'admin' }, 'not-the-secret');
    const fixed = newClient(server.wsUrl, forged);
    fixed.connect();
    await assert.rejects(fixed.ready(), (e: unknown) => e instanceof BackchannelError && e.code === 'unauthorized');
    assert.equal(fixed.state, 'disconnected');

    const tokens = [forged, agent('alice')];
    let calls = 0;
    const refreshed = newClient(server.wsUrl, '', { token: undefined, getToken: () => tokens[calls++]! });
    refreshed.connect();
    const welcome = await refreshed.ready();
    assert.equal(welcome.user.id, 'alice');
    assert.equal(calls, 2);
  });

  test('history over HTTP: open a conversation, page it, and read the server error codes', async () => {
    const api = http(server, customer('hana'));
    const view = await api.openConversation({ inbox_id: 'support', subject: 'billing' });
    assert.equal(view.head, 1);
    const hana = await connected(server.wsUrl, customer('hana'));
    for (let i = 1; i <= 4; i++) await hana.send(view.id, `m${i}`);
    const all = await api.historyRange(view.id, 0, undefined, 2);
    assert.deepEqual(all.map((e) => e.seq), [1, 2, 3, 4, 5]);
    const middle = await api.historyRange(view.id, 1, 4, 2);
    assert.deepEqual(middle.map((e) => e.event.body), ['m1', 'm2']);

    const since = hana.subscribe(view.id, { since: 3 });
    const replayed: number[] = [];
    since.on('event', (f) => replayed.push(f.seq));
    await since.ready();
    assert.deepEqual(replayed, [4, 5]);

    await assert.rejects(api.history(randomUUID()), (e: unknown) =>
      e instanceof BackchannelError && e.code === 'not_found' && e.status === 404);

    // The reply guard over HTTP: a 409 whose error carries what the sender missed.
    const ivan = await connected(server.wsUrl, agent('ivan'));
    await ivan.send(view.id, 'an agent answers');
    await assert.rejects(
      api.call('POST', `/v1/conversations/${view.id}/messages`, { client_id: 'late', body: 'late', based_on_seq: 5 }),
      (e: unknown) =>
        e instanceof BackchannelError && e.code === 'conflict' && e.status === 409 && e.missed?.[0]?.event.body === 'an agent answers',
    );
  });

  test('a since beyond the head (a store restored from a backup) resets the subscription', async () => {
    const conversation = await openConversation(server, 'jack');
    const alice = await connected(server.wsUrl, agent('alice'));
    await alice.send(conversation, 'after the restore');
    const sub = alice.subscribe(conversation, { since: 40 });
    const log: string[] = [];
    sub.on('reset', (r) => log.push(`reset from ${r.droppedSeq}, head ${r.head}`));
    sub.on('event', (f) => log.push(`event ${f.seq}`));
    await sub.ready();
    assert.deepEqual(log, ['reset from 40, head 2', 'event 1', 'event 2']);
    assert.equal(sub.lastSeq, 2);
  });

  test('a truncated replay says where it starts, and HTTP pages what it left out', async () => {
    const conversation = await openConversation(server, 'kate');
    const writers = await Promise.all(['w1', 'w2', 'w3', 'w4', 'w5', 'w6', 'w7', 'w8'].map((w) => connected(server.wsUrl, agent(w))));
    const total = 1040; // the replay limit is 1,000
    let written = 0;
    await Promise.all(writers.map(async (writer) => {
      while (written < total) await writer.send(conversation, `bulk ${written++}`);
    }));
    const head = 1 + written;

    const reader = await connected(server.wsUrl, agent('bob'));
    const sub = reader.subscribe(conversation, { since: 5 });
    const live: number[] = [];
    sub.on('event', (f) => live.push(f.seq));
    const subscribed = next<SubscribedContext>((l) => sub.on('subscribed', l));
    await sub.ready();
    const context = await subscribed;
    assert.equal(context.truncated, true);
    assert.equal(context.since, 5);
    assert.equal(context.replayFrom, head - 999);
    assert.equal(sub.replayFrom, head - 999);
    assert.deepEqual(live, Array.from({ length: 1000 }, (_, i) => head - 999 + i));
    const gap = await http(server, agent('bob')).historyRange(conversation, context.since, context.replayFrom);
    assert.deepEqual(gap.map((e) => e.seq), Array.from({ length: head - 1000 - 5 }, (_, i) => 6 + i));
  });
});

describe('resume across server restarts', () => {
  test('while another client writes, the subscriber gets every event once, in order, through a SIGKILL and a SIGTERM', { timeout: 45_000 }, async (t) => {
    let server = await ServerProcess.start();
    servers.push(server);
    const conversation = await openConversation(server, 'ivan');
    const writer = await connected(server.wsUrl, agent('alice'));
    const reader = await connected(server.wsUrl, agent('bob'));
    const closes: number[] = [];
    reader.on('close', (c) => closes.push(c.code));
    const sub = reader.subscribe(conversation);
    const received: EventFrame[] = [];
    sub.on('event', (f) => received.push(f));
    let subscribedTimes = 0;
    sub.on('subscribed', () => subscribedTimes++);
    await sub.ready();

    const total = 90;
    // Sends from this index on wait until the SIGTERM is under way, so both restarts come
    // while writes remain, however fast the server acknowledges them.
    const gateAt = 70;
    let openGate: () => void = () => {};
    const gate = new Promise<void>((resolve) => (openGate = resolve));
    let acked = 0;
    let nextIndex = 0;
    const results: Array<{ duplicate?: boolean }> = [];
    const worker = async () => {
      while (nextIndex < total) {
        const i = nextIndex++;
        if (i >= gateAt) await gate;
        results[i] = await writer.send(conversation, `message ${i}`, { clientId: `w-${i}`, timeoutMs: 20_000 });
        acked++;
      }
    };
    const writing = Promise.all([worker(), worker(), worker()]);
    writing.catch(() => {}); // awaited below; a failure must not end the test while servers restart

    await until(() => received.length >= 20, 'the first messages', 10_000);
    const ackedAtKill = acked;
    const killed = server;
    server = await server.restart('SIGKILL');
    servers.push(server);
    await until(() => received.length >= 50, 'messages after the first restart', 10_000);
    const ackedAtTerm = acked;
    const stopping = server.stop('SIGTERM');
    openGate();
    const exitCode = await stopping;
    server = await ServerProcess.start({ dataDir: server.dataDir, port: server.port });
    servers.push(server);
    await writing;
    await until(() => received.length >= total + 1, 'every message', 10_000);
    await reader.request({ type: 'ping' }); // anything after the last one would be here by now

    t.diagnostic(`acked at SIGKILL ${ackedAtKill}, at SIGTERM ${ackedAtTerm} of ${total}; retries answered duplicate: ${results.filter((r) => r.duplicate).length}; reader closes: ${closes.join(',')}`);
    assert.ok(ackedAtKill < total && ackedAtTerm < total, `the writer was mid-stream (${ackedAtKill}, ${ackedAtTerm} of ${total})`);
    assert.equal(exitCode, 0, 'SIGTERM exits 0');
    assert.equal(killed.port, server.port);
    assert.ok(closes.includes(1006), `the kill dropped the socket (${closes})`);
    assert.ok(closes.includes(1001), `the shutdown closed with 1001 (${closes})`);
    assert.ok(subscribedTimes >= 3, 'resubscribed after each restart');

    assert.deepEqual(received.map((f) => f.seq), Array.from({ length: total + 1 }, (_, i) => i + 1), 'gap-free and in order');
    const bodies = received.slice(1).map((f) => f.event.body);
    assert.deepEqual([...bodies].sort(), Array.from({ length: total }, (_, i) => `message ${i}`).sort(), 'each message once');
    const stored = await http(server, agent('bob')).historyRange(conversation, 0);
    assert.deepEqual(received.map((f) => [f.seq, f.event.id]), stored.map((e) => [e.seq, e.event.id]), 'what was delivered is what was stored');
    assert.equal(results.length, total);
  });
});
