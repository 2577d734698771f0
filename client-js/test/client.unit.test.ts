// The client's own logic against a fake WebSocket the test drives frame by frame: state
// machine, refs, transport replacement, backoff, dedup and resume, reset, token refusal,
// heartbeats. The same behaviours against the real server are in server.test.ts.

import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';

import {
  BackchannelError,
  Backoff,
  backoffDelay,
  Client,
  closeAction,
  newClientId,
  type ClientOptions,
  type CloseInfo,
  type EventFrame,
  type StateChange,
  type WebSocketConstructor,
} from '@backchannel/client';

import { FakeSocket, until } from './harness.js';

const CONV = '0192f0c8-0000-7000-8000-000000000001';

function makeClient(options: Partial<ClientOptions> = {}): Client {
  return new Client({
    url: 'ws://fake/v1/ws',
    token: 't0',
    WebSocket: FakeSocket as unknown as WebSocketConstructor,
    requestTimeoutMs: 2000,
    backoff: { minMs: 1, maxMs: 5 },
    ...options,
  });
}

function eventFrame(seq: number, body = `m${seq}`): EventFrame {
  return {
    type: 'event',
    conversation_id: CONV,
    seq,
    event: { id: `e${seq}`, kind: 'message', at: '2026-01-01T00:00:00Z', actor: { id: 'bob', role: 'agent' }, body },
  };
}

let clients: Client[] = [];
function track(client: Client): Client {
  clients.push(client);
  return client;
}

beforeEach(() => FakeSocket.reset());
afterEach(() => {
  for (const client of clients) client.disconnect();
  clients = [];
});

describe('codes and backoff', () => {
  test('close codes are grouped by whether to reconnect', () => {
    for (const code of [1001, 1006, 1012, 4002, 4008, 3000, 3001]) assert.equal(closeAction(code), 'reconnect', String(code));
    assert.equal(closeAction(4001), 'refresh_token');
    assert.equal(closeAction(1009), 'fail');
    // A 1000 from the server or a proxy is not our own disconnect(): come back.
    assert.equal(closeAction(1000), 'reconnect');
  });

  test('full jitter stays between min and the doubled window, capped at max', () => {
    for (let step = 0; step < 40; step++) {
      for (const r of [0, 0.5, 0.999999]) {
        const d = backoffDelay(step, 500, 20_000, () => r);
        assert.ok(d >= 500 && d <= 20_000, `step ${step}: ${d}`);
        assert.ok(d <= 500 + 500 * 2 ** step, `step ${step}: ${d}`);
      }
    }
    assert.equal(backoffDelay(0, 500, 20_000, () => 0.999999), 999);
    assert.equal(backoffDelay(30, 500, 20_000, () => 0.999999), 20_000);
    const backoff = new Backoff({ minMs: 100, maxMs: 1000, random: () => 0.5 });
    assert.deepEqual([backoff.next(), backoff.next(), backoff.next(), backoff.next(), backoff.next()], [150, 200, 300, 500, 600]);
    backoff.reset();
    assert.equal(backoff.next(), 150);
  });
});

describe('client ids', () => {
  const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

  test('a client_id is a UUIDv7 that starts with its time in milliseconds', () => {
    const at = Date.UTC(2026, 11, 7, 23, 45, 1, 234);
    const id = newClientId(at);
    assert.match(id, UUID_V7);
    assert.equal(parseInt(id.slice(0, 8) + id.slice(9, 13), 16), at);
    assert.equal(newClientId(0).slice(0, 13), '00000000-0000');
    assert.equal(newClientId(2 ** 48 - 1).slice(0, 13), 'ffffffff-ffff');
  });

  test('client_ids sort by the time they were made, and never repeat', () => {
    // The server's idempotency index keys on client_id first: ids in time order land
    // at its end. Within one millisecond the order is random; across milliseconds it
    // is the time's.
    const ids: string[] = [];
    for (let ms = 1_700_000_000_000; ms < 1_700_000_000_000 + 2000; ms += 1) ids.push(newClientId(ms), newClientId(ms));
    const byTime = ids.filter((_, i) => i % 2 === 0);
    assert.deepEqual([...byTime].sort(), byTime);
    assert.equal(new Set(ids).size, ids.length);
    for (const id of ids) assert.match(id, UUID_V7);
  });

  test('a send and a note without a clientId get a fresh UUIDv7 each', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    FakeSocket.last.welcome();
    client.send(CONV, 'hello').catch(() => {});
    client.note(CONV, 'internal').catch(() => {});
    const socket = FakeSocket.last;
    const sendId = socket.frames('send')[0]!.client_id;
    const noteId = socket.frames('note')[0]!.client_id;
    assert.match(sendId, UUID_V7);
    assert.match(noteId, UUID_V7);
    assert.notEqual(sendId, noteId);
  });
});

