// The patient page: intake, the waiting room (live place in line and estimate), chat with the
// care team, and the video call once a provider starts the visit.

import { VisithubClient, VisitCall, intake, getJson, newClientId } from './visithub-client.js';
import { US_STATES, stateName, formatWait } from './states.js';
import { ChatView } from './chat-view.js';

const $ = (id) => document.getElementById(id);
const STORE_KEY = 'visithub.patient';
const base = location.origin;

// The page's state, also read by the end-to-end tests.
const demo = (window.visithubDemo = { client: null, call: null, visitId: null, status: null });

for (const [code, name] of US_STATES) $('state').add(new Option(`${name} (${code})`, code));
$('state').value = 'WA';

function show(el, on = true) {
  el.classList.toggle('hidden', !on);
}

function notice(el, text) {
  el.textContent = text;
  show(el, Boolean(text));
}

/** When the hub said to come back, as a local time the patient can act on. */
function reopening(retryAfterSecs) {
  if (!retryAfterSecs) return '';
  // Rounded up to the minute: the hub counts to the opening instant, the patient reads a clock.
  const at = new Date(Math.ceil((Date.now() + retryAfterSecs * 1000) / 60000) * 60000);
  const sameDay = at.toDateString() === new Date().toDateString();
  const time = at.toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });
  const day = sameDay ? 'today' : at.toLocaleDateString([], { weekday: 'long', month: 'short', day: 'numeric' });
  return `${day} at ${time} (in ${formatWait(retryAfterSecs).replace('about ', '')})`;
}

function refusalText(err, state) {
  const where = stateName(state);
  const when = reopening(err.retryAfterSecs);
  switch (err.code) {
    case 'outside_hours':
      return `Virtual visits in ${where} are closed right now.` + (when ? ` They open again ${when}.` : '');
    case 'queue_closing':
      return `We could not see you in ${where} before closing time today.` + (when ? ` Please come back ${when}.` : '');
    case 'state_busy':
      return `Our providers in ${where} are very busy right now.` + (when ? ` Please try again ${when}.` : '');
    case 'queue_full':
      return `The waiting room for ${where} is full at the moment.` + (when ? ` Please try again ${when}.` : '');
    case 'validation_failed':
    case 'invalid_state_code':
      return `Please check the form: ${err.message}`;
    default:
      return `Your request could not be sent (${err.code}). Please try again.`;
  }
}

$('intake-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  notice($('intake-error'), '');
  $('intake-submit').disabled = true;
  const state = $('state').value;
  try {
    const receipt = await intake(
      base,
      { displayName: $('name').value, state, reason: $('reason').value },
      { idempotencyKey: newClientId('intake') },
    );
    const saved = { token: receipt.patient_token, visitId: receipt.visit_id, name: $('name').value };
    sessionStorage.setItem(STORE_KEY, JSON.stringify(saved));
    showWaiting(receipt.position, null, receipt.estimated_wait_secs);
    await enter(saved);
  } catch (err) {
    notice($('intake-error'), refusalText(err, state));
    $('intake-error').dataset.code = err.code ?? '';
  } finally {
    $('intake-submit').disabled = false;
  }
});

function showWaiting(position, queueLength, waitSecs) {
  $('position').textContent = position ?? '–';
  $('queue-length').textContent = queueLength ?? '–';
  $('wait').textContent = formatWait(waitSecs);
}

const HEADLINES = {
  waiting: 'You are in line',
  claimed: 'A provider is getting ready for you',
  in_visit: 'Your visit is in progress',
  wrap_up: 'The call has ended',
  ended: 'Your visit has ended',
  cancelled: 'Your request was cancelled',
  abandoned: 'Your visit was closed because we lost contact',
};

function setStatus(status) {
  demo.status = status;
  $('visit-status').textContent = status;
  $('visit-headline').textContent = HEADLINES[status] ?? status;
  show($('waiting-details'), status === 'waiting');
  show($('cancel'), status === 'waiting' || status === 'claimed');
  show($('leave-call'), status === 'in_visit');
  const over = ['wrap_up', 'ended', 'cancelled', 'abandoned'].includes(status);
  show($('start-over'), over && status !== 'wrap_up');
  $('chat-send').disabled = ['ended', 'cancelled', 'abandoned'].includes(status);
  if (over && demo.call) {
    demo.call.close();
    show($('call'), false);
    notice($('visit-notice'), 'The video call has ended.');
  }
}

