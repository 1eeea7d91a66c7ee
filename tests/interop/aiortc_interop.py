"""Interop test: aiortc (an independent WebRTC stack) against a running Sluice.

An aiortc peer publishes H264 video and Opus audio over WHIP, a second aiortc
peer watches over WHEP and decodes what the SFU forwards. A third peer that
only accepts VP8 must be turned away with 422. Finally the sessions are
deleted over HTTP.

Reads SLUICE_URL (default http://127.0.0.1:18080). Prints one JSON line on
success; on failure prints the reason and exits 1.
"""

import asyncio
import fractions
import json
import math
import os
import signal
import sys
import time
import uuid
from urllib.parse import urljoin

import aiohttp
import aioice.ice
import av
import numpy as np
from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

SLUICE_URL = os.environ.get("SLUICE_URL", "http://127.0.0.1:18080").rstrip("/")
WIDTH, HEIGHT = 640, 480
WANT_VIDEO_FRAMES = 30
WANT_AUDIO_FRAMES = 20
MEDIA_TIMEOUT = 30.0
SCRIPT_TIMEOUT = 60  # whole script, enforced by SIGALRM as a last resort
RUN_TIMEOUT = 50.0  # the test itself; the rest is left for closing peers
CLOSE_TIMEOUT = 8.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15)


class Failure(Exception):
    pass


def check(cond, reason):
    if not cond:
        raise Failure(reason)


# aioice leaves 127.0.0.1 out of its host candidates. Sluice in these tests
# listens on loopback only, so without a loopback candidate ICE never pairs.
_original_get_host_addresses = aioice.ice.get_host_addresses


def _get_host_addresses_with_loopback(use_ipv4, use_ipv6):
    addresses = list(_original_get_host_addresses(use_ipv4, use_ipv6))
    if use_ipv4 and "127.0.0.1" not in addresses:
        addresses.insert(0, "127.0.0.1")
    return addresses


aioice.ice.get_host_addresses = _get_host_addresses_with_loopback


