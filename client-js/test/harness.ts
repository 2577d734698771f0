// Test helpers: the real server binary on a free port, HS256 tokens, a TCP proxy that can
// cut or silence a connection, a fake WebSocket, and waits that always have a deadline.

import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac, randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';

import type { WebSocketConstructor } from '@backchannel/client';

/** The `ws` package's constructor, as the client takes it. */
export const NodeWebSocket = WebSocket as unknown as WebSocketConstructor;

export const BINARY =
  process.env.BACKCHANNEL_BIN ?? fileURLToPath(new URL('../../target/debug/backchannel', import.meta.url));

export const SECRET = 'client-js-test-secret';

export interface Claims {
  sub: string;
  role: 'customer' | 'agent' | 'supervisor' | 'admin';
  name?: string;
  inboxes?: string[];
  ttlSec?: number;
}

/** An HS256 JWT as `backchannel token` makes it. */
export function mintToken(claims: Claims, secret = SECRET): string {
  const { ttlSec = 3600, ...rest } = claims;
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const head = encode({ typ: 'JWT', alg: 'HS256' });
  const body = encode({ ...rest, exp: Math.floor(Date.now() / 1000) + ttlSec });
  const signature = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

export const agent = (sub: string) => mintToken({ sub, role: 'agent', inboxes: ['support'] });
export const customer = (sub: string) => mintToken({ sub, role: 'customer' });

// Servers never outlive the test process: they do not keep it alive (see `unref` below),
// and whatever way it ends, they are killed.
const running = new Set<ChildProcess>();
const dataDirs = new Set<string>();
const killAll = () => {
  for (const child of running) child.kill('SIGKILL');
  for (const dir of dataDirs) rmSync(dir, { recursive: true, force: true });
};
process.on('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    killAll();
    process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
  });
}

export interface ServerOptions {
  dataDir?: string;
  port?: number;
  heartbeatMs?: number;
}

/** One running `backchannel serve`. */
export class ServerProcess {
  readonly port: number;
  readonly dataDir: string;
  readonly heartbeatMs: number | undefined;
  private readonly child: ChildProcess;
  private readonly exited: Promise<number | null>;

