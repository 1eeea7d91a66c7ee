/*
 * Sluice conference page: /conference/{room}[?name=NAME][&token=JWT][&autostart=1]
 *
 * Joining publishes the camera and microphone over WHIP as participant NAME
 * (simulcast q/h/f), opens the conference WebSocket to learn who publishes in
 * the room, and watches every other participant over its own WHEP session
 * (`?participant=NAME&layer=h`: tiles are small, so the middle layer).
 * When the server ends its WHIP session (the name joined again elsewhere,
 * an admin removed it or closed the room), the page leaves and says why.
 *
 * The socket also says who is speaking: their tiles (this page's own too)
 * get a green outline while they speak. Mute stops sending the microphone
 * (the track sends silence), Unmute resumes it.
 *
 * Test hooks: window.sluice = {page, state, error, me, muted, speakers: [NAME],
 * tiles: {NAME: {state, framesDecoded, frameWidth, frameHeight}}};
 * window.sluiceLeave() leaves.
 */
(function () {
  'use strict';

  const S = window.Sluice;
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const token = params.get('token');
  const TILE_LAYER = 'h';
  const HOOK_INTERVAL_MS = 500;
  /** What the page says when the server ended its own session. */
  const ENDED = {
    replaced: 'You joined this room again from another tab or device, so this page left.',
    removed: 'An admin removed you from the room.',
    room_closed: 'An admin closed the room.',
  };

  const hooks = {
    page: 'conference', room: null, state: 'idle', error: null, me: null, muted: false, speakers: [], tiles: {},
  };
  window.sluice = hooks;

  const room = S.roomFromPath();
  hooks.room = room;
  document.querySelectorAll('[data-room]').forEach((el) => { el.textContent = room || '?'; });
  document.querySelectorAll('[data-room-link]').forEach((el) => {
    el.href = `/${el.dataset.roomLink}/${encodeURIComponent(room || '')}`;
  });

  const nameInput = $('name');
  nameInput.value = params.get('name') || `guest-${Math.random().toString(36).slice(2, 6)}`;
  const joinBtn = $('join');
  const leaveBtn = $('leave');
  const muteBtn = $('mute');
  const tilesEl = $('tiles');
  const emptyEl = $('empty');

  let session = null; // {ws, publisher: {pc, resource, stream}, remotes: Map(name -> remote), speaking: Set(name), timer}

  function setState(state) {
    hooks.state = state;
    $('state').dataset.state = state;
    $('state-text').textContent = state;
  }

  function showError(message) {
    hooks.error = message;
    const el = $('error');
    el.textContent = message;
    el.hidden = !message;
  }

  function authHeaders(extra) {
    const headers = Object.assign({}, extra);
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  /** Offer, POST, answer; returns the absolute resource URL. */
  async function exchange(pc, url) {
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    await S.waitForIceGathering(pc, 2000);
    const res = await fetch(url, {
      method: 'POST',
      headers: authHeaders({ 'Content-Type': 'application/sdp' }),
      body: pc.localDescription.sdp,
    });
    if (!res.ok) throw new Error(await S.problemMessage(res));
    const resource = new URL(res.headers.get('Location'), location.href).href;
    await pc.setRemoteDescription({ type: 'answer', sdp: await res.text() });
    return resource;
  }

  function endSession(resource) {
    if (resource) fetch(resource, { method: 'DELETE', headers: authHeaders() }).catch(() => {});
  }

  function makeTile(label, self) {
    const tile = document.createElement('div');
    tile.className = 'tile' + (self ? ' self' : '');
    tile.innerHTML = '<video autoplay playsinline></video><div class="waiting">waiting for video…</div>' +
      '<div class="label"><span class="name"></span><span class="res"></span></div>';
    tile.querySelector('.name').textContent = label;
    const video = tile.querySelector('video');
    video.muted = !!self;
    video.addEventListener('playing', () => tile.classList.add('playing'));
    tilesEl.appendChild(tile);
    emptyEl.hidden = true;
    return { tile, video };
  }

  async function publish(name) {
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: 640, height: 360 },
    });
    const { tile, video } = makeTile(`${name} (you)`, true);
    video.srcObject = stream;
    const pc = new RTCPeerConnection({ iceServers: [] });
    for (const track of stream.getAudioTracks()) {
      pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
    }
    for (const track of stream.getVideoTracks()) {
      pc.addTransceiver(track, {
        direction: 'sendonly',
        streams: [stream],
        sendEncodings: [
          { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 100000 },
          { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 300000 },
          { rid: 'f', maxBitrate: 900000 },
        ],
      });
    }
    const url = `/whip/${encodeURIComponent(room)}?participant=${encodeURIComponent(name)}`;
    const resource = await exchange(pc, url);
    return { pc, resource, stream, tile };
  }

  async function watch(name) {
    const remote = { name, pc: new RTCPeerConnection({ iceServers: [] }), resource: null };
    Object.assign(remote, makeTile(name, false));
    remote.tile.classList.toggle('speaking', session.speaking.has(name));
    remote.pc.addTransceiver('audio', { direction: 'recvonly' });
    remote.pc.addTransceiver('video', { direction: 'recvonly' });
    const stream = new MediaStream();
    remote.video.srcObject = stream;
    remote.pc.ontrack = (e) => stream.addTrack(e.track);
    session.remotes.set(name, remote);
    const url = `/whep/${encodeURIComponent(room)}?participant=${encodeURIComponent(name)}&layer=${TILE_LAYER}`;
    try {
      remote.resource = await exchange(remote.pc, url);
    } catch (err) {
      showError(`watching ${name}: ${err.message}`);
    }
    if (!session || session.remotes.get(name) !== remote) unwatch(remote); // left meanwhile
  }

  function unwatch(remote) {
    endSession(remote.resource);
    remote.resource = null;
    remote.pc.close();
    remote.tile.remove();
  }

  /** The WebSocket says who publishes: watch newcomers, drop leavers. */
  function onParticipants(list) {
    if (!session) return;
    const names = new Set(list.filter((p) => p.video || p.audio).map((p) => p.name));
    names.delete(session.name);
    for (const [name, remote] of session.remotes) {
      if (!names.has(name)) {
        session.remotes.delete(name);
        unwatch(remote);
      }
    }
    for (const name of names) {
      if (!session.remotes.has(name)) watch(name);
    }
  }

  /** The WebSocket says who speaks (loudest first): outline their tiles. */
  function onSpeakers(list) {
    if (!session) return;
    session.speaking = new Set(list.map((s) => s.name));
    hooks.speakers = [...session.speaking];
    if (session.publisher) session.publisher.tile.classList.toggle('speaking', session.speaking.has(session.name));
    for (const [name, remote] of session.remotes) remote.tile.classList.toggle('speaking', session.speaking.has(name));
  }

  /** The server ended this page's own session: leave, and say why. */
  async function onEnded(reason) {
    if (session) session.publisher.resource = null; // already gone
    await leave();
    showError(ENDED[reason] || 'The server ended your session.');
  }

  function openSocket() {
    return new Promise((resolve, reject) => {
      const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
      const query = token ? `?token=${encodeURIComponent(token)}` : '';
      const ws = new WebSocket(`${scheme}://${location.host}/conference/${encodeURIComponent(room)}/ws${query}`);
      ws.onopen = () => resolve(ws);
      ws.onerror = () => reject(new Error('the conference connection failed'));
      ws.onmessage = (e) => {
        const msg = JSON.parse(e.data);
        if (msg.type === 'participants') onParticipants(msg.participants);
        else if (msg.type === 'speakers') onSpeakers(msg.speakers);
        else if (msg.type === 'ended') onEnded(msg.reason);
        else if (msg.type === 'error') showError(msg.detail);
      };
      ws.onclose = () => {
        if (session && session.ws === ws) setState('disconnected');
      };
    });
  }

  async function refreshHooks() {
    if (!session) return;
    const tiles = {};
    for (const [name, remote] of session.remotes) {
      const entry = { state: remote.pc.connectionState, framesDecoded: 0, frameWidth: 0, frameHeight: 0 };
      try {
        const report = await remote.pc.getStats();
        report.forEach((r) => {
          if (r.type === 'inbound-rtp' && r.kind === 'video') {
            entry.framesDecoded = r.framesDecoded || 0;
            entry.frameWidth = r.frameWidth || 0;
            entry.frameHeight = r.frameHeight || 0;
          }
        });
      } catch (_) { /* closed meanwhile */ }
      const res = remote.tile.querySelector('.res');
      res.textContent = entry.frameWidth ? `${entry.frameWidth}×${entry.frameHeight}` : '';
      tiles[name] = entry;
    }
    hooks.tiles = tiles;
    if (session && session.publisher) setState(session.publisher.pc.connectionState);
  }

  async function join() {
    const name = nameInput.value.trim();
    if (!name) {
      showError('Enter a name.');
      return;
    }
    showError(null);
    joinBtn.disabled = true;
    nameInput.disabled = true;
    setState('starting');
    session = { name, ws: null, publisher: null, remotes: new Map(), speaking: new Set(), timer: null };
    hooks.me = name;
    try {
      session.publisher = await publish(name);
      session.ws = await openSocket();
      // Name our WHIP session, so the server can tell us if it ends it.
      const id = session.publisher.resource.split('/').pop();
      session.ws.send(JSON.stringify({ type: 'publishing', session: id }));
      session.timer = setInterval(refreshHooks, HOOK_INTERVAL_MS);
      leaveBtn.disabled = false;
      muteBtn.disabled = false;
      setMuted(false);
    } catch (err) {
      showError(err.message);
      await leave();
    }
  }

  async function leave() {
    const s = session;
    session = null;
    if (!s) return;
    clearInterval(s.timer);
    if (s.ws) s.ws.close();
    for (const remote of s.remotes.values()) unwatch(remote);
    if (s.publisher) {
      endSession(s.publisher.resource);
      s.publisher.pc.close();
      s.publisher.stream.getTracks().forEach((t) => t.stop());
      s.publisher.tile.remove();
    }
    hooks.tiles = {};
    hooks.speakers = [];
    emptyEl.hidden = false;
    setState('closed');
    joinBtn.disabled = false;
    nameInput.disabled = false;
    leaveBtn.disabled = true;
    muteBtn.disabled = true;
  }

  /** Mute or unmute the microphone: a disabled track sends silence. */
  function setMuted(muted) {
    hooks.muted = muted;
    muteBtn.textContent = muted ? 'Unmute' : 'Mute';
    muteBtn.setAttribute('aria-pressed', String(muted));
    if (session && session.publisher) {
      session.publisher.stream.getAudioTracks().forEach((t) => { t.enabled = !muted; });
    }
  }

  window.sluiceLeave = leave;
  muteBtn.addEventListener('click', () => setMuted(!hooks.muted));
  joinBtn.addEventListener('click', join);
  leaveBtn.addEventListener('click', leave);
  window.addEventListener('pagehide', leave);

  if (!S.isValidRoom(room)) {
    showError('Invalid room name: use 1–64 characters of A–Z, a–z, 0–9, "_" or "-".');
    joinBtn.disabled = true;
  } else if (params.get('autostart') === '1') {
    join();
  }
})();
