/**
 * `client_id`s for `send` and `note`: UUIDv7 (RFC 9562), the time in milliseconds first,
 * then random bits.
 *
 * The server keeps a unique index on `(client_id, author)` so that a retry is stored once.
 * An id that starts with the time lands at the index's end, where one page holds a whole
 * commit's new entries; a random one (UUIDv4) lands on a page of its own anywhere in the
 * index, which the commit must write and sync. On SQLite, random ids were acknowledged
 * about 30 % fewer a second than time-ordered ones (docs/benchmarks-log.md).
 */

interface RandomSource {
  getRandomValues?: (array: Uint8Array) => Uint8Array;
}

/** A new UUIDv7, as text: `xxxxxxxx-xxxx-7xxx-yxxx-xxxxxxxxxxxx`, `y` one of 8, 9, a, b. */
export function newClientId(now: number = Date.now()): string {
  const bytes = new Uint8Array(16);
  const crypto = (globalThis as { crypto?: RandomSource }).crypto;
  if (crypto?.getRandomValues !== undefined) {
    crypto.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  // 48 bits of milliseconds, big-endian (a Date's milliseconds fit in 48 bits until 10889).
  let ms = Math.max(0, Math.floor(now));
  for (let i = 5; i >= 0; i--) {
    bytes[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  bytes[6] = (bytes[6]! & 0x0f) | 0x70; // version 7
  bytes[8] = (bytes[8]! & 0x3f) | 0x80; // the RFC's variant
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
