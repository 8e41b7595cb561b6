// visithub browser client: one ES module, no dependencies, no build step.
//
// - VisithubClient: the WebSocket session (signaling-protocol.md, version 1). Connects with a
//   token, answers every request with a promise (ack or error, with a timeout), reconnects with
//   exponential backoff and jitter, and resumes the session from the last sequence number; when
//   the hub cannot replay what was missed it says so with a `reload` event.
// - VisitCall (visit-call.js, re-exported here): the WebRTC side of a visit, following the
//   hub's perfect-negotiation role, trickling candidates, and restarting ICE after a reconnect.
// - intake(), demoSignIn(): the REST calls a page needs before it has a socket.
//
// The API is documented in README.md beside this file.

export { VisitCall } from './visit-call.js';

export const PROTOCOL = 'visithub.v1';

/** A refusal from the hub (an `error` frame or a problem-details body), or a local failure
 * (`timeout`, `connection_lost`, `offline_queue_full`, `closed`, `network`). */
export class VisithubError extends Error {
  constructor(code, message, retryAfterSecs) {
    super(message || code);
    this.name = 'VisithubError';
    this.code = code;
    this.retryAfterSecs = retryAfterSecs ?? null;
  }
}

// Close codes after which reconnecting would not help (signaling-protocol.md, "Close codes").
const FINAL_CLOSES = new Map([
  [1000, 'normal'],
  [4003, 'protocol_violation'],
]);
const MAX_OFFLINE_QUEUE = 100;

/**
 * One hub session over a WebSocket that may be replaced any number of times.
 *
 * Events (subscribe with `on(type, fn)`; `fn` gets the frame's `data` and the whole frame):
 * every hub message type (`queue.position`, `chat.message`, `visit.started`, ...), and
 * - `welcome`   a new session started (also after a resume the hub could not honour);
 * - `resumed`   the session was resumed and every missed frame was replayed before this;
 * - `reload`    the hub could not replay what was missed: reload visit, chat and queue state;
 * - `status`    the connection changed: `{status: 'connecting'|'open'|'reconnecting'|'closed', ...}`.
 */
export class VisithubClient {
  constructor({
    url,
    token,
    getToken = null,
    requestTimeoutMs = 10000,
    heartbeatMs = 25000,
    backoffInitialMs = 500,
    backoffMaxMs = 30000,
    WebSocketImpl = globalThis.WebSocket,
  }) {
    if (!url || !token) throw new TypeError('VisithubClient needs url and token');
    this.url = url;
    this.token = token;
    this.getToken = getToken;
    this.requestTimeoutMs = requestTimeoutMs;
    this.heartbeatMs = heartbeatMs;
    this.backoffInitialMs = backoffInitialMs;
    this.backoffMaxMs = backoffMaxMs;
    this.WebSocketImpl = WebSocketImpl;

    this.status = 'closed';
    this.sessionId = null;
    this.lastSeq = 0;
    this.welcome = null;
    this.resumes = 0;
    this.lastResume = null;

    this._ws = null;
    this._handlers = new Map();
    this._pending = new Map(); // id -> {frame, resolve, reject, timer, sentOn}
    this._offline = []; // ids of requests waiting for a socket, in order
    this._nextId = 1;
    this._attempt = 0;
    this._retryTimer = null;
    this._heartbeat = null;
    this._holdUntil = 0;
    this._stopped = true;
    this._opened = null;
    this._outbox = []; // ids waiting for the rate budget, in order
    this._tokens = 1;
    this._refilledAt = Date.now();
    this._pumpTimer = null;
  }

  /** Opens the session; resolves with the `welcome` data, rejects if the first socket fails. */
  connect() {
    this._stopped = false;
    return new Promise((resolve, reject) => {
      this._opened = { resolve, reject };
      this._open();
    });
  }

