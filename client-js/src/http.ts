/**
 * The few HTTP calls a real-time client needs beside its socket: opening a conversation,
 * and paging history (the part of a truncated replay that the socket did not carry).
 * Uses the global `fetch` (browsers, Node 18+) unless one is given.
 */

import { BackchannelError } from './codes.js';
import type { HistoryEntry } from './types.js';

/** The part of the Fetch API this module uses. */
export type FetchLike = (
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string },
) => Promise<{ status: number; ok: boolean; text(): Promise<string> }>;

export interface HttpApiOptions {
  /** The server's base URL, e.g. `https://chat.example.com`; see `httpBaseFromWsUrl`. */
  baseUrl: string;
  token?: string;
  getToken?: () => string | Promise<string>;
  fetch?: FetchLike;
}

export interface HistoryPage {
  conversation_id: string;
  /** Events with `seq > after` in the caller's stream, oldest first. */
  events: HistoryEntry[];
  /** The stream's last `seq`. */
  head: number;
}

export interface OpenConversation {
  inbox_id: string;
  subject?: string;
  /** Staff must name the contact; a customer's contact is themselves. */
  contact_id?: string;
  [field: string]: unknown;
}

/** A conversation as the caller sees it (staff see more fields than customers). */
export interface ConversationView {
  id: string;
  inbox_id: string;
  subject?: string | null;
  status: string;
  head: number;
  created_at: string;
  updated_at: string;
  [field: string]: unknown;
}

/** `ws://host/v1/ws` → `http://host`, `wss://...` → `https://...`. */
export function httpBaseFromWsUrl(wsUrl: string): string {
  const url = new URL(wsUrl);
  url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
  return url.origin;
}

/** The most events `GET /v1/conversations/{id}/events` answers at once. */
const MAX_HISTORY_PAGE = 1000;

export class HttpApi {
  private readonly baseUrl: string;
  private readonly options: HttpApiOptions;
  private readonly fetch: FetchLike;

  constructor(options: HttpApiOptions) {
    if (options.token === undefined && options.getToken === undefined) {
      throw new TypeError('HttpApi needs `token` or `getToken`');
    }
    const globalFetch = (globalThis as { fetch?: FetchLike }).fetch;
    // A browser's fetch must be called on the window: `this.fetch(...)` would throw
    // "Illegal invocation", so the global one is wrapped.
    const fetch: FetchLike | undefined =
      options.fetch ?? (globalFetch === undefined ? undefined : (url, init) => globalFetch.call(globalThis, url, init));
    if (fetch === undefined) throw new TypeError('no global fetch: pass one as `fetch`');
    this.options = options;
    this.fetch = fetch;
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
  }

  /** `GET /v1/conversations/{id}/events?after=&limit=` (limit: server default 100, max 1000). */
  history(conversationId: string, options: { after?: number; limit?: number } = {}): Promise<HistoryPage> {
    const query = new URLSearchParams();
    if (options.after !== undefined) query.set('after', String(options.after));
    if (options.limit !== undefined) query.set('limit', String(options.limit));
    const search = query.toString();
    const suffix = search === '' ? '' : `?${search}`;
    return this.call<HistoryPage>('GET', `/v1/conversations/${encodeURIComponent(conversationId)}/events${suffix}`);
  }

  /**
   * Every event with `after < seq < before` (all after `after` if `before` is absent),
   * page by page: what a truncated replay left out is `historyRange(id, since, replayFrom)`.
   */
  async historyRange(conversationId: string, after: number, before?: number, pageSize = 1000): Promise<HistoryEntry[]> {
    // The server answers at most 1,000 a page; a larger size would read as the last page.
    pageSize = Math.min(Math.max(1, Math.floor(pageSize)), MAX_HISTORY_PAGE);
    const out: HistoryEntry[] = [];
    let cursor = after;
    for (;;) {
      const page = await this.history(conversationId, { after: cursor, limit: pageSize });
      for (const entry of page.events) {
        if (before !== undefined && entry.seq >= before) return out;
        out.push(entry);
        cursor = entry.seq;
      }
      if (page.events.length < pageSize || cursor >= page.head) return out;
    }
  }

  /** `POST /v1/conversations`: 201 with the conversation in the caller's view. */
  openConversation(body: OpenConversation): Promise<ConversationView> {
    return this.call<ConversationView>('POST', '/v1/conversations', body);
  }

  /** `GET /v1/conversations/{id}`. */
  conversation(conversationId: string): Promise<ConversationView> {
    return this.call<ConversationView>('GET', `/v1/conversations/${encodeURIComponent(conversationId)}`);
  }

  /** Any call: the JSON body, or a `BackchannelError` with the server's `code` and `status`. */
  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const token = this.options.token ?? (await this.options.getToken!());
    const headers: Record<string, string> = { authorization: `Bearer ${token}`, accept: 'application/json' };
    const init: Parameters<FetchLike>[1] = { method, headers };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await this.fetch(`${this.baseUrl}${path}`, init);
    const text = await response.text();
    let json: unknown;
    try {
      json = text === '' ? undefined : JSON.parse(text);
    } catch {
      throw new BackchannelError(response.ok ? 'bad_response' : statusCode(response.status), `${method} ${path}: ${response.status} ${text.slice(0, 200)}`, { status: response.status });
    }
    if (!response.ok) {
      const detail = (json as { error?: { code?: string; message?: string; missed?: HistoryEntry[] } } | undefined)?.error;
      // A reply guard's 409 carries what was missed, as the socket's error frame does.
      const details = detail?.missed === undefined ? { status: response.status } : { status: response.status, missed: detail.missed };
      throw new BackchannelError(detail?.code ?? statusCode(response.status), detail?.message ?? `${method} ${path}: HTTP ${response.status}`, details);
    }
    return json as T;
  }
}

function statusCode(status: number): string {
  switch (status) {
    case 400: return 'bad_request';
    case 401: return 'unauthorized';
    case 403: return 'forbidden';
    case 404: return 'not_found';
    case 409: return 'conflict';
    case 413: return 'too_large';
    case 429: return 'rate_limited';
    case 503: return 'unavailable';
    default: return 'internal';
  }
}
