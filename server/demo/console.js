// The agent console (Alice or Bob, `?user=bob`): the conversation list, the timeline
// with internal notes set apart from what the customer sees, a composer that switches
// between Reply and Note (with @mention completion in notes), the notification bell,
// tags, custom fields, transfer with a handoff note, and who else is viewing or typing.

import {
  Timeline,
  Unsent,
  avatar,
  demoUsers,
  icon,
  el,
  explain,
  nameOf,
  session,
  showConnection,
  throttle,
  timeOf,
  toast,
} from './common.js';

const AGENTS = ['alice', 'bob'];
const requested = new URLSearchParams(location.search).get('user');
const USER = AGENTS.includes(requested) ? requested : 'alice';

const $ = (id) => document.getElementById(id);
const { client, api } = session(USER);

const state = {
  cast: [],
  teams: [],
  tags: [],
  fields: [],
  conversations: [],
  /** The head each conversation had when last looked at, for the "new" dot. */
  seen: new Map(),
  current: null,
  view: null,
  subscription: null,
  notifications: [],
  unread: 0,
  mode: 'reply',
  mention: null,
};

const input = $('composer-input');
const unsent = new Unsent();
const composer = $('composer');
const mentionList = $('mentions');
const timeline = new Timeline($('timeline'), {
  fieldLabel: (key) => state.fields.find((f) => f.key === key)?.label ?? key,
  userName: (id) => userName(id),
});

function userName(id) {
  return state.cast.find((u) => u.id === id)?.name ?? id;
}

function subjectOf(conversationId) {
  const found = state.conversations.find((c) => c.id === conversationId);
  return found ? found.subject || '(no subject)' : 'a conversation';
}

// ---- Conversation list -------------------------------------------------------------

async function refreshList() {
  try {
    const { conversations } = await api.call('GET', '/v1/conversations?limit=100');
    state.conversations = conversations;
    for (const c of conversations) if (!state.seen.has(c.id)) state.seen.set(c.id, c.head);
    renderList();
  } catch (error) {
    toast(`Could not load conversations: ${explain(error)}`, 'error');
  }
}

let listTimer;
function refreshListSoon() {
  clearTimeout(listTimer);
  listTimer = setTimeout(refreshList, 250);
}

function tagChip(name, removable = false) {
  const definition = state.tags.find((t) => t.name === name);
  const chip = el(
    'span',
    { class: 'chip', dataset: { tag: name }, title: definition?.description },
    el('span', { class: 'dot', 'aria-hidden': 'true' }),
    name,
    removable
      ? el('button', { type: 'button', 'aria-label': `Remove tag ${name}`, onclick: () => changeTags([], [name]) }, '×')
      : null,
  );
  if (definition?.color && /^#[0-9a-f]{6}$/i.test(definition.color)) {
    chip.style.color = definition.color;
    chip.style.background = `${definition.color}1a`;
  }
  return chip;
}

function renderList() {
  const list = $('conv-list');
  const focused = document.activeElement?.closest?.('#conv-list li')?.dataset.id;
  if (state.conversations.length === 0) {
    list.replaceChildren(el('li', { class: 'empty-list' }, 'No conversations yet. Open the customer widget to start one.'));
    return;
  }
  list.replaceChildren(
    ...state.conversations.map((c) => {
      const current = c.id === state.current;
      const fresh = !current && (state.seen.get(c.id) ?? 0) < c.head;
      return el(
        'li',
        { class: fresh ? 'fresh' : '', dataset: { id: c.id, contact: c.contact_id ?? '' }, 'aria-current': current ? 'true' : null },
        el(
          'button',
          { type: 'button', onclick: () => openConversation(c.id) },
          avatar({ id: c.contact_id, name: c.contact_id, role: 'customer' }),
          el('span', { class: 'conv-subject' }, c.subject || '(no subject)'),
          el(
            'span',
            { class: 'conv-meta' },
            c.contact_id,
            el('span', { class: 'chip status', dataset: { status: c.status } }, c.status),
            c.assignee_id ? `→ ${userName(c.assignee_id)}` : 'unassigned',
          ),
          c.tags.length ? el('span', { class: 'chips' }, c.tags.map((t) => tagChip(t))) : null,
        ),
      );
    }),
  );
  if (focused) list.querySelector(`li[data-id="${focused}"] button`)?.focus();
}