async function enter(saved, { restored = false } = {}) {
  demo.visitId = saved.visitId;
  show($('intake'), false);
  show($('visit'));
  const client = new VisithubClient({ url: '/v1/ws', token: saved.token });
  demo.client = client;
  const subject = `patient:${saved.visitId}`;
  const chat = new ChatView($('chat-log'), { mySubject: subject });
  demo.chat = chat;

  client.on('status', ({ status }) => {
    $('conn').dataset.status = status;
    $('conn').textContent = status === 'open' ? 'connected' : status;
  });
  client.on('queue.position', (d) => showWaiting(d.position, d.queue_length, d.estimated_wait_secs));
  client.on('visit.updated', (d) => d.visit_id === saved.visitId && setStatus(d.status));
  client.on('chat.message', (m) => m.visit_id === saved.visitId && chat.add(m));
  client.on('chat.participants', (d) => {
    const team = d.participants.filter((p) => p.role !== 'patient').map((p) => `${p.name} (${p.role})`);
    $('participants').textContent = team.length ? ` · With you: ${team.join(', ')}` : '';
  });
  client.on('visit.started', (d) => {
    $('peer-name').textContent = d.peer?.name ?? 'your provider';
    show($('call'));
    setStatus('in_visit');
  });
  // The hub asks whether the patient is still in front of the screen: only a person answers.
  client.on('visit.still_there', (d) => {
    notice($('still-there-text'), `Are you still there? Please answer within ${d.respond_within_secs} seconds to keep your place.`);
    show($('still-there'));
  });
  // A new session (or a resume the hub could not honour): read the visit and the chat again.
  client.on('reload', () => refresh(client, saved, chat));

  demo.call = new VisitCall(client, {
    visitId: saved.visitId,
    // A reloaded page may have been in this call already: its new connection restarts ICE.
    rejoin: restored,
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

  await client.connect();
  await refresh(client, saved, chat);
}

async function refresh(client, saved, chat) {
  try {
    const visit = await getJson(base, `/v1/visits/${saved.visitId}`, saved.token);
    setStatus(visit.status);
    if (visit.status === 'waiting') showWaiting(visit.position, null, visit.current_estimated_wait_secs);
    await chat.reload(client, saved.visitId);
  } catch (err) {
    notice($('visit-notice'), `Could not load your visit (${err.code}).`);
  }
}

$('chat-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const body = $('chat-input').value;
  if (!body.trim() || !demo.client) return;
  $('chat-input').value = '';
  notice($('chat-error'), '');
  const message = { visit_id: demo.visitId, client_id: newClientId(), body };
  // The same client_id on a retry: the hub stores the message once however often it is sent.
  for (let attempt = 1; ; attempt++) {
    try {
      await demo.client.request('chat.send', message);
      return;
    } catch (err) {
      if (err.code !== 'connection_lost' || attempt >= 3) {
        notice($('chat-error'), `Message not sent (${err.code}).`);
        return;
      }
    }
  }
});

$('cancel').addEventListener('click', async () => {
  const saved = JSON.parse(sessionStorage.getItem(STORE_KEY) ?? 'null');
  if (!saved) return;
  const res = await fetch(`/v1/visits/${saved.visitId}/cancel`, {
    method: 'POST',
    headers: { authorization: `Bearer ${saved.token}` },
  });
  if (!res.ok) notice($('visit-notice'), 'The request could not be cancelled any more.');
});

$('leave-call').addEventListener('click', () => {
  demo.client.request('visit.transition', { visit_id: demo.visitId, to: 'wrap_up' }).catch((err) => {
    notice($('visit-notice'), `Could not leave the call (${err.code}).`);
  });
});

$('still-here').addEventListener('click', () => {
  show($('still-there'), false);
  demo.client.request('visit.still_here', { visit_id: demo.visitId }).catch((err) => {
    notice($('visit-notice'), `Could not answer (${err.code}).`);
  });
});

$('start-over').addEventListener('click', () => {
  sessionStorage.removeItem(STORE_KEY);
  location.reload();
});

// A reload of the page keeps the visit: the token is kept for this tab only.
const saved = JSON.parse(sessionStorage.getItem(STORE_KEY) ?? 'null');
if (saved) enter(saved, { restored: true }).catch((err) => notice($('visit-notice'), `Could not connect (${err.code}).`));