  /** Closes the socket for good (no reconnect); pending requests fail with `closed`. */
  close() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    this._stopHeartbeat();
    if (this._ws) this._ws.close(1000, 'normal');
    this._ws = null;
    for (const id of [...this._pending.keys()]) this._fail(id, new VisithubError('closed', 'client closed'));
    this._setStatus('closed');
  }

  /** Subscribes to an event; returns the function that unsubscribes. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this._handlers.get(type)?.delete(fn);
  }

  /**
   * Sends a request; resolves with the ack's `data`, rejects with a VisithubError carrying the
   * hub's error code. While the socket is down the request waits (at most MAX_OFFLINE_QUEUE of
   * them) and goes out on the resumed session; the timeout runs from the call.
   */
  request(type, data = {}, { timeoutMs = this.requestTimeoutMs } = {}) {
    const id = `r${this._nextId++}`;
    const frame = { v: 1, id, type, data };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this._fail(id, new VisithubError('timeout', `${type} got no reply`)), timeoutMs);
      this._pending.set(id, { frame, resolve, reject, timer, sentOn: null });
      if (this.status === 'open') {
        this._send(id);
      } else if (this._offline.length >= MAX_OFFLINE_QUEUE) {
        this._fail(id, new VisithubError('offline_queue_full', 'too many requests waiting for the connection'));
      } else {
        this._offline.push(id);
      }
    });
  }

  /**
   * Test and diagnostics hook: drops the current socket as a network failure would (the hub
   * keeps the session) and keeps the client offline for `offlineMs` before it resumes.
   */
  simulateDisconnect({ offlineMs = 0 } = {}) {
    this._holdUntil = Date.now() + offlineMs;
    if (this._ws) this._ws.close(4999, 'simulated drop');
  }

  // --- internals ---------------------------------------------------------------------------

  _emit(type, data, frame) {
    for (const fn of this._handlers.get(type) ?? []) {
      try {
        fn(data, frame);
      } catch (e) {
        console.error(`visithub: ${type} handler failed`, e);
      }
    }
  }

  _setStatus(status, extra = {}) {
    this.status = status;
    this._emit('status', { status, ...extra });
  }

  _socketUrl() {
    const u = new URL(this.url, globalThis.location?.href);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    if (u.protocol === 'https:') u.protocol = 'wss:';
    u.searchParams.set('access_token', this.token);
    if (this.sessionId) {
      u.searchParams.set('session_id', this.sessionId);
      u.searchParams.set('last_seq', String(this.lastSeq));
    }
    return u.toString();
  }

  _open() {
    this._setStatus(this.sessionId ? 'reconnecting' : 'connecting', { attempt: this._attempt });
    let ws;
    try {
      ws = new this.WebSocketImpl(this._socketUrl(), PROTOCOL);
    } catch (e) {
      this._onSocketGone(null, 1006, String(e));
      return;
    }
    this._ws = ws;
    this._resuming = Boolean(this.sessionId);
    ws.onmessage = (ev) => this._onMessage(ws, ev.data);
    ws.onclose = (ev) => this._onSocketGone(ws, ev.code, ev.reason);
    ws.onerror = () => {}; // a close event always follows
  }

  _onMessage(ws, text) {
    if (ws !== this._ws) return;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return; // the hub only sends JSON; nothing sensible to do with anything else
    }
    if (typeof frame.seq === 'number') {
      // A replay never repeats what was processed; this guards against a hub that would.
      if (frame.type !== 'welcome' && frame.seq <= this.lastSeq) return;
      this.lastSeq = frame.seq;
    }
    const data = frame.data ?? {};
    switch (frame.type) {
      case 'welcome':
        return this._onWelcome(data, frame);
      case 'session.resumed':
        return this._onResumed(data, frame);
      case 'ack':
      case 'error':
        if (frame.id && this._pending.has(frame.id)) {
          const p = this._pending.get(frame.id);
          if (frame.type === 'error' && data.code === 'rate_limited' && !p.retried) {
            // Not processed by the hub: send it again once the hub says it may (the request's
            // timeout keeps running).
            Object.assign(p, { retried: true, sentOn: null });
            setTimeout(() => this._pending.has(frame.id) && this._send(frame.id), (data.retry_after_secs ?? 1) * 1000);
            return;
          }
          this._pending.delete(frame.id);
          clearTimeout(p.timer);
          if (frame.type === 'ack') p.resolve(data);
          else p.reject(new VisithubError(data.code, data.message, data.retry_after_secs));
        } else if (frame.type === 'error') {
          this._emit('error', data, frame);
        }
        return;
      default:
        this._emit(frame.type, data, frame);
    }
  }

  _onWelcome(data, frame) {
    const wasResuming = this._resuming;
    const hadSession = Boolean(this.sessionId);
    this.sessionId = data.session_id;
    this.lastSeq = frame.seq;
    this.welcome = data;
    this._markOpen();
    // Requests sent on the lost session may or may not have reached the hub: the new session
    // cannot tell, so they fail and the caller retries (chat.send with the same client_id).
    this._failInFlight();
    this._flushOffline();
    this._emit('welcome', data, frame);
    if (wasResuming || hadSession) this._emit('reload', { reason: 'new_session' }, frame);
    if (this._opened) {
      this._opened.resolve(data);
      this._opened = null;
    }
  }

  _onResumed(data, frame) {
    this._markOpen();
    this.resumes += 1;
    this.lastResume = data;
    if (data.recovered) {
      // Every reply the hub sent was replayed before this frame: what is still pending never
      // reached it and is safe to send again.
      for (const [id, p] of this._pending) if (p.sentOn !== null && !this._offline.includes(id)) this._send(id);
    } else {
      this._failInFlight();
    }
    this._flushOffline();
    this._emit('resumed', data, frame);
    if (!data.recovered) this._emit('reload', { reason: 'not_recovered' }, frame);
  }

  _markOpen() {
    this._attempt = 0;
    this._resuming = false;
    this._setStatus('open');
    this._startHeartbeat();
    this._pump();
  }

  _failInFlight() {
    for (const [id, p] of [...this._pending]) {
      if (p.sentOn !== null && !this._offline.includes(id)) {
        this._fail(id, new VisithubError('connection_lost', 'the connection dropped before the reply'));
      }
    }
  }

  _flushOffline() {
    const ids = this._offline;
    this._offline = [];
    for (const id of ids) if (this._pending.has(id)) this._send(id);
  }

  // The hub answers requests over the role's rate with `rate_limited` and counts them against
  // the socket (too many close it), so requests go out paced by a token bucket a little below
  // the rate the welcome announced, in the order they were made.
  _send(id) {
    if (!this._outbox.includes(id)) this._outbox.push(id);
    this._pump();
  }

  _pump() {
    const rate = Math.max(1, this.welcome?.limits?.messages_per_second ?? 5);
    const burst = Math.max(1, rate - 1);
    const now = Date.now();
    this._tokens = Math.min(burst, this._tokens + ((now - this._refilledAt) / 1000) * rate * 0.9);
    this._refilledAt = now;
    while (this._outbox.length && this._tokens >= 1) {
      const id = this._outbox.shift();
      const p = this._pending.get(id);
      if (!p) continue;
      if (!this._ws || this._ws.readyState !== 1 || this.status !== 'open') {
        if (!this._offline.includes(id)) this._offline.push(id);
        continue;
      }
      this._tokens -= 1;
      p.sentOn = this.sessionId;
      this._ws.send(JSON.stringify(p.frame));
    }
    if (this._outbox.length && !this._pumpTimer) {
      const wait = Math.ceil(((1 - this._tokens) / (rate * 0.9)) * 1000);
      this._pumpTimer = setTimeout(() => {
        this._pumpTimer = null;
        this._pump();
      }, wait);
    }
  }

  _fail(id, err) {
    const p = this._pending.get(id);
    if (!p) return;
    this._pending.delete(id);
    clearTimeout(p.timer);
    this._offline = this._offline.filter((x) => x !== id);
    this._outbox = this._outbox.filter((x) => x !== id);
    p.reject(err);
  }

  async _onSocketGone(ws, code, reason) {
    if (ws && ws !== this._ws) return; // an old socket (e.g. closed 4007 after a resume)
    this._ws = null;
    // Requests still waiting for the rate budget go out first on the next socket.
    this._offline = [...this._outbox, ...this._offline.filter((id) => !this._outbox.includes(id))];
    this._outbox = [];
    this._stopHeartbeat();
    if (this._stopped) return;
    if (this._opened && !this.sessionId) {
      // The very first handshake failed: a browser cannot see why (bad token, origin).
      this._opened.reject(new VisithubError('network', `could not connect (close ${code})`));
      this._opened = null;
      this._stopped = true;
      this._setStatus('closed', { code, reason });
      return;
    }
    if (FINAL_CLOSES.has(code)) {
      this._stopped = true;
      for (const id of [...this._pending.keys()]) this._fail(id, new VisithubError('closed', FINAL_CLOSES.get(code)));
      this._setStatus('closed', { code, reason });
      return;
    }
    if (code === 4001 && this.getToken) {
      try {
        this.token = await this.getToken();
      } catch (e) {
        this._stopped = true;
        this._setStatus('closed', { code, reason: 'token_expired' });
        return;
      }
    }
    this._scheduleReconnect(code);
  }

  _scheduleReconnect(code) {
    const exp = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** this._attempt);
    const jittered = exp / 2 + Math.random() * (exp / 2);
    const delay = Math.max(jittered, this._holdUntil - Date.now());
    this._attempt += 1;
    this._setStatus('reconnecting', { code, attempt: this._attempt, delayMs: Math.round(delay) });
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      if (!this._stopped) this._open();
    }, delay);
  }

  // Browsers cannot see the hub's WebSocket pings; an application ping that gets no reply
  // reveals a half-open socket, which is then dropped and resumed.
  _startHeartbeat() {
    this._stopHeartbeat();
    if (!this.heartbeatMs) return;
    this._heartbeat = setInterval(() => {
      const ws = this._ws;
      this.request('ping', {}, { timeoutMs: Math.min(this.requestTimeoutMs, this.heartbeatMs) }).catch((e) => {
        if (e.code === 'timeout' && ws && ws === this._ws) ws.close(4998, 'heartbeat');
      });
    }, this.heartbeatMs);
  }

  _stopHeartbeat() {
    clearInterval(this._heartbeat);
    this._heartbeat = null;
  }
}