// ---- One conversation ---------------------------------------------------------------

async function openConversation(id) {
  if (state.current === id) return;
  state.subscription?.unsubscribe();
  state.subscription = null;
  state.current = id;
  state.view = null;
  history.replaceState(null, '', `?user=${USER}#${id}`);
  timeline.clear();
  $('presence').replaceChildren();
  $('typing-line').replaceChildren();
  $('empty').hidden = true;
  $('conv-view').hidden = false;
  $('details').hidden = false;
  renderList();
  const subscription = client.subscribe(id);
  state.subscription = subscription;
  const mine = () => state.subscription === subscription;
  subscription.on('event', (frame) => {
    if (!mine()) return;
    timeline.add(frame);
    state.seen.set(id, frame.seq);
    if (['assigned', 'status_changed', 'tags_changed', 'fields_changed', 'note_pinned'].includes(frame.event.kind)) {
      refreshViewSoon();
    }
    refreshListSoon();
  });
  subscription.on('presence', (frame) => {
    if (mine()) renderPresence(frame.viewers);
  });
  subscription.on('reset', () => {
    if (mine()) timeline.clear();
  });
  subscription.on('subscribed', (context) => {
    if (mine()) timeline.fillTruncated(api, id, context, mine);
  });
  subscription.on('error', (error) => toast(`Subscription: ${explain(error)}`, 'error'));
  await refreshView();
  input.focus();
}

async function refreshView() {
  const id = state.current;
  if (id === null) return;
  try {
    const view = await api.conversation(id);
    if (state.current !== id) return;
    state.view = view;
    renderView(view);
    if (view.contact_id) {
      const contact = await api.call('GET', `/v1/contacts/${encodeURIComponent(view.contact_id)}`);
      if (state.current === id) renderContact(contact);
    }
  } catch (error) {
    toast(`Could not load the conversation: ${explain(error)}`, 'error');
  }
}

let viewTimer;
function refreshViewSoon() {
  clearTimeout(viewTimer);
  viewTimer = setTimeout(refreshView, 150);
}

function renderView(view) {
  $('conv-subject').textContent = view.subject || '(no subject)';
  $('conv-meta').textContent = `${view.contact_id ?? 'unknown contact'} · ${view.inbox_id} · opened ${timeOf(view.created_at)}`;
  $('assignee').textContent = view.assignee_id
    ? `${userName(view.assignee_id)}${view.team_id ? ` (${view.team_id})` : ''}`
    : view.team_id
      ? `team ${view.team_id}`
      : 'nobody';
  $('take').disabled = view.assignee_id === USER;
  $('status').value = view.status;

  $('tags').replaceChildren(
    ...(view.tags.length ? view.tags.map((t) => tagChip(t, true)) : [el('span', { class: 'composer-hint' }, 'No tags yet')]),
  );
  const addable = state.tags.filter((t) => !view.tags.includes(t.name));
  $('tag-add').replaceChildren(...addable.map((t) => el('option', { value: t.name }, t.name)));
  $('tag-add').disabled = addable.length === 0;
  $('tag-add-button').disabled = addable.length === 0;

  const box = $('conv-fields');
  if (!box.contains(document.activeElement)) {
    const defs = state.fields.filter((f) => f.applies_to === 'conversation');
    box.replaceChildren(...defs.map((def) => fieldControl(def, view.fields?.[def.key], 'conversation', view.id)));
  }
}

function renderContact(contact) {
  $('contact-id').textContent = contact.id;
  const box = $('contact-fields');
  if (!box.contains(document.activeElement)) {
    const defs = state.fields.filter((f) => f.applies_to === 'contact');
    box.replaceChildren(...defs.map((def) => fieldControl(def, contact.fields?.[def.key], 'contact', contact.id)));
  }
  $('pinned').replaceChildren(
    ...contact.pinned_notes.map((p) => el('div', { class: 'pinned' }, icon('pin'), ` ${p.body} — ${nameOf(p.author)}`)),
  );
}

