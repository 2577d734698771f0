/**
 * One WebSocket, numbered. The client makes a new `Transport` for every connection
 * attempt; when it gives one up (a dead heartbeat, a timeout, a reconnect) it calls
 * `abandon()`, after which nothing the old socket does reaches the client: a late
 * `message` or `close` from a replaced socket must never touch the new session's state.
 */

/** What the client needs of a WebSocket: the browser's, or the `ws` package's in Node. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface TransportHandlers {
  open(transport: Transport): void;
  message(transport: Transport, text: string): void;
  close(transport: Transport, code: number, reason: string): void;
}

const OPEN = 1;

export class Transport {
  /** Increases with every transport the client creates. */
  readonly id: number;
  private socket: WebSocketLike | null;
  private handlers: TransportHandlers | null;

  constructor(id: number, url: string, WebSocket: WebSocketConstructor, handlers: TransportHandlers) {
    this.id = id;
    this.handlers = handlers;
    const socket = new WebSocket(url);
    this.socket = socket;
    socket.onopen = () => this.handlers?.open(this);
    socket.onmessage = (event: { data: unknown }) => {
      if (typeof event.data === 'string') {
        this.handlers?.message(this, event.data);
      } else {
        // The server only sends text frames; anything else is a broken connection.
        this.fail(3002, 'binary frame from the server');
      }
    };
    // `error` is always followed by `close`, which carries what there is to know.
    socket.onerror = () => {};
    socket.onclose = (event: { code?: number; reason?: string }) => {
      const handlers = this.handlers;
      this.detach();
      handlers?.close(this, event.code ?? 1006, event.reason ?? '');
    };
  }

  /** Whether the socket is open and this transport still current. */
  get isOpen(): boolean {
    return this.handlers !== null && this.socket?.readyState === OPEN;
  }

  /** Sends one text frame; false if the socket is not open (the frame is not sent). */
  send(text: string): boolean {
    if (!this.isOpen) return false;
    try {
      this.socket!.send(text);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Closes the socket and reports `close` with `code` at once, without waiting for the
   * socket to finish closing (a dead peer never answers the close handshake).
   */
  fail(code: number, reason: string): void {
    const handlers = this.handlers;
    if (handlers === null) return;
    this.abandon(code, reason);
    handlers.close(this, code, reason);
  }

  /** Closes the socket; from now on nothing it does is reported. */
  abandon(code = 1000, reason = ''): void {
    const socket = this.socket;
    this.detach();
    if (socket === null) return;
    try {
      // Browsers accept only 1000 and 3000-4999 from a script.
      socket.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000, reason);
    } catch {
      // Closing a socket that never opened may throw; it is gone either way.
    }
  }

  private detach(): void {
    this.handlers = null;
    const socket = this.socket;
    if (socket === null) return;
    this.socket = null;
    socket.onopen = null;
    socket.onmessage = null;
    socket.onclose = null;
    // Keep a no-op error handler: some implementations throw on an unhandled `error`.
    socket.onerror = () => {};
  }
}
