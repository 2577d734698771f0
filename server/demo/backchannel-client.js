// @backchannel/client as one ES module for the demo pages. Generated from client-js/src
// by `npm run bundle:demo` in client-js/: do not edit by hand.

// src/backoff.ts
function backoffDelay(step, minMs, maxMs, random = Math.random) {
  const exponent = Math.min(Math.max(step, 0), 31);
  const window = Math.min(maxMs, minMs * 2 ** exponent);
  return Math.min(maxMs, Math.floor(minMs + random() * window));
}
var Backoff = class {
  minMs;
  maxMs;
  stableMs;
  random;
  step = 0;
  constructor(options = {}) {
    this.minMs = options.minMs ?? 500;
    this.maxMs = Math.max(options.maxMs ?? 2e4, this.minMs);
    this.random = options.random ?? Math.random;
    this.stableMs = options.stableMs ?? 1e4;
  }
  /** How many delays were handed out since the last reset. */
  get attempts() {
    return this.step;
  }
  /** The next delay; each call grows the window until it reaches `maxMs`. */
  next() {
    const delay = backoffDelay(this.step, this.minMs, this.maxMs, this.random);
    this.step += 1;
    return delay;
  }
  reset() {
    this.step = 0;
  }
};

// src/codes.ts
var CloseCode = {
  /** The client called `disconnect()`. */
  Normal: 1e3,
  /** The server is shutting down: reconnect (to another node) and resume with `since`. */
  GoingAway: 1001,
  /** The socket was lost without a close frame (network, process killed, refused upgrade). */
  Abnormal: 1006,
  /** A frame was over the server's size limit: a bug in the client, not retried. */
  TooBig: 1009,
  /** The server is restarting: reconnect and resume. */
  Restart: 1012,
  /** No `hello` in time, or the token was refused. */
  Unauthorized: 4001,
  /** The server heard nothing from this client for two heartbeat intervals. */
  HeartbeatTimeout: 4002,
  /** This client stopped reading and its send queue overflowed on the server. */
  SlowConsumer: 4008,
  /** This user has as many sockets open on the node as it allows: retried with backoff. */
  TooManySockets: 4029,
  /** Client-side: no `welcome` within `requestTimeoutMs` of opening the socket. */
  ConnectTimeout: 3e3,
  /** Client-side: nothing heard from the server for `tolerance` heartbeat intervals. */
  NoHeartbeat: 3001,
  /** Client-side: the server sent something that is not a JSON frame. */
  BadFrame: 3002
};
var FAIL = /* @__PURE__ */ new Set([CloseCode.TooBig]);
function closeAction(code) {
  if (code === CloseCode.Unauthorized) return "refresh_token";
  if (FAIL.has(code)) return "fail";
  return "reconnect";
}
var TEMPORARY_ERROR_CODES = /* @__PURE__ */ new Set([
  "rate_limited",
  "unavailable",
  "internal"
]);
var BackchannelError = class extends Error {
  /** The server's `code` (`not_found`, `forbidden`...) or the client's own (`timeout`...). */
  code;
  /** The reply guard's unseen events, with `code: "conflict"`. */
  missed;
  /** The HTTP status, for errors from `HttpApi`. */
  status;
  /** For `send` and `note`: the `client_id`, to retry later without a duplicate. */
  clientId;
  /** The message without the `code: ` prefix `message` carries. */
  detail;
  constructor(code, message, details = {}) {
    super(`${code}: ${message}`);
    this.name = "BackchannelError";
    this.code = code;
    this.detail = message;
    if (details.missed !== void 0) this.missed = details.missed;
    if (details.status !== void 0) this.status = details.status;
    if (details.clientId !== void 0) this.clientId = details.clientId;
  }
};

// src/emitter.ts
var Emitter = class {
  listeners = {};
  /** Calls `listener` for every `event` until the returned function is called. */
  on(event, listener) {
    let set = this.listeners[event];
    if (set === void 0) {
      set = /* @__PURE__ */ new Set();
      this.listeners[event] = set;
    }
    set.add(listener);
    return () => this.off(event, listener);
  }
  /** Calls `listener` for the next `event` only. */
  once(event, listener) {
    const off = this.on(event, (payload) => {
      off();
      listener(payload);
    });
    return off;
  }
  off(event, listener) {
    this.listeners[event]?.delete(listener);
  }
  removeAllListeners() {
    this.listeners = {};
  }
  emit(event, payload) {
    const set = this.listeners[event];
    if (set === void 0 || set.size === 0) return;
    for (const listener of [...set]) {
      try {
        listener(payload);
      } catch (error) {
        setTimeout(() => {
          throw error;
        }, 0);
      }
    }
  }
};

