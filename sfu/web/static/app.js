// oneport demo page: publish camera and microphone to a room through WHIP,
// watch every other publisher of the room through WHEP, and follow the room's
// server-sent events so a subscription is added when a publisher appears and
// removed when it leaves. Plain browser JavaScript, no build step.
//
// Query string: room=NAME (joins at once unless autostart=0), mode=both|publish|watch,
// simulcast=1, res=WIDTHxHEIGHT (camera size asked for; default 640x480, or
// 1280x720 with simulcast), server=URL (a oneport node on another origin; the
// sfu answers CORS), token=T (bearer token for WHIP/WHEP).
//
// Test hooks: window.oneportStats() resolves to a summary of getStats() for the
// published stream and for each watched publisher (framesDecoded, audio
// packetsReceived, ...), so a test reads results without scraping the page;
// window.oneportSelectLayer(publisher, rid) picks a watched simulcast layer.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const server = (params.get('server') || '').replace(/\/+$/, '');
  const token = params.get('token') || '';

  // Bounds: everything the page waits for or keeps has a limit.
  const GATHER_TIMEOUT_MS = 2000;   // ICE gathering before sending the offer anyway
  const SIGNAL_TIMEOUT_MS = 10000;  // one WHIP/WHEP HTTP exchange
  const RECONCILE_DELAY_MS = 150;   // lets a burst of events settle into one change
  const RETRY_MAX_MS = 10000;       // longest pause between subscription retries
  const LOG_LINES = 300;
  const ERRORS_KEPT = 20;

  const errors = [];

  function apiURL(path) {
    return (server || location.origin) + path;
  }

  function log(...args) {
    console.log('[oneport]', ...args);
    const el = $('log');
    const line = new Date().toISOString().slice(11, 23) + ' ' + args.map(String).join(' ') + '\n';
    el.textContent += line;
    const lines = el.textContent.split('\n');
    if (lines.length > LOG_LINES) el.textContent = lines.slice(-LOG_LINES).join('\n');
  }

  function fail(context, err) {
    const msg = context + ': ' + (err && err.message ? err.message : String(err));
    console.error('[oneport]', msg);
    errors.push(msg);
    if (errors.length > ERRORS_KEPT) errors.shift();
    log('error', msg);
    return msg;
  }

  function setStatus(text, isError) {
    const el = $('status');
    el.textContent = text;
    el.classList.toggle('error', Boolean(isError));
  }

  function setState(el, state) {
    el.textContent = state;
    el.dataset.state = state;
  }

  function lastSegment(url) {
    const parts = new URL(url).pathname.split('/').filter(Boolean);
    return parts.length ? decodeURIComponent(parts[parts.length - 1]) : null;
  }

  // Resolves when ICE gathering completes or after timeoutMs, whichever is first:
  // the server is ICE-lite, so candidates in the offer help but are not required.
  function waitIceGathering(pc, timeoutMs) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, timeoutMs);
      function check() { if (pc.iceGatheringState === 'complete') done(); }
      function done() {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', check);
        resolve();
      }
      pc.addEventListener('icegatheringstatechange', check);
    });
  }

  // One WHIP or WHEP offer/answer exchange (RFC 9725): POST the offer, expect
  // 201 with the answer and the resource's Location.
  async function exchange(url, offer) {
    const headers = { 'Content-Type': 'application/sdp', Accept: 'application/sdp' };
    if (token) headers.Authorization = 'Bearer ' + token;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), SIGNAL_TIMEOUT_MS);
    try {
      const res = await fetch(url, { method: 'POST', headers, body: offer, signal: ctl.signal });
      const body = await res.text();
      if (res.status !== 201) throw new Error(`POST ${url}: ${res.status} ${body.trim().slice(0, 300)}`);
      const loc = res.headers.get('Location');
      if (!loc) throw new Error(`POST ${url}: 201 without a Location header`);
      return { answer: body, resource: new URL(loc, url).href };
    } finally {
      clearTimeout(timer);
    }
  }

  // Ends a WHIP/WHEP resource. keepalive lets it finish while the page unloads.
  function deleteResource(url) {
    const headers = {};
    if (token) headers.Authorization = 'Bearer ' + token;
    const signal = AbortSignal.timeout(SIGNAL_TIMEOUT_MS);
    return fetch(url, { method: 'DELETE', headers, keepalive: true, signal })
      .then((res) => { if (!res.ok && res.status !== 404) log('DELETE', url, res.status); })
      .catch((err) => log('DELETE', url, 'failed:', err.message));
  }

  // endSession deletes the resource first and closes the PeerConnection only
  // then: closing first would let the server end the session on its own and
  // answer the DELETE with 404.
  function endSession(resource, pc) {
    const deleted = resource ? deleteResource(resource) : Promise.resolve();
    return deleted.finally(() => { if (pc) pc.close(); });
  }

  // Summarizes getStats() into plain numbers a person or a test can read.
  // Rates (kbit/s, packets/s) come from the previous summary of the same pc.
  async function summarize(pc, prev) {
    const report = await pc.getStats();
    const now = performance.now();
    const out = { at: now, video: null, audio: null, candidatePair: null, layers: [] };
    const codecs = new Map();
    let pairId = null;
    report.forEach((s) => {
      if (s.type === 'codec') codecs.set(s.id, s.mimeType);
      if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
    });
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && (s.kind === 'video' || s.kind === 'audio')) {
        const a = out[s.kind] || (out[s.kind] = {
          streams: 0, packetsReceived: 0, packetsLost: 0, bytesReceived: 0, nackCount: 0, codec: null,
        });
        a.streams++;
        a.packetsReceived += s.packetsReceived || 0;
        a.packetsLost += s.packetsLost || 0;
        a.bytesReceived += s.bytesReceived || 0;
        a.nackCount += s.nackCount || 0;
        a.codec = codecs.get(s.codecId) || a.codec;
        if (s.kind === 'video') {
          a.framesDecoded = (a.framesDecoded || 0) + (s.framesDecoded || 0);
          a.framesReceived = (a.framesReceived || 0) + (s.framesReceived || 0);
          a.keyFramesDecoded = (a.keyFramesDecoded || 0) + (s.keyFramesDecoded || 0);
          a.framesDropped = (a.framesDropped || 0) + (s.framesDropped || 0);
          a.pliCount = (a.pliCount || 0) + (s.pliCount || 0);
          a.frameWidth = s.frameWidth || a.frameWidth || 0;
          a.frameHeight = s.frameHeight || a.frameHeight || 0;
          a.framesPerSecond = s.framesPerSecond || a.framesPerSecond || 0;
        } else {
          a.jitter = s.jitter || 0;
          a.concealedSamples = (a.concealedSamples || 0) + (s.concealedSamples || 0);
          a.totalSamplesReceived = (a.totalSamplesReceived || 0) + (s.totalSamplesReceived || 0);
        }
      }
      if (s.type === 'outbound-rtp' && (s.kind === 'video' || s.kind === 'audio')) {
        const a = out[s.kind] || (out[s.kind] = { streams: 0, packetsSent: 0, bytesSent: 0, codec: null });
        a.streams++;
        a.packetsSent += s.packetsSent || 0;
        a.bytesSent += s.bytesSent || 0;
        a.codec = codecs.get(s.codecId) || a.codec;
        if (s.kind === 'video') {
          a.framesEncoded = (a.framesEncoded || 0) + (s.framesEncoded || 0);
          a.pliCount = (a.pliCount || 0) + (s.pliCount || 0);
          a.nackCount = (a.nackCount || 0) + (s.nackCount || 0);
          out.layers.push({
            rid: s.rid || null, width: s.frameWidth || 0, height: s.frameHeight || 0,
            fps: s.framesPerSecond || 0, bytesSent: s.bytesSent || 0,
            limitation: s.qualityLimitationReason || null,
          });
        }
      }
    });
    const pair = pairId && report.get(pairId);
    if (pair) {
      const local = report.get(pair.localCandidateId);
      const remote = report.get(pair.remoteCandidateId);
      out.candidatePair = {
        state: pair.state,
        local: local ? `${local.address}:${local.port}/${local.protocol} ${local.candidateType}` : null,
        remote: remote ? `${remote.address}:${remote.port}/${remote.protocol} ${remote.candidateType}` : null,
        rttMs: pair.currentRoundTripTime !== undefined ? Math.round(pair.currentRoundTripTime * 1000) : null,
        // The browser's bandwidth estimate for sending (needs the server's
        // congestion feedback to grow past its start value).
        availableOutgoingKbps: pair.availableOutgoingBitrate !== undefined
          ? Math.round(pair.availableOutgoingBitrate / 1000) : null,
      };
    }
    for (const kind of ['video', 'audio']) {
      const cur = out[kind];
      const old = prev && prev[kind];
      if (!cur || !old) continue;
      const secs = (now - prev.at) / 1000;
      if (secs <= 0) continue;
      const bytes = (cur.bytesReceived ?? cur.bytesSent) - (old.bytesReceived ?? old.bytesSent);
      const pkts = (cur.packetsReceived ?? cur.packetsSent) - (old.packetsReceived ?? old.packetsSent);
      cur.kbps = Math.max(0, Math.round((bytes * 8) / 1000 / secs));
      cur.packetsPerSecond = Math.max(0, Math.round(pkts / secs));
    }
    return out;
  }

  function describe(sum) {
    const lines = [];
    const codec = (m) => (m.codec ? m.codec.replace(/^[a-z]+\//, '') : '?');
    const v = sum.video;
    const a = sum.audio;
    if (v) {
      if ('framesDecoded' in v) {
        lines.push(`video ${codec(v)} ${v.frameWidth}x${v.frameHeight} ${v.framesPerSecond} fps, ` +
          `${v.kbps ?? '-'} kbit/s, decoded ${v.framesDecoded}, lost ${v.packetsLost}`);
      } else {
        const layers = sum.layers.map((l) => `${l.rid ? l.rid + ' ' : ''}${l.width}x${l.height}@${l.fps}`).join(', ');
        lines.push(`video ${codec(v)} ${layers}, ${v.kbps ?? '-'} kbit/s, encoded ${v.framesEncoded}`);
      }
    }
    if (a) {
      lines.push(`audio ${codec(a)} ${a.kbps ?? '-'} kbit/s, ${a.packetsPerSecond ?? '-'} pkt/s` +
        ('packetsLost' in a ? `, lost ${a.packetsLost}` : ''));
    }
    if (sum.candidatePair) {
      const p = sum.candidatePair;
      lines.push(`path ${p.local} -> ${p.remote}` + (p.rttMs !== null ? `, rtt ${p.rttMs} ms` : '') +
        (p.availableOutgoingKbps && sum.layers.length ? `, send estimate ${p.availableOutgoingKbps} kbit/s` : ''));
    }
    return lines.join('\n');
  }

  // Publisher sends one MediaStream to /whip/{room}.
  class Publisher {
    constructor(room, stream, simulcast, onstate) {
      this.room = room;
      this.stream = stream;
      this.simulcast = simulcast;
      this.onstate = onstate;
      this.pc = null;
      this.resource = null;
      this.participant = null;
      this.state = 'new';
      this.last = null;
    }

    async start() {
      const pc = this.pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
      pc.addEventListener('connectionstatechange', () => this.setState(pc.connectionState));
      for (const track of this.stream.getTracks()) {
        const init = { direction: 'sendonly', streams: [this.stream] };
        if (track.kind === 'video' && this.simulcast) {
          init.sendEncodings = [
            { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
            { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
            { rid: 'f', maxBitrate: 1500000 },
          ];
        }
        pc.addTransceiver(track, init);
      }
      this.setState('connecting');
      await pc.setLocalDescription(await pc.createOffer());
      await waitIceGathering(pc, GATHER_TIMEOUT_MS);
      const url = apiURL('/whip/' + encodeURIComponent(this.room));
      const { answer, resource } = await exchange(url, pc.localDescription.sdp);
      this.resource = resource;
      this.participant = lastSegment(resource);
      log('published as', this.participant);
      await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    }

    setState(state) {
      this.state = state;
      this.onstate(state);
    }

    async stats() {
      if (!this.pc) return null;
      this.last = await summarize(this.pc, this.last);
      return this.last;
    }

    stop() {
      endSession(this.resource, this.pc);
      this.resource = null;
      this.setState('closed');
    }
  }

  // Subscriber receives one publisher's tracks from /whep/{room}?publisher=ID.
  class Subscriber {
    constructor(room, publisher, kinds, signature, onfail, rids) {
      this.room = room;
      this.onfail = onfail;
      this.rids = rids; // simulcast layers of the publisher's video, if any
      this.publisher = publisher;
      this.kinds = kinds;
      this.signature = signature;
      this.stream = new MediaStream();
      this.pc = null;
      this.resource = null;
      this.id = null; // the WHEP resource's participant id
      this.state = 'new';
      this.failed = false;
      this.closed = false;
      this.last = null;
      this.tile = makeTile(publisher);
      setState(this.tile.state, 'new');
      if (rids.length > 1) this.offerLayers();
      this.tile.video.srcObject = this.stream;
    }

    async start() {
      const pc = this.pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle' });
      pc.addEventListener('connectionstatechange', () => {
        this.state = pc.connectionState;
        setState(this.tile.state, this.state);
        if (this.state === 'failed' && !this.closed && !this.failed) this.onfail(new Error('ICE/DTLS connection failed'));
      });
      pc.addEventListener('track', (e) => {
        this.stream.addTrack(e.track);
        play(this.tile);
      });
      for (const kind of this.kinds) pc.addTransceiver(kind, { direction: 'recvonly' });
      this.state = 'connecting';
      setState(this.tile.state, this.state);
      await pc.setLocalDescription(await pc.createOffer());
      await waitIceGathering(pc, GATHER_TIMEOUT_MS);
      if (this.closed) return;
      const url = apiURL('/whep/' + encodeURIComponent(this.room) + '?publisher=' + encodeURIComponent(this.publisher));
      const { answer, resource } = await exchange(url, pc.localDescription.sdp);
      this.resource = resource;
      this.id = lastSegment(resource);
      if (this.closed) {
        endSession(resource, pc);
        return;
      }
      await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    }

    // offerLayers shows a choice of the publisher's simulcast layers; the
    // server forwards the highest until told otherwise.
    offerLayers() {
      const select = this.tile.layer;
      select.replaceChildren(...this.rids.map((rid) => new Option(rid, rid)));
      select.value = this.rids[this.rids.length - 1];
      select.hidden = false;
      // selectLayer reports its own failures in the log and status.
      select.addEventListener('change', () => this.selectLayer(select.value).catch(() => {}));
    }

    // selectLayer asks the server to forward one simulcast layer (rid) of the
    // publisher's video to this subscription; it switches on a keyframe.
    async selectLayer(rid) {
      if (!this.id) throw new Error('not subscribed yet');
      const url = apiURL(`/api/rooms/${encodeURIComponent(this.room)}/subscribers/${encodeURIComponent(this.id)}/layer`);
      const headers = { 'Content-Type': 'application/json' };
      if (token) headers.Authorization = 'Bearer ' + token;
      const res = await fetch(url, {
        method: 'POST', headers, body: JSON.stringify({ rid }), signal: AbortSignal.timeout(SIGNAL_TIMEOUT_MS),
      });
      if (!res.ok) {
        const msg = fail('layer ' + rid, new Error(`${res.status} ${(await res.text()).trim()}`));
        throw new Error(msg);
      }
      this.layer = rid;
      log('layer', rid, 'for', this.publisher);
      return res.json();
    }

    async stats() {
      const base = {
        publisher: this.publisher, id: this.id, state: this.state,
        tracks: this.stream.getTracks().length, rids: this.rids, layer: this.layer || null,
      };
      if (!this.pc || this.closed) return base;
      this.last = await summarize(this.pc, this.last);
      return Object.assign(base, this.last);
    }

    close() {
      this.closed = true;
      endSession(this.resource, this.pc);
      this.resource = null;
      for (const t of this.stream.getTracks()) t.stop();
      this.tile.root.remove();
    }
  }

  function makeTile(publisher) {
    const frag = $('remote-tile').content.cloneNode(true);
    const root = frag.querySelector('.tile');
    const tile = {
      root,
      video: root.querySelector('video'),
      state: root.querySelector('.state'),
      stats: root.querySelector('.stats'),
      unmute: root.querySelector('.unmute'),
      layer: root.querySelector('.layer'),
    };
    root.dataset.publisher = publisher;
    root.querySelector('.who').textContent = publisher;
    tile.unmute.addEventListener('click', () => {
      tile.video.muted = false;
      tile.unmute.hidden = true;
      tile.video.play().catch(() => {});
    });
    $('remotes').append(root);
    return tile;
  }

  // play starts a remote video; where the browser forbids sound without a
  // click, it plays muted and offers an unmute button.
  function play(tile) {
    tile.video.play().catch(() => {
      tile.video.muted = true;
      tile.unmute.hidden = false;
      tile.video.play().catch(() => {});
    });
  }

  // Room holds one visit: an optional publisher, and (unless publish-only)
  // the events stream and one Subscriber per other publisher with tracks.
  class Room {
    constructor(name, mode, simulcast) {
      this.name = name;
      this.mode = mode;
      this.simulcast = simulcast;
      this.publisher = null;
      this.localStream = null;
      this.publishError = null;
      this.events = null;
      this.eventsState = 'closed';
      this.participants = new Map(); // participant id -> Map(track id -> {kind, rids})
      this.subs = new Map();         // participant id -> Subscriber
      this.retries = new Map();      // participant id -> consecutive failures
      this.reconcileTimer = null;
      this.statsTimer = null;
      this.left = false;
    }

    async join() {
      $('room-name').textContent = this.name;
      if (this.mode !== 'watch') {
        try {
          await this.publish();
        } catch (err) {
          // In mode both, a missing camera still leaves the room to watch.
          if (this.mode === 'publish') throw err;
          this.publishError = fail('publish to ' + this.name, err);
          this.updateStatus();
        }
      }
      if (this.left) return;
      if (this.mode !== 'publish') this.follow();
      this.statsTimer = setInterval(() => this.refreshStats(), 1000);
    }

    async publish() {
      // Chromium sends three VP8 simulcast layers only from 960x540 up.
      const res = params.get('res') || (this.simulcast ? '1280x720' : '640x480');
      const [w, h] = res.split('x').map(Number);
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw new Error('this browser offers no camera here: publishing needs https or localhost ' +
          '(watch-only mode works on plain http)');
      }
      setStatus('Asking for camera and microphone...');
      this.localStream = await navigator.mediaDevices.getUserMedia({
        audio: true,
        video: { width: { ideal: w || 640 }, height: { ideal: h || 480 } },
      });
      if (this.left) return;
      $('local').hidden = false;
      $('local-video').srcObject = this.localStream;
      setStatus('Publishing...');
      this.publisher = new Publisher(this.name, this.localStream, this.simulcast, (s) => {
        setState($('local-state'), s);
        if (s === 'failed' && !this.left) fail('publish to ' + this.name, new Error('ICE/DTLS connection failed'));
        this.updateStatus();
      });
      await this.publisher.start();
      $('local-caption').textContent = 'you are ' + this.publisher.participant;
    }

    follow() {
      $('remotes-section').hidden = false;
      const es = this.events = new EventSource(apiURL('/rooms/' + encodeURIComponent(this.name) + '/events'));
      this.setEventsState('connecting');
      es.addEventListener('open', () => {
        // The server sends the room's current state first on every connect:
        // forget what we knew and rebuild from it.
        this.participants.clear();
        this.setEventsState('open');
        this.scheduleReconcile(RECONCILE_DELAY_MS * 2);
      });
      es.addEventListener('error', () => {
        this.setEventsState(es.readyState === EventSource.CLOSED ? 'closed' : 'connecting');
      });
      for (const name of ['participant-joined', 'participant-left', 'track-published', 'track-unpublished']) {
        es.addEventListener(name, (e) => this.onEvent(name, e.data));
      }
    }

    // onEvent applies one event of the sfu's stream. Data (JSON):
    //   participant-joined, participant-left: {participant, role}
    //   track-published, track-unpublished: {participant, track, kind, codec, mid, rids}
    onEvent(name, data) {
      let ev;
      try {
        ev = JSON.parse(data);
      } catch (err) {
        fail('event ' + name, err);
        return;
      }
      const id = ev.participant;
      if (!id) {
        fail('event ' + name, new Error('no participant in ' + data));
        return;
      }
      log('event', name, id, ev.role || `${ev.kind} ${ev.codec || ''} ${ev.track}`);
      switch (name) {
        case 'participant-joined':
          if (!this.participants.has(id)) this.participants.set(id, new Map());
          break;
        case 'participant-left':
          this.participants.delete(id);
          this.retries.delete(id);
          // The server ended one of our own subscriptions (it does when the
          // watched publisher leaves): there is nothing left to DELETE.
          for (const sub of this.subs.values()) if (sub.id === id) sub.resource = null;
          break;
        case 'track-published': {
          if (!ev.track || !ev.kind) return;
          let tracks = this.participants.get(id);
          if (!tracks) this.participants.set(id, tracks = new Map());
          tracks.set(ev.track, { kind: ev.kind, codec: ev.codec || null, rids: ev.rids || [] });
          break;
        }
        case 'track-unpublished': {
          const tracks = this.participants.get(id);
          if (tracks && ev.track) tracks.delete(ev.track);
          break;
        }
      }
      this.scheduleReconcile(RECONCILE_DELAY_MS);
    }

    scheduleReconcile(delay) {
      if (this.left) return;
      clearTimeout(this.reconcileTimer);
      this.reconcileTimer = setTimeout(() => this.reconcile(), delay);
    }

    // reconcile makes the subscriptions match the publishers we know of: one
    // per other participant that publishes tracks, renewed when its tracks change.
    reconcile() {
      const self = this.publisher && this.publisher.participant;
      const now = performance.now();
      let retryIn = null;
      for (const [id, tracks] of this.participants) {
        if (id === self || tracks.size === 0) continue;
        const signature = [...tracks.keys()].sort().join(',');
        const sub = this.subs.get(id);
        if (sub && sub.signature === signature && !sub.failed) continue;
        if (sub && sub.failed && now < sub.retryAt) {
          retryIn = Math.min(retryIn ?? Infinity, sub.retryAt - now);
          continue;
        }
        if (sub) {
          sub.close();
          this.subs.delete(id);
        }
        const kinds = [...tracks.values()].map((t) => t.kind).sort();
        const video = [...tracks.values()].find((t) => t.kind === 'video');
        const rids = video ? video.rids : [];
        const next = new Subscriber(this.name, id, kinds, signature, (err) => this.subscriptionFailed(next, err), rids);
        this.subs.set(id, next);
        log('watching', id, kinds.join('+'));
        next.start().then(() => {
          if (!next.failed) this.retries.delete(id);
        }, (err) => this.subscriptionFailed(next, err));
      }
      for (const [id, sub] of this.subs) {
        const tracks = this.participants.get(id);
        if (!tracks || tracks.size === 0 || id === self) {
          log('stop watching', id);
          sub.close();
          this.subs.delete(id);
        }
      }
      if (retryIn !== null) this.scheduleReconcile(retryIn);
      $('no-remotes').hidden = this.subs.size > 0;
      this.updateStatus();
    }

    // subscriptionFailed marks a subscription for renewal after a backoff
    // that doubles with each consecutive failure for that publisher.
    subscriptionFailed(sub, err) {
      if (sub.closed || sub.failed) return;
      const failures = (this.retries.get(sub.publisher) || 0) + 1;
      this.retries.set(sub.publisher, failures);
      const backoff = Math.min(RETRY_MAX_MS, 250 * 2 ** failures);
      sub.failed = true;
      sub.retryAt = performance.now() + backoff;
      setState(sub.tile.state, 'error');
      fail('watch ' + sub.publisher, err);
      this.scheduleReconcile(backoff);
    }

    setEventsState(state) {
      this.eventsState = state;
      setState($('events-state'), state);
      this.updateStatus();
    }

    updateStatus() {
      if (this.left) return;
      const parts = [`Room ${this.name}.`];
      if (this.publishError) parts.push(`Not publishing: ${this.publishError}.`);
      else if (this.publisher) parts.push(`Publishing: ${this.publisher.state}.`);
      if (this.mode !== 'publish') parts.push(`Events: ${this.eventsState}. Watching ${this.subs.size}.`);
      setStatus(parts.join(' '), Boolean(this.publishError));
    }

    async refreshStats() {
      if (this.left) return;
      try {
        if (this.publisher) {
          const s = await this.publisher.stats();
          if (s) $('local-stats').textContent = describe(s);
        }
        for (const sub of this.subs.values()) {
          const s = await sub.stats();
          if (s.at) sub.tile.stats.textContent = describe(s);
        }
      } catch (err) {
        log('stats:', err.message);
      }
    }

    async stats() {
      const remotes = [];
      for (const sub of this.subs.values()) remotes.push(await sub.stats());
      let publish = null;
      if (this.publisher) {
        publish = Object.assign(
          { participant: this.publisher.participant, state: this.publisher.state },
          await this.publisher.stats());
      }
      return { room: this.name, mode: this.mode, events: this.eventsState, publish, remotes };
    }

    leave() {
      if (this.left) return;
      this.left = true;
      clearTimeout(this.reconcileTimer);
      clearInterval(this.statsTimer);
      if (this.events) this.events.close();
      for (const sub of this.subs.values()) sub.close();
      this.subs.clear();
      if (this.publisher) this.publisher.stop();
      if (this.localStream) for (const t of this.localStream.getTracks()) t.stop();
      $('local').hidden = true;
      $('remotes-section').hidden = true;
      setStatus('Left room ' + this.name + '.');
    }
  }

  let room = null;

  async function join() {
    const name = $('room').value.trim();
    const mode = $('mode').value;
    const simulcast = $('simulcast').checked;
    if (!name) return;
    if (room) room.leave();
    const q = new URLSearchParams(location.search);
    q.set('room', name);
    q.set('mode', mode);
    if (simulcast) q.set('simulcast', '1'); else q.delete('simulcast');
    history.replaceState(null, '', '?' + q.toString());
    $('join').disabled = true;
    $('leave').disabled = false;
    room = new Room(name, mode, simulcast);
    try {
      await room.join();
    } catch (err) {
      setStatus(fail('join ' + name, err), true);
    }
  }

  function leave() {
    if (room) room.leave();
    room = null;
    $('join').disabled = false;
    $('leave').disabled = true;
  }

  window.oneportStats = async () => {
    const base = { errors: errors.slice() };
    if (!room) return Object.assign(base, { room: null, publish: null, remotes: [] });
    return Object.assign(base, await room.stats());
  };

  // window.oneportSelectLayer(publisher, rid) does what a tile's layer choice does.
  window.oneportSelectLayer = async (publisher, rid) => {
    const sub = room && room.subs.get(publisher);
    if (!sub) throw new Error('not watching ' + publisher);
    sub.tile.layer.value = rid;
    return sub.selectLayer(rid);
  };

  $('join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    join();
  });
  $('leave').addEventListener('click', leave);
  window.addEventListener('pagehide', () => { if (room) room.leave(); });

  if (params.has('room')) $('room').value = params.get('room');
  if (['both', 'publish', 'watch'].includes(params.get('mode'))) $('mode').value = params.get('mode');
  $('simulcast').checked = params.get('simulcast') === '1';
  if (params.has('room') && params.get('autostart') !== '0') join();
})();
