// The console's multi-chat: every conversation of the caregiver with its unread count, and any
// number of them open side by side. An open conversation counts as read: its new messages are
// reported with `chat.read`, which the hub stores and the portal's unread counts come from.

import { ChatView } from './chat-view.js';
import { newClientId } from './visithub-client.js';

const OVER = ['ended', 'cancelled', 'abandoned'];

export class Conversations {
  constructor(client, me, { list, grid }) {
    this.client = client;
    this.me = me;
    this.list = list;
    this.grid = grid;
    this.byVisit = new Map(); // visit_id -> {info, unread, view, card}
    client.on('chat.message', (m) => this._onMessage(m));
    client.on('chat.participants', (d) => this._withCard(d.visit_id, (c) => this._showParticipants(c, d.participants)));
    client.on('chat.read', (d) => {
      const c = this.byVisit.get(d.visit_id);
      if (c && d.by?.subject === this.me.subject) {
        c.unread = Math.max(0, Math.min(c.unread, c.info.last_seq - d.up_to_seq));
        this._renderList();
      }
    });
    client.on('visit.updated', (d) => {
      const c = this.byVisit.get(d.visit_id);
      if (!c) return;
      c.info.status = d.status;
      if (d.state) c.info.state = d.state;
      this._renderList();
      if (c.card) c.card.querySelector('.status').textContent = d.status;
    });
  }

  /** Replaces the list with a portal snapshot's conversations (open cards stay open). */
  load(conversations) {
    const seen = new Set();
    for (const info of conversations) {
      seen.add(info.visit_id);
      const c = this.byVisit.get(info.visit_id);
      if (c) {
        c.info = info;
        c.unread = c.card ? 0 : info.unread;
      } else {
        this.byVisit.set(info.visit_id, { info, unread: info.unread, view: null, card: null });
      }
    }
    for (const [id, c] of this.byVisit) if (!seen.has(id) && !c.card) this.byVisit.delete(id);
    this._renderList();
    for (const c of this.byVisit.values()) if (c.card) c.view.reload(this.client, c.info.visit_id).then(() => this._markRead(c));
  }

  /** Adds a conversation the caregiver just entered (a join or a claim) and opens it. */
  add(info) {
    if (!this.byVisit.has(info.visit_id)) {
      this.byVisit.set(info.visit_id, { info: { last_seq: 0, ...info }, unread: 0, view: null, card: null });
    }
    this.open(info.visit_id);
  }

  async join(entry, state) {
    const ack = await this.client.request('chat.join', { visit_id: entry.visit_id });
    this.add({ visit_id: entry.visit_id, state, status: 'waiting', patient_name: entry.display_name });
    this._withCard(entry.visit_id, (c) => this._showParticipants(c, ack.participants));
  }

  open(visitId) {
    const c = this.byVisit.get(visitId);
    if (!c || c.card) return;
    c.card = this._card(c);
    this.grid.prepend(c.card);
    c.view = new ChatView(c.card.querySelector('.chat-log'), { mySubject: this.me.subject });
    c.unread = 0;
    this._renderList();
    c.view.reload(this.client, visitId).then(() => this._markRead(c)).catch(() => {});
  }

  close(visitId) {
    const c = this.byVisit.get(visitId);
    if (!c?.card) return;
    c.card.remove();
    c.card = null;
    c.view = null;
  }

  _onMessage(m) {
    let c = this.byVisit.get(m.visit_id);
    if (!c) {
      // A conversation handed to us, or joined from another of our sessions.
      c = { info: { visit_id: m.visit_id, state: '', status: '', patient_name: '', last_seq: 0 }, unread: 0 };
      this.byVisit.set(m.visit_id, c);
    }
    if (m.from?.role === 'patient') c.info.patient_name ||= m.from.name;
    c.info.last_seq = Math.max(c.info.last_seq ?? 0, m.seq);
    if (c.card) {
      c.view.add(m);
      this._markRead(c);
    } else if (m.from?.subject !== this.me.subject) {
      c.unread += 1;
    }
    this._renderList();
  }

  _markRead(c) {
    const seq = c.view?.lastSeq ?? 0;
    if (seq > 0) this.client.request('chat.read', { visit_id: c.info.visit_id, up_to_seq: seq }).catch(() => {});
  }

  _withCard(visitId, fn) {
    const c = this.byVisit.get(visitId);
    if (c?.card) fn(c);
  }

  _showParticipants(c, participants) {
    c.card.querySelector('.participants').textContent = participants.map((p) => `${p.name} (${p.role})`).join(', ');
  }

  _renderList() {
    this.list.replaceChildren(
      ...[...this.byVisit.values()].map((c) => {
        const li = document.createElement('li');
        li.dataset.visitId = c.info.visit_id;
        const badge = document.createElement('span');
        badge.className = `badge unread${c.unread ? '' : ' zero'}`;
        badge.textContent = String(c.unread);
        const name = document.createElement('span');
        name.textContent = `${c.info.patient_name || 'Patient'} · ${c.info.state} · ${c.info.status}`;
        const btn = document.createElement('button');
        btn.className = 'small secondary open-chat';
        btn.textContent = c.card ? 'Open' : 'Show';
        btn.disabled = Boolean(c.card);
        btn.onclick = () => this.open(c.info.visit_id);
        li.append(badge, name, btn);
        return li;
      }),
    );
  }

  _card(c) {
    const id = c.info.visit_id;
    const card = document.createElement('div');
    card.className = 'card chat-card';
    card.dataset.chat = id;
    card.innerHTML = `
      <h3><span class="name"></span><span class="pill status"></span><span class="spacer"></span>
        <button class="small secondary hide" type="button">Hide</button></h3>
      <p class="muted participants"></p>
      <ul class="chat-log"></ul>
      <form class="chat-form"><input class="chat-input" maxlength="4000" placeholder="Message" autocomplete="off">
        <button class="chat-send" type="submit">Send</button></form>
      <form class="handoff"><input class="handoff-to" placeholder="Hand off to (subject)" maxlength="128">
        <button class="small secondary" type="submit">Hand off</button></form>
      <div class="notice error hidden" role="alert"></div>`;
    card.querySelector('.name').textContent = c.info.patient_name || 'Patient';
    card.querySelector('.status').textContent = c.info.status;
    const error = card.querySelector('.notice');
    const fail = (what, err) => {
      error.textContent = `${what} failed: ${err.code}`;
      error.classList.remove('hidden');
    };
    card.querySelector('.hide').onclick = () => {
      this.close(id);
      this._renderList();
    };
    card.querySelector('.chat-form').onsubmit = async (ev) => {
      ev.preventDefault();
      const input = card.querySelector('.chat-input');
      const body = input.value;
      if (!body.trim() || OVER.includes(c.info.status)) return;
      input.value = '';
      error.classList.add('hidden');
      const message = { visit_id: id, client_id: newClientId(), body };
      for (let attempt = 1; ; attempt++) {
        try {
          await this.client.request('chat.send', message);
          return;
        } catch (err) {
          if (err.code !== 'connection_lost' || attempt >= 3) return fail('Sending', err);
        }
      }
    };
    card.querySelector('.handoff').onsubmit = async (ev) => {
      ev.preventDefault();
      const to = card.querySelector('.handoff-to').value.trim();
      if (!to) return;
      try {
        await this.client.request('chat.handoff', { visit_id: id, to_subject: to });
        this.close(id);
        this.byVisit.delete(id);
        this._renderList();
      } catch (err) {
        fail('Handoff', err);
      }
    };
    return card;
  }
}
