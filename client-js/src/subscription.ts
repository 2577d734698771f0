/**
 * One conversation the client follows. It keeps the last `seq` delivered, so that after
 * any reconnect the client resubscribes with `since` and the application sees every event
 * once, in order: an event whose `seq` is not above the last one is dropped.
 *
 * While a `subscribe` is in flight the replayed events are held back, sorted and
 * de-duplicated, then delivered when its `ok` says what they are: with `reset: true` the
 * stream restarted (the store was restored from a backup), so the subscription emits
 * `reset` and counts again from 0; with `truncated: true` only the newest events were
 * replayed and `replayFrom` tells the application which ones to page over HTTP.
 */

import { BackchannelError, TEMPORARY_ERROR_CODES } from './codes.js';
import { Emitter } from './emitter.js';
import type { EventFrame, PresenceFrame, SubscribeResult, TypingFrame } from './types.js';

export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';

export interface SubscriptionStateChange {
  newState: SubscriptionState;
  oldState: SubscriptionState;
}

/** What a subscription learned when it went live (again). */
export interface SubscribedContext {
  conversationId: string;
  /** The `since` that was sent: events after it were replayed. */
  since: number;
  /** The last `seq` of the stream when the subscription went live. */
  head: number;
  /** Whether this was a resubscription after a reconnect (or a repair). */
  resumed: boolean;
  /**
   * Only the newest events were replayed: page `after=since` up to `replayFrom - 1` (after
   * a `reset`, from 0: `since` then named a stream that is gone).
   */
  truncated: boolean;
  replayFrom?: number;
  /** The stream restarted: a `reset` event was emitted before the replay. */
  reset: boolean;
}

export interface ResetContext {
  conversationId: string;
  /** The last `seq` held before the reset, now meaningless. */
  droppedSeq: number;
  /** The head of the restarted stream. */
  head: number;
}

export interface SubscriptionEvents {
  state: SubscriptionStateChange;
  /** A conversation event, each `seq` exactly once and in increasing order. */
  event: EventFrame;
  subscribed: SubscribedContext;
  /** Drop what you hold for this conversation: the stream starts again from 1. */
  reset: ResetContext;
  typing: TypingFrame;
  presence: PresenceFrame;
  /** A subscribe that failed; a final one (not `unavailable`-like) also unsubscribes. */
  error: BackchannelError;
}

/** What a subscription needs from its client. */
export interface SubscriptionHost {
  readonly requestTimeoutMs: number;
  /** Sends `subscribe` on the current connection, if there is one. */
  sendSubscribe(conversationId: string, since: number): Promise<SubscribeResult> | null;
  sendUnsubscribe(conversationId: string): void;
  /** Passes a delivered event on to the client's own `event` listeners. */
  deliver(frame: EventFrame): void;
  /** Removes the subscription from the client. */
  forget(subscription: Subscription): void;
  /** A delay before retrying a subscribe that failed for a temporary reason. */
  retryDelay(attempt: number): number;
  /** The server broke the protocol: drop the socket (and reconnect). */
  protocolError(message: string): void;
}

/**
 * Most events held while a `subscribe` is answered: the server replays at most 1,000
 * and live events follow; a server that streams more without answering is broken, and
 * holding them all would grow without bound.
 */
const MAX_BUFFERED_EVENTS = 10_000;

export class Subscription extends Emitter<SubscriptionEvents> {
  readonly conversationId: string;
  private _state: SubscriptionState = 'subscribing';
  private _lastSeq: number;
  private _head = 0;
  private _truncated = false;
  private _replayFrom: number | undefined;
  private readonly host: SubscriptionHost;
  /** Replayed events held until the `ok`; null when no subscribe is in flight. */
  private buffer: EventFrame[] | null = null;
  /** Increases with every subscribe sent; answers to an older one are ignored. */
  private generation = 0;
  private wentLive = false;
  private failures = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;

  /** Made by `Client.subscribe`, not by hand. */
  constructor(host: SubscriptionHost, conversationId: string, since: number) {
    super();
    this.host = host;
    this.conversationId = conversationId;
    this._lastSeq = since;
  }

  get state(): SubscriptionState {
    return this._state;
  }

  /** The last `seq` delivered (or the `since` it started from). */
  get lastSeq(): number {
    return this._lastSeq;
  }

  /** The stream's head when the subscription last went live. */
  get head(): number {
    return this._head;
  }

  /** Whether the last replay was cut to the newest events. */
  get truncated(): boolean {
    return this._truncated;
  }

  /** With `truncated`: the first replayed `seq`; the events before it are to be paged. */
  get replayFrom(): number | undefined {
    return this._replayFrom;
  }

  /** Stops following the conversation. The subscription cannot be used again. */
  unsubscribe(): void {
    if (this._state === 'unsubscribed') return;
    this.stop();
    this.host.forget(this);
    this.host.sendUnsubscribe(this.conversationId);
  }