function fieldControl(def, value, target, targetId) {
  const id = `field-${target}-${def.key}`;
  let control;
  switch (def.type) {
    case 'list':
      control = el(
        'select',
        { id },
        el('option', { value: '' }, '—'),
        def.options.map((o) => el('option', { value: o, selected: value === o }, o)),
      );
      break;
    case 'boolean':
      control = el('input', { id, type: 'checkbox', checked: value === true });
      break;
    case 'number':
      control = el('input', { id, type: 'number', value: value ?? '' });
      break;
    case 'date':
      control = el('input', { id, type: 'date', value: value ?? '' });
      break;
    case 'link':
      control = el('input', { id, type: 'url', value: value ?? '', placeholder: 'https://…' });
      break;
    default:
      control = el('input', { id, type: 'text', value: value ?? '' });
  }
  control.addEventListener('change', async () => {
    let next;
    if (def.type === 'boolean') next = control.checked;
    else if (control.value === '') next = null;
    else if (def.type === 'number') next = Number(control.value);
    else next = control.value;
    try {
      await client.request({ type: 'set_fields', target, id: targetId, fields: { [def.key]: next } });
      toast(`${def.label} saved`);
    } catch (error) {
      toast(`${def.label}: ${explain(error)}`, 'error');
      control.blur();
      refreshView();
    }
  });
  return el('label', { class: 'field' }, def.label, control);
}

async function changeTags(add, remove) {
  if (state.current === null) return;
  try {
    await client.request({ type: 'tag', conversation_id: state.current, add, remove });
  } catch (error) {
    toast(`Tags: ${explain(error)}`, 'error');
  }
}

function renderPresence(viewers) {
  const others = viewers.filter((v) => v.id !== USER);
  const role = (v) => (v.role === 'customer' ? ' (customer)' : v.role === 'supervisor' ? ' (supervisor)' : '');
  $('presence').replaceChildren(
    others.length ? 'Here now:' : 'Only you are here',
    ...others.map((v) =>
      el(
        'span',
        { class: 'viewer', dataset: { user: v.id, typing: v.typing ? v.typing_audience || 'public' : '' } },
        avatar(v, true),
        `${nameOf(v)}${role(v)}`,
      ),
    ),
  );
  $('typing-line').replaceChildren(
    ...others
      .filter((v) => v.typing)
      .map((v) => {
        if (v.role === 'customer') return el('span', {}, `${nameOf(v)} is typing… `);
        if (v.typing_audience === 'internal') return el('span', { class: 'internal' }, icon('lock'), ` ${nameOf(v)} is writing a note… `);
        return el('span', {}, `${nameOf(v)} is writing a reply… `);
      }),
  );
}

// ---- Composer ------------------------------------------------------------------------

function setMode(mode) {
  state.mode = mode;
  composer.dataset.mode = mode;
  for (const button of document.querySelectorAll('[data-mode-button]')) {
    button.setAttribute('aria-checked', String(button.dataset.modeButton === mode));
  }
  const note = mode === 'note';
  $('send').textContent = note ? 'Add internal note' : 'Send reply';
  $('composer-hint').replaceChildren(
    ...(note
      ? [icon('lock'), ' Internal note — only your team sees this, never the customer.']
      : ['The customer will see this reply.']),
  );
  $('composer-label').textContent = note ? 'Internal note for the team' : 'Reply to the customer';
  input.placeholder = note ? 'Write an internal note… type @ to mention a teammate' : 'Write a reply to the customer…';
  closeMentions();
  input.focus();
}

