/**
 * Reconnect delays: exponential with full jitter, so that a thousand clients dropped by
 * the same restart do not come back in the same millisecond.
 */

export interface BackoffOptions {
  /** The smallest delay, and the base of the exponent. Default 500 ms. */
  minMs?: number;
  /** The largest delay. Default 20 s. */
  maxMs?: number;
  /** The source of randomness in [0, 1); for tests. Default `Math.random`. */
  random?: () => number;
  /**
   * How long a session must stay up before the delays start over. Default 10 s: a server
   * that says `welcome` and then drops the socket is retried with growing delays, not
   * every half second by every client at once.
   */
  stableMs?: number;
}

/**
 * The delay before retry number `step` (0 for the first): a random value between
 * `minMs` and `minMs + min(maxMs, minMs * 2^step)`, never above `maxMs`.
 */
export function backoffDelay(
  step: number,
  minMs: number,
  maxMs: number,
  random: () => number = Math.random,
): number {
  const exponent = Math.min(Math.max(step, 0), 31);
  const window = Math.min(maxMs, minMs * 2 ** exponent);
  return Math.min(maxMs, Math.floor(minMs + random() * window));
}

/** A counter of failed attempts that turns into delays; `reset()` after a success. */
export class Backoff {
  readonly minMs: number;
  readonly maxMs: number;
  readonly stableMs: number;
  private readonly random: () => number;
  private step = 0;

  constructor(options: BackoffOptions = {}) {
    this.minMs = options.minMs ?? 500;
    this.maxMs = Math.max(options.maxMs ?? 20_000, this.minMs);
    this.random = options.random ?? Math.random;
    this.stableMs = options.stableMs ?? 10_000;
  }

  /** How many delays were handed out since the last reset. */
  get attempts(): number {
    return this.step;
  }

  /** The next delay; each call grows the window until it reaches `maxMs`. */
  next(): number {
    const delay = backoffDelay(this.step, this.minMs, this.maxMs, this.random);
    this.step += 1;
    return delay;
  }

  reset(): void {
    this.step = 0;
  }
}
