/**
 * The `Client`: one logical connection to a Backchannel server that survives any number
 * of sockets.
 *
 * States: `disconnected` → `connect()` → `connecting` → (`welcome`) → `connected`; a lost
 * socket goes back to `connecting` and retries after a full-jitter backoff delay (reset by
 * every `welcome`); `disconnect()`, a refused token or a close code that must not be
 * retried ends in `disconnected`. Every change is one `state` event `{newState, oldState}`.
 *
 * On every `welcome` the client resubscribes each conversation with `since` = the last
 * `seq` it delivered, then re-sends the `send` and `note` commands still waiting for an
 * answer, with the same `client_id`: the server stores each at most once and answers a
 * repeat with `duplicate: true`, and the promise resolves once. Other commands are not
 * repeated: a socket lost after one was sent rejects it with `disconnected`.
 *
 * The server pings at the WebSocket level, which a browser script never sees, so the
 * client sends its own `ping` when it has heard nothing for a heartbeat interval, and
 * gives a socket up (close code 3001) when nothing came for `tolerance` intervals.
 */

import { Backoff, backoffDelay, type BackoffOptions } from './backoff.js';
import { BackchannelError, CloseCode, closeAction, type CloseAction } from './codes.js';
import { Emitter } from './emitter.js';
import { newClientId } from './ids.js';
import { Subscription, type ResetContext, type SubscriptionHost } from './subscription.js';
import { Transport, type WebSocketConstructor } from './transport.js';
import type {
  AgentPresenceFrame,
  AgentsFrame,
  AppendResult,
  CommandFrame,
  EventFrame,
  NoteAudience,
  NoteType,
  NotificationFrame,
  PresenceFrame,
  Ref,
  ServerFrame,
  SubscribeResult,
  TypingAudience,
  TypingFrame,
  WelcomeFrame,
} from './types.js';

export type ClientState = 'disconnected' | 'connecting' | 'connected';

export interface StateChange {
  newState: ClientState;
  oldState: ClientState;
}

/** A socket that closed, and what the client does next. */
export interface CloseInfo {
  code: number;
  reason: string;
  action: CloseAction;
  /** With `reconnect`: the delay before the next attempt. */
  delayMs?: number;
  /** Failed attempts since the last `welcome`, this one included. */
  attempt: number;
}

export interface ClientEvents {
  state: StateChange;
  /** A `welcome`: the session is up (again). */
  connected: WelcomeFrame;
  /** A socket closed (or was given up). */
  close: CloseInfo;
  /**
   * A conversation event of a subscription, each `seq` exactly once per stream: after a
   * `reset` of that conversation the stream starts again at 1.
   */
  event: EventFrame;
  /**
   * A subscription's stream restarted (the server's history is not the one the client
   * held, e.g. a restored backup): drop what was shown for that conversation.
   */
  reset: ResetContext;
  typing: TypingFrame;
  notification: NotificationFrame;
  presence: PresenceFrame;
  agents: AgentsFrame;
  agentPresence: AgentPresenceFrame;
  /** An `error` frame without a `ref`, a token that could not be had, a final failure. */
  error: BackchannelError;
}

export interface ClientOptions {
  /** The WebSocket URL, e.g. `wss://chat.example.com/v1/ws`. */
  url: string;
  /** A fixed token. */
  token?: string;
  /**
   * Where tokens come from: called before the first connection, and once more when the
   * server refuses the token (close 4001); a second refusal in a row ends in
   * `disconnected`.
   */
  getToken?: () => string | Promise<string>;
  /** The WebSocket constructor; default the global one (Node 20 needs the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /** How long a command waits for its answer, and a socket for its `welcome`. Default 10 s. */
  requestTimeoutMs?: number;
  /** Reconnect delays. Default 500 ms to 20 s. */
  backoff?: BackoffOptions;
  heartbeat?: {
    /** Default: the server's `heartbeat_ms` from `welcome`. 0 turns the check off. */
    intervalMs?: number;
    /** Intervals of silence after which the socket is given up. Default 2. */
    tolerance?: number;
  };
}

export interface RequestOptions {
  /** Default: the client's `requestTimeoutMs`. */
  timeoutMs?: number;
}

