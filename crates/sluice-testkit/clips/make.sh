#!/usr/bin/env bash
# Makes the pre-encoded VP8 clips a synthetic publisher can loop (see
# src/clip.rs): two seconds of ffmpeg's testsrc2 pattern at 30 fps, one per
# simulcast layer, each starting with the only keyframe (so looping gives a
# keyframe every 2 s), without alt-ref frames, error resilient for RTP.
# Needs ffmpeg with libvpx (Debian: apt-get install ffmpeg).
set -euo pipefail
cd "$(dirname "$0")"
make_clip() { # name size bitrate
    ffmpeg -hide_banner -loglevel error -y \
        -f lavfi -i "testsrc2=size=$2:rate=30:duration=2" \
        -c:v libvpx -b:v "$3" -minrate "$3" -maxrate "$3" -g 60 -keyint_min 60 \
        -deadline realtime -cpu-used 8 -auto-alt-ref 0 -lag-in-frames 0 -error-resilient 1 \
        -pix_fmt yuv420p "$1.ivf"
}
make_clip q 320x180 150k
make_clip h 640x360 600k
make_clip f 1280x720 2M
ls -l ./*.ivf