// src/ids.ts
function newClientId(now = Date.now()) {
  const bytes = new Uint8Array(16);
  const crypto = globalThis.crypto;
  if (crypto?.getRandomValues !== void 0) {
    crypto.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  let ms = Math.max(0, Math.floor(now));
  for (let i = 5; i >= 0; i--) {
    bytes[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  bytes[6] = bytes[6] & 15 | 112;
  bytes[8] = bytes[8] & 63 | 128;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// src/subscription.ts
var MAX_BUFFERED_EVENTS = 1e4;
var Subscription = class extends Emitter {
  conversationId;
  _state = "subscribing";
  _lastSeq;
  _head = 0;
  _truncated = false;
  _replayFrom;
  host;
  /** Replayed events held until the `ok`; null when no subscribe is in flight. */
  buffer = null;
  /** Increases with every subscribe sent; answers to an older one are ignored. */
  generation = 0;
  wentLive = false;
  failures = 0;
  retryTimer;
  /** Made by `Client.subscribe`, not by hand. */
  constructor(host, conversationId, since) {
    super();
    this.host = host;
    this.conversationId = conversationId;
    this._lastSeq = since;
  }
  get state() {
    return this._state;
  }
  /** The last `seq` delivered (or the `since` it started from). */
  get lastSeq() {
    return this._lastSeq;
  }
  /** The stream's head when the subscription last went live. */
  get head() {
    return this._head;
  }
  /** Whether the last replay was cut to the newest events. */
  get truncated() {
    return this._truncated;
  }
  /** With `truncated`: the first replayed `seq`; the events before it are to be paged. */
  get replayFrom() {
    return this._replayFrom;
  }
  /** Stops following the conversation. The subscription cannot be used again. */
  unsubscribe() {
    if (this._state === "unsubscribed") return;
    this.stop();
    this.host.forget(this);
    this.host.sendUnsubscribe(this.conversationId);
  }
  /** Resolves when subscribed; rejects if the subscription ends or `timeoutMs` passes. */
  ready(timeoutMs = this.host.requestTimeoutMs) {
    if (this._state === "subscribed") return Promise.resolve();
    if (this._state === "unsubscribed") {
      return Promise.reject(new BackchannelError("disconnected", "the subscription has ended"));
    }
    return new Promise((resolve, reject) => {
      let lastError;
      const offError = this.on("error", (error) => {
        lastError = error;
      });
      const offState = this.on("state", ({ newState }) => {
        if (newState === "subscribed") {
          done();
          resolve();
        } else if (newState === "unsubscribed") {
          done();
          reject(lastError ?? new BackchannelError("disconnected", "the subscription has ended"));
        }
      });
      const timer = setTimeout(() => {
        done();
        reject(new BackchannelError("timeout", `not subscribed to ${this.conversationId} within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        offError();
        offState();
      };
    });
  }
  /** @internal The connection is up: subscribe from the last `seq` held. */
  _start() {
    if (this._state === "unsubscribed") return;
    clearTimeout(this.retryTimer);
    this.retryTimer = void 0;
    const since = this._lastSeq;
    const pending = this.host.sendSubscribe(this.conversationId, since);
    if (pending === null) return;
    const generation = ++this.generation;
    this.buffer = [];
    this.setState("subscribing");
    pending.then(
      (result) => {
        if (generation === this.generation) this.onSubscribed(result, since);
      },
      (error) => {
        if (generation === this.generation) this.onSubscribeError(error);
      }
    );
  }
  /** @internal A new connection: subscribe unless a subscribe is already in flight on it. */
  _resume() {
    if (this.buffer === null) this._start();
  }
  /** @internal The connection is gone: resubscribe when it is back. */
  _suspend() {
    if (this._state === "unsubscribed") return;
    this.generation += 1;
    this.buffer = null;
    clearTimeout(this.retryTimer);
    this.retryTimer = void 0;
    this.setState("subscribing");
  }
  /** @internal An `event` frame for this conversation. */
  _event(frame) {
    if (this._state === "unsubscribed") return;
    if (this.buffer !== null) {
      if (this.buffer.length >= MAX_BUFFERED_EVENTS) {
        this.host.protocolError(`over ${MAX_BUFFERED_EVENTS} events for ${this.conversationId} before its subscribe was answered`);
        return;
      }
      this.buffer.push(frame);
      return;
    }
    if (this._state !== "subscribed") return;
    if (frame.seq <= this._lastSeq) return;
    if (frame.seq > this._lastSeq + 1) {
      this._start();
      return;
    }
    this.deliver(frame);
  }
  /** @internal */
  _typing(frame) {
    if (this._state !== "unsubscribed") this.emit("typing", frame);
  }
  /** @internal */
  _presence(frame) {
    if (this._state !== "unsubscribed") this.emit("presence", frame);
  }
  /** @internal The client is going away for good. */
  _end(error) {
    if (this._state === "unsubscribed") return;
    if (error !== void 0) this.emit("error", error);
    this.stop();
  }
  onSubscribed(result, since) {
    const replayed = (this.buffer ?? []).sort((a, b) => a.seq - b.seq);
    this.buffer = null;
    this.failures = 0;
    const reset = result.reset === true;
    if (reset) {
      const droppedSeq = this._lastSeq;
      this._lastSeq = 0;
      this.emit("reset", { conversationId: this.conversationId, droppedSeq, head: result.head });
    }
    for (const frame of replayed) {
      if (frame.seq > this._lastSeq) this.deliver(frame);
    }
    this._head = result.head;
    this._truncated = result.truncated === true;
    this._replayFrom = result.replay_from;
    const resumed = this.wentLive;
    this.wentLive = true;
    this.setState("subscribed");
    const context = {
      conversationId: this.conversationId,
      since,
      head: result.head,
      resumed,
      truncated: this._truncated,
      reset
    };
    if (result.replay_from !== void 0) context.replayFrom = result.replay_from;
    this.emit("subscribed", context);
  }
  onSubscribeError(error) {
    this.buffer = null;
    if (error.code === "disconnected") return;
    this.emit("error", error);
    if (error.code === "timeout" || TEMPORARY_ERROR_CODES.has(error.code)) {
      const delay = this.host.retryDelay(this.failures++);
      this.retryTimer = setTimeout(() => this._start(), delay);
      return;
    }
    this.stop();
    this.host.forget(this);
  }
  deliver(frame) {
    this._lastSeq = frame.seq;
    this.emit("event", frame);
    this.host.deliver(frame);
  }
  stop() {
    this.generation += 1;
    this.buffer = null;
    clearTimeout(this.retryTimer);
    this.retryTimer = void 0;
    this.setState("unsubscribed");
  }
  setState(newState) {
    const oldState = this._state;
    if (oldState === newState) return;
    this._state = newState;
    this.emit("state", { newState, oldState });
  }
};

// src/transport.ts
var OPEN = 1;
var Transport = class {
  /** Increases with every transport the client creates. */
  id;
  socket;
  handlers;
  constructor(id, url, WebSocket, handlers) {
    this.id = id;
    this.handlers = handlers;
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => this.handlers?.open(this);
    socket.onmessage = (event) => {
      if (typeof event.data === "string") {
        this.handlers?.message(this, event.data);
      } else {
        this.fail(3002, "binary frame from the server");
      }
    };
    socket.onerror = () => {
    };
    socket.onclose = (event) => {
      const handlers2 = this.handlers;
      this.detach();
      handlers2?.close(this, event.code ?? 1006, event.reason ?? "");
    };
  }
  /** Whether the socket is open and this transport still current. */
  get isOpen() {
    return this.handlers !== null && this.socket?.readyState === OPEN;
  }
  /** Sends one text frame; false if the socket is not open (the frame is not sent). */
  send(text) {
    if (!this.isOpen) return false;
    try {
      this.socket.send(text);
      return true;
    } catch {
      return false;
    }
  }
  /**
   * Closes the socket and reports `close` with `code` at once, without waiting for the
   * socket to finish closing (a dead peer never answers the close handshake).
   */
  fail(code, reason) {
    const handlers = this.handlers;
    if (handlers === null) return;
    this.abandon(code, reason);
    handlers.close(this, code, reason);
  }
  /** Closes the socket; from now on nothing it does is reported. */
  abandon(code = 1e3, reason = "") {
    const socket = this.socket;
    this.detach();
    if (socket === null) return;
    try {
      socket.close(code === 1e3 || code >= 3e3 && code <= 4999 ? code : 1e3, reason);
    } catch {
    }
  }
  detach() {
    this.handlers = null;
    const socket = this.socket;
    if (socket === null) return;
    this.socket = null;
    socket.onopen = null;
    socket.onmessage = null;
    socket.onclose = null;
    socket.onerror = () => {
    };
  }
};

// src/client.ts
var MAX_FRAME_BYTES = 64 * 1024;
var Client = class extends Emitter {
  options;
  requestTimeoutMs;
  WebSocket;
  backoff;
  _state = "disconnected";
  _session = null;
  transport = null;
  transportSeq = 0;
  nextRef = 1;
  pending = /* @__PURE__ */ new Map();
  subscriptions = /* @__PURE__ */ new Map();
  token;
  /** Set after a refused token was replaced; cleared by `welcome`. */
  tokenRefreshed = false;
  /** Why the client last ended in `disconnected` on its own (not by `disconnect()`). */
  failure = null;
  /** The `error` frame that came before a close (why a token was refused). */
  closeError = null;
  reconnectTimer;
  welcomeTimer;
  /** Resets the backoff once a session has stayed up for `backoff.stableMs`. */
  stableTimer;
  heartbeatTimer;
  lastHeard = 0;
  /** Increases with every connection attempt, so a late token cannot open a stale one. */
  attemptSeq = 0;
  subscriptionHost;
  constructor(options) {
    super();
    if (options.token === void 0 && options.getToken === void 0) {
      throw new TypeError("Client needs `token` or `getToken`");
    }
    const WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (WebSocket === void 0) {
      throw new TypeError("no global WebSocket: pass one as `WebSocket` (in Node: the `ws` package)");
    }
    this.options = options;
    this.WebSocket = WebSocket;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 1e4;
    this.backoff = new Backoff(options.backoff);
    this.token = options.token ?? null;
    const backoff = this.backoff;
    const random = options.backoff?.random;
    this.subscriptionHost = {
      requestTimeoutMs: this.requestTimeoutMs,
      sendSubscribe: (conversationId, since) => {
        if (this._state !== "connected") return null;
        return this.enqueue(
          { type: "subscribe", conversation_id: conversationId, since },
          { retry: false, timeoutMs: this.requestTimeoutMs }
        );
      },
      sendUnsubscribe: (conversationId) => {
        this.transport?.send(JSON.stringify({ type: "unsubscribe", conversation_id: conversationId }));
      },
      deliver: (frame) => this.emit("event", frame),
      forget: (subscription) => {
        if (this.subscriptions.get(subscription.conversationId) === subscription) {
          this.subscriptions.delete(subscription.conversationId);
        }
      },
      retryDelay: (attempt) => backoffDelay(attempt, backoff.minMs, backoff.maxMs, random),
      protocolError: (message) => this.transport?.fail(CloseCode.BadFrame, message)
    };
  }
  get state() {
    return this._state;
  }
  /** The current session's `welcome` (user, `session_id`, `heartbeat_ms`), if connected. */
  get session() {
    return this._session;
  }
  /** Starts connecting (and reconnecting) until `disconnect()`. */
  connect() {
    if (this._state !== "disconnected") return;
    this.failure = null;
    this.tokenRefreshed = false;
    this.backoff.reset();
    this.setState("connecting");
    void this.attempt();
  }
  /**
   * Closes the socket and stops reconnecting. Commands waiting for an answer are rejected
   * with `disconnected`; subscriptions are kept and resume on the next `connect()`.
   */
  disconnect() {
    this.shutdown("disconnected", "disconnect() was called", CloseCode.Normal, false);
  }
  /** Resolves when connected; rejects when the client ends in `disconnected` or on timeout. */
  ready(timeoutMs = this.requestTimeoutMs) {
    if (this._state === "connected" && this._session !== null) return Promise.resolve(this._session);
    if (this._state === "disconnected") {
      return Promise.reject(this.failure ?? new BackchannelError("disconnected", "the client is not connecting; call connect()"));
    }
    return new Promise((resolve, reject) => {
      let lastError;
      const offError = this.on("error", (error) => {
        lastError = error;
      });
      const offConnected = this.on("connected", (welcome) => {
        done();
        resolve(welcome);
      });
      const offState = this.on("state", ({ newState }) => {
        if (newState === "disconnected") {
          done();
          reject(lastError ?? new BackchannelError("disconnected", "the client was disconnected"));
        }
      });
      const timer = setTimeout(() => {
        done();
        reject(new BackchannelError("timeout", `not connected within ${timeoutMs} ms`));
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
  subscribe(conversationId, options = {}) {
    const existing = this.subscriptions.get(conversationId);
    if (existing !== void 0) return existing;
    const subscription = new Subscription(this.subscriptionHost, conversationId, options.since ?? 0);
    subscription.on("reset", (context) => this.emit("reset", context));
    this.subscriptions.set(conversationId, subscription);
    if (this._state === "connected") subscription._start();
    return subscription;
  }
  /** The subscription to a conversation, if any. */
  getSubscription(conversationId) {
    return this.subscriptions.get(conversationId);
  }
  /** A public message. Repeated after a reconnect with the same `client_id` until answered. */
  send(conversationId, body, options = {}) {
    const clientId = options.clientId ?? newClientId();
    const frame = { type: "send", conversation_id: conversationId, client_id: clientId, body };
    if (options.basedOnSeq !== void 0) frame.based_on_seq = options.basedOnSeq;
    return this.enqueue(frame, { retry: true, clientId, timeoutMs: options.timeoutMs });
  }
  /** An internal note (staff). Repeated like `send`. */
  note(conversationId, body, options = {}) {
    const clientId = options.clientId ?? newClientId();
    const frame = { type: "note", conversation_id: conversationId, client_id: clientId, body };
    if (options.noteType !== void 0) frame.note_type = options.noteType;
    if (options.audience !== void 0) frame.audience = options.audience;
    return this.enqueue(frame, { retry: true, clientId, timeoutMs: options.timeoutMs });
  }
  /**
   * A typing indicator (`public`: writing a reply; `internal`: writing a note). Not
   * answered and not queued: false if there was no connection to send it on.
   */
  typing(conversationId, audience) {
    if (this._state !== "connected" || this.transport === null) return false;
    return this.transport.send(JSON.stringify({ type: "typing", conversation_id: conversationId, audience }));
  }
  /**
   * Any command, answered as a promise: the `ok` frame's fields (without `type` and
   * `ref`), or a `BackchannelError` with the server's `code`. Sent as soon as connected;
   * not repeated if the socket is lost after it was sent.
   */
  request(frame, options = {}) {
    return this.enqueue(frame, { retry: false, timeoutMs: options.timeoutMs });
  }
  enqueue(command, options) {
    const details = options.clientId === void 0 ? {} : { clientId: options.clientId };
    if (this._state === "disconnected") {
      return Promise.reject(new BackchannelError("disconnected", "the client is disconnected; call connect()", details));
    }
    const ref = this.nextRef++;
    const frame = { ...command, ref };
    const text = JSON.stringify(frame);
    if (text.length * 3 > MAX_FRAME_BYTES && new TextEncoder().encode(text).length > MAX_FRAME_BYTES) {
      return Promise.reject(new BackchannelError("too_large", `a frame is at most ${MAX_FRAME_BYTES} bytes`, details));
    }
    const timeoutMs = options.timeoutMs ?? this.requestTimeoutMs;
    return new Promise((resolve, reject) => {
      const request = {
        frame,
        resolve,
        reject,
        retry: options.retry,
        sentOn: null,
        timer: setTimeout(() => {
          this.pending.delete(ref);
          reject(new BackchannelError("timeout", `no answer to \`${command.type}\` within ${timeoutMs} ms`, details));
        }, timeoutMs)
      };
      if (options.clientId !== void 0) request.clientId = options.clientId;
      this.pending.set(ref, request);
      if (this._state === "connected") this.write(request);
    });
  }
  write(request) {
    const transport = this.transport;
    if (transport !== null && transport.send(JSON.stringify(request.frame))) {
      request.sentOn = transport.id;
    }
  }
  settle(ref, outcome) {
    const request = this.pending.get(ref);
    if (request === void 0) return false;
    this.pending.delete(ref);
    clearTimeout(request.timer);
    if ("ok" in outcome) request.resolve(outcome.ok);
    else request.reject(outcome.error);
    return true;
  }
  /** Sends a retryable request again after a backoff delay, if it is still waiting. */
  retryLater(ref, request) {
    request.sentOn = null;
    request.rateLimited = (request.rateLimited ?? 0) + 1;
    const delay = backoffDelay(request.rateLimited - 1, 250, 2e3);
    setTimeout(() => {
      if (this.pending.get(ref) === request && request.sentOn === null && this._state === "connected") {
        this.write(request);
      }
    }, delay);
  }
  async attempt() {
    const attempt = ++this.attemptSeq;
    let token = this.token;
    if (token === null) {
      try {
        token = await withTimeout(Promise.resolve().then(() => this.options.getToken()), this.requestTimeoutMs, "getToken");
      } catch (cause) {
        if (attempt !== this.attemptSeq || this._state !== "connecting") return;
        const message = cause instanceof Error ? cause.message : String(cause);
        this.emit("error", new BackchannelError("unauthorized", `getToken failed: ${message}`));
        this.scheduleReconnect(CloseCode.Unauthorized, "getToken failed");
        return;
      }
      if (attempt !== this.attemptSeq || this._state !== "connecting") return;
      this.token = token;
    }
    const hello = JSON.stringify({ type: "hello", token });
    let transport;
    try {
      transport = this.openTransport(hello);
    } catch (cause) {
      const message = cause instanceof Error ? cause.message : String(cause);
      this.shutdown("disconnected", `cannot open a WebSocket to ${this.options.url}: ${message}`, null, true);
      return;
    }
    this.transport = transport;
    this.closeError = null;
    clearTimeout(this.welcomeTimer);
    this.welcomeTimer = setTimeout(() => {
      transport.fail(CloseCode.ConnectTimeout, `no welcome within ${this.requestTimeoutMs} ms`);
    }, this.requestTimeoutMs);
  }
  openTransport(hello) {
    return new Transport(++this.transportSeq, this.options.url, this.WebSocket, {
      open: (t) => {
        if (t === this.transport) t.send(hello);
      },
      message: (t, text) => {
        if (t === this.transport) this.onMessage(t, text);
      },
      close: (t, code, reason) => {
        if (t === this.transport) this.onClose(code, reason);
      }
    });
  }
  onMessage(transport, text) {
    this.lastHeard = Date.now();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      transport.fail(CloseCode.BadFrame, "a frame from the server is not JSON");
      return;
    }
    if (typeof frame !== "object" || frame === null) {
      transport.fail(CloseCode.BadFrame, "a frame from the server is not a JSON object");
      return;
    }
    switch (frame.type) {
      case "welcome":
        this.onWelcome(transport, frame);
        return;
      case "ok": {
        const { type: _type, ref, ...result } = frame;
        this.settle(ref, { ok: result });
        return;
      }
      case "error": {
        const missed = frame.missed === void 0 ? {} : { missed: frame.missed };
        if (frame.ref !== void 0) {
          const request = this.pending.get(frame.ref);
          if (request === void 0) return;
          if (request.retry && frame.code === "rate_limited") {
            this.retryLater(frame.ref, request);
            return;
          }
          this.settle(frame.ref, { error: new BackchannelError(frame.code, frame.message, { ...missed, ...idOf(request) }) });
          return;
        }
        const error = new BackchannelError(frame.code, frame.message, missed);
        if (this._state !== "connected" || frame.code === "unauthorized") this.closeError = error;
        else this.emit("error", error);
        return;
      }
      case "event":
        this.subscriptions.get(frame.conversation_id)?._event(frame);
        return;
      case "typing":
        this.subscriptions.get(frame.conversation_id)?._typing(frame);
        this.emit("typing", frame);
        return;
      case "presence":
        this.subscriptions.get(frame.conversation_id)?._presence(frame);
        this.emit("presence", frame);
        return;
      case "notification":
        this.emit("notification", frame);
        return;
      case "agents":
        this.emit("agents", frame);
        return;
      case "agent_presence":
        this.emit("agentPresence", frame);
        return;
      default:
        return;
    }
  }
  onWelcome(transport, welcome) {
    clearTimeout(this.welcomeTimer);
    this._session = welcome;
    clearTimeout(this.stableTimer);
    this.stableTimer = setTimeout(() => this.backoff.reset(), this.backoff.stableMs);
    this.tokenRefreshed = false;
    this.startHeartbeat(transport, welcome.heartbeat_ms);
    this.setState("connected");
    this.emit("connected", welcome);
    if (this.transport !== transport || this._state !== "connected") return;
    for (const request of this.pending.values()) {
      if (request.sentOn === null) this.write(request);
    }
    for (const subscription of this.subscriptions.values()) subscription._resume();
  }
  startHeartbeat(transport, serverMs) {
    clearInterval(this.heartbeatTimer);
    const intervalMs = this.options.heartbeat?.intervalMs ?? serverMs;
    const tolerance = this.options.heartbeat?.tolerance ?? 2;
    if (!(intervalMs > 0)) return;
    this.lastHeard = Date.now();
    let lastPing = 0;
    let lastCheck = Date.now();
    let wokeAt;
    const checkMs = Math.max(intervalMs / 4, 5);
    this.heartbeatTimer = setInterval(() => {
      const now = Date.now();
      const late = now - lastCheck >= intervalMs;
      lastCheck = now;
      if (wokeAt !== void 0) {
        if (this.lastHeard >= wokeAt) {
          wokeAt = void 0;
        } else if (now - wokeAt >= intervalMs) {
          transport.fail(CloseCode.NoHeartbeat, `no answer to a ping for ${now - wokeAt} ms`);
          return;
        } else if (!late) {
          return;
        }
      }
      if (late) {
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
  onClose(code, reason) {
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
        request.reject(new BackchannelError("disconnected", `the connection was lost (close ${code}) before \`${String(request.frame.type)}\` was answered`));
      }
    }
    for (const subscription of this.subscriptions.values()) subscription._suspend();
    const action = closeAction(code);
    if (action === "refresh_token" && this.options.getToken !== void 0 && !this.tokenRefreshed) {
      this.tokenRefreshed = true;
      this.token = null;
      this.emit("close", { code, reason, action, delayMs: 0, attempt: this.backoff.attempts + 1 });
      this.setState("connecting");
      void this.attempt();
      return;
    }
    if (action === "reconnect") {
      this.scheduleReconnect(code, reason);
      return;
    }
    this.emit("close", { code, reason, action: "fail", attempt: this.backoff.attempts + 1 });
    if (code === CloseCode.Unauthorized) {
      this.shutdown("unauthorized", this.closeError?.detail ?? "the server refused the token (close 4001)", null, true);
    } else {
      this.shutdown("disconnected", `the server closed the connection with ${code}${reason ? `: ${reason}` : ""}`, null, true);
    }
  }
  scheduleReconnect(code, reason) {
    const delayMs = this.backoff.next();
    this.emit("close", { code, reason, action: "reconnect", delayMs, attempt: this.backoff.attempts });
    if (this._state === "disconnected") return;
    this.setState("connecting");
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = void 0;
      if (this._state === "connecting") void this.attempt();
    }, delayMs);
  }
  /**
   * Ends everything: the socket (closed with `closeCode`, reported as a `close` event, if
   * given), the timers, the commands waiting for an answer (rejected with `code`).
   * `report` also emits the failure as an `error` event.
   */
  shutdown(code, message, closeCode, report) {
    this.attemptSeq += 1;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = void 0;
    this.stopTimers();
    const transport = this.transport;
    this.transport = null;
    this._session = null;
    if (transport !== null && closeCode !== null) {
      transport.abandon(closeCode, message);
      this.emit("close", { code: closeCode, reason: message, action: "fail", attempt: this.backoff.attempts });
    }
    for (const [ref, request] of this.pending) {
      this.pending.delete(ref);
      clearTimeout(request.timer);
      request.reject(new BackchannelError(code, message, idOf(request)));
    }
    for (const subscription of this.subscriptions.values()) subscription._suspend();
    if (report) {
      this.failure = new BackchannelError(code, message);
      this.emit("error", this.failure);
    }
    this.setState("disconnected");
  }
  stopTimers() {
    clearTimeout(this.welcomeTimer);
    this.welcomeTimer = void 0;
    clearTimeout(this.stableTimer);
    this.stableTimer = void 0;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = void 0;
  }
  setState(newState) {
    const oldState = this._state;
    if (oldState === newState) return;
    this._state = newState;
    this.emit("state", { newState, oldState });
  }
};
function withTimeout(promise, ms, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error) => {
        clearTimeout(timer);
        reject(error);
      }
    );
  });
}
function idOf(request) {
  return request.clientId === void 0 ? {} : { clientId: request.clientId };
}

