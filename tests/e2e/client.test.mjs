// Unit tests of examples/web/visithub-client.js against a scripted WebSocket (node's test
// runner): replies, timeouts, resume with replay, requests made offline, in-flight requests
// after a resume or a new session, duplicate frames, pacing, rate_limited retries, final closes.
// Run by tests/js_client.rs.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VisithubClient } from '../../examples/web/visithub-client.js';

/** A WebSocket whose far end is the test: it reads what the client sent and plays the hub. */
class FakeSocket {
  static all = [];
  constructor(url, protocol) {
    this.url = new URL(url);
    this.protocol = protocol;
    this.readyState = 1;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code = 1000, reason = '') {
    this.drop(code, reason);
  }
  /** The connection ends (either side). */
  drop(code = 1006, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }
  hub(frame) {
    this.onmessage({ data: JSON.stringify({ v: 1, data: {}, ...frame }) });
  }
  static last() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

async function until(what, check, timeoutMs = 3000) {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await tick();
  }
}

function welcome(session = 's1', rate = 50) {
  return { seq: 1, type: 'welcome', data: { session_id: session, role: 'patient', subject: 'patient:v1', states: [], limits: { messages_per_second: rate } } };
}

async function connected(options = {}) {
  FakeSocket.all = [];
  const client = new VisithubClient({
    url: 'ws://127.0.0.1:1/v1/ws',
    token: 'tok',
    heartbeatMs: 0,
    backoffInitialMs: 1,
    backoffMaxMs: 5,
    requestTimeoutMs: 1000,
    WebSocketImpl: FakeSocket,
    ...options,
  });
  const opened = client.connect();
  FakeSocket.last().hub(welcome('s1', options.rate));
  await opened;
  return client;
}

test('connects with the token and subprotocol; replies resolve and errors reject with their code', async () => {
  const client = await connected();
  const ws = FakeSocket.last();
  assert.equal(ws.url.searchParams.get('access_token'), 'tok');
  assert.equal(ws.protocol, 'visithub.v1');
  assert.equal(client.status, 'open');
  const ok = client.request('ping');
  const bad = client.request('queue.subscribe', { state: 'TX' });
  await until('two requests', () => ws.sent.length === 2);
  const [a, b] = ws.sent;
  assert.notEqual(a.id, b.id);
  ws.hub({ seq: 2, id: a.id, type: 'ack', data: { server_time: 'now' } });
  ws.hub({ seq: 3, id: b.id, type: 'error', data: { code: 'state_not_covered', message: 'no', retry_after_secs: 4 } });
  assert.deepEqual(await ok, { server_time: 'now' });
  await assert.rejects(bad, (e) => e.code === 'state_not_covered' && e.retryAfterSecs === 4);
  client.close();
});

test('a request without a reply times out', async () => {
  const client = await connected();
  await assert.rejects(client.request('ping', {}, { timeoutMs: 20 }), (e) => e.code === 'timeout');
  client.close();
});

test('resumes with session_id and last_seq; missed frames arrive once; offline requests wait for the resume', async () => {
  const client = await connected();
  const first = FakeSocket.last();
  const messages = [];
  client.on('chat.message', (m) => messages.push(m.seq));
  const resumed = [];
  client.on('resumed', (d) => resumed.push(d));
  first.hub({ seq: 2, type: 'chat.message', data: { seq: 1 } });
  first.hub({ seq: 2, type: 'chat.message', data: { seq: 1 } }); // a duplicate frame is dropped
  first.drop(1006);
  await until('a new socket', () => FakeSocket.all.length === 2);
  const second = FakeSocket.last();
  assert.equal(second.url.searchParams.get('session_id'), 's1');
  assert.equal(second.url.searchParams.get('last_seq'), '2');
  const offline = client.request('chat.send', { visit_id: 'v1', client_id: 'c1', body: 'hi' });
  await tick();
  assert.equal(second.sent.length, 0, 'nothing is sent before the session is back');
  second.hub({ seq: 3, type: 'chat.message', data: { seq: 2 } });
  second.hub({ seq: 4, type: 'session.resumed', data: { session_id: 's1', recovered: true, replayed: 1 } });
  assert.deepEqual(messages, [1, 2]);
  assert.deepEqual(resumed, [{ session_id: 's1', recovered: true, replayed: 1 }]);
  await until('the offline request', () => second.sent.length === 1);
  assert.equal(second.sent[0].type, 'chat.send');
  second.hub({ seq: 5, id: second.sent[0].id, type: 'ack', data: { seq: 3 } });
  assert.deepEqual(await offline, { seq: 3 });
  client.close();
});

