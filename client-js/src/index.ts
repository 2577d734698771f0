/**
 * `@backchannel/client`: a TypeScript client for the Backchannel real-time server.
 *
 * - `client.ts`: `Client`, the connection state machine, refs as promises, reconnects.
 * - `subscription.ts`: `Subscription`, one conversation's `seq`, dedup and resume.
 * - `transport.ts`: one WebSocket with an id; an abandoned one is never heard again.
 * - `codes.ts`: close codes grouped by what to do, and `BackchannelError`.
 * - `backoff.ts`: full-jitter reconnect delays.
 * - `emitter.ts`: the typed event emitter both classes extend.
 * - `http.ts`: `HttpApi` for history paging and opening conversations.
 * - `ids.ts`: `newClientId`, the time-ordered `client_id` a `send` or `note` gets.
 * - `types.ts`: the wire frames.
 */

export { Client } from './client.js';
export type {
  ClientEvents,
  ClientOptions,
  ClientState,
  CloseInfo,
  NoteOptions,
  RequestOptions,
  SendOptions,
  StateChange,
} from './client.js';
export { Subscription } from './subscription.js';
export type {
  ResetContext,
  SubscribedContext,
  SubscriptionEvents,
  SubscriptionState,
  SubscriptionStateChange,
} from './subscription.js';
export type { WebSocketConstructor, WebSocketLike } from './transport.js';
export { BackchannelError, CloseCode, closeAction, TEMPORARY_ERROR_CODES } from './codes.js';
export type { ClientErrorCode, CloseAction, ErrorCode, ServerErrorCode } from './codes.js';
export { Backoff, backoffDelay } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { Emitter } from './emitter.js';
export type { Listener } from './emitter.js';
export { HttpApi, httpBaseFromWsUrl } from './http.js';
export { newClientId } from './ids.js';
export type { ConversationView, FetchLike, HistoryPage, HttpApiOptions, OpenConversation } from './http.js';
export type * from './types.js';
