// One conversation's messages as a list, shared by the patient page and the console.
// Messages are kept by their conversation `seq`, so a replayed or re-read message shows once
// and a late one lands in its place.

export class ChatView {
  constructor(list, { mySubject }) {
    this.list = list;
    this.mySubject = mySubject;
    this.bySeq = new Map();
  }

  get lastSeq() {
    return this.bySeq.size ? Math.max(...this.bySeq.keys()) : 0;
  }

  /** Adds a `chat.message` data object; returns false when it was already shown. */
  add(msg) {
    if (this.bySeq.has(msg.seq)) return false;
    const li = document.createElement('li');
    li.dataset.seq = String(msg.seq);
    li.dataset.clientId = msg.client_id;
    if (msg.from?.subject === this.mySubject) li.classList.add('mine');
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = `${msg.from?.name ?? 'Someone'} (${msg.from?.role ?? ''})`;
    const body = document.createElement('span');
    body.className = 'body';
    body.textContent = msg.body; // text only: a message can never inject markup
    li.append(who, body);
    const after = [...this.bySeq.keys()].filter((s) => s > msg.seq).sort((a, b) => a - b)[0];
    this.list.insertBefore(li, after === undefined ? null : this.list.querySelector(`li[data-seq="${after}"]`));
    this.bySeq.set(msg.seq, li);
    this.list.scrollTop = this.list.scrollHeight;
    return true;
  }

  /** Reads the conversation's newest page (after a reconnect the hub replays no chat). */
  async reload(client, visitId) {
    const page = await client.request('chat.history', { visit_id: visitId });
    for (const m of page.messages) this.add(m);
    return page;
  }
}