// src/http.ts
function httpBaseFromWsUrl(wsUrl) {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  return url.origin;
}
var MAX_HISTORY_PAGE = 1e3;
var HttpApi = class {
  baseUrl;
  options;
  fetch;
  constructor(options) {
    if (options.token === void 0 && options.getToken === void 0) {
      throw new TypeError("HttpApi needs `token` or `getToken`");
    }
    const globalFetch = globalThis.fetch;
    const fetch = options.fetch ?? (globalFetch === void 0 ? void 0 : (url, init) => globalFetch.call(globalThis, url, init));
    if (fetch === void 0) throw new TypeError("no global fetch: pass one as `fetch`");
    this.options = options;
    this.fetch = fetch;
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
  }
  /** `GET /v1/conversations/{id}/events?after=&limit=` (limit: server default 100, max 1000). */
  history(conversationId, options = {}) {
    const query = new URLSearchParams();
    if (options.after !== void 0) query.set("after", String(options.after));
    if (options.limit !== void 0) query.set("limit", String(options.limit));
    const search = query.toString();
    const suffix = search === "" ? "" : `?${search}`;
    return this.call("GET", `/v1/conversations/${encodeURIComponent(conversationId)}/events${suffix}`);
  }
  /**
   * Every event with `after < seq < before` (all after `after` if `before` is absent),
   * page by page: what a truncated replay left out is `historyRange(id, since, replayFrom)`.
   */
  async historyRange(conversationId, after, before, pageSize = 1e3) {
    pageSize = Math.min(Math.max(1, Math.floor(pageSize)), MAX_HISTORY_PAGE);
    const out = [];
    let cursor = after;
    for (; ; ) {
      const page = await this.history(conversationId, { after: cursor, limit: pageSize });
      for (const entry of page.events) {
        if (before !== void 0 && entry.seq >= before) return out;
        out.push(entry);
        cursor = entry.seq;
      }
      if (page.events.length < pageSize || cursor >= page.head) return out;
    }
  }
  /** `POST /v1/conversations`: 201 with the conversation in the caller's view. */
  openConversation(body) {
    return this.call("POST", "/v1/conversations", body);
  }
  /** `GET /v1/conversations/{id}`. */
  conversation(conversationId) {
    return this.call("GET", `/v1/conversations/${encodeURIComponent(conversationId)}`);
  }
  /** Any call: the JSON body, or a `BackchannelError` with the server's `code` and `status`. */
  async call(method, path, body) {
    const token = this.options.token ?? await this.options.getToken();
    const headers = { authorization: `Bearer ${token}`, accept: "application/json" };
    const init = { method, headers };
    if (body !== void 0) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await this.fetch(`${this.baseUrl}${path}`, init);
    const text = await response.text();
    let json;
    try {
      json = text === "" ? void 0 : JSON.parse(text);
    } catch {
      throw new BackchannelError(response.ok ? "bad_response" : statusCode(response.status), `${method} ${path}: ${response.status} ${text.slice(0, 200)}`, { status: response.status });
    }
    if (!response.ok) {
      const detail = json?.error;
      const details = detail?.missed === void 0 ? { status: response.status } : { status: response.status, missed: detail.missed };
      throw new BackchannelError(detail?.code ?? statusCode(response.status), detail?.message ?? `${method} ${path}: HTTP ${response.status}`, details);
    }
    return json;
  }
};
function statusCode(status) {
  switch (status) {
    case 400:
      return "bad_request";
    case 401:
      return "unauthorized";
    case 403:
      return "forbidden";
    case 404:
      return "not_found";
    case 409:
      return "conflict";
    case 413:
      return "too_large";
    case 429:
      return "rate_limited";
    case 503:
      return "unavailable";
    default:
      return "internal";
  }
}
export {
  BackchannelError,
  Backoff,
  Client,
  CloseCode,
  Emitter,
  HttpApi,
  Subscription,
  TEMPORARY_ERROR_CODES,
  backoffDelay,
  closeAction,
  httpBaseFromWsUrl,
  newClientId
};