for (const button of document.querySelectorAll('[data-mode-button]')) {
  button.addEventListener('click', () => setMode(button.dataset.modeButton));
  button.addEventListener('keydown', (event) => {
    if (['ArrowLeft', 'ArrowRight', 'ArrowUp', 'ArrowDown'].includes(event.key)) {
      event.preventDefault();
      setMode(state.mode === 'note' ? 'reply' : 'note');
      document.querySelector(`[data-mode-button="${state.mode}"]`).focus();
    }
  });
}

const typingSenders = {
  public: throttle(() => state.current && client.typing(state.current, 'public'), 2000),
  internal: throttle(() => state.current && client.typing(state.current, 'internal'), 2000),
};

function mentionCandidates() {
  const people = state.cast
    .filter((u) => u.role !== 'customer' && u.id !== USER)
    .map((u) => ({ handle: u.handle, name: u.name, detail: u.title, user: u }));
  const teams = state.teams.map((t) => ({ handle: t.id, name: t.name, detail: `Team · ${t.members.length} people`, team: true }));
  return [...people, ...teams];
}

function mentionQuery() {
  if (state.mode !== 'note') return null;
  const upto = input.value.slice(0, input.selectionStart);
  const match = /(^|[^A-Za-z0-9_.\-@])@([A-Za-z0-9_.-]*)$/.exec(upto);
  if (match === null) return null;
  return { start: upto.length - match[2].length - 1, query: match[2].toLowerCase() };
}

function updateMentions() {
  const query = mentionQuery();
  if (query === null) return closeMentions();
  const matches = mentionCandidates().filter(
    (c) => c.handle.toLowerCase().startsWith(query.query) || c.name.toLowerCase().startsWith(query.query),
  );
  if (matches.length === 0) return closeMentions();
  const active = state.mention ? Math.min(state.mention.active, matches.length - 1) : 0;
  state.mention = { ...query, matches, active };
  renderMentions();
}

function renderMentions() {
  const { matches, active } = state.mention;
  mentionList.replaceChildren(
    ...matches.map((c, i) =>
      el(
        'li',
        {
          id: `mention-${c.handle}`,
          role: 'option',
          'aria-selected': String(i === active),
          dataset: { handle: c.handle },
          onmousedown: (event) => {
            event.preventDefault();
            pickMention(i);
          },
        },
        c.team ? el('span', { class: 'avatar small', 'aria-hidden': 'true' }, icon('users')) : avatar(c.user, true),
        el('span', {}, el('strong', {}, c.name), ' ', el('small', {}, c.detail)),
        el('span', { class: 'handle' }, `@${c.handle}`),
      ),
    ),
  );
  mentionList.hidden = false;
  input.setAttribute('aria-expanded', 'true');
  input.setAttribute('aria-activedescendant', `mention-${matches[active].handle}`);
}

function closeMentions() {
  state.mention = null;
  mentionList.hidden = true;
  mentionList.replaceChildren();
  input.setAttribute('aria-expanded', 'false');
  input.removeAttribute('aria-activedescendant');
}

function pickMention(index) {
  const choice = state.mention.matches[index];
  const before = input.value.slice(0, state.mention.start);
  const after = input.value.slice(input.selectionStart);
  const insert = `@${choice.handle} `;
  input.value = before + insert + after;
  const caret = before.length + insert.length;
  input.setSelectionRange(caret, caret);
  closeMentions();
  input.focus();
}

input.addEventListener('input', () => {
  updateMentions();
  if (input.value.trim() !== '') typingSenders[state.mode === 'note' ? 'internal' : 'public']();
});
input.addEventListener('keyup', (event) => {
  if (['ArrowLeft', 'ArrowRight', 'Home', 'End'].includes(event.key)) updateMentions();
});
input.addEventListener('click', updateMentions);
input.addEventListener('blur', () => {
  setTimeout(() => {
    if (document.activeElement !== input) closeMentions();
  }, 150);
});
input.addEventListener('keydown', (event) => {
  if (state.mention !== null) {
    const count = state.mention.matches.length;
    if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
      event.preventDefault();
      state.mention.active = (state.mention.active + (event.key === 'ArrowDown' ? 1 : count - 1)) % count;
      renderMentions();
      return;
    }
    if (event.key === 'Enter' || event.key === 'Tab') {
      event.preventDefault();
      pickMention(state.mention.active);
      return;
    }
    if (event.key === 'Escape') {
      event.preventDefault();
      closeMentions();
      return;
    }
  }
  if (event.key === 'Enter' && !event.shiftKey) {
    event.preventDefault();
    composer.requestSubmit();
  }
});

