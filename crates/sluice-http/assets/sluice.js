/*
 * Sluice browser client.
 *
 * One plain script (no modules, no build step) shared by the three pages the
 * server embeds. Each page marks itself with <body data-page="index|publish|watch">
 * and this file starts the matching controller once the DOM is ready.
 *
 * Globals:
 *   window.Sluice      small API: roomFromPath, negotiate, deleteResource, pollStats, ...
 *   window.sluice      test hooks, refreshed every 500 ms while a session runs
 *   window.sluiceStop  performs Stop; resolves to the DELETE status (number) or null
 */
(function () {
  'use strict';

  const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;
  const ICE_GATHER_MAX_MS = 2000;
  const HOOK_INTERVAL_MS = 500;
  const DISPLAY_INTERVAL_MS = 1000;

  /* ------------------------------------------------------------------ */
  /* Test hooks                                                           */
  /* ------------------------------------------------------------------ */

  // Read by tests through page.evaluate(). Fields are updated in place.
  const hooks = {
    page: null,
    room: null,
    state: 'idle',        // pc.connectionState, or 'idle' before Start / 'closed' after Stop
    resource: null,       // absolute URL of the WHIP/WHEP session resource
    error: null,          // last error shown to the user
    framesDecoded: 0,     // watch page, inbound-rtp video
    frameWidth: 0,
    frameHeight: 0,
    packetsLost: 0,
    bytesReceived: 0,
    receiving: false,     // watch page: video frames arrived in the last 1.5 s
    layers: [],           // publish page: [{rid, frameWidth, frameHeight, bytesSent}]
    postStartedAt: null,  // performance.now() when the WHIP/WHEP POST was sent
    firstFrameAt: null,   // performance.now() when the first video frame was shown (watch)
    postStartedWall: null,// same instants as wall-clock ms (Date.now() scale), so two
    firstFrameWall: null, //   pages of one browser can be compared
    stopped: false,       // true once Stop completed (DELETE answered)
  };
  window.sluice = hooks;

  function wallClock(perfNow) {
    return Math.round(performance.timeOrigin + perfNow);
  }

  /* ------------------------------------------------------------------ */
  /* Shared helpers                                                       */
  /* ------------------------------------------------------------------ */

  const $ = (id) => document.getElementById(id);

  /** The room is the last path segment: /publish/{room} or /watch/{room}. */
  function roomFromPath() {
    const parts = location.pathname.split('/').filter(Boolean);
    if (parts.length === 0) return null;
    try {
      return decodeURIComponent(parts[parts.length - 1]);
    } catch (_) {
      return null;
    }
  }

  function isValidRoom(room) {
    return typeof room === 'string' && ROOM_RE.test(room);
  }

  /** Resolves once ICE gathering is complete, or after maxMs at the latest. */
  function waitForIceGathering(pc, maxMs) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', onChange);
        resolve();
      };
      const onChange = () => {
        if (pc.iceGatheringState === 'complete') finish();
      };
      const timer = setTimeout(finish, maxMs);
      pc.addEventListener('icegatheringstatechange', onChange);
    });
  }

  /** Turns a failed response into a readable message (RFC 9457 problem+json aware). */
  async function problemMessage(res) {
    let text = '';
    try {
      text = await res.text();
    } catch (_) { /* body unreadable */ }
    const type = res.headers.get('Content-Type') || '';
    if (type.includes('json') && text) {
      try {
        const problem = JSON.parse(text);
        if (problem.detail) return String(problem.detail);
        if (problem.title) return `${problem.title} (HTTP ${res.status})`;
      } catch (_) { /* not JSON after all */ }
    }
    const short = text.trim().slice(0, 200);
    return `HTTP ${res.status} ${res.statusText}` + (short ? `: ${short}` : '');
  }

  /** Ends a session: DELETE on its resource URL. Returns the HTTP status. */
  async function deleteResource(url) {
    const res = await fetch(url, { method: 'DELETE' });
    return res.status;
  }

  /**
   * WHIP/WHEP offer/answer: creates the offer, waits for ICE gathering (so the
   * offer carries candidates, no trickle), POSTs it and applies the answer.
   * Returns {answer, location}; location is the absolute resource URL.
   * If the answer cannot be applied (e.g. Stop was pressed meanwhile) the
   * server-side session is deleted again before the error is rethrown.
   */
  async function negotiate(pc, url) {
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    await waitForIceGathering(pc, ICE_GATHER_MAX_MS);

    hooks.postStartedAt = performance.now();
    hooks.postStartedWall = wallClock(hooks.postStartedAt);
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
    if (!res.ok) throw new Error(await problemMessage(res));

    const answer = await res.text();
    const loc = res.headers.get('Location');
    const location = loc ? new URL(loc, new URL(url, window.location.href)).href : null;
    try {
      await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    } catch (err) {
      if (location) deleteResource(location).catch(() => {});
      throw err;
    }
    return { answer, location };
  }

  /** Calls onReport(RTCStatsReport) every intervalMs. Returns a stop function. */
  function pollStats(pc, intervalMs, onReport) {
    let busy = false;
    const tick = async () => {
      if (busy || pc.signalingState === 'closed') return;
      busy = true;
      try {
        onReport(await pc.getStats());
      } catch (_) {
        /* pc closed between the check and the call */
      } finally {
        busy = false;
      }
    };
    const id = setInterval(tick, intervalMs);
    tick();
    return () => clearInterval(id);
  }

  /** Stats entries of one type (and optionally one media kind). */
  function statsOf(report, type, kind) {
    const out = [];
    report.forEach((s) => {
      if (s.type === type && (!kind || s.kind === kind)) out.push(s);
    });
    return out;
  }

  /** kbit/s of a byte counter between two samples of the same stats object. */
  function kbps(prev, cur, field) {
    if (!prev || !cur || prev[field] == null || cur[field] == null) return null;
    const seconds = (cur.timestamp - prev.timestamp) / 1000;
    if (seconds <= 0) return null;
    return ((cur[field] - prev[field]) * 8) / seconds / 1000;
  }

  function fmt(value, digits) {
    if (value == null || Number.isNaN(value)) return '–';
    return Number(value).toFixed(digits || 0);
  }

  /** Renders rows (arrays of cell strings) into a <tbody>. */
  function renderRows(tbody, rows, emptyText, columns) {
    tbody.replaceChildren();
    if (rows.length === 0) {
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      td.colSpan = columns;
      td.className = 'muted';
      td.textContent = emptyText;
      tr.append(td);
      tbody.append(tr);
      return;
    }
    for (const cells of rows) {
      const tr = document.createElement('tr');
      for (const text of cells) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.append(td);
      }
      tbody.append(tr);
    }
  }

  /** Status line + error box handling shared by publish and watch pages. */
  function makeUi() {
    const stateEl = $('state');
    const errorEl = $('error');
    return {
      setState(state, ice) {
        hooks.state = state;
        if (!stateEl) return;
        stateEl.dataset.state = state;
        $('state-text').textContent = ice && ice !== state ? `${state} (ICE ${ice})` : state;
      },
      showError(msg) {
        hooks.error = msg;
        if (!errorEl) return;
        errorEl.textContent = msg;
        errorEl.hidden = false;
      },
      clearError() {
        hooks.error = null;
        if (!errorEl) return;
        errorEl.textContent = '';
        errorEl.hidden = true;
      },
    };
  }

  function errorText(err) {
    if (err && err.name === 'NotAllowedError') return 'Camera/microphone permission was denied.';
    if (err && err.name === 'NotFoundError') return 'No camera or microphone found.';
    return (err && err.message) || String(err);
  }

  /**
   * Common session lifecycle for publish and watch pages.
   * opts.setup(session) builds session.pc (and session.stream); opts.endpoint
   * is '/whip/' or '/whep/'; opts.onHooks / opts.onDisplay receive stats.
   */
  function makeSessionController(opts) {
    const ui = makeUi();
    const startBtn = $('start');
    const stopBtn = $('stop');
    let session = null;

    function setButtons(running) {
      startBtn.disabled = running;
      stopBtn.disabled = !running;
      if (opts.onRunning) opts.onRunning(running);
    }

    async function start() {
      if (session) return;
      const s = (session = { pc: null, stream: null, resource: null, timers: [] });
      ui.clearError();
      Object.assign(hooks, {
        resource: null, stopped: false, postStartedAt: null, firstFrameAt: null,
        postStartedWall: null, firstFrameWall: null, framesDecoded: 0, frameWidth: 0,
        frameHeight: 0, packetsLost: 0, bytesReceived: 0, layers: [],
      });
      setButtons(true);
      ui.setState('starting');
      try {
        await opts.setup(s);
        if (session !== s) return; // stopped while setting up
        const pc = s.pc;
        const onState = () => {
          if (session === s) ui.setState(pc.connectionState, pc.iceConnectionState);
          if (pc.connectionState === 'failed') ui.showError('Connection failed (ICE/DTLS).');
        };
        pc.addEventListener('connectionstatechange', onState);
        pc.addEventListener('iceconnectionstatechange', onState);
        s.timers.push(pollStats(pc, HOOK_INTERVAL_MS, (r) => {
          if (session === s) {
            hooks.state = pc.connectionState;
            opts.onHooks(r);
          }
        }));
        s.timers.push(pollStats(pc, DISPLAY_INTERVAL_MS, (r) => {
          if (session === s) opts.onDisplay(r);
        }));
        ui.setState(pc.connectionState);
        const query = opts.query ? opts.query() : '';
        const { location } = await negotiate(pc, opts.endpoint + encodeURIComponent(opts.room) + query);
        s.resource = location;
        if (session === s) {
          hooks.resource = location;
        } else if (location) {
          deleteResource(location).catch(() => {}); // Stop raced the POST
        }
      } catch (err) {
        if (session !== s) return;
        ui.showError(errorText(err));
        await teardown(s);
        ui.setState('closed');
        setButtons(false);
      }
    }

    /** Releases everything a session holds; returns the DELETE status or null. */
    async function teardown(s) {
      if (session === s) session = null;
      s.timers.forEach((stopTimer) => stopTimer());
      if (s.pc) s.pc.close();
      let status = null;
      if (s.resource) {
        const url = s.resource;
        s.resource = null;
        try {
          status = await deleteResource(url);
          if (status >= 400) ui.showError(`Ending the session returned HTTP ${status}.`);
        } catch (err) {
          ui.showError('Ending the session failed: ' + errorText(err));
        }
      }
      if (s.stream) s.stream.getTracks().forEach((t) => t.stop());
      if (opts.onTeardown) opts.onTeardown(s);
      return status;
    }

    async function stop() {
      const s = session;
      if (!s) return null;
      const status = await teardown(s);
      hooks.resource = null;
      ui.setState('closed');
      hooks.stopped = true;
      setButtons(false);
      return status;
    }

    startBtn.addEventListener('click', start);
    stopBtn.addEventListener('click', stop);
    window.sluiceStop = stop;
    window.addEventListener('pagehide', () => {
      // Best effort: free the server-side session when the tab goes away.
      if (session && session.resource) {
        fetch(session.resource, { method: 'DELETE', keepalive: true }).catch(() => {});
      }
    });

    return { start, stop, ui };
  }

  /** Shared page prologue: room name, links, validation. Returns room or null. */
  function pagePrologue(pageName) {
    const room = roomFromPath();
    hooks.page = pageName;
    hooks.room = room;
    document.querySelectorAll('[data-room]').forEach((el) => {
      el.textContent = room || '?';
    });
    document.querySelectorAll('[data-room-link]').forEach((el) => {
      el.href = `/${el.dataset.roomLink}/${encodeURIComponent(room || '')}`;
    });
    if (room) document.title = `${document.title} · ${room}`;
    return isValidRoom(room) ? room : null;
  }

  function autostartRequested() {
    return new URLSearchParams(location.search).get('autostart') === '1';
  }

  /* ------------------------------------------------------------------ */
  /* Publish page                                                         */
  /* ------------------------------------------------------------------ */

  /** Orders simulcast layers low to high: q, h, f, then by width. */
  const LAYER_RANK = { q: 0, h: 1, f: 2 };
  function byLayer(a, b) {
    const ra = LAYER_RANK[a.rid] ?? 3;
    const rb = LAYER_RANK[b.rid] ?? 3;
    return ra - rb || (a.frameWidth || 0) - (b.frameWidth || 0);
  }

  function publishPage() {
    const room = pagePrologue('publish');
    const video = $('video');
    const simulcastBox = $('simulcast');
    const layersBody = $('layers');
    const audioKbps = $('audio-kbps');
    let prev = new Map(); // stats id -> previous sample, for bitrates

    const ctl = makeSessionController({
      room,
      endpoint: '/whip/',
      async setup(s) {
        s.stream = await navigator.mediaDevices.getUserMedia({
          audio: true,
          video: { width: 1280, height: 720 },
        });
        video.srcObject = s.stream;
        video.play().catch(() => {});
        const pc = (s.pc = new RTCPeerConnection({ iceServers: [] }));
        const [audioTrack] = s.stream.getAudioTracks();
        const [videoTrack] = s.stream.getVideoTracks();
        if (audioTrack) {
          pc.addTransceiver(audioTrack, { direction: 'sendonly', streams: [s.stream] });
        }
        if (videoTrack) {
          pc.addTransceiver(videoTrack, {
            direction: 'sendonly',
            streams: [s.stream],
            sendEncodings: simulcastBox.checked
              ? [
                  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
                  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 600000 },
                  { rid: 'f', maxBitrate: 2000000 },
                ]
              : undefined,
          });
        }
      },
      onHooks(report) {
        hooks.layers = statsOf(report, 'outbound-rtp', 'video')
          .map((o) => ({
            rid: o.rid || null,
            frameWidth: o.frameWidth || 0,
            frameHeight: o.frameHeight || 0,
            bytesSent: o.bytesSent || 0,
          }))
          .sort(byLayer);
      },
      onDisplay(report) {
        const next = new Map();
        const rows = statsOf(report, 'outbound-rtp', 'video')
          .sort(byLayer)
          .map((o) => {
            next.set(o.id, o);
            const res = o.frameWidth ? `${o.frameWidth}×${o.frameHeight}` : '–';
            const limited = o.qualityLimitationReason && o.qualityLimitationReason !== 'none'
              ? ` (${o.qualityLimitationReason})` : '';
            return [o.rid || '—', res, fmt(o.framesPerSecond), fmt(kbps(prev.get(o.id), o, 'bytesSent')) + limited];
          });
        renderRows(layersBody, rows, 'No video being sent yet', 4);
        const audio = statsOf(report, 'outbound-rtp', 'audio')[0];
        if (audio) next.set(audio.id, audio);
        audioKbps.textContent = audio ? fmt(kbps(prev.get(audio.id), audio, 'bytesSent')) : '–';
        prev = next;
      },
      onRunning(running) {
        simulcastBox.disabled = running;
        video.closest('.video-wrap').classList.toggle('live', running);
      },
      onTeardown() {
        video.srcObject = null;
        prev = new Map();
        renderRows(layersBody, [], 'Not publishing', 4);
        audioKbps.textContent = '–';
      },
    });

    if (!room) {
      ctl.ui.showError('Invalid room name: use 1–64 characters of A–Z, a–z, 0–9, "_" or "-".');
      $('start').disabled = true;
      return;
    }
    if (autostartRequested()) ctl.start();
  }

  /* ------------------------------------------------------------------ */
  /* Watch page                                                           */
  /* ------------------------------------------------------------------ */

  function watchPage() {
    const room = pagePrologue('watch');
    const video = $('video');
    const unmuteBtn = $('unmute');
    const layerSelect = $('layer');
    // The simulcast layer: asked for in the WHEP POST, changed later
    // through the session's layer resource (the WHEP layer extension).
    layerSelect.addEventListener('change', async () => {
      if (!hooks.resource) return;
      const body = layerSelect.value === 'auto' ? {} : { encodingId: layerSelect.value };
      const res = await fetch(`${hooks.resource}/layer`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
      if (!res.ok) ctl.ui.showError(await problemMessage(res));
    });
    const statsEls = {
      resolution: $('st-resolution'),
      frames: $('st-frames'),
      fps: $('st-fps'),
      kbps: $('st-kbps'),
      audio: $('st-audio'),
      lost: $('st-lost'),
      jitter: $('st-jitter'),
    };
    let prev = new Map();
    // When framesDecoded last grew: a stall means the publisher left (the
    // server keeps the viewer and switches it to the next publisher).
    let lastFrames = 0;
    let lastFrameChange = 0;
    const STALL_MS = 1500;
    const overlay = document.querySelector('.video-wrap .overlay');
    const waitingText = overlay.textContent;

    /** Shows whether video is arriving; sets hooks.receiving. */
    function trackReceiving(framesDecoded) {
      const now = performance.now();
      if (framesDecoded > lastFrames) {
        lastFrames = framesDecoded;
        lastFrameChange = now;
      }
      const receiving = framesDecoded > 0 && now - lastFrameChange < STALL_MS;
      hooks.receiving = receiving;
      const wrap = video.closest('.video-wrap');
      if (hooks.firstFrameAt != null) {
        wrap.classList.toggle('playing', receiving);
        wrap.classList.toggle('stalled', !receiving);
        overlay.textContent = receiving ? waitingText : 'The publisher has left. Waiting for the next one…';
      }
    }

    /** Records the first decoded+presented video frame, once per session. */
    function armFirstFrame(s) {
      const mark = () => {
        if (hooks.firstFrameAt == null && s.active) {
          hooks.firstFrameAt = performance.now();
          hooks.firstFrameWall = wallClock(hooks.firstFrameAt);
          video.closest('.video-wrap').classList.add('playing');
        }
      };
      if ('requestVideoFrameCallback' in video) video.requestVideoFrameCallback(mark);
      video.addEventListener('loadeddata', mark, { once: true });
      video.addEventListener('resize', mark, { once: true });
    }

    /** The video inbound-rtp with most frames (there should be exactly one). */
    function videoInbound(report) {
      return statsOf(report, 'inbound-rtp', 'video')
        .sort((a, b) => (b.framesDecoded || 0) - (a.framesDecoded || 0))[0];
    }

    const ctl = makeSessionController({
      room,
      endpoint: '/whep/',
      query: () => (layerSelect.value === 'auto' ? '' : `?layer=${layerSelect.value}`),
      async setup(s) {
        s.active = true;
        const pc = (s.pc = new RTCPeerConnection({ iceServers: [] }));
        pc.addTransceiver('video', { direction: 'recvonly' });
        pc.addTransceiver('audio', { direction: 'recvonly' });
        const stream = new MediaStream();
        pc.addEventListener('track', (ev) => {
          stream.addTrack(ev.track);
          if (video.srcObject !== stream) {
            video.srcObject = stream;
            armFirstFrame(s);
            video.play().catch(() => {});
          }
        });
      },
      onHooks(report) {
        const v = videoInbound(report);
        if (!v) return;
        hooks.framesDecoded = v.framesDecoded || 0;
        trackReceiving(hooks.framesDecoded);
        hooks.frameWidth = v.frameWidth || 0;
        hooks.frameHeight = v.frameHeight || 0;
        hooks.packetsLost = v.packetsLost || 0;
        hooks.bytesReceived = v.bytesReceived || 0;
      },
      onDisplay(report) {
        const next = new Map();
        const v = videoInbound(report);
        const a = statsOf(report, 'inbound-rtp', 'audio')[0];
        if (v) next.set(v.id, v);
        if (a) next.set(a.id, a);
        statsEls.resolution.textContent = v && v.frameWidth ? `${v.frameWidth}×${v.frameHeight}` : '–';
        statsEls.frames.textContent = v ? fmt(v.framesDecoded || 0) : '–';
        statsEls.fps.textContent = v ? fmt(v.framesPerSecond) : '–';
        statsEls.kbps.textContent = v ? fmt(kbps(prev.get(v.id), v, 'bytesReceived')) : '–';
        statsEls.audio.textContent = a ? fmt(kbps(prev.get(a.id), a, 'bytesReceived')) : '–';
        statsEls.lost.textContent = v ? fmt((v.packetsLost || 0) + (a ? a.packetsLost || 0 : 0)) : '–';
        statsEls.jitter.textContent = v && v.jitter != null ? fmt(v.jitter * 1000, 1) : '–';
        prev = next;
      },
      onRunning(running) {
        video.closest('.video-wrap').classList.toggle('live', running);
      },
      onTeardown(s) {
        s.active = false;
        video.srcObject = null;
        video.closest('.video-wrap').classList.remove('playing', 'stalled');
        lastFrames = 0;
        lastFrameChange = 0;
        hooks.receiving = false;
        overlay.textContent = waitingText;
        prev = new Map();
        Object.values(statsEls).forEach((el) => { el.textContent = '–'; });
      },
    });

    unmuteBtn.addEventListener('click', () => {
      video.muted = !video.muted;
      if (!video.muted) video.play().catch(() => {});
    });
    video.addEventListener('volumechange', () => {
      unmuteBtn.textContent = video.muted ? 'Unmute' : 'Mute';
    });

    if (!room) {
      ctl.ui.showError('Invalid room name: use 1–64 characters of A–Z, a–z, 0–9, "_" or "-".');
      $('start').disabled = true;
      return;
    }
    if (autostartRequested()) ctl.start();
  }

  /* ------------------------------------------------------------------ */
  /* Landing page                                                         */
  /* ------------------------------------------------------------------ */

  function indexPage() {
    hooks.page = 'index';
    const input = $('room');
    const hint = $('room-hint');
    const links = { publish: $('go-publish'), watch: $('go-watch'), conference: $('go-conference') };
    const whipUrl = $('whip-url');
    const whepUrl = $('whep-url');

    function update() {
      const room = input.value.trim();
      const ok = isValidRoom(room);
      const shown = ok ? encodeURIComponent(room) : '{room}';
      whipUrl.textContent = `${location.origin}/whip/${shown}`;
      whepUrl.textContent = `${location.origin}/whep/${shown}`;
      for (const [kind, a] of Object.entries(links)) {
        a.href = ok ? `/${kind}/${encodeURIComponent(room)}` : '#';
        a.classList.toggle('disabled', !ok);
        a.setAttribute('aria-disabled', String(!ok));
      }
      input.setAttribute('aria-invalid', String(!ok));
      hint.hidden = ok;
    }

    input.addEventListener('input', update);
    Object.values(links).forEach((a) =>
      a.addEventListener('click', (ev) => {
        if (a.classList.contains('disabled')) ev.preventDefault();
      }));
    $('room-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (!links.watch.classList.contains('disabled')) location.href = links.watch.href;
    });

    // Copy buttons: <button data-copy="element-id">
    document.querySelectorAll('[data-copy]').forEach((btn) => {
      btn.addEventListener('click', async () => {
        const text = $(btn.dataset.copy).textContent;
        try {
          await navigator.clipboard.writeText(text);
          btn.textContent = 'Copied';
        } catch (_) {
          // Clipboard API needs a secure context; fall back to selecting the text.
          const range = document.createRange();
          range.selectNodeContents($(btn.dataset.copy));
          const sel = window.getSelection();
          sel.removeAllRanges();
          sel.addRange(range);
          btn.textContent = 'Selected';
        }
        setTimeout(() => { btn.textContent = 'Copy'; }, 1500);
      });
    });

    update();
  }

  /* ------------------------------------------------------------------ */
  /* Boot                                                                 */
  /* ------------------------------------------------------------------ */

  window.Sluice = {
    roomFromPath,
    isValidRoom,
    waitForIceGathering,
    negotiate,
    deleteResource,
    problemMessage,
    pollStats,
  };

  function boot() {
    const page = document.body && document.body.dataset.page;
    if (page === 'publish') publishPage();
    else if (page === 'watch') watchPage();
    else if (page === 'index') indexPage();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
})();
