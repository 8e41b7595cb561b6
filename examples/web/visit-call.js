// The WebRTC side of a visit, for the browser client library (visithub-client.js re-exports
// it). It needs only a client's `on()` and `request()`, and the browser's RTCPeerConnection.
// Documented in README.md beside this file.

/**
 * The WebRTC call of one visit. Create it as soon as the visit id is known (a patient after
 * intake, a provider at its claim): it waits for `visit.started`, then asks `getLocalStream()`
 * for the camera and microphone, creates the peer connection with the hub's ICE servers and
 * does the rest: perfect negotiation with the role the hub assigned, trickled candidates, ICE
 * restart after a reconnect or a failure. Signaling that arrives while the media is being
 * acquired waits, in order.
 *
 * Callbacks: onTrack(MediaStreamTrack, MediaStream), onState({connection, ice, signaling, closed}).
 */
export class VisitCall {
  constructor(
    client,
    { visitId, getLocalStream = async () => null, onTrack = () => {}, onState = () => {}, rejoin = false },
  ) {
    this.client = client;
    this.visitId = visitId;
    this.getLocalStream = getLocalStream;
    this.localStream = null;
    this.onTrack = onTrack;
    this.onState = onState;
    this.pc = null;
    this.polite = true;
    this.peer = null;
    this.iceRestarts = 0;
    this._config = null;
    this._makingOffer = false;
    this._ignoreOffer = false;
    // A page that was reloaded mid-visit joins with a new peer connection: its first offer
    // restarts ICE for the other side, whose connection is still the old one.
    this._restartPending = rejoin;
    this._pendingCandidates = [];
    this._chain = Promise.resolve();
    this._closed = false;
    this._answering = false;
    const mine = (fn) => (data) => {
      if (data.visit_id === this.visitId) this._serial(() => fn(data));
    };
    this._offs = [
      client.on('signal.offer', mine((d) => this._onDescription('offer', d))),
      client.on('signal.answer', mine((d) => this._onDescription('answer', d))),
      client.on('signal.candidate', mine((d) => this._onCandidate(d))),
      client.on('signal.end_of_candidates', mine(() => this._onCandidate(null))),
      client.on('visit.started', (d) => {
        if (d.visit_id === this.visitId) this.start(d);
      }),
      client.on('resumed', () => this._afterResume()),
    ];
  }

  /** Applies a `visit.started` (done automatically for the visit's own): the first one creates
   * the peer connection; a later one (a new session after a reconnect) refreshes the ICE servers
   * and restarts ICE. */
  start(started) {
    this._serial(async () => {
      if (this._closed) return;
      this.polite = Boolean(started.polite);
      this.peer = started.peer ?? this.peer;
      this._config = { iceServers: started.ice_servers ?? [] };
      if (!this.pc) {
        this.localStream = await this.getLocalStream();
        if (!this._closed) this._createPeerConnection();
      } else {
        this.pc.setConfiguration(this._config);
        this.restartIce();
      }
    });
  }

  /** Restarts ICE: the next offer carries new ICE credentials and `ice_restart: true`. */
  restartIce() {
    if (!this.pc || this._closed) return;
    this.iceRestarts += 1;
    this._restartPending = true;
    this.pc.restartIce();
  }