export interface SendOptions extends RequestOptions {
  /** The idempotency key; default a new random id. Reuse it to retry a failed call. */
  clientId?: string;
  /** The reply guard: the last `seq` you have seen (refused with `conflict` if stale). */
  basedOnSeq?: number;
}

export interface NoteOptions extends RequestOptions {
  clientId?: string;
  noteType?: NoteType;
  audience?: NoteAudience;
}

interface PendingRequest {
  frame: CommandFrame & { ref: Ref };
  resolve(result: any): void;
  reject(error: BackchannelError): void;
  timer: ReturnType<typeof setTimeout>;
  /** Safe to send again on a new socket (`send` and `note`, idempotent by `client_id`). */
  retry: boolean;
  /** The transport it was last written to, or null while waiting for one. */
  sentOn: number | null;
  clientId?: string;
  /** How many times the server answered `rate_limited`; the next retry waits longer. */
  rateLimited?: number;
}

/** The server closes a socket whose frame is over 64 KiB; better to fail the one call. */
const MAX_FRAME_BYTES = 64 * 1024;

export class Client extends Emitter<ClientEvents> {
  private readonly options: ClientOptions;
  readonly requestTimeoutMs: number;
  private readonly WebSocket: WebSocketConstructor;
  private readonly backoff: Backoff;
  private _state: ClientState = 'disconnected';
  private _session: WelcomeFrame | null = null;
  private transport: Transport | null = null;
  private transportSeq = 0;
  private nextRef = 1;
  private readonly pending = new Map<Ref, PendingRequest>();
  private readonly subscriptions = new Map<string, Subscription>();
  private token: string | null;
  /** Set after a refused token was replaced; cleared by `welcome`. */
  private tokenRefreshed = false;
  /** Why the client last ended in `disconnected` on its own (not by `disconnect()`). */
  private failure: BackchannelError | null = null;
  /** The `error` frame that came before a close (why a token was refused). */
  private closeError: BackchannelError | null = null;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  private welcomeTimer: ReturnType<typeof setTimeout> | undefined;
  /** Resets the backoff once a session has stayed up for `backoff.stableMs`. */
  private stableTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private lastHeard = 0;
  /** Increases with every connection attempt, so a late token cannot open a stale one. */
  private attemptSeq = 0;
  private readonly subscriptionHost: SubscriptionHost;

  constructor(options: ClientOptions) {
    super();
    if (options.token === undefined && options.getToken === undefined) {
      throw new TypeError('Client needs `token` or `getToken`');
    }
    const WebSocket = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (WebSocket === undefined) {
      throw new TypeError('no global WebSocket: pass one as `WebSocket` (in Node: the `ws` package)');
    }
    this.options = options;
    this.WebSocket = WebSocket;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.backoff = new Backoff(options.backoff);
    this.token = options.token ?? null;
    const backoff = this.backoff;
    const random = options.backoff?.random;
    this.subscriptionHost = {
      requestTimeoutMs: this.requestTimeoutMs,
      sendSubscribe: (conversationId, since) => {
        if (this._state !== 'connected') return null;
        return this.enqueue<SubscribeResult>(
          { type: 'subscribe', conversation_id: conversationId, since },
          { retry: false, timeoutMs: this.requestTimeoutMs },
        );
      },
      sendUnsubscribe: (conversationId) => {
        this.transport?.send(JSON.stringify({ type: 'unsubscribe', conversation_id: conversationId }));
      },
      deliver: (frame) => this.emit('event', frame),
      forget: (subscription) => {
        if (this.subscriptions.get(subscription.conversationId) === subscription) {
          this.subscriptions.delete(subscription.conversationId);
        }
      },
      retryDelay: (attempt) => backoffDelay(attempt, backoff.minMs, backoff.maxMs, random),
      protocolError: (message) => this.transport?.fail(CloseCode.BadFrame, message),
    };
  }

  get state(): ClientState {
    return this._state;
  }

  /** The current session's `welcome` (user, `session_id`, `heartbeat_ms`), if connected. */
  get session(): WelcomeFrame | null {
    return this._session;
  }

  /** Starts connecting (and reconnecting) until `disconnect()`. */
  connect(): void {
    if (this._state !== 'disconnected') return;
    this.failure = null;
    this.tokenRefreshed = false;
    this.backoff.reset();
    this.setState('connecting');
    void this.attempt();
  }

