// The care team console: live queues of the states the caregiver covers (portal snapshot, then
// deltas), the busy flag, providers' presence, the multi-chat panel, and for providers the
// claim-and-call workflow of a video visit.

import { VisithubClient, VisitCall, demoSignIn } from './visithub-client.js';
import { formatWait } from './states.js';
import { Conversations } from './console-chats.js';

const $ = (id) => document.getElementById(id);
const base = location.origin;

// The console's state, also read by the end-to-end tests.
const demo = (window.visithubDemo = { client: null, call: null, visit: null, queues: new Map() });

function show(el, on = true) {
  el.classList.toggle('hidden', !on);
}

function notice(el, text) {
  el.textContent = text;
  show(el, Boolean(text));
}

$('signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  notice($('signin-error'), '');
  try {
    const signed = await demoSignIn(base, $('signin-subject').value.trim());
    await start(signed.token);
  } catch (err) {
    notice($('signin-error'), `Sign-in refused (${err.code}): ${err.message}`);
  }
});

$('token-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  try {
    await start($('signin-token').value.trim());
  } catch (err) {
    notice($('signin-error'), `Could not connect with this token (${err.code}).`);
  }
});

async function start(token) {
  const client = new VisithubClient({ url: '/v1/ws', token });
  demo.client = client;
  client.on('status', ({ status }) => {
    $('conn').dataset.status = status;
    $('conn').textContent = status === 'open' ? 'connected' : status;
  });
  const welcome = await client.connect();
  const me = { subject: welcome.subject, role: welcome.role };
  demo.me = me;
  $('me').textContent = `${welcome.subject} · ${welcome.role} · ${welcome.states.join(', ')}`;
  show($('signin'), false);
  show($('workspace'));
  show($('presence-box'), me.role === 'provider');

  const chats = new Conversations(client, me, { list: $('conversations'), grid: $('chats') });
  demo.chats = chats;
  const providers = new Map();

  client.on('queue.delta', applyDelta);
  // A batch of providers, each with their newest presence.
  client.on('presence.updated', (d) => {
    for (const p of d.providers) providers.set(p.subject, p);
    renderProviders(providers);
  });
  client.on('visit.updated', (d) => {
    if (demo.visit?.visit_id === d.visit_id) setVisitStatus(d.status);
  });
  client.on('visit.started', (d) => {
    if (demo.visit?.visit_id === d.visit_id) setVisitStatus('in_visit');
  });
  // A new session: the console starts over from a fresh portal snapshot.
  client.on('reload', () => loadPortal(client, chats, providers));
  $('presence').onchange = () =>
    client.request('presence.set', { status: $('presence').value }).catch((e) => alert(`presence: ${e.code}`));

  await loadPortal(client, chats, providers);
}

async function loadPortal(client, chats, providers) {
  const portal = await client.request('portal.snapshot');
  demo.queues = new Map(portal.queues.map((q) => [q.state, q]));
  renderQueues();
  providers.clear();
  for (const p of portal.providers) providers.set(p.subject, p);
  renderProviders(providers);
  chats.load(portal.conversations);
  const live = portal.conversations.find((c) => ['claimed', 'in_visit', 'wrap_up'].includes(c.status));
  if (demo.me.role === 'provider' && live && !demo.visit) {
    openVisit(client, { visit_id: live.visit_id, patient_name: live.patient_name }, live.status);
  }
}

// signaling-protocol.md, queue.delta: remove `removed`, then insert each of `added` at its
// position; the others keep their order.
function applyDelta(d) {
  const q = demo.queues.get(d.state);
  if (!q) return;
  const gone = new Set(d.removed);
  const visits = q.visits.filter((v) => !gone.has(v.visit_id));
  for (const entry of [...d.added].sort((a, b) => a.position - b.position)) {
    visits.splice(Math.max(0, entry.position - 1), 0, entry);
  }
  visits.forEach((v, i) => (v.position = i + 1));
  Object.assign(q, { version: d.version, busy: d.busy, staffing: d.staffing, visits });
  renderQueues();
}

function renderQueues() {
  const root = $('queues');
  root.replaceChildren(...[...demo.queues.values()].map(queueCard));
}