describe('Client with a fake socket', () => {
  test('says hello with its token first, then follows disconnected → connecting → connected → disconnected', async () => {
    const client = track(makeClient());
    const states: StateChange[] = [];
    client.on('state', (s) => states.push(s));
    assert.equal(client.state, 'disconnected');
    client.connect();
    assert.equal(client.state, 'connecting');
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    const ready = client.ready();
    FakeSocket.last.welcome();
    const welcome = await ready;
    assert.equal(welcome.user.id, 'alice');
    assert.deepEqual(FakeSocket.last.sent[0], { type: 'hello', token: 't0' });
    assert.equal(client.session?.user.id, 'alice');
    client.disconnect();
    assert.equal(FakeSocket.last.closedWith?.code, 1000);
    assert.deepEqual(states, [
      { newState: 'connecting', oldState: 'disconnected' },
      { newState: 'connected', oldState: 'connecting' },
      { newState: 'disconnected', oldState: 'connected' },
    ]);
    assert.equal(client.session, null);
  });

  test('a ref resolves with the ok fields, rejects with the error code, times out, and a late answer is harmless', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    FakeSocket.last.welcome();
    const socket = FakeSocket.last;

    const ok = client.request({ type: 'read_notifications' });
    socket.ok('read_notifications', { marked: 2, unread: 0 });
    assert.deepEqual(await ok, { marked: 2, unread: 0 });

    const failed = client.request({ type: 'set_status', conversation_id: CONV, status: 'resolved' });
    const ref = socket.frames('set_status')[0]!.ref;
    socket.receive({ type: 'error', ref, code: 'forbidden', message: 'no' });
    await assert.rejects(failed, (e: unknown) => e instanceof BackchannelError && e.code === 'forbidden' && e.message === 'forbidden: no');

    const slow = client.request({ type: 'ping' }, { timeoutMs: 30 });
    await assert.rejects(slow, (e: unknown) => e instanceof BackchannelError && e.code === 'timeout');
    const errors: BackchannelError[] = [];
    client.on('error', (e) => errors.push(e));
    socket.receive({ type: 'error', ref: socket.frames('ping')[0]!.ref, code: 'internal', message: 'late' });
    socket.ok('ping');
    assert.deepEqual(errors, []);
    assert.equal(client.state, 'connected');
  });

  test('callbacks of a replaced socket are ignored', async () => {
    const client = track(makeClient());
    const seen: number[] = [];
    const states: string[] = [];
    client.on('event', (f) => seen.push(f.seq));
    client.on('state', (s) => states.push(s.newState));
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    const first = FakeSocket.last;
    first.welcome();
    const sub = client.subscribe(CONV);
    first.receive(eventFrame(1));
    first.ok('subscribe', { conversation_id: CONV, head: 1 });
    await sub.ready();
    const lost = client.request({ type: 'ping' });
    first.drop(1006);
    await assert.rejects(lost, (e: unknown) => e instanceof BackchannelError && e.code === 'disconnected');
    await until(() => FakeSocket.instances.length === 2, 'a second socket');
    const second = FakeSocket.last;
    second.welcome();
    assert.equal(second.frames('subscribe')[0]!.since, 1);
    second.ok('subscribe', { conversation_id: CONV, head: 1 });
    await sub.ready();
    const pending = client.request({ type: 'ping' });
    const ref = second.frames('ping')[0]!.ref;
    const statesBefore = states.length;

    // The old socket, through the handlers it was given, delivers an event, answers the
    // new socket's ref, says welcome and closes: none of it may reach the client.
    first.captured.message!({ data: JSON.stringify(eventFrame(2, 'stale')) });
    first.captured.message!({ data: JSON.stringify({ type: 'error', ref, code: 'internal', message: 'stale' }) });
    first.captured.open!({});
    first.captured.close!({ code: 1006, reason: '' });
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(seen, [1]);
    assert.equal(sub.lastSeq, 1);
    assert.equal(client.state, 'connected');
    assert.equal(states.length, statesBefore);
    assert.equal(FakeSocket.instances.length, 2, 'no reconnect for a stale close');
    assert.equal(first.sent.filter((f) => f.type === 'hello').length, 1, 'no second hello on the old socket');

    second.receive({ type: 'ok', ref });
    assert.deepEqual(await pending, {});
    second.receive(eventFrame(2));
    assert.deepEqual(seen, [1, 2]);
  });

  test('backoff grows while attempts fail, and starts over once a session stayed up', async () => {
    const client = track(makeClient({ backoff: { minMs: 2, maxMs: 1000, random: () => 0.5, stableMs: 50 } }));
    const closes: CloseInfo[] = [];
    client.on('close', (c) => closes.push(c));
    client.connect();
    for (let i = 1; i <= 3; i++) {
      await until(() => FakeSocket.instances.length === i, `socket ${i}`);
      FakeSocket.last.drop(1006); // connection refused
    }
    // Welcomed, then dropped at once (a broken node): the delays keep growing.
    await until(() => FakeSocket.instances.length === 4, 'socket 4');
    FakeSocket.last.welcome();
    FakeSocket.last.drop(1012);
    // Welcomed and up past `stableMs`: the next drop starts over.
    await until(() => FakeSocket.instances.length === 5, 'socket 5');
    FakeSocket.last.welcome();
    await new Promise((resolve) => setTimeout(resolve, 80));
    FakeSocket.last.drop(1012);
    await until(() => FakeSocket.instances.length === 6, 'socket 6');
    assert.deepEqual(closes.map((c) => [c.code, c.action, c.attempt, c.delayMs]), [
      [1006, 'reconnect', 1, 3],
      [1006, 'reconnect', 2, 4],
      [1006, 'reconnect', 3, 6],
      [1012, 'reconnect', 4, 10],
      [1012, 'reconnect', 1, 3],
    ]);
  });

  test('queued sends go out before the resubscribes, and a rate-limited one is sent again', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    FakeSocket.last.welcome();
    const sub = client.subscribe(CONV);
    FakeSocket.last.ok('subscribe', { conversation_id: CONV, head: 0 });
    await sub.ready();
    FakeSocket.last.drop(1006);
    const sent = client.send(CONV, 'queued', { clientId: 'c-q' });
    await until(() => FakeSocket.instances.length === 2, 'a second socket');
    const socket = FakeSocket.last;
    socket.welcome();
    const types = socket.sent.map((f) => f.type);
    assert.ok(types.indexOf('send') < types.indexOf('subscribe'), `send first: ${types.join(', ')}`);
    const first = socket.frames('send')[0]!;
    socket.receive({ type: 'error', ref: first.ref, code: 'rate_limited', message: 'slow down' });
    await until(() => socket.frames('send').length === 2, 'the send again', 3000);
    const again = socket.frames('send')[1]!;
    assert.equal(again.client_id, 'c-q');
    socket.receive({ type: 'ok', ref: again.ref, seq: 1, event_id: 'e1', duplicate: false });
    assert.equal((await sent).seq, 1);
  });

  test('a WebSocket constructor that throws ends in disconnected with the reason', async () => {
    class Refusing {
      constructor() {
        throw new SyntaxError('bad URL');
      }
    }
    const client = track(makeClient({ WebSocket: Refusing as unknown as WebSocketConstructor }));
    const errors: BackchannelError[] = [];
    client.on('error', (e) => errors.push(e));
    client.connect();
    await until(() => client.state === 'disconnected', 'disconnected');
    assert.match(errors[0]?.message ?? '', /cannot open a WebSocket.*bad URL/);
    await assert.rejects(client.ready(), (e: unknown) => e instanceof BackchannelError);
  });

  test('a server that streams events without answering the subscribe is dropped', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    const socket = FakeSocket.last;
    socket.welcome();
    client.subscribe(CONV);
    for (let seq = 1; seq <= 10_001; seq++) socket.receive(eventFrame(seq));
    await until(() => FakeSocket.instances.length === 2, 'a new socket');
    assert.equal(socket.closedWith?.code, 3002);
  });

  test('each seq is delivered once across replays, reconnects and repeats', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    FakeSocket.last.welcome();
    const sub = client.subscribe(CONV);
    const fromSub: number[] = [];
    const fromClient: number[] = [];
    sub.on('event', (f) => fromSub.push(f.seq));
    client.on('event', (f) => fromClient.push(f.seq));
    const socket = FakeSocket.last;
    assert.equal(socket.frames('subscribe')[0]!.since, 0);
    for (const seq of [1, 2, 3]) socket.receive(eventFrame(seq));
    socket.ok('subscribe', { conversation_id: CONV, head: 3 });
    await sub.ready();
    socket.receive(eventFrame(4));
    socket.receive(eventFrame(4));
    socket.receive(eventFrame(3));
    socket.drop(1001, 'server shutting down');
    await until(() => FakeSocket.instances.length === 2, 'a second socket');
    const again = FakeSocket.last;
    again.welcome();
    assert.equal(again.frames('subscribe')[0]!.since, 4);
    // Live events may come before the replay of a resubscription; all are sorted out.
    again.receive(eventFrame(6));
    again.receive(eventFrame(4));
    again.receive(eventFrame(5));
    again.receive(eventFrame(6));
    again.ok('subscribe', { conversation_id: CONV, head: 6 });
    await sub.ready();
    again.receive(eventFrame(7));
    assert.deepEqual(fromSub, [1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(fromClient, fromSub);
    assert.equal(sub.lastSeq, 7);
  });

  test('subscribe with since starts after it', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    FakeSocket.last.welcome();
    const sub = client.subscribe(CONV, { since: 41 });
    assert.equal(FakeSocket.last.frames('subscribe')[0]!.since, 41);
    assert.equal(client.subscribe(CONV), sub, 'one subscription per conversation');
  });

  test('a gap in the live stream is repaired by resubscribing from the last seq', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    const socket = FakeSocket.last;
    socket.welcome();
    const sub = client.subscribe(CONV);
    const seen: number[] = [];
    sub.on('event', (f) => seen.push(f.seq));
    socket.receive(eventFrame(1));
    socket.ok('subscribe', { conversation_id: CONV, head: 1 });
    await sub.ready();
    socket.receive(eventFrame(3));
    assert.deepEqual(seen, [1]);
    assert.equal(socket.frames('subscribe').length, 2);
    assert.equal(socket.frames('subscribe')[1]!.since, 1);
    socket.receive(eventFrame(2));
    socket.receive(eventFrame(3));
    socket.ok('subscribe', { conversation_id: CONV, head: 3 });
    await sub.ready();
    assert.deepEqual(seen, [1, 2, 3]);
  });

  test('reset: true drops what was held and counts again from 1; truncated exposes replayFrom', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    const socket = FakeSocket.last;
    socket.welcome();
    const sub = client.subscribe(CONV, { since: 50 });
    const log: string[] = [];
    sub.on('reset', (r) => log.push(`reset ${r.droppedSeq}->${r.head}`));
    sub.on('event', (f) => log.push(`event ${f.seq}`));
    sub.on('subscribed', (s) => log.push(`subscribed reset=${s.reset}`));
    // The client's own stream says so too, before its events restart at 1.
    client.on('reset', (r) => log.push(`client reset ${r.conversationId === CONV}`));
    client.on('event', (f) => log.push(`client event ${f.seq}`));
    socket.receive(eventFrame(1));
    socket.receive(eventFrame(2));
    socket.ok('subscribe', { conversation_id: CONV, head: 2, reset: true });
    await sub.ready();
    assert.deepEqual(log, [
      'client reset true',
      'reset 50->2',
      'event 1',
      'client event 1',
      'event 2',
      'client event 2',
      'subscribed reset=true',
    ]);
    assert.equal(sub.lastSeq, 2);

    const other = client.subscribe('0192f0c8-0000-7000-8000-000000000002', { since: 3 });
    const contexts: Array<{ truncated: boolean; replayFrom?: number; since: number }> = [];
    other.on('subscribed', (s) => contexts.push(s));
    socket.receive({ ...eventFrame(2000), conversation_id: other.conversationId });
    socket.ok('subscribe', { conversation_id: other.conversationId, head: 2000, truncated: true, replay_from: 2000 });
    await other.ready();
    assert.equal(other.truncated, true);
    assert.equal(other.replayFrom, 2000);
    assert.equal(contexts[0]!.since, 3);
    assert.equal(other.lastSeq, 2000);
  });

  test('a final subscribe error ends the subscription with the server code; a temporary one retries', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    const socket = FakeSocket.last;
    socket.welcome();
    const sub = client.subscribe(CONV);
    const ready = sub.ready();
    socket.receive({ type: 'error', ref: socket.frames('subscribe')[0]!.ref, code: 'unavailable', message: 'busy' });
    await until(() => socket.frames('subscribe').length === 2, 'a retried subscribe');
    socket.receive({ type: 'error', ref: socket.frames('subscribe')[1]!.ref, code: 'not_found', message: 'no such conversation' });
    await assert.rejects(ready, (e: unknown) => e instanceof BackchannelError && e.code === 'not_found');
    assert.equal(sub.state, 'unsubscribed');
    assert.equal(client.getSubscription(CONV), undefined);
  });

  test('a send lost with its socket is sent again with the same client_id and resolves once', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    FakeSocket.last.welcome();
    let settled = 0;
    const sent = client.send(CONV, 'hello', { clientId: 'c-1' }).finally(() => settled++);
    const note = client.note(CONV, 'internal', { noteType: 'context' });
    note.catch(() => {}); // awaited below
    const first = FakeSocket.last;
    const noteId = first.frames('note')[0]!.client_id;
    assert.equal(first.frames('send')[0]!.client_id, 'c-1');
    first.drop(4008);
    await until(() => FakeSocket.instances.length === 2, 'a second socket');
    const second = FakeSocket.last;
    second.welcome();
    assert.deepEqual(second.frames('send').map((f) => [f.client_id, f.body]), [['c-1', 'hello']]);
    assert.deepEqual(second.frames('note').map((f) => [f.client_id, f.note_type]), [[noteId, 'context']]);
    second.ok('send', { event_id: 'e1', seq: 9, duplicate: true });
    second.receive({ type: 'ok', ref: second.frames('send')[0]!.ref, event_id: 'e1', seq: 9 });
    second.ok('note', { event_id: 'e2', seq: 10, mentioned: [] });
    assert.deepEqual(await sent, { event_id: 'e1', seq: 9, duplicate: true });
    assert.equal((await note).seq, 10);
    assert.equal(settled, 1);
  });

  test('commands made while connecting wait for the welcome; disconnect rejects them with their client_id', async () => {
    const client = track(makeClient());
    client.connect();
    const early = client.request({ type: 'ping' });
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    FakeSocket.last.welcome();
    assert.equal(FakeSocket.last.frames('ping').length, 1);
    FakeSocket.last.ok('ping');
    assert.deepEqual(await early, {});
    FakeSocket.last.drop(1006);
    const waiting = client.send(CONV, 'later', { clientId: 'c-9' });
    client.disconnect();
    await assert.rejects(waiting, (e: unknown) => e instanceof BackchannelError && e.code === 'disconnected' && e.clientId === 'c-9');
    await assert.rejects(client.request({ type: 'ping' }), (e: unknown) => e instanceof BackchannelError && e.code === 'disconnected');
  });

  test('a frame over 64 KiB is refused without being sent', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    FakeSocket.last.welcome();
    await assert.rejects(client.send(CONV, 'é'.repeat(40_000)), (e: unknown) => e instanceof BackchannelError && e.code === 'too_large');
    assert.equal(FakeSocket.last.frames('send').length, 0);
  });

  test('a refused token is fetched again once, then the client gives up', async () => {
    let calls = 0;
    const client = track(makeClient({ token: undefined, getToken: async () => `t${++calls}` }));
    client.connect();
    const ready = client.ready();
    for (let i = 1; i <= 2; i++) {
      await until(() => FakeSocket.instances.length === i, `socket ${i}`);
      const socket = FakeSocket.last;
      socket.open();
      assert.deepEqual(socket.sent[0], { type: 'hello', token: `t${i}` });
      socket.receive({ type: 'error', code: 'unauthorized', message: 'token expired' });
      socket.drop(4001, 'unauthorized');
    }
    await assert.rejects(
      ready,
      (e: unknown) => e instanceof BackchannelError && e.code === 'unauthorized' && e.message === 'unauthorized: token expired',
    );
    assert.equal(client.state, 'disconnected');
    assert.equal(calls, 2);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(FakeSocket.instances.length, 2);
  });

  /** A connected client whose token then expires on its socket, as the server ends it:
   * an `error` `unauthorized` without `ref`, then close 4001. Returns what it emitted as
   * `'error'`. */
  async function expiredOnItsSocket(client: Client): Promise<unknown[]> {
    const errors: unknown[] = [];
    client.on('error', (e) => errors.push(e));
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    FakeSocket.last.welcome();
    await client.ready();
    FakeSocket.last.receive({ type: 'error', code: 'unauthorized', message: 'token expired: reconnect with a new token' });
    FakeSocket.last.drop(4001, 'unauthorized');
    return errors;
  }

  test('a token expiring on an open socket is replaced quietly, not reported as an error', async () => {
    let calls = 0;
    const client = track(makeClient({ token: undefined, getToken: async () => `t${++calls}` }));
    const errors = await expiredOnItsSocket(client);
    await until(() => FakeSocket.instances.length === 2, 'a second socket');
    FakeSocket.last.open();
    assert.deepEqual(FakeSocket.last.sent[0], { type: 'hello', token: 't2' });
    FakeSocket.last.welcome();
    await until(() => client.state === 'connected', 'connected again');
    assert.deepEqual(errors, []);
  });

  test('a fixed token that expires on an open socket ends the client, told once with the reason', async () => {
    const client = track(makeClient());
    const errors = await expiredOnItsSocket(client);
    assert.equal(client.state, 'disconnected');
    // Told once, as the client gives up, with the server's reason.
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof BackchannelError && errors[0].code === 'unauthorized' && errors[0].message.includes('token expired'));
    await assert.rejects(
      client.ready(),
      (e: unknown) => e instanceof BackchannelError && e.code === 'unauthorized' && e.message.includes('token expired'),
    );
  });

  test('a fixed token that is refused is not retried', async () => {
    const client = track(makeClient());
    client.connect();
    const ready = client.ready();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    FakeSocket.last.open();
    FakeSocket.last.drop(4001);
    await assert.rejects(ready, (e: unknown) => e instanceof BackchannelError && e.code === 'unauthorized');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(FakeSocket.instances.length, 1);
  });

  test('1009 (a frame too large) is not retried', async () => {
    const client = track(makeClient());
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    FakeSocket.last.welcome();
    FakeSocket.last.drop(1009);
    assert.equal(client.state, 'disconnected');
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(FakeSocket.instances.length, 1);
  });

  test('a silent server is pinged, then given up (3001) and replaced', async () => {
    const client = track(makeClient({ heartbeat: { intervalMs: 20, tolerance: 3 } }));
    const closes: CloseInfo[] = [];
    client.on('close', (c) => closes.push(c));
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    const socket = FakeSocket.last;
    socket.welcome();
    await until(() => socket.frames('ping').length >= 1, 'a ping', 2000);
    assert.equal(socket.frames('ping')[0]!.ref, undefined);
    await until(() => FakeSocket.instances.length === 2, 'a new socket', 2000);
    assert.equal(closes[0]!.code, 3001);
    assert.equal(closes[0]!.action, 'reconnect');
    assert.notEqual(socket.closedWith, null, 'the dead socket was closed');
  });

  test('a check that comes late (a throttled background tab) asks before giving up', async () => {
    const realNow = Date.now;
    let skew = 0;
    Date.now = () => realNow() + skew;
    try {
      const client = track(makeClient({ heartbeat: { intervalMs: 40, tolerance: 2 } }));
      client.connect();
      await until(() => FakeSocket.instances.length === 1, 'a socket');
      const socket = FakeSocket.last;
      socket.welcome();
      // The timers were held back for ten intervals: the next check is late.
      const pingsBefore = socket.frames('ping').length;
      skew += 400;
      // The server answers at once, as a live one does.
      await until(() => {
        if (socket.frames('ping').length === pingsBefore) return false;
        socket.receive({ type: 'pong' });
        return true;
      }, 'a ping after the late check', 2000);
      assert.equal(FakeSocket.instances.length, 1, 'not given up for the timer\'s silence');
      // A while of ordinary checks, the server answering each ping.
      let answered = socket.frames('ping').length;
      const until100 = realNow() + 100;
      while (realNow() < until100) {
        if (socket.frames('ping').length > answered) {
          answered = socket.frames('ping').length;
          socket.receive({ type: 'pong' });
        }
        await new Promise((r) => setTimeout(r, 5));
      }
      assert.equal(FakeSocket.instances.length, 1);
      assert.equal(client.state, 'connected');
      // Held back again, and this time nobody answers: given up within an interval.
      skew += 400;
      await until(() => FakeSocket.instances.length === 2, 'a new socket', 2000);
    } finally {
      Date.now = realNow;
    }
  });

  test('a server that answers is not given up', async () => {
    const client = track(makeClient({ heartbeat: { intervalMs: 30, tolerance: 4 } }));
    client.connect();
    await until(() => FakeSocket.instances.length === 1, 'a socket');
    const socket = FakeSocket.last;
    socket.welcome();
    let answered = 0;
    await until(() => {
      if (socket.frames('ping').length > answered) {
        answered = socket.frames('ping').length;
        socket.receive({ type: 'pong' });
      }
      return answered >= 5;
    }, 'five pings', 3000);
    assert.equal(FakeSocket.instances.length, 1);
    assert.equal(client.state, 'connected');
  });
});
