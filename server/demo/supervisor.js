// The supervisor view (Sam): the team floor from `watch_agents` (who is online, away
// or offline, which conversations they are viewing, how many are theirs), every
// conversation with its full timeline, and coaching notes (supervisors only by default).

import {
  Timeline,
  Unsent,
  avatar,
  demoUsers,
  el,
  icon,
  explain,
  nameOf,
  session,
  showConnection,
  throttle,
  timeOf,
  toast,
} from './common.js';

const USER = 'sam';
const $ = (id) => document.getElementById(id);
const { client, api } = session(USER);

const state = { cast: [], fields: [], agents: new Map(), conversations: [], current: null, subscription: null };
const timeline = new Timeline($('timeline'), {
  fieldLabel: (key) => state.fields.find((f) => f.key === key)?.label ?? key,
  userName: (id) => state.cast.find((u) => u.id === id)?.name ?? id,
});

function subjectOf(id) {
  return state.conversations.find((c) => c.id === id)?.subject || 'a conversation';
}

// ---- The floor -----------------------------------------------------------------------

const ORDER = { online: 0, away: 1, offline: 2 };

function renderAgents() {
  const agents = [...state.agents.values()]
    .filter((a) => a.id !== USER)
    .sort((a, b) => ORDER[a.status] - ORDER[b.status] || (a.name ?? a.id).localeCompare(b.name ?? b.id));
  if (agents.length === 0) {
    $('agents').replaceChildren(el('li', { class: 'empty-list' }, 'Nobody on the floor yet.'));
    return;
  }
  $('agents').replaceChildren(
    ...agents.map((a) =>
      el(
        'li',
        { class: 'agent-card', dataset: { id: a.id, status: a.status } },
        avatar(a),
        el(
          'span',
          { class: 'agent-name' },
          nameOf(a),
          a.role === 'agent' ? null : el('small', {}, a.role),
          el('span', { class: 'presence-dot', dataset: { status: a.status } }, a.status),
        ),
        el(
          'span',
          { class: 'agent-doing' },
          a.viewing.length === 0
            ? a.status === 'offline'
              ? 'Signed out'
              : 'Not in a conversation'
            : ['Viewing ', ...a.viewing.flatMap((id, i) => [i ? ', ' : '', el('button', { type: 'button', onclick: () => openConversation(id) }, `“${subjectOf(id)}”`)])],
        ),
        el('span', { class: 'agent-doing' }, `${a.open_conversations} open conversation${a.open_conversations === 1 ? '' : 's'} assigned`),
      ),
    ),
  );
}

client.on('agents', ({ agents }) => {
  state.agents = new Map(agents.map((a) => [a.id, a]));
  renderAgents();
});
client.on('agentPresence', (frame) => {
  const { type: _type, ...agent } = frame;
  state.agents.set(agent.id, agent);
  renderAgents();
  refreshListSoon();
});
// Watching lasts as long as the socket: ask again after every (re)connect.
client.on('connected', () => {
  client.request({ type: 'watch_agents' }).catch((error) => toast(`Team floor: ${explain(error)}`, 'error'));
});

// ---- Conversations -------------------------------------------------------------------

async function refreshList() {
  try {
    const { conversations } = await api.call('GET', '/v1/conversations?limit=100');
    state.conversations = conversations;
    renderList();
    renderAgents();
  } catch (error) {
    toast(`Could not load conversations: ${explain(error)}`, 'error');
  }
}

let listTimer;
function refreshListSoon() {
  clearTimeout(listTimer);
  listTimer = setTimeout(refreshList, 300);
}

function renderList() {
  const list = $('conv-list');
  if (state.conversations.length === 0) {
    list.replaceChildren(el('li', { class: 'empty-list' }, 'No conversations yet.'));
    return;
  }
  list.replaceChildren(
    ...state.conversations.map((c) =>
      el(
        'li',
        { dataset: { id: c.id }, 'aria-current': c.id === state.current ? 'true' : null },
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
            c.assignee_id ? `→ ${state.cast.find((u) => u.id === c.assignee_id)?.name ?? c.assignee_id}` : 'unassigned',
          ),
        ),
      ),
    ),
  );
}