async function problemOf(res) {
  let body = {};
  try {
    body = await res.json();
  } catch {
    // not a problem-details body
  }
  const header = Number(res.headers.get('retry-after'));
  const retry = body.retry_after_secs ?? (Number.isFinite(header) && header > 0 ? header : null);
  return new VisithubError(body.code ?? 'network', body.detail ?? res.statusText, retry);
}

async function postJson(url, body, headers = {}) {
  let res;
  try {
    res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new VisithubError('network', 'the hub could not be reached');
  }
  if (!res.ok) throw await problemOf(res);
  return res.json();
}

/**
 * `POST /v1/visits`: asks for a visit. Resolves with the receipt (`visit_id`, `patient_token`,
 * `position`, `estimated_wait_secs`, ...); rejects with a VisithubError whose `code` is, for
 * example, `outside_hours`, `state_busy`, `queue_full` or `queue_closing`, with
 * `retryAfterSecs` when the hub said when to come back. Pass the same `idempotencyKey` when
 * retrying the same request.
 */
export function intake(baseUrl, { displayName, state, reason }, { idempotencyKey } = {}) {
  const headers = idempotencyKey ? { 'idempotency-key': idempotencyKey } : {};
  return postJson(new URL('/v1/visits', baseUrl), { display_name: displayName, state, reason }, headers);
}

/** `GET` with a bearer token; resolves with the JSON body or rejects with a VisithubError. */
export async function getJson(baseUrl, path, token) {
  let res;
  try {
    res = await fetch(new URL(path, baseUrl), { headers: { authorization: `Bearer ${token}` } });
  } catch (e) {
    throw new VisithubError('network', 'the hub could not be reached');
  }
  if (!res.ok) throw await problemOf(res);
  return res.json();
}

/** `POST /demo/token` (hub started with `--demo` only): a caregiver token for `subject`. */
export function demoSignIn(baseUrl, subject) {
  return postJson(new URL('/demo/token', baseUrl), { subject });
}

/** A fresh id for `chat.send`'s `client_id` (and for Idempotency-Key). */
export function newClientId(prefix = 'm') {
  return `${prefix}-${crypto.randomUUID()}`;
}
