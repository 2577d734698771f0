// What the demo pages share: tokens from /demo/token, a Client and an HttpApi from
// @backchannel/client, a tiny DOM builder (text only: nothing from the wire is ever
// parsed as HTML), and the rendering of a conversation's timeline for staff.

import { BackchannelError, Client, HttpApi } from './backchannel-client.js';

export { BackchannelError, Client, HttpApi };

/** The server's WebSocket endpoint, on the host that served the page. */
export function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`;
}

/**
 * A `getToken` for a demo user: asks `POST /demo/token`, and asks again when the token
 * has less than five minutes left (or when the client says it was refused).
 */
export function tokenSource(user) {
  let cached = null;
  const getToken = async (fresh = false) => {
    if (!fresh && cached !== null && cached.expiresAt * 1000 - Date.now() > 5 * 60_000) return cached.token;
    const response = await fetch('/demo/token', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user }),
    });
    if (!response.ok) throw new Error(`no demo token for ${user}: HTTP ${response.status}`);
    const body = await response.json();
    cached = { token: body.token, expiresAt: body.expires_at };
    return body.token;
  };
  return getToken;
}

/** A connected-to-be client and an HTTP API for a demo user. */
export function session(user) {
  const getToken = tokenSource(user);
  // A refused token (close 4001) makes the client call getToken again: give it a new one.
  let refused = false;
  const client = new Client({ url: wsUrl(), getToken: () => getToken(refused) });
  client.on('close', ({ code }) => {
    refused = code === 4001;
  });
  const api = new HttpApi({ baseUrl: location.origin, getToken: () => getToken(false) });
  return { client, api };
}

/** The demo's cast and team (`GET /demo/users`). */
export async function demoUsers() {
  const response = await fetch('/demo/users');
  return response.json();
}

/**
 * `el('li', {class: 'x', dataset: {id: '1'}, onclick: f}, 'text', child)`: attributes,
 * `dataset`, `on*` listeners, and children (strings become text nodes).
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else if (key === 'class') node.className = value;
    else if (value === true) node.setAttribute(key, '');
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const ICON_PATHS = {
  lock: 'M7 10V7a5 5 0 0 1 10 0v3h1a1 1 0 0 1 1 1v10a1 1 0 0 1-1 1H6a1 1 0 0 1-1-1V11a1 1 0 0 1 1-1h1zm2 0h6V7a3 3 0 0 0-6 0v3zm3 4a1.5 1.5 0 0 0-1 2.6V18h2v-1.4a1.5 1.5 0 0 0-1-2.6z',
  bell: 'M12 2a6 6 0 0 0-6 6v3.6l-1.7 3.7A1 1 0 0 0 5.2 17h13.6a1 1 0 0 0 .9-1.7L18 11.6V8a6 6 0 0 0-6-6zm0 20a3 3 0 0 0 3-3H9a3 3 0 0 0 3 3z',
  chat: 'M4 3h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H10l-5 4v-4H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2zm3 6a1.3 1.3 0 1 0 0 2.6A1.3 1.3 0 0 0 7 9zm5 0a1.3 1.3 0 1 0 0 2.6A1.3 1.3 0 0 0 12 9zm5 0a1.3 1.3 0 1 0 0 2.6A1.3 1.3 0 0 0 17 9z',
  users: 'M9 11a4 4 0 1 0 0-8 4 4 0 0 0 0 8zm8 0a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM1 20c0-3.3 3.6-6 8-6s8 2.7 8 6v1H1v-1zm17 1v-1c0-1.6-.6-3-1.7-4.2 3.4.3 6.7 2 6.7 4.2v1h-5z',
  pin: 'M15 2l7 7-2.5.8-3.7 3.7.7 4.9-2 2-4.2-4.2L4.4 22 2 22v-2.4l5.8-5.9-4.2-4.2 2-2 4.9.7 3.7-3.7z',
  close: 'M6.4 5L12 10.6 17.6 5 19 6.4 13.4 12l5.6 5.6-1.4 1.4L12 13.4 6.4 19 5 17.6 10.6 12 5 6.4z',
};

/** A small inline SVG icon (decorative: hidden from assistive technology). */
export function icon(name) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('class', 'icon');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', ICON_PATHS[name]);
  svg.append(path);
  return svg;
}

export function initials(name) {
  return (name || '?').trim().slice(0, 1).toUpperCase();
}

export function avatar(user, small = false) {
  return el(
    'span',
    { class: small ? 'avatar small' : 'avatar', 'aria-hidden': 'true', dataset: { role: user.role || '', user: user.id || '' } },
    initials(user.name || user.id),
  );
}

export function timeOf(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? '' : date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

export function nameOf(actor) {
  return actor?.name || actor?.id || 'someone';
}

/** Shows the client's connection state in `node` (`data-state` drives the dot's color). */
export function showConnection(client, node) {
  const labels = { connecting: 'Connecting…', connected: 'Live', disconnected: 'Offline' };
  const update = (state) => {
    node.dataset.state = state;
    node.textContent = labels[state] || state;
  };
  update(client.state);
  client.on('state', ({ newState }) => update(newState));
}

let toastTimer;
/** A short message at the bottom of the page (a polite live region). */
export function toast(message, kind = 'info') {
  let node = document.getElementById('toast');
  if (node === null) {
    node = el('div', { id: 'toast', class: 'toast', role: 'status', 'aria-live': 'polite' });
    document.body.append(node);
  }
  node.className = kind === 'error' ? 'toast error' : 'toast';
  node.textContent = message;
  node.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    node.hidden = true;
  }, 4000);
}

/** Why a call failed, for a person (a `BackchannelError`'s message starts with its code). */
export function explain(error) {
  return String(error?.message || error);
}

/**
 * The composer's failed message or note: pressing Send again on the same text (same
 * conversation, same kind) retries it under the same `client_id`, so one the server
 * stored but could not confirm (a lost answer, a timeout) is answered as a duplicate
 * instead of being stored twice.
 */
export class Unsent {
  constructor() {
    this.pending = null;
  }

  /** The id to send `key` with: the failed attempt's, if it was the same. */
  clientIdFor(key) {
    return this.pending?.key === key ? this.pending.clientId : undefined;
  }

  failed(key, error) {
    this.pending = error?.clientId ? { key, clientId: error.clientId } : null;
  }

  sent() {
    this.pending = null;
  }
}

/** A note's text with its @mentions set apart. */
function noteBody(body) {
  const out = [];
  const pattern = /(^|[^A-Za-z0-9_.\-@])(@[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?)/g;
  let last = 0;
  for (const match of body.matchAll(pattern)) {
    const start = match.index + match[1].length;
    out.push(body.slice(last, start));
    out.push(el('span', { class: 'mention' }, match[2]));
    last = start + match[2].length;
  }
  out.push(body.slice(last));
  return out;
}

const NOTE_TYPES = {
  general: null,
  context: 'Context',
  transfer: 'Handoff',
  resolution: 'Resolution',
  coaching: 'Coaching',
};

function describeChanges(changes, fieldLabel) {
  return Object.entries(changes || {})
    .map(([key, value]) => (value === null ? `cleared ${fieldLabel(key)}` : `set ${fieldLabel(key)} to ${String(value)}`))
    .join(', ');
}

/**
 * A timeline for staff: renders each event once, in order, into `list` (an `<ol>`), and
 * applies edits and pins to the notes they name.
 */
export class Timeline {
  constructor(list, { fieldLabel = (key) => key, userName = (id) => id } = {}) {
    this.list = list;
    this.fieldLabel = fieldLabel;
    this.userName = userName;
    this.notes = new Map();
  }

  clear() {
    this.list.replaceChildren();
    this.notes.clear();
  }

  /** Shows an event in `seq` order (older ones paged in later go before), once. */
  add({ seq, event }) {
    const last = this.list.lastElementChild;
    const after =
      last === null || Number(last.dataset.seq) < seq
        ? undefined
        : [...this.list.children].find((n) => Number(n.dataset.seq) >= seq);
    if (after !== undefined && Number(after.dataset.seq) === seq) return;
    const node = this.render(event);
    if (node === null) return;
    node.dataset.seq = String(seq);
    node.dataset.kind = event.kind;
    node.dataset.eventId = event.id;
    if (after !== undefined) {
      this.list.insertBefore(node, after);
      return;
    }
    const stick = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 80;
    this.list.append(node);
    if (stick) this.list.scrollTop = this.list.scrollHeight;
  }

  /**
   * A replay carries at most the newest 1,000 events (`truncated`, from `replayFrom`):
   * pages the rest over HTTP, unless `stillShown()` turns false meanwhile.
   */
  async fillTruncated(api, conversationId, { truncated, replayFrom, since }, stillShown) {
    if (!truncated || replayFrom === undefined) return;
    try {
      const older = await api.historyRange(conversationId, since ?? 0, replayFrom);
      if (stillShown()) for (const entry of older) this.add(entry);
    } catch (error) {
      toast(`Older events: ${explain(error)}`, 'error');
    }
  }

  render(event) {
    const who = nameOf(event.actor);
    const at = timeOf(event.at);
    switch (event.kind) {
      case 'message': {
        const customer = event.actor.role === 'customer';
        return el(
          'li',
          { class: `event message ${customer ? 'from-customer' : 'from-staff'}` },
          el('div', { class: 'who' }, el('strong', {}, who), customer ? ' · customer' : ' · reply', ` · ${at}`),
          el('div', { class: 'bubble' }, event.body ?? ''),
        );
      }
      case 'note': {
        const supervisors = event.audience === 'supervisors';
        const type = NOTE_TYPES[event.note_type] ?? null;
        const label = supervisors ? 'Supervisors only — agents and customers can\u2019t see this' : 'Internal note — customers can\u2019t see this';
        const body = el('div', { class: 'note-body' }, noteBody(event.body ?? ''));
        const node = el(
          'li',
          {
            class: `event note ${event.note_type || 'general'}${supervisors ? ' supervisors' : ''}`,
            'aria-label': `${supervisors ? 'Supervisors-only' : 'Internal'} note by ${who}`,
          },
          el(
            'div',
            { class: 'note-card' },
            el(
              'div',
              { class: 'note-label' },
              el('span', { class: 'lock' }, icon('lock')),
              el('span', {}, label),
              type ? el('span', { class: 'note-type' }, type) : null,
              el('span', { class: 'who' }, el('strong', {}, who), ` · ${at}`),
            ),
            body,
          ),
        );
        this.notes.set(event.id, { node, body });
        return node;
      }
      case 'note_edited': {
        const note = this.notes.get(event.note_id);
        if (note !== undefined) {
          note.body.replaceChildren(...noteBody(event.body ?? ''));
          if (!note.node.querySelector('.note-edited')) {
            note.body.after(el('div', { class: 'note-edited' }, `edited by ${who} · ${at}`));
          }
        }
        return null;
      }
      case 'note_pinned': {
        this.notes.get(event.note_id)?.node.classList.toggle('pinned', event.pinned !== false);
        return null;
      }
      case 'conversation_opened':
        return activity(who, `opened the conversation${event.subject ? ` “${event.subject}”` : ''}`, at);
      case 'assigned': {
        if (!event.assignee_id && !event.team_id) return activity(who, 'unassigned the conversation', at);
        const to = event.assignee_id ? this.userName(event.assignee_id) : 'nobody';
        const team = event.team_id ? ` (team ${event.team_id})` : '';
        return activity(who, `assigned the conversation to ${to}${team}`, at);
      }
      case 'status_changed':
        return activity(who, `set the status to ${event.status}`, at);
      case 'tags_changed': {
        const parts = [];
        if (event.added?.length) parts.push(`added ${event.added.map((t) => `#${t}`).join(', ')}`);
        if (event.removed?.length) parts.push(`removed ${event.removed.map((t) => `#${t}`).join(', ')}`);
        return activity(who, parts.join('; ') || 'changed the tags', at);
      }
      case 'fields_changed': {
        const where = event.target === 'contact' ? ` on contact ${event.target_id}` : '';
        return activity(who, `${describeChanges(event.changes, this.fieldLabel)}${where}`, at);
      }
      default:
        return activity(who, event.kind.replaceAll('_', ' '), at);
    }
  }
}

function activity(who, what, at) {
  return el('li', { class: 'event activity' }, el('div', { class: 'activity-line' }, el('strong', {}, who), ` ${what} · ${at}`));
}

/** Calls `fn` at most once per `ms` (the first call goes through at once). */
export function throttle(fn, ms) {
  let last = 0;
  return (...args) => {
    const now = Date.now();
    if (now - last < ms) return;
    last = now;
    fn(...args);
  };
}