function renderPresence(viewers) {
  const others = viewers.filter((v) => v.id !== USER);
  $('presence').replaceChildren(
    others.length ? 'Here now:' : 'Nobody else is here',
    ...others.map((v) =>
      el('span', { class: 'viewer', dataset: { user: v.id, typing: v.typing ? v.typing_audience || 'public' : '' } }, avatar(v, true), nameOf(v)),
    ),
  );
  $('typing-line').replaceChildren(
    ...others
      .filter((v) => v.typing)
      .map((v) => {
        if (v.typing_audience === 'supervisors') {
          return el('span', { class: 'internal' }, icon('lock'), ` ${nameOf(v)} is writing a supervisors-only note… `);
        }
        if (v.typing_audience === 'internal') {
          return el('span', { class: 'internal' }, icon('lock'), ` ${nameOf(v)} is writing a note… `);
        }
        return el('span', {}, `${nameOf(v)} is ${v.role === 'customer' ? 'typing' : 'writing a reply'}… `);
      }),
  );
}

async function openConversation(id) {
  if (state.current === id) return;
  state.subscription?.unsubscribe();
  state.current = id;
  history.replaceState(null, '', `#${id}`);
  timeline.clear();
  $('presence').replaceChildren();
  $('typing-line').replaceChildren();
  $('empty').hidden = true;
  $('conv-view').hidden = false;
  const found = state.conversations.find((c) => c.id === id);
  $('conv-subject').textContent = found?.subject || '(no subject)';
  $('conv-meta').textContent = found ? `${found.contact_id} · ${found.status} · opened ${timeOf(found.created_at)}` : '';
  renderList();
  const subscription = client.subscribe(id);
  state.subscription = subscription;
  const mine = () => state.subscription === subscription;
  subscription.on('event', (frame) => {
    if (mine()) timeline.add(frame);
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
}

for (const radio of document.querySelectorAll('input[name="audience"]')) {
  radio.addEventListener('change', () => {
    const shared = radio.value === 'agents' && radio.checked;
    $('coach-hint').replaceChildren(
      icon('lock'),
      shared ? ' Internal — the agents see it; the customer never does.' : ' Supervisors only — agents and the customer never see it.',
    );
  });
}

const coachAudience = () => document.querySelector('input[name="audience"]:checked').value;
const unsent = new Unsent();

// Writing a supervisors-only note shows to supervisors only: agents never see it typed.
const sendTyping = throttle(() => {
  if (state.current === null) return;
  client.typing(state.current, coachAudience() === 'supervisors' ? 'supervisors' : 'internal');
}, 2000);
$('coach-input').addEventListener('input', () => {
  if ($('coach-input').value.trim() !== '') sendTyping();
});

$('coach-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const body = $('coach-input').value.trim();
  if (body === '' || state.current === null) return;
  const audience = coachAudience();
  $('coach-input').value = '';
  const key = `${state.current} ${audience} ${body}`;
  try {
    await client.note(state.current, body, { noteType: 'coaching', audience, clientId: unsent.clientIdFor(key) });
    unsent.sent();
  } catch (error) {
    unsent.failed(key, error);
    $('coach-input').value = body;
    toast(`Not added: ${explain(error)}`, 'error');
  }
});
$('coach-input').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey) {
    event.preventDefault();
    $('coach-form').requestSubmit();
  }
});

async function start() {
  showConnection(client, $('conn'));
  client.connect();
  const cast = await demoUsers();
  state.cast = cast.users;
  state.fields = (await api.call('GET', '/v1/fields')).fields;
  await refreshList();
  setInterval(refreshList, 5000);
  const wanted = location.hash.slice(1);
  if (wanted && state.conversations.some((c) => c.id === wanted)) await openConversation(wanted);
  document.body.dataset.ready = 'true';
}

start().catch((error) => toast(`Could not start: ${explain(error)}`, 'error'));