  /** Sums the inbound video statistics: frames decoded, bytes received. */
  async inboundVideo() {
    const out = { framesDecoded: 0, bytesReceived: 0, frameWidth: 0 };
    if (!this.pc) return out;
    const stats = await this.pc.getStats();
    stats.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        out.framesDecoded += s.framesDecoded ?? 0;
        out.bytesReceived += s.bytesReceived ?? 0;
        out.frameWidth = Math.max(out.frameWidth, s.frameWidth ?? 0);
      }
    });
    return out;
  }

  /** Ends the call on this side (the hub's visit status is changed separately). */
  close() {
    this._closed = true;
    for (const off of this._offs) off();
    if (this.pc) this.pc.close();
    if (this.localStream) for (const track of this.localStream.getTracks()) track.stop();
    this._report();
  }

  _createPeerConnection() {
    const pc = new RTCPeerConnection(this._config);
    this.pc = pc;
    if (this.localStream) for (const track of this.localStream.getTracks()) pc.addTrack(track, this.localStream);
    pc.ontrack = ({ track, streams }) => this.onTrack(track, streams[0] ?? new MediaStream([track]));
    pc.onicecandidate = ({ candidate }) => {
      if (candidate && candidate.candidate) {
        this._signal('signal.candidate', {
          candidate: candidate.candidate,
          sdp_mid: candidate.sdpMid ?? undefined,
          sdp_m_line_index: candidate.sdpMLineIndex ?? undefined,
          username_fragment: candidate.usernameFragment ?? undefined,
        });
      } else if (!candidate) {
        this._signal('signal.end_of_candidates', {});
      }
    };
    pc.onnegotiationneeded = async () => {
      if (this._answering) return;
      // The polite side leaves a new call's first offer to the other side. Offers made at once
      // collide, and Chromium's answer after rolling its own offer back sometimes gathers no ICE
      // candidates: the call never connects. Once it has the other side's description it
      // offers as it needs (it is asked again then), and a rejoining page offers at once: the
      // other side still holds the old connection and waits for no one.
      if (this.polite && !pc.remoteDescription && !this._restartPending) return;
      try {
        this._makingOffer = true;
        await pc.setLocalDescription();
        const iceRestart = this._restartPending;
        this._restartPending = false;
        await this._signal('signal.offer', { sdp: pc.localDescription.sdp, ice_restart: iceRestart || undefined });
      } catch (e) {
        console.warn('visithub: offer failed', e.code ?? e.name);
      } finally {
        this._makingOffer = false;
      }
    };
    pc.oniceconnectionstatechange = () => {
      if (pc !== this.pc) return;
      if (pc.iceConnectionState === 'failed') this.restartIce();
      this._report();
    };
    pc.onconnectionstatechange = () => pc === this.pc && this._report();
    pc.onsignalingstatechange = () => pc === this.pc && this._report();
    this._report();
  }

  _report() {
    const pc = this.pc;
    this.onState({
      connection: pc ? pc.connectionState : 'new',
      ice: pc ? pc.iceConnectionState : 'new',
      signaling: pc ? pc.signalingState : 'stable',
      closed: this._closed,
    });
  }

  // Signaling frames are handled one at a time, in the order the hub relayed them.
  _serial(fn) {
    this._chain = this._chain.then(fn).catch((e) => console.warn('visithub: signaling step failed', e.name ?? e));
  }

  _signal(type, data) {
    return this.client.request(type, { visit_id: this.visitId, ...data }).catch((e) => {
      // visit_not_active: the visit left in_visit meanwhile; nothing to negotiate any more.
      if (e.code !== 'visit_not_active') console.warn(`visithub: ${type} refused: ${e.code}`);
    });
  }

  async _onDescription(type, data, replaced = false) {
    const pc = this.pc;
    if (!pc || this._closed) return;
    const collision = type === 'offer' && (this._makingOffer || pc.signalingState !== 'stable');
    this._ignoreOffer = !this.polite && collision && !replaced;
    if (this._ignoreOffer) return;
    try {
      await pc.setRemoteDescription({ type, sdp: data.sdp });
    } catch (e) {
      // The other side started over with a new peer connection (a reloaded page) and this one
      // cannot take its offer (some browsers refuse a new DTLS fingerprint): a new one answers.
      if (type !== 'offer' || !data.ice_restart || replaced) throw e;
      return this._answerFromNewPeerConnection(data);
    }
    for (const c of this._pendingCandidates.splice(0)) await this._addCandidate(c);
    if (type === 'offer') {
      await pc.setLocalDescription();
      await this._signal('signal.answer', { sdp: pc.localDescription.sdp, ice_restart: data.ice_restart || undefined });
    }
  }

  async _answerFromNewPeerConnection(offer) {
    const old = this.pc;
    this._pendingCandidates = [];
    // The new connection answers with its tracks; it must not make an offer of its own first.
    this._answering = true;
    this._createPeerConnection();
    old.close();
    try {
      await this._onDescription('offer', offer, true);
    } finally {
      this._answering = false;
    }
  }

  async _onCandidate(data) {
    const init = data
      ? {
          candidate: data.candidate,
          sdpMid: data.sdp_mid ?? null,
          sdpMLineIndex: data.sdp_m_line_index ?? null,
          usernameFragment: data.username_fragment ?? null,
        }
      : null;
    if (!this.pc || this._closed) return;
    // A candidate may overtake the description it belongs to: keep it until that is set.
    if (!this.pc.remoteDescription) {
      this._pendingCandidates.push(init);
      return;
    }
    await this._addCandidate(init);
  }

  async _addCandidate(init) {
    try {
      await this.pc.addIceCandidate(init ?? undefined);
    } catch (e) {
      if (!this._ignoreOffer) console.warn('visithub: candidate not added', e.name);
    }
  }

  // A resumed session got every relayed frame it missed, so the media path is usually intact;
  // if it broke meanwhile, restart ICE.
  _afterResume() {
    const ice = this.pc?.iceConnectionState;
    if (ice === 'disconnected' || ice === 'failed') this.restartIce();
  }
}