  /** Resolves when subscribed; rejects if the subscription ends or `timeoutMs` passes. */
  ready(timeoutMs: number = this.host.requestTimeoutMs): Promise<void> {
    if (this._state === 'subscribed') return Promise.resolve();
    if (this._state === 'unsubscribed') {
      return Promise.reject(new BackchannelError('disconnected', 'the subscription has ended'));
    }
    return new Promise<void>((resolve, reject) => {
      let lastError: BackchannelError | undefined;
      const offError = this.on('error', (error) => {
        lastError = error;
      });
      const offState = this.on('state', ({ newState }) => {
        if (newState === 'subscribed') {
          done();
          resolve();
        } else if (newState === 'unsubscribed') {
          done();
          reject(lastError ?? new BackchannelError('disconnected', 'the subscription has ended'));
        }
      });
      const timer = setTimeout(() => {
        done();
        reject(new BackchannelError('timeout', `not subscribed to ${this.conversationId} within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        offError();
        offState();
      };
    });
  }

  /** @internal The connection is up: subscribe from the last `seq` held. */
  _start(): void {
    if (this._state === 'unsubscribed') return;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    const since = this._lastSeq;
    const pending = this.host.sendSubscribe(this.conversationId, since);
    if (pending === null) return;
    const generation = ++this.generation;
    this.buffer = [];
    this.setState('subscribing');
    pending.then(
      (result) => {
        if (generation === this.generation) this.onSubscribed(result, since);
      },
      (error: BackchannelError) => {
        if (generation === this.generation) this.onSubscribeError(error);
      },
    );
  }

  /** @internal A new connection: subscribe unless a subscribe is already in flight on it. */
  _resume(): void {
    if (this.buffer === null) this._start();
  }

  /** @internal The connection is gone: resubscribe when it is back. */
  _suspend(): void {
    if (this._state === 'unsubscribed') return;
    this.generation += 1;
    this.buffer = null;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.setState('subscribing');
  }

  /** @internal An `event` frame for this conversation. */
  _event(frame: EventFrame): void {
    if (this._state === 'unsubscribed') return;
    if (this.buffer !== null) {
      if (this.buffer.length >= MAX_BUFFERED_EVENTS) {
        this.host.protocolError(`over ${MAX_BUFFERED_EVENTS} events for ${this.conversationId} before its subscribe was answered`);
        return;
      }
      this.buffer.push(frame);
      return;
    }
    if (this._state !== 'subscribed') return;
    if (frame.seq <= this._lastSeq) return;
    if (frame.seq > this._lastSeq + 1) {
      // The server promises no gaps; if one shows up anyway, replay from what we hold
      // rather than let the application miss events.
      this._start();
      return;
    }
    this.deliver(frame);
  }

  /** @internal */
  _typing(frame: TypingFrame): void {
    if (this._state !== 'unsubscribed') this.emit('typing', frame);
  }

  /** @internal */
  _presence(frame: PresenceFrame): void {
    if (this._state !== 'unsubscribed') this.emit('presence', frame);
  }

  /** @internal The client is going away for good. */
  _end(error?: BackchannelError): void {
    if (this._state === 'unsubscribed') return;
    if (error !== undefined) this.emit('error', error);
    this.stop();
  }

  private onSubscribed(result: SubscribeResult, since: number): void {
    const replayed = (this.buffer ?? []).sort((a, b) => a.seq - b.seq);
    this.buffer = null;
    this.failures = 0;
    const reset = result.reset === true;
    if (reset) {
      const droppedSeq = this._lastSeq;
      this._lastSeq = 0;
      this.emit('reset', { conversationId: this.conversationId, droppedSeq, head: result.head });
    }
    for (const frame of replayed) {
      if (frame.seq > this._lastSeq) this.deliver(frame);
    }
    this._head = result.head;
    this._truncated = result.truncated === true;
    this._replayFrom = result.replay_from;
    const resumed = this.wentLive;
    this.wentLive = true;
    this.setState('subscribed');
    const context: SubscribedContext = {
      conversationId: this.conversationId,
      since,
      head: result.head,
      resumed,
      truncated: this._truncated,
      reset,
    };
    if (result.replay_from !== undefined) context.replayFrom = result.replay_from;
    this.emit('subscribed', context);
  }

  private onSubscribeError(error: BackchannelError): void {
    this.buffer = null;
    if (error.code === 'disconnected') return; // resubscribed on reconnect
    this.emit('error', error);
    if (error.code === 'timeout' || TEMPORARY_ERROR_CODES.has(error.code)) {
      const delay = this.host.retryDelay(this.failures++);
      this.retryTimer = setTimeout(() => this._start(), delay);
      return;
    }
    this.stop();
    this.host.forget(this);
  }

  private deliver(frame: EventFrame): void {
    this._lastSeq = frame.seq;
    this.emit('event', frame);
    this.host.deliver(frame);
  }

  private stop(): void {
    this.generation += 1;
    this.buffer = null;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.setState('unsubscribed');
  }

  private setState(newState: SubscriptionState): void {
    const oldState = this._state;
    if (oldState === newState) return;
    this._state = newState;
    this.emit('state', { newState, oldState });
  }
}