function queueCard(q) {
  const card = document.createElement('div');
  card.className = 'card queue';
  card.dataset.state = q.state;
  card.innerHTML = `
    <div class="head"><h2></h2><span class="pill busy-flag"></span><span class="muted staffing"></span>
      <button class="small secondary busy-toggle" type="button"></button></div>
    <table><thead><tr><th>#</th><th>Patient</th><th>Reason</th><th>Est. wait</th><th></th></tr></thead>
      <tbody></tbody></table>`;
  card.querySelector('h2').textContent = `${q.state} · ${q.visits.length} waiting`;
  const flag = card.querySelector('.busy-flag');
  flag.textContent = q.busy ? 'busy' : 'normal intake';
  flag.classList.toggle('busy', q.busy);
  card.querySelector('.staffing').textContent =
    `providers: ${q.staffing.online} online, ${q.staffing.available} available`;
  const busy = card.querySelector('.busy-toggle');
  busy.dataset.state = q.state;
  busy.textContent = q.busy ? 'Clear busy' : 'Mark busy';
  busy.onclick = () =>
    demo.client.request('state.set_busy', { state: q.state, busy: !q.busy }).catch((e) => alert(`busy: ${e.code}`));
  const body = card.querySelector('tbody');
  for (const v of q.visits) {
    const tr = document.createElement('tr');
    tr.dataset.visitId = v.visit_id;
    for (const text of [v.position, v.display_name, v.reason, formatWait(v.estimated_wait_secs)]) {
      const td = document.createElement('td');
      td.textContent = String(text);
      tr.append(td);
    }
    const actions = document.createElement('td');
    const chat = document.createElement('button');
    chat.className = 'small secondary join';
    chat.textContent = 'Chat';
    chat.onclick = () => demo.chats.join(v, q.state).catch((e) => alert(`chat: ${e.code}`));
    actions.append(chat);
    if (demo.me.role === 'provider') {
      const claim = document.createElement('button');
      claim.className = 'small claim';
      claim.textContent = 'Claim';
      claim.onclick = () => claimVisit(v, q.state);
      actions.append(' ', claim);
    }
    tr.append(actions);
    body.append(tr);
  }
  return card;
}

function renderProviders(providers) {
  $('providers').replaceChildren(
    ...[...providers.values()]
      .filter((p) => p.status !== 'offline')
      .map((p) => {
        const li = document.createElement('li');
        li.textContent = `${p.name} (${p.subject}) · ${p.status} · ${p.states.join(', ')}`;
        return li;
      }),
  );
}

async function claimVisit(entry, state) {
  try {
    await demo.client.request('visit.claim', { visit_id: entry.visit_id });
  } catch (err) {
    alert(`Claim refused: ${err.code}`);
    return;
  }
  demo.chats.add({ visit_id: entry.visit_id, state, status: 'claimed', patient_name: entry.display_name });
  openVisit(demo.client, { visit_id: entry.visit_id, patient_name: entry.display_name }, 'claimed');
}

function openVisit(client, visit, status) {
  demo.visit = visit;
  $('visit-patient').textContent = visit.patient_name;
  show($('visit-panel'));
  notice($('visit-notice'), '');
  $('remote-video').srcObject = null;
  $('local-video').srcObject = null;
  demo.call = new VisitCall(client, {
    visitId: visit.visit_id,
    // A console reloaded mid-call joins with a new connection, which restarts ICE.
    rejoin: status === 'in_visit',
    getLocalStream: () => navigator.mediaDevices.getUserMedia({ video: true, audio: true }),
    onTrack: (track, stream) => {
      $('remote-video').srcObject = stream;
    },
    onState: (s) => {
      $('call-state').dataset.state = s.connection;
      $('call-state').textContent = s.closed ? 'ended' : s.connection;
      if (demo.call?.localStream && !$('local-video').srcObject) $('local-video').srcObject = demo.call.localStream;
    },
  });
  setVisitStatus(status);
}

function setVisitStatus(status) {
  if (!demo.visit) return;
  demo.visit.status = status;
  $('visit-status').textContent = status;
  show($('start-visit'), status === 'claimed');
  show($('release-visit'), status === 'claimed');
  show($('end-call'), status === 'in_visit');
  show($('finish-visit'), status === 'wrap_up');
  show($('call'), status === 'in_visit');
  if (['wrap_up', 'ended', 'cancelled', 'abandoned'].includes(status)) demo.call?.close();
  if (status === 'wrap_up') notice($('visit-notice'), 'The call has ended. Finish the visit when your notes are done.');
  if (['ended', 'cancelled', 'abandoned'].includes(status)) {
    notice($('visit-notice'), `The visit is ${status}.`);
  }
  if (status === 'waiting') {
    demo.call?.close();
    show($('visit-panel'), false);
    demo.visit = null;
  }
}

function transition(to) {
  const visit = demo.visit;
  if (!visit) return;
  demo.client
    .request('visit.transition', { visit_id: visit.visit_id, to })
    .catch((err) => notice($('visit-notice'), `Could not move the visit to ${to} (${err.code}).`));
}

$('start-visit').onclick = () => transition('in_visit');
$('release-visit').onclick = () => transition('waiting');
$('end-call').onclick = () => transition('wrap_up');
$('finish-visit').onclick = () => transition('ended');