composer.addEventListener('submit', async (event) => {
  event.preventDefault();
  const body = input.value.trim();
  const id = state.current;
  if (body === '' || id === null) return;
  const note = state.mode === 'note';
  input.value = '';
  closeMentions();
  const key = `${id} ${state.mode} ${body}`;
  const clientId = unsent.clientIdFor(key);
  try {
    if (note) {
      const result = await client.note(id, body, { clientId });
      if (result.mentioned?.length) toast(`Note added; notified ${result.mentioned.map(userName).join(', ')}`);
    } else {
      // The reply guard: refused if someone else wrote since the last event we showed.
      await client.send(id, body, { basedOnSeq: state.subscription?.lastSeq, clientId });
    }
    unsent.sent();
  } catch (error) {
    unsent.failed(key, error);
    if (input.value === '') input.value = body;
    if (error.code === 'conflict') {
      toast('Someone else wrote in the meantime: read what is new, then send again.', 'error');
    } else {
      toast(`Not sent: ${explain(error)}`, 'error');
    }
  }
});

// ---- Details: assignment, status, tags -----------------------------------------------

$('status').addEventListener('change', async () => {
  try {
    await client.request({ type: 'set_status', conversation_id: state.current, status: $('status').value });
  } catch (error) {
    toast(`Status: ${explain(error)}`, 'error');
    refreshView();
  }
});

$('tag-add-button').addEventListener('click', () => {
  const name = $('tag-add').value;
  if (name) changeTags([name], []);
});

$('take').addEventListener('click', async () => {
  try {
    await client.request({
      type: 'assign',
      conversation_id: state.current,
      assignee_id: USER,
      team_id: state.view?.team_id ?? undefined,
    });
  } catch (error) {
    toast(`Assign: ${explain(error)}`, 'error');
  }
});

const dialog = $('transfer-dialog');
$('transfer-open').addEventListener('click', () => {
  const agents = state.cast.filter((u) => u.role === 'agent');
  $('transfer-to').replaceChildren(
    ...agents.map((u) => el('option', { value: u.id, selected: u.id !== USER }, `${u.name}${u.id === USER ? ' (me)' : ''}`)),
  );
  $('transfer-note').value = '';
  dialog.showModal();
  $('transfer-note').focus();
});
$('transfer-cancel').addEventListener('click', () => dialog.close());
$('transfer-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const to = $('transfer-to').value;
  const team = $('transfer-team').value;
  const note = $('transfer-note').value.trim();
  $('transfer-submit').disabled = true;
  try {
    await client.request({
      type: 'assign',
      conversation_id: state.current,
      assignee_id: to,
      team_id: team || undefined,
      note: note || undefined,
    });
    dialog.close();
    toast(`Transferred to ${userName(to)}`);
  } catch (error) {
    toast(`Transfer: ${explain(error)}`, 'error');
  } finally {
    $('transfer-submit').disabled = false;
  }
});

// ---- Notifications -------------------------------------------------------------------

const bell = $('bell');
const panel = $('notif-panel');

function describeNotification(n) {
  return n.kind === 'mention' ? `${nameOf(n.from)} mentioned you` : `${nameOf(n.from)} assigned you a conversation`;
}