  private constructor(child: ChildProcess, port: number, options: Required<Pick<ServerOptions, 'dataDir'>> & ServerOptions) {
    this.child = child;
    this.port = port;
    this.dataDir = options.dataDir;
    this.heartbeatMs = options.heartbeatMs;
    this.exited = new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
      else child.once('exit', (code) => resolve(code));
    });
  }

  get httpUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Starts the binary (a new data dir unless given) and waits for its `listening on` line. */
  static async start(options: ServerOptions = {}): Promise<ServerProcess> {
    if (!existsSync(BINARY)) {
      throw new Error(`${BINARY} is missing: run \`cargo build -p backchannel\` in the workspace first`);
    }
    const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'bc-client-js-'));
    dataDirs.add(dataDir);
    // The port of a killed server can stay busy for a moment; try again briefly.
    const deadline = Date.now() + 5000;
    for (;;) {
      try {
        return await ServerProcess.spawnOnce({ ...options, dataDir });
      } catch (error) {
        if (options.port === undefined || Date.now() > deadline || !/in use/i.test(String(error))) throw error;
        await delay(100);
      }
    }
  }

  private static spawnOnce(options: ServerOptions & { dataDir: string }): Promise<ServerProcess> {
    const args = [
      'serve',
      '--listen', `127.0.0.1:${options.port ?? 0}`,
      '--data-dir', options.dataDir,
      '--jwt-secret', SECRET,
      // These tests write fast on purpose; rate limits have their own tests in tests/e2e.
      '--commands-per-second', '100000',
      '--user-commands-per-second', '100000',
    ];
    if (options.heartbeatMs !== undefined) args.push('--heartbeat-ms', String(options.heartbeatMs));
    const child = spawn(BINARY, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn', NO_COLOR: '1' },
    });
    running.add(child);
    child.once('exit', () => running.delete(child));
    let stdout = '';
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-8000);
    });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`server did not print its address within 10 s\nstdout: ${stdout}\nstderr: ${stderr}`));
      }, 10_000);
      const onData = (chunk: Buffer) => {
        stdout += chunk.toString();
        const match = /listening on http:\/\/[^:\s]+:(\d+)/.exec(stdout);
        if (match) {
          clearTimeout(timer);
          child.stdout!.off('data', onData);
          child.stdout!.resume();
          child.unref();
          (child.stdout as unknown as { unref(): void }).unref();
          (child.stderr as unknown as { unref(): void }).unref();
          resolve(new ServerProcess(child, Number(match[1]), options));
        }
      };
      child.stdout!.on('data', onData);
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`server exited (${code ?? signal}) before listening\nstdout: ${stdout}\nstderr: ${stderr}`));
      });
    });
  }

  /** Sends `signal` and waits for the process to exit (SIGKILL after 5 s). Returns the exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops this process with `signal` and starts a new one on the same port and data dir. */
  async restart(signal: NodeJS.Signals): Promise<ServerProcess> {
    await this.stop(signal);
    const options: ServerOptions = { dataDir: this.dataDir, port: this.port };
    if (this.heartbeatMs !== undefined) options.heartbeatMs = this.heartbeatMs;
    return ServerProcess.start(options);
  }

  /** Stops the process and removes its data directory. */
  async dispose(): Promise<void> {
    await this.stop('SIGKILL');
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/**
 * A TCP proxy in front of the server. `silence()` drops every byte both ways on the
 * connections open now (a dead network: no FIN, no RST), `muteReplies()` forwards the
 * client's bytes but drops the server's (a command is done but its answer is lost),
 * `cut()` closes every connection. New connections always pass.
 */
export class Proxy {
  private readonly server: NetServer;
  private readonly links = new Set<Link>();
  readonly port: number;

  private constructor(server: NetServer, port: number) {
    this.server = server;
    this.port = port;
  }

  static async start(targetPort: number): Promise<Proxy> {
    let proxy: Proxy | undefined;
    const server = createServer((client) => proxy!.accept(client, targetPort));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('proxy has no port');
    proxy = new Proxy(server, address.port);
    return proxy;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  private accept(client: Socket, targetPort: number): void {
    const upstream = connect(targetPort, '127.0.0.1');
    const link: Link = { client, upstream, silent: false, muted: false };
    this.links.add(link);
    client.on('data', (data) => {
      if (!link.silent) upstream.write(data);
    });
    upstream.on('data', (data) => {
      if (!link.silent && !link.muted) client.write(data);
    });
    const close = () => {
      this.links.delete(link);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', close);
    client.on('error', close);
    // On a dead network the client never learns that the server hung up: a silenced
    // link stays open on the client's side until `cut()` or `close()`.
    const upstreamGone = () => {
      if (link.silent) upstream.destroy();
      else close();
    };
    upstream.on('close', upstreamGone);
    upstream.on('error', upstreamGone);
  }

  silence(): void {
    for (const link of this.links) link.silent = true;
  }

  muteReplies(): void {
    for (const link of this.links) link.muted = true;
  }

  /** Closes every connection (silenced ones too). */
  cut(): void {
    for (const link of [...this.links]) {
      link.client.destroy();
      link.upstream.destroy();
    }
    this.links.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

interface Link {
  client: Socket;
  upstream: Socket;
  silent: boolean;
  muted: boolean;
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves when `predicate()` holds, checking every 5 ms; rejects after `timeoutMs`. */
export async function until(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await delay(5);
  }
}

/**
 * The next payload that `listen` hands to its listener and that matches `filter`, or a
 * rejection after `timeoutMs`. Use as `next((l) => client.on('close', l))`.
 */
export function next<T>(
  listen: (listener: (payload: T) => void) => () => void,
  filter: (payload: T) => boolean = () => true,
  timeoutMs = 5000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const off = listen((payload) => {
      if (!filter(payload)) return;
      off();
      clearTimeout(timer);
      resolve(payload);
    });
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for an event`));
    }, timeoutMs);
  });
}

/** Opens a conversation in inbox `support` for contact `contactId`, as agent `asAgent`. */
export async function openConversation(server: { httpUrl: string }, contactId: string, asAgent = 'opener'): Promise<string> {
  const response = await fetch(`${server.httpUrl}/v1/conversations`, {
    method: 'POST',
    headers: { authorization: `Bearer ${agent(asAgent)}`, 'content-type': 'application/json' },
    body: JSON.stringify({ inbox_id: 'support', contact_id: contactId, subject: 'help' }),
  });
  if (response.status !== 201) throw new Error(`open conversation: ${response.status} ${await response.text()}`);
  return ((await response.json()) as { id: string }).id;
}

export { randomUUID };

/** A WebSocket stand-in that the test drives: open it, feed it frames, close it. */
export class FakeSocket {
  static instances: FakeSocket[] = [];
  readonly url: string;
  readyState = 0;
  readonly sent: Array<Record<string, any>> = [];
  closedWith: { code?: number; reason?: string } | null = null;
  /**
   * Every handler ever assigned, kept even after the client clears it: a real socket may
   * already have queued an event for a handler, and the client must ignore it.
   */
  readonly captured: { open?: (e: any) => void; message?: (e: any) => void; close?: (e: any) => void } = {};
  private handlers: { open: ((e: any) => void) | null; message: ((e: any) => void) | null; close: ((e: any) => void) | null; error: ((e: any) => void) | null } = {
    open: null,
    message: null,
    close: null,
    error: null,
  };

  constructor(url: string) {
    this.url = url;
    FakeSocket.instances.push(this);
  }

  static reset(): void {
    FakeSocket.instances = [];
  }

  static get last(): FakeSocket {
    const socket = FakeSocket.instances[FakeSocket.instances.length - 1];
    if (socket === undefined) throw new Error('no socket was created');
    return socket;
  }

  get onopen() { return this.handlers.open; }
  set onopen(fn) { this.handlers.open = fn; if (fn) this.captured.open = fn; }
  get onmessage() { return this.handlers.message; }
  set onmessage(fn) { this.handlers.message = fn; if (fn) this.captured.message = fn; }
  get onclose() { return this.handlers.close; }
  set onclose(fn) { this.handlers.close = fn; if (fn) this.captured.close = fn; }
  get onerror() { return this.handlers.error; }
  set onerror(fn) { this.handlers.error = fn; }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(data));
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // The server's side.

  open(): void {
    this.readyState = 1;
    this.handlers.open?.({});
  }

  /** Opens and answers `hello` with `welcome`. */
  welcome(heartbeatMs = 25_000): void {
    this.open();
    this.receive({ type: 'welcome', session_id: randomUUID(), user: { id: 'alice', role: 'agent' }, heartbeat_ms: heartbeatMs });
  }

  receive(frame: object): void {
    this.handlers.message?.({ data: JSON.stringify(frame) });
  }

  /** The socket closes from the far end (or never opened, with 1006). */
  drop(code = 1006, reason = ''): void {
    this.readyState = 3;
    this.handlers.close?.({ code, reason });
  }

  /** The frames of `type` the client sent. */
  frames(type: string): Array<Record<string, any>> {
    return this.sent.filter((frame) => frame.type === type);
  }

  /** Answers the last frame of `type` that carried a `ref` with `ok` and `result`. */
  ok(type: string, result: Record<string, unknown> = {}): void {
    const frame = this.frames(type).at(-1);
    if (frame === undefined) throw new Error(`the client sent no \`${type}\``);
    this.receive({ type: 'ok', ref: frame.ref, ...result });
  }
}