  /**
   * Closes the socket and stops reconnecting. Commands waiting for an answer are rejected
   * with `disconnected`; subscriptions are kept and resume on the next `connect()`.
   */
  disconnect(): void {
    this.shutdown('disconnected', 'disconnect() was called', CloseCode.Normal, false);
  }

  /** Resolves when connected; rejects when the client ends in `disconnected` or on timeout. */
  ready(timeoutMs: number = this.requestTimeoutMs): Promise<WelcomeFrame> {
    if (this._state === 'connected' && this._session !== null) return Promise.resolve(this._session);
    if (this._state === 'disconnected') {
      return Promise.reject(this.failure ?? new BackchannelError('disconnected', 'the client is not connecting; call connect()'));
    }
    return new Promise<WelcomeFrame>((resolve, reject) => {
      let lastError: BackchannelError | undefined;
      const offError = this.on('error', (error) => {
        lastError = error;
      });
      const offConnected = this.on('connected', (welcome) => {
        done();
        resolve(welcome);
      });
      const offState = this.on('state', ({ newState }) => {
        if (newState === 'disconnected') {
          done();
          reject(lastError ?? new BackchannelError('disconnected', 'the client was disconnected'));
        }
      });
      const timer = setTimeout(() => {
        done();
        reject(new BackchannelError('timeout', `not connected within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        offError();
        offConnected();
        offState();
      };
    });
  }

  /**
   * Follows a conversation: replays what came after `since` (default 0: everything),
   * then delivers every new event once. Subscribing to a conversation already followed
   * returns the same subscription.
   */
  subscribe(conversationId: string, options: { since?: number } = {}): Subscription {
    const existing = this.subscriptions.get(conversationId);
    if (existing !== undefined) return existing;
    const subscription = new Subscription(this.subscriptionHost, conversationId, options.since ?? 0);
    subscription.on('reset', (context) => this.emit('reset', context));
    this.subscriptions.set(conversationId, subscription);
    if (this._state === 'connected') subscription._start();
    return subscription;
  }

  /** The subscription to a conversation, if any. */
  getSubscription(conversationId: string): Subscription | undefined {
    return this.subscriptions.get(conversationId);
  }

  /** A public message. Repeated after a reconnect with the same `client_id` until answered. */
  send(conversationId: string, body: string, options: SendOptions = {}): Promise<AppendResult> {
    const clientId = options.clientId ?? newClientId();
    const frame: CommandFrame = { type: 'send', conversation_id: conversationId, client_id: clientId, body };
    if (options.basedOnSeq !== undefined) frame.based_on_seq = options.basedOnSeq;
    return this.enqueue<AppendResult>(frame, { retry: true, clientId, timeoutMs: options.timeoutMs });
  }

  /** An internal note (staff). Repeated like `send`. */
  note(conversationId: string, body: string, options: NoteOptions = {}): Promise<AppendResult> {
    const clientId = options.clientId ?? newClientId();
    const frame: CommandFrame = { type: 'note', conversation_id: conversationId, client_id: clientId, body };
    if (options.noteType !== undefined) frame.note_type = options.noteType;
    if (options.audience !== undefined) frame.audience = options.audience;
    return this.enqueue<AppendResult>(frame, { retry: true, clientId, timeoutMs: options.timeoutMs });
  }

  /**
   * A typing indicator (`public`: writing a reply; `internal`: writing a note). Not
   * answered and not queued: false if there was no connection to send it on.
   */
  typing(conversationId: string, audience: TypingAudience): boolean {
    if (this._state !== 'connected' || this.transport === null) return false;
    return this.transport.send(JSON.stringify({ type: 'typing', conversation_id: conversationId, audience }));
  }

  /**
   * Any command, answered as a promise: the `ok` frame's fields (without `type` and
   * `ref`), or a `BackchannelError` with the server's `code`. Sent as soon as connected;
   * not repeated if the socket is lost after it was sent.
   */
  request<T = Record<string, unknown>>(frame: CommandFrame, options: RequestOptions = {}): Promise<T> {
    return this.enqueue<T>(frame, { retry: false, timeoutMs: options.timeoutMs });
  }

  private enqueue<T>(
    command: CommandFrame,
    options: { retry: boolean; clientId?: string; timeoutMs?: number | undefined },
  ): Promise<T> {
    const details = options.clientId === undefined ? {} : { clientId: options.clientId };
    if (this._state === 'disconnected') {
      return Promise.reject(new BackchannelError('disconnected', 'the client is disconnected; call connect()', details));
    }
    const ref = this.nextRef++;
    const frame = { ...command, ref };
    const text = JSON.stringify(frame);
    if (text.length * 3 > MAX_FRAME_BYTES && new TextEncoder().encode(text).length > MAX_FRAME_BYTES) {
      return Promise.reject(new BackchannelError('too_large', `a frame is at most ${MAX_FRAME_BYTES} bytes`, details));
    }
    const timeoutMs = options.timeoutMs ?? this.requestTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const request: PendingRequest = {
        frame,
        resolve,
        reject,
        retry: options.retry,
        sentOn: null,
        timer: setTimeout(() => {
          this.pending.delete(ref);
          reject(new BackchannelError('timeout', `no answer to \`${command.type}\` within ${timeoutMs} ms`, details));
        }, timeoutMs),
      };
      if (options.clientId !== undefined) request.clientId = options.clientId;
      this.pending.set(ref, request);
      if (this._state === 'connected') this.write(request);
    });
  }

  private write(request: PendingRequest): void {
    const transport = this.transport;
    if (transport !== null && transport.send(JSON.stringify(request.frame))) {
      request.sentOn = transport.id;
    }
  }

  private settle(ref: Ref, outcome: { ok: Record<string, unknown> } | { error: BackchannelError }): boolean {
    const request = this.pending.get(ref);
    if (request === undefined) return false;
    this.pending.delete(ref);
    clearTimeout(request.timer);
    if ('ok' in outcome) request.resolve(outcome.ok);
    else request.reject(outcome.error);
    return true;
  }

  /** Sends a retryable request again after a backoff delay, if it is still waiting. */
  private retryLater(ref: Ref, request: PendingRequest): void {
    request.sentOn = null;
    request.rateLimited = (request.rateLimited ?? 0) + 1;
    const delay = backoffDelay(request.rateLimited - 1, 250, 2_000);
    setTimeout(() => {
      if (this.pending.get(ref) === request && request.sentOn === null && this._state === 'connected') {
        this.write(request);
      }
    }, delay);
  }

  private async attempt(): Promise<void> {
    const attempt = ++this.attemptSeq;
    let token = this.token;
    if (token === null) {
      try {
        token = await withTimeout(Promise.resolve().then(() => this.options.getToken!()), this.requestTimeoutMs, 'getToken');
      } catch (cause) {
        if (attempt !== this.attemptSeq || this._state !== 'connecting') return;
        const message = cause instanceof Error ? cause.message : String(cause);
        this.emit('error', new BackchannelError('unauthorized', `getToken failed: ${message}`));
        this.scheduleReconnect(CloseCode.Unauthorized, 'getToken failed');
        return;
      }
      if (attempt !== this.attemptSeq || this._state !== 'connecting') return;
      this.token = token;
    }
    const hello = JSON.stringify({ type: 'hello', token });
    let transport: Transport;
    try {
      transport = this.openTransport(hello);
    } catch (cause) {
      // The WebSocket constructor refused the URL (malformed, a blocked scheme, a page's
      // security policy): no retry can fix that, so say so instead of hanging.
      const message = cause instanceof Error ? cause.message : String(cause);
      this.shutdown('disconnected', `cannot open a WebSocket to ${this.options.url}: ${message}`, null, true);
      return;
    }
    this.transport = transport;
    this.closeError = null;
    clearTimeout(this.welcomeTimer);
    this.welcomeTimer = setTimeout(() => {
      transport.fail(CloseCode.ConnectTimeout, `no welcome within ${this.requestTimeoutMs} ms`);
    }, this.requestTimeoutMs);
  }

  private openTransport(hello: string): Transport {
    return new Transport(++this.transportSeq, this.options.url, this.WebSocket, {
      open: (t) => {
        if (t === this.transport) t.send(hello);
      },
      message: (t, text) => {
        if (t === this.transport) this.onMessage(t, text);
      },
      close: (t, code, reason) => {
        if (t === this.transport) this.onClose(code, reason);
      },
    });
  }

  private onMessage(transport: Transport, text: string): void {
    this.lastHeard = Date.now();
    let frame: ServerFrame;
    try {
      frame = JSON.parse(text) as ServerFrame;
    } catch {
      transport.fail(CloseCode.BadFrame, 'a frame from the server is not JSON');
      return;
    }
    if (typeof frame !== 'object' || frame === null) {
      transport.fail(CloseCode.BadFrame, 'a frame from the server is not a JSON object');
      return;
    }
    switch (frame.type) {
      case 'welcome':
        this.onWelcome(transport, frame);
        return;
      case 'ok': {
        const { type: _type, ref, ...result } = frame;
        this.settle(ref, { ok: result });
        return;
      }
      case 'error': {
        const missed = frame.missed === undefined ? {} : { missed: frame.missed };
        if (frame.ref !== undefined) {
          // An answer to a command; one that already timed out is dropped.
          const request = this.pending.get(frame.ref);
          if (request === undefined) return;
          if (request.retry && frame.code === 'rate_limited') {
            // Not done, and safe to send again (its `client_id` makes it idempotent):
            // later, within its own deadline, as after a reconnect. A burst of
            // resubscribes after a reconnect spends the socket's rate before the sends
            // queued meanwhile go out.
            this.retryLater(frame.ref, request);
            return;
          }
          this.settle(frame.ref, { error: new BackchannelError(frame.code, frame.message, { ...missed, ...idOf(request) }) });
          return;
        }
        const error = new BackchannelError(frame.code, frame.message, missed);
        // An unprompted `unauthorized` announces the 4001 close that follows, routine when
        // a token expires on an open socket: it is that close's reason, handled there (a
        // new token, or the reason the client gives up), not an error for the app.
        if (this._state !== 'connected' || frame.code === 'unauthorized') this.closeError = error;
        else this.emit('error', error);
        return;
      }
      case 'event':
        this.subscriptions.get(frame.conversation_id)?._event(frame);
        return;
      case 'typing':
        this.subscriptions.get(frame.conversation_id)?._typing(frame);
        this.emit('typing', frame);
        return;
      case 'presence':
        this.subscriptions.get(frame.conversation_id)?._presence(frame);
        this.emit('presence', frame);
        return;
      case 'notification':
        this.emit('notification', frame);
        return;
      case 'agents':
        this.emit('agents', frame);
        return;
      case 'agent_presence':
        this.emit('agentPresence', frame);
        return;
      default:
        // `pong` and frame types newer than this client: proof of life, nothing more.
        return;
    }
  }

  private onWelcome(transport: Transport, welcome: WelcomeFrame): void {
    clearTimeout(this.welcomeTimer);
    this._session = welcome;
    // The delays start over once this session has stayed up a while, not at its
    // welcome: a server that welcomes and then drops every socket is not hammered.
    clearTimeout(this.stableTimer);
    this.stableTimer = setTimeout(() => this.backoff.reset(), this.backoff.stableMs);
    this.tokenRefreshed = false;
    this.startHeartbeat(transport, welcome.heartbeat_ms);
    this.setState('connected');
    this.emit('connected', welcome);
    if (this.transport !== transport || this._state !== 'connected') return; // a listener disconnected
    // The commands the application is waiting on go first: resubscribing many
    // conversations spends the socket's rate limit.
    for (const request of this.pending.values()) {
      if (request.sentOn === null) this.write(request);
    }
    for (const subscription of this.subscriptions.values()) subscription._resume();
  }

  private startHeartbeat(transport: Transport, serverMs: number): void {
    clearInterval(this.heartbeatTimer);
    const intervalMs = this.options.heartbeat?.intervalMs ?? serverMs;
    const tolerance = this.options.heartbeat?.tolerance ?? 2;
    if (!(intervalMs > 0)) return;
    this.lastHeard = Date.now();
    let lastPing = 0;
    let lastCheck = Date.now();
    // When a check came late and sent a ping to ask whether the link is still there.
    let wokeAt: number | undefined;
    const checkMs = Math.max(intervalMs / 4, 5);
    // Checked four times per interval: checking once per interval would let the silence
    // before a check drift up to two intervals on a healthy link (ping answered right
    // after one check, next ping only after the next), and trip the tolerance.
    this.heartbeatTimer = setInterval(() => {
      const now = Date.now();
      const late = now - lastCheck >= intervalMs;
      lastCheck = now;
      if (wokeAt !== undefined) {
        if (this.lastHeard >= wokeAt) {
          wokeAt = undefined;
        } else if (now - wokeAt >= intervalMs) {
          transport.fail(CloseCode.NoHeartbeat, `no answer to a ping for ${now - wokeAt} ms`);
          return;
        } else if (!late) {
          return;
        }
      }
      if (late) {
        // The timer itself was held back (a background tab's throttled timers, a machine
        // that slept): the silence measured is the timer's, not the server's. Ask, and
        // judge by the answer, instead of giving up a healthy socket every time.
        wokeAt ??= now;
        lastPing = now;
        transport.send('{"type":"ping"}');
        return;
      }
      const silentMs = now - this.lastHeard;
      if (silentMs >= intervalMs * tolerance) {
        transport.fail(CloseCode.NoHeartbeat, `nothing heard from the server for ${silentMs} ms`);
      } else if (silentMs >= intervalMs && now - lastPing >= intervalMs) {
        lastPing = now;
        transport.send('{"type":"ping"}');
      }
    }, checkMs);
  }

  private onClose(code: number, reason: string): void {
    this.transport = null;
    this.stopTimers();
    this._session = null;
    for (const [ref, request] of this.pending) {
      if (request.sentOn === null) continue;
      if (request.retry) {
        request.sentOn = null;
      } else {
        this.pending.delete(ref);
        clearTimeout(request.timer);
        request.reject(new BackchannelError('disconnected', `the connection was lost (close ${code}) before \`${String(request.frame.type)}\` was answered`));
      }
    }
    for (const subscription of this.subscriptions.values()) subscription._suspend();
    const action = closeAction(code);
    if (action === 'refresh_token' && this.options.getToken !== undefined && !this.tokenRefreshed) {
      this.tokenRefreshed = true;
      this.token = null;
      this.emit('close', { code, reason, action, delayMs: 0, attempt: this.backoff.attempts + 1 });
      this.setState('connecting');
      void this.attempt();
      return;
    }
    if (action === 'reconnect') {
      this.scheduleReconnect(code, reason);
      return;
    }
    this.emit('close', { code, reason, action: 'fail', attempt: this.backoff.attempts + 1 });
    if (code === CloseCode.Unauthorized) {
      this.shutdown('unauthorized', this.closeError?.detail ?? 'the server refused the token (close 4001)', null, true);
    } else {
      this.shutdown('disconnected', `the server closed the connection with ${code}${reason ? `: ${reason}` : ''}`, null, true);
    }
  }

  private scheduleReconnect(code: number, reason: string): void {
    const delayMs = this.backoff.next();
    this.emit('close', { code, reason, action: 'reconnect', delayMs, attempt: this.backoff.attempts });
    if (this._state === 'disconnected') return; // a listener disconnected
    this.setState('connecting');
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      if (this._state === 'connecting') void this.attempt();
    }, delayMs);
  }

  /**
   * Ends everything: the socket (closed with `closeCode`, reported as a `close` event, if
   * given), the timers, the commands waiting for an answer (rejected with `code`).
   * `report` also emits the failure as an `error` event.
   */
  private shutdown(code: string, message: string, closeCode: number | null, report: boolean): void {
    this.attemptSeq += 1;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    this.stopTimers();
    const transport = this.transport;
    this.transport = null;
    this._session = null;
    if (transport !== null && closeCode !== null) {
      transport.abandon(closeCode, message);
      this.emit('close', { code: closeCode, reason: message, action: 'fail', attempt: this.backoff.attempts });
    }
    for (const [ref, request] of this.pending) {
      this.pending.delete(ref);
      clearTimeout(request.timer);
      request.reject(new BackchannelError(code, message, idOf(request)));
    }
    for (const subscription of this.subscriptions.values()) subscription._suspend();
    if (report) {
      this.failure = new BackchannelError(code, message);
      this.emit('error', this.failure);
    }
    this.setState('disconnected');
  }

  private stopTimers(): void {
    clearTimeout(this.welcomeTimer);
    this.welcomeTimer = undefined;
    clearTimeout(this.stableTimer);
    this.stableTimer = undefined;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  private setState(newState: ClientState): void {
    const oldState = this._state;
    if (oldState === newState) return;
    this._state = newState;
    this.emit('state', { newState, oldState });
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

function idOf(request: PendingRequest): { clientId?: string } {
  return request.clientId === undefined ? {} : { clientId: request.clientId };
}