function renderBell() {
  const count = state.unread;
  const badge = $('bell-count');
  badge.hidden = count === 0;
  badge.textContent = count > 99 ? '99+' : String(count);
  bell.setAttribute('aria-label', count ? `Notifications, ${count} unread` : 'Notifications, none unread');
  const list = $('notif-list');
  if (state.notifications.length === 0) {
    list.replaceChildren(el('li', { class: 'empty-note' }, 'You’re all caught up.'));
    return;
  }
  list.replaceChildren(
    ...state.notifications.map((n) =>
      el(
        'li',
        { class: n.read ? '' : 'unread', dataset: { id: String(n.id), kind: n.kind } },
        el(
          'button',
          { type: 'button', onclick: () => openNotification(n) },
          el('span', { class: 'notif-title' }, describeNotification(n)),
          el('span', { class: 'notif-meta' }, `${subjectOf(n.conversation_id)} · ${timeOf(n.at)}`),
        ),
      ),
    ),
  );
}

/** The server's word on unread notifications (after a live one, a reconnect, a read). */
async function reconcileNotifications() {
  try {
    const page = await api.call('GET', '/v1/notifications?unread=true&limit=50');
    const unreadIds = new Set(page.notifications.map((n) => n.id));
    for (const n of state.notifications) if (!unreadIds.has(n.id)) n.read = true;
    for (const n of page.notifications) {
      if (!state.notifications.some((m) => m.id === n.id)) state.notifications.push(n);
    }
    state.notifications.sort((a, b) => b.id - a.id);
    state.unread = page.unread;
    renderBell();
  } catch (error) {
    toast(`Notifications: ${explain(error)}`, 'error');
  }
}

let reconcileTimer;
function reconcileSoon() {
  clearTimeout(reconcileTimer);
  reconcileTimer = setTimeout(reconcileNotifications, 300);
}

client.on('notification', (n) => {
  if (!state.notifications.some((m) => m.id === n.id)) {
    state.notifications.unshift(n);
    if (!n.read) state.unread += 1;
    renderBell();
    toast(`${describeNotification(n)} in “${subjectOf(n.conversation_id)}”`);
  }
  refreshListSoon();
  reconcileSoon();
});
client.on('connected', () => reconcileSoon());

async function markRead(ids) {
  try {
    const result = await client.request(ids === undefined ? { type: 'read_notifications' } : { type: 'read_notifications', ids });
    for (const n of state.notifications) if (ids === undefined || ids.includes(n.id)) n.read = true;
    state.unread = result.unread;
    renderBell();
  } catch (error) {
    toast(`Notifications: ${explain(error)}`, 'error');
  }
}

function openPanel(open) {
  panel.hidden = !open;
  bell.setAttribute('aria-expanded', String(open));
}

async function openNotification(n) {
  openPanel(false);
  await openConversation(n.conversation_id);
  if (!n.read) await markRead([n.id]);
}

bell.addEventListener('click', () => openPanel(panel.hidden));
$('mark-all').addEventListener('click', () => markRead(undefined));
document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && !panel.hidden) {
    openPanel(false);
    bell.focus();
  }
});
document.addEventListener('click', (event) => {
  if (!panel.hidden && !event.target.closest('.bell-wrap')) openPanel(false);
});

// ---- Start ---------------------------------------------------------------------------

async function start() {
  showConnection(client, $('conn'));
  $('user-switch').value = USER;
  $('user-switch').addEventListener('change', (event) => {
    location.search = `?user=${event.target.value}`;
  });
  client.connect();
  const cast = await demoUsers();
  state.cast = cast.users;
  state.teams = cast.teams;
  const me = state.cast.find((u) => u.id === USER);
  $('me-name').textContent = me.name;
  $('me-title').textContent = me.title;
  $('me-avatar').textContent = me.name.slice(0, 1);
  $('me-avatar').dataset.user = USER;
  document.title = `${me.name} · Agent console · Backchannel demo`;
  const [tags, fields] = await Promise.all([api.call('GET', '/v1/tags'), api.call('GET', '/v1/fields')]);
  state.tags = tags.tags;
  state.fields = fields.fields;
  await Promise.all([refreshList(), reconcileNotifications()]);
  setInterval(refreshList, 5000);
  const wanted = location.hash.slice(1);
  if (wanted && state.conversations.some((c) => c.id === wanted)) await openConversation(wanted);
  document.body.dataset.ready = 'true';
}

start().catch((error) => toast(`Could not start: ${explain(error)}`, 'error'));