test('after a recovered resume an unanswered in-flight request is sent again; after a new session it fails', async () => {
  const client = await connected();
  const first = FakeSocket.last();
  const lost = client.request('chat.read', { visit_id: 'v1', up_to_seq: 1 });
  await until('sent', () => first.sent.length === 1);
  first.drop(1006);
  await until('a new socket', () => FakeSocket.all.length === 2);
  const second = FakeSocket.last();
  second.hub({ seq: 2, type: 'session.resumed', data: { session_id: 's1', recovered: true, replayed: 0 } });
  await until('the resend', () => second.sent.length === 1);
  assert.equal(second.sent[0].id, first.sent[0].id);
  second.hub({ seq: 3, id: second.sent[0].id, type: 'ack', data: { up_to_seq: 1 } });
  assert.deepEqual(await lost, { up_to_seq: 1 });

  const reloads = [];
  client.on('reload', (d) => reloads.push(d.reason));
  const unknown = client.request('chat.read', { visit_id: 'v1', up_to_seq: 2 });
  await until('sent', () => second.sent.length === 2);
  second.drop(1006);
  await until('a third socket', () => FakeSocket.all.length === 3);
  FakeSocket.last().hub({ ...welcome('s2'), data: { ...welcome('s2').data, recovered: false } });
  await assert.rejects(unknown, (e) => e.code === 'connection_lost');
  assert.deepEqual(reloads, ['new_session']);
  assert.equal(client.sessionId, 's2');
  client.close();
});

test('requests are paced below the announced rate, in order', async () => {
  const client = await connected({ rate: 10, requestTimeoutMs: 5000 });
  const ws = FakeSocket.last();
  const all = Array.from({ length: 15 }, (_, i) => client.request('ping', { n: i }));
  await tick();
  assert.ok(ws.sent.length <= 9, `at most the burst goes out at once (sent ${ws.sent.length})`);
  await until('every request', () => ws.sent.length === 15, 5000);
  assert.deepEqual(ws.sent.map((f) => f.data.n), [...Array(15).keys()]);
  for (const f of ws.sent) ws.hub({ seq: 100 + Number(f.id.slice(1)), id: f.id, type: 'ack', data: {} });
  await Promise.all(all);
  client.close();
});

test('a rate_limited request is sent again once', async () => {
  const client = await connected();
  const ws = FakeSocket.last();
  const req = client.request('ping');
  await until('sent', () => ws.sent.length === 1);
  ws.hub({ seq: 2, id: ws.sent[0].id, type: 'error', data: { code: 'rate_limited', message: 'slow', retry_after_secs: 0 } });
  await until('the retry', () => ws.sent.length === 2);
  assert.equal(ws.sent[1].id, ws.sent[0].id);
  ws.hub({ seq: 3, id: ws.sent[1].id, type: 'error', data: { code: 'rate_limited', message: 'slow', retry_after_secs: 0 } });
  await assert.rejects(req, (e) => e.code === 'rate_limited');
  client.close();
});

test('a protocol_violation close is final: no reconnect, pending requests fail', async () => {
  const client = await connected();
  const ws = FakeSocket.last();
  const pending = client.request('ping');
  ws.drop(4003, 'protocol_violation');
  await assert.rejects(pending, (e) => e.code === 'closed');
  await tick(30);
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(client.status, 'closed');
});
