// The customer's chat widget (Carol): opens or reuses her conversation, shows its public
// messages, sends hers, and shows when an agent is typing a reply. As a customer it can
// only ever receive public events: notes never reach this page.

import { Unsent, el, explain, nameOf, session, showConnection, throttle, timeOf, toast } from './common.js';

const USER = 'carol';
const INBOX = 'support';

const embedded = new URLSearchParams(location.search).has('embed');
if (embedded) document.body.classList.add('embedded');

const { client, api } = session(USER);
const messages = document.getElementById('messages');
const typingLine = document.getElementById('agent-typing');
const form = document.getElementById('widget-form');
const input = document.getElementById('widget-input');
const sendButton = document.getElementById('widget-send');
showConnection(client, document.getElementById('conn'));

let conversationId = null;
/** Who is typing a reply, with the time their indicator runs out. */
const typists = new Map();

function scrollDown() {
  messages.scrollTop = messages.scrollHeight;
}

function render({ seq, event }) {
  if (event.kind !== 'message') return;
  const mine = event.actor.id === USER;
  stopTyping(event.actor.id);
  messages.append(
    el(
      'li',
      { class: `msg ${mine ? 'mine' : 'theirs'}`, dataset: { seq: String(seq) } },
      el('div', { class: 'bubble' }, event.body ?? ''),
      el('div', { class: 'meta' }, mine ? `You · ${timeOf(event.at)}` : `${nameOf(event.actor)} · ${timeOf(event.at)}`),
    ),
  );
  scrollDown();
}

function renderTyping() {
  const now = Date.now();
  for (const [id, entry] of typists) if (entry.until <= now) typists.delete(id);
  if (typists.size === 0) {
    typingLine.replaceChildren();
    return;
  }
  const names = [...typists.values()].map((t) => t.name).join(' and ');
  typingLine.replaceChildren(
    el('span', { class: 'dots', 'aria-hidden': 'true' }, el('span'), el('span'), el('span')),
    `${names} ${typists.size > 1 ? 'are' : 'is'} typing…`,
  );
}

function stopTyping(id) {
  if (typists.delete(id)) renderTyping();
}

setInterval(renderTyping, 1000);

/** Carol's open conversation, or a new one. */
async function openConversation() {
  const { conversations } = await api.call('GET', `/v1/conversations?inbox=${INBOX}&limit=20`);
  const open = conversations.find((c) => c.status !== 'resolved');
  if (open !== undefined) return open.id;
  const created = await api.openConversation({ inbox_id: INBOX, subject: 'Chat from the website' });
  return created.id;
}

async function start() {
  client.connect();
  conversationId = await openConversation();
  document.body.dataset.conversationId = conversationId;
  const subscription = client.subscribe(conversationId);
  subscription.on('event', render);
  subscription.on('reset', () => messages.querySelectorAll('.msg:not(.system)').forEach((n) => n.remove()));
  subscription.on('typing', ({ user, audience }) => {
    if (audience !== 'public' || user.id === USER) return;
    typists.set(user.id, { name: nameOf(user), until: Date.now() + 5000 });
    renderTyping();
  });
  await subscription.ready(15_000);
  input.disabled = false;
  sendButton.disabled = false;
  document.body.dataset.ready = 'true';
  input.focus();
}

const unsent = new Unsent();

const sendTyping = throttle(() => {
  if (conversationId !== null) client.typing(conversationId, 'public');
}, 2000);

input.addEventListener('input', () => {
  if (input.value.trim() !== '') sendTyping();
});
input.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && !event.shiftKey) {
    event.preventDefault();
    form.requestSubmit();
  }
});
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const body = input.value.trim();
  if (body === '' || conversationId === null) return;
  input.value = '';
  const key = `${conversationId} send ${body}`;
  try {
    await client.send(conversationId, body, { clientId: unsent.clientIdFor(key) });
    unsent.sent();
  } catch (error) {
    unsent.failed(key, error);
    input.value = body;
    toast(`Not sent (${explain(error)})`, 'error');
  }
});

start().catch((error) => {
  toast(`Could not start the chat: ${explain(error)}`, 'error');
});
