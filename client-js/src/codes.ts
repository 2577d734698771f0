/**
 * Close codes, grouped by what the client does about them, and the one error type every
 * failure is thrown as: `BackchannelError`, whose `code` is the server's error code (or
 * one of the client's own, listed in `ClientErrorCode`).
 */

import type { HistoryEntry } from './types.js';

/** WebSocket close codes the server sends, and the ones this client uses for itself. */
export const CloseCode = {
  /** The client called `disconnect()`. */
  Normal: 1000,
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
  ConnectTimeout: 3000,
  /** Client-side: nothing heard from the server for `tolerance` heartbeat intervals. */
  NoHeartbeat: 3001,
  /** Client-side: the server sent something that is not a JSON frame. */
  BadFrame: 3002,
} as const;

/** What the client does when a socket closes with a code. */
export type CloseAction =
  /** Reconnect after a backoff delay and resubscribe with `since`. */
  | 'reconnect'
  /** The token was refused: fetch a new one with `getToken` (once), else give up. */
  | 'refresh_token'
  /** Give up: the client goes to `disconnected`. */
  | 'fail';

const FAIL: ReadonlySet<number> = new Set([CloseCode.TooBig]);

/**
 * The action for a close code the peer sent. 4001 refreshes the token; 1009 (a frame we
 * should never have sent) stops; everything else, including codes unknown to this
 * version (1001, 1006, 1012, 4002, 4008, 1011...) and a 1000 from the server or a proxy
 * in front of it, reconnects with backoff, as a server that is going away or restarting
 * must not strand its clients. (Our own `disconnect()` closes with 1000 and never comes
 * here.)
 */
export function closeAction(code: number): CloseAction {
  if (code === CloseCode.Unauthorized) return 'refresh_token';
  if (FAIL.has(code)) return 'fail';
  return 'reconnect';
}

/** Error codes the server sends in `error` frames and HTTP error bodies. */
export type ServerErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'too_large'
  | 'rate_limited'
  | 'unavailable'
  | 'internal';

/** Error codes the client raises itself. */
export type ClientErrorCode =
  /** No answer within the request's timeout. */
  | 'timeout'
  /**
   * The socket was lost after the frame was sent and the command is not one the client
   * may safely repeat (only `send` and `note` are repeated), or the client was
   * disconnected (by `disconnect()`) before the answer came. (After a token refused
   * twice, commands still waiting reject with `unauthorized`, the reason it gave up.)
   */
  | 'disconnected'
  /** The server sent something that is not a JSON frame (HTTP: a body that is not JSON). */
  | 'bad_response';

export type ErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

/** Codes worth retrying later: the server could not do it now. */
export const TEMPORARY_ERROR_CODES: ReadonlySet<string> = new Set([
  'rate_limited',
  'unavailable',
  'internal',
]);

/** Every failure this package reports: a thrown error or a rejected promise. */
export class BackchannelError extends Error {
  /** The server's `code` (`not_found`, `forbidden`...) or the client's own (`timeout`...). */
  readonly code: ErrorCode;
  /** The reply guard's unseen events, with `code: "conflict"`. */
  readonly missed?: HistoryEntry[];
  /** The HTTP status, for errors from `HttpApi`. */
  readonly status?: number;
  /** For `send` and `note`: the `client_id`, to retry later without a duplicate. */
  readonly clientId?: string;
  /** The message without the `code: ` prefix `message` carries. */
  readonly detail: string;

  constructor(
    code: ErrorCode,
    message: string,
    details: { missed?: HistoryEntry[]; status?: number; clientId?: string } = {},
  ) {
    super(`${code}: ${message}`);
    this.name = 'BackchannelError';
    this.code = code;
    this.detail = message;
    if (details.missed !== undefined) this.missed = details.missed;
    if (details.status !== undefined) this.status = details.status;
    if (details.clientId !== undefined) this.clientId = details.clientId;
  }
}