def new_pc():
    # An explicit empty list: left as None, aiortc falls back to a public
    # STUN server, and this test must only talk to loopback.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class MovingBarTrack(VideoStreamTrack):
    """640x480 frames at 30 fps: a grey background with a coloured bar that
    moves a few pixels every frame (so the encoder has something to do)."""

    BAR = 64

    def __init__(self):
        super().__init__()
        self._background = np.full((HEIGHT, WIDTH, 3), 40, dtype=np.uint8)
        self._n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        img = self._background.copy()
        x = (self._n * 8) % (WIDTH - self.BAR)
        hue = self._n % 3
        img[:, x : x + self.BAR, hue] = 230
        img[: HEIGHT // 8, :, :] = (self._n * 4) % 256
        self._n += 1
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = pts
        frame.time_base = time_base
        return frame


class ToneTrack(AudioStreamTrack):
    """48 kHz mono 440 Hz tone in 20 ms frames, paced in real time."""

    RATE = 48000
    SAMPLES = 960  # 20 ms

    def __init__(self):
        super().__init__()
        self._t = np.arange(self.SAMPLES)
        self._phase = 0.0
        self._step = 2 * math.pi * 440 / self.RATE
        self._start = None
        self._pts = 0

    async def recv(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._pts += self.SAMPLES
            wait = self._start + self._pts / self.RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        phases = self._phase + self._step * self._t
        self._phase = (self._phase + self._step * self.SAMPLES) % (2 * math.pi)
        samples = (np.sin(phases) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.RATE)
        return frame


def codecs_of(kind, mime, sender=True):
    caps = (RTCRtpSender if sender else RTCRtpReceiver).getCapabilities(kind)
    chosen = [c for c in caps.codecs if c.mimeType.lower() == mime.lower()]
    check(chosen, f"aiortc has no {mime} codec")
    return chosen


async def post_sdp(http, url, sdp, token=None):
    headers = {"Content-Type": "application/sdp"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(url, data=sdp, headers=headers) as resp:
        body = await resp.text()
        return resp.status, resp.headers, body


async def delete(http, location):
    async with http.delete(urljoin(SLUICE_URL + "/", location)) as resp:
        await resp.read()
        return resp.status


class Viewer:
    """WHEP viewer that decodes what it receives and counts it."""

    def __init__(self):
        self.pc = new_pc()
        self.video_frames = 0
        self.audio_frames = 0
        self.width = 0
        self.height = 0
        self.sizes = set()
        self.last_frame = None
        self.posted_at = None
        self.first_frame_ms = None
        self.tasks = []
        self.errors = []
        self.done = asyncio.Event()
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack):
        reader = self._read_video if track.kind == "video" else self._read_audio
        self.tasks.append(asyncio.ensure_future(reader(track)))

    def _check_done(self):
        if (
            self.video_frames >= WANT_VIDEO_FRAMES
            and self.audio_frames >= WANT_AUDIO_FRAMES
        ):
            self.done.set()

    async def _read_video(self, track):
        try:
            while True:
                frame = await track.recv()
                if self.first_frame_ms is None:
                    self.first_frame_ms = round(
                        (time.monotonic() - self.posted_at) * 1000
                    )
                self.video_frames += 1
                self.width, self.height = frame.width, frame.height
                self.sizes.add((frame.width, frame.height))
                self.last_frame = frame
                self._check_done()
        except MediaStreamError:
            pass
        except Exception as e:  # report, don't swallow
            self.errors.append(f"video reader: {e!r}")

    async def _read_audio(self, track):
        try:
            while True:
                await track.recv()
                self.audio_frames += 1
                self._check_done()
        except MediaStreamError:
            pass
        except Exception as e:
            self.errors.append(f"audio reader: {e!r}")

    async def close(self):
        await self.pc.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def run(state):
    room = f"aiortc-{uuid.uuid4().hex[:8]}"
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        # ---- publisher (WHIP) ----
        pub = new_pc()
        state["pcs"].append(pub)
        video = pub.addTransceiver(MovingBarTrack(), direction="sendonly")
        video.setCodecPreferences(codecs_of("video", "video/H264"))
        audio = pub.addTransceiver(ToneTrack(), direction="sendonly")
        audio.setCodecPreferences(codecs_of("audio", "audio/opus"))
        await pub.setLocalDescription(await pub.createOffer())
        status, headers, body = await post_sdp(
            http,
            f"{SLUICE_URL}/whip/{room}",
            pub.localDescription.sdp,
            token="test-token-ignored",
        )
        check(status == 201, f"WHIP POST: expected 201, got {status}: {body[:500]}")
        pub_location = headers.get("Location")
        check(pub_location, "WHIP answer has no Location header")
        await pub.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        state["pub_location"] = pub_location

        # ---- viewer (WHEP) ----
        viewer = Viewer()
        state["viewer"] = viewer
        viewer.pc.addTransceiver("video", direction="recvonly")
        viewer.pc.addTransceiver("audio", direction="recvonly")
        await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
        viewer.posted_at = time.monotonic()
        status, headers, body = await post_sdp(
            http, f"{SLUICE_URL}/whep/{room}", viewer.pc.localDescription.sdp
        )
        check(status == 201, f"WHEP POST: expected 201, got {status}: {body[:500]}")
        view_location = headers.get("Location")
        check(view_location, "WHEP answer has no Location header")
        check(
            "h264" in body.lower(),
            f"WHEP answer does not offer H264 video:\n{body}",
        )
        await viewer.pc.setRemoteDescription(
            RTCSessionDescription(sdp=body, type="answer")
        )

        try:
            await asyncio.wait_for(viewer.done.wait(), MEDIA_TIMEOUT)
        except asyncio.TimeoutError:
            raise Failure(
                f"after {MEDIA_TIMEOUT:.0f} s the viewer decoded "
                f"{viewer.video_frames} video frames (want {WANT_VIDEO_FRAMES}) and "
                f"{viewer.audio_frames} audio frames (want {WANT_AUDIO_FRAMES}); "
                f"publisher ice={pub.iceConnectionState} "
                f"conn={pub.connectionState}, viewer "
                f"ice={viewer.pc.iceConnectionState} "
                f"conn={viewer.pc.connectionState}; errors={viewer.errors}"
            )
        check(not viewer.errors, f"viewer errors: {viewer.errors}")
        check(
            (viewer.width, viewer.height) == (WIDTH, HEIGHT),
            f"decoded size {viewer.width}x{viewer.height}, want {WIDTH}x{HEIGHT} "
            f"(all sizes seen: {sorted(viewer.sizes)})",
        )
        # The picture must be the publisher's: a dark background with one
        # bright vertical bar (the decoder output is lossy, so only coarsely).
        img = viewer.last_frame.to_ndarray(format="rgb24")
        column_peak = img[HEIGHT // 4 :, :, :].max(axis=2).mean(axis=0)
        bright = int((column_peak > 150).sum())
        dark = int((column_peak < 90).sum())
        check(
            MovingBarTrack.BAR // 2 <= bright <= MovingBarTrack.BAR * 2
            and dark >= WIDTH // 2,
            f"decoded picture does not look like the moving bar: {bright} bright "
            f"and {dark} dark columns",
        )
        # Snapshot the numbers at the moment the goal was reached.
        result = {
            "ok": True,
            "codec": "H264",
            "frames": viewer.video_frames,
            "width": viewer.width,
            "height": viewer.height,
            "first_frame_ms": viewer.first_frame_ms,
            "audio_frames": viewer.audio_frames,
        }

        # ---- a VP8-only viewer must be refused ----
        vp8 = new_pc()
        state["pcs"].append(vp8)
        t = vp8.addTransceiver("video", direction="recvonly")
        t.setCodecPreferences(codecs_of("video", "video/VP8", sender=False))
        vp8.addTransceiver("audio", direction="recvonly")
        await vp8.setLocalDescription(await vp8.createOffer())
        check(
            "h264" not in vp8.localDescription.sdp.lower(),
            "VP8-only offer still lists H264",
        )
        async with http.post(
            f"{SLUICE_URL}/whep/{room}",
            data=vp8.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        ) as resp:
            body = await resp.text()
            ctype = resp.headers.get("Content-Type", "")
            check(
                resp.status == 422,
                f"VP8-only WHEP POST: expected 422, got {resp.status}: {body[:500]}",
            )
        check(
            ctype.split(";")[0].strip() == "application/problem+json",
            f"422 Content-Type is {ctype!r}, want application/problem+json",
        )
        try:
            problem = json.loads(body)
        except ValueError:
            raise Failure(f"422 body is not JSON: {body[:500]}")
        check(
            isinstance(problem, dict)
            and problem.get("status") == 422
            and isinstance(problem.get("title"), str)
            and isinstance(problem.get("detail"), str),
            f"422 body is not a problem {{status,title,detail}}: {problem}",
        )
        check(
            "h264" in problem["detail"].lower(),
            f"422 detail does not mention H264: {problem['detail']!r}",
        )

        # ---- tear down ----
        status = await delete(http, view_location)
        check(status == 200, f"DELETE viewer {view_location}: got {status}")
        status = await delete(http, pub_location)
        check(status == 200, f"DELETE publisher {pub_location}: got {status}")
        state["pub_location"] = None
        status = await delete(http, pub_location)
        check(status == 404, f"second DELETE {pub_location}: want 404, got {status}")
        return result


async def cleanup(state):
    closers = [pc.close() for pc in state["pcs"]]
    if state.get("viewer") is not None:
        closers.append(state["viewer"].close())
    try:
        await asyncio.wait_for(
            asyncio.gather(*closers, return_exceptions=True), 10
        )
    except asyncio.TimeoutError:
        pass


async def main():
    state = {"pcs": [], "viewer": None, "pub_location": None}
    try:
        result = await asyncio.wait_for(run(state), RUN_TIMEOUT)
        error = None
    except asyncio.TimeoutError:
        result, error = None, f"timeout: the test did not finish in {RUN_TIMEOUT:.0f} s"
    except Failure as e:
        result, error = None, str(e)
    except Exception as e:
        result, error = None, f"unexpected error: {e!r}"
    if error is not None and state.get("pub_location"):
        # Best effort, so a failed run does not leave a publisher behind.
        try:
            async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
                await delete(http, state["pub_location"])
        except Exception:
            pass
    try:
        await asyncio.wait_for(cleanup(state), CLOSE_TIMEOUT)
    except asyncio.TimeoutError:
        pass
    if error is not None:
        print(f"FAIL: {error}", flush=True)
        return 1
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


def _hard_timeout(signum, frame):
    print(f"FAIL: hard timeout: script ran for {SCRIPT_TIMEOUT} s", flush=True)
    os._exit(1)


if __name__ == "__main__":
    signal.signal(signal.SIGALRM, _hard_timeout)
    signal.alarm(SCRIPT_TIMEOUT)
    sys.exit(asyncio.run(main()))
