//! A str0m client peer speaking WHIP or WHEP against a real server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_session::DtlsSetup;
pub use str0m::IceConnectionState;
use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, KeyframeRequestKind, MediaKind, Mid, Pt, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::clip::Clip;
#[cfg(target_os = "linux")]
use crate::endpoint::Endpoint;
#[cfg(target_os = "linux")]
use crate::hub;
use crate::media::{SIMULCAST, SyntheticMedia, VideoCodec, layer_tag, sent_at, stamp};
use crate::pacer::{DEFAULT_BURST as DEFAULT_PACER_BURST, Pacer};
use crate::relay::{Loss, LossyRelay, first_candidate, redirect_candidate};

/// Audio or video, for recorded packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

/// One RTP packet a peer sent or received.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Audio or video.
    pub kind: Kind,
    /// Extended sequence number.
    pub seq: u64,
    /// RTP timestamp.
    pub ts: u32,
    /// The RTP payload.
    pub payload: Arc<[u8]>,
    /// The audio level header extension (RFC 6464), -dBov.
    pub audio_level: Option<i8>,
    /// When it was sent or received.
    pub at: Instant,
}

/// What a test wants from a peer.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Server base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Room name.
    pub room: String,
    /// Publish (WHIP) or watch (WHEP).
    pub publish: bool,
    /// Bearer token to send, if any.
    pub token: Option<String>,
    /// The only video codec the peer offers (and sends, when publishing).
    pub video: VideoCodec,
    /// Keep every packet sent and received (tests comparing bytes), or
    /// only count them (load tests).
    pub keep_packets: bool,
    /// Count received media from the clear RTP headers without decrypting
    /// it (cheap load-test subscribers: no payloads, no latency). On Linux
    /// a shared receive thread reads such peers' sockets (see
    /// [`crate::hub`]); elsewhere they decrypt like any other.
    pub count_only: bool,
    /// Publish video as three simulcast layers (q, h, f; see
    /// [`crate::media::SIMULCAST`]).
    pub simulcast: bool,
    /// Talk to the server through a relay that drops packets.
    pub loss: Option<Loss>,
    /// Offer and send audio only (no video section).
    pub audio_only: bool,
    /// Publish the shipped VP8 clips (real video a browser can decode;
    /// see [`crate::clip`]) instead of made-up payloads. Their payloads
    /// carry no send stamp, so neither side measures latency.
    pub clips: bool,
    /// A publisher's participant name, or the participant a viewer follows
    /// (`?participant=`).
    pub participant: Option<String>,
    /// A publisher's audio is silence (-127 dBov) rather than alternating
    /// seconds of speech and quiet.
    pub silent: bool,
    /// The simulcast layer a viewer asks for (`?layer=` on the WHEP POST:
    /// `q`, `h`, `f` or `auto`); `None` leaves the server's default.
    pub layer: Option<String>,
    /// A viewer reports this receive estimate (REMB), as a browser does
    /// when it has no transport-wide feedback to send: its estimate then
    /// stays near what it receives.
    pub remb_kbps: Option<u64>,
    /// How far a publisher's pacer may run ahead of its pacing rate (see
    /// [`crate::pacer`]): 40 ms, libwebrtc's default, sends ordinary
    /// frames in one burst; zero spreads every frame out.
    pub pacer_burst: Duration,
}

impl PeerOptions {
    /// A VP8 + Opus peer for `room` at `url`.
    pub fn new(url: &str, room: &str, publish: bool) -> Self {
        PeerOptions {
            url: url.to_owned(),
            room: room.to_owned(),
            publish,
            token: None,
            video: VideoCodec::Vp8,
            keep_packets: true,
            simulcast: false,
            count_only: false,
            loss: None,
            audio_only: false,
            clips: false,
            participant: None,
            silent: false,
            layer: None,
            remb_kbps: None,
            pacer_burst: DEFAULT_PACER_BURST,
        }
    }
}

/// Why a peer could not start.
#[derive(Debug)]
pub enum PeerError {
    /// HTTP transport failure.
    Http(String),
    /// The server answered with an error status; the body explains it.
    Status(u16, String),
    /// Local WebRTC or socket failure.
    Local(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Http(e) => write!(f, "http: {e}"),
            PeerError::Status(s, b) => write!(f, "server answered {s}: {b}"),
            PeerError::Local(e) => write!(f, "local: {e}"),
        }
    }
}

impl std::error::Error for PeerError {}

/// Counts of one received stream, kept even when packets are not.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamStats {
    /// Packets received.
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Lowest and highest sequence number seen.
    pub seq_range: Option<(u64, u64)>,
}

impl StreamStats {
    /// Packets missing between the lowest and highest sequence number.
    pub fn lost(&self) -> u64 {
        self.seq_range
            .map_or(0, |(lo, hi)| (hi - lo + 1).saturating_sub(self.packets))
    }

    pub(crate) fn record(&mut self, seq: u64, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
        self.seq_range = Some(match self.seq_range {
            None => (seq, seq),
            Some((lo, hi)) => (lo.min(seq), hi.max(seq)),
        });
    }
}

/// What the peer's task shares with the test.
#[derive(Debug, Default)]
pub struct PeerState {
    /// ICE and DTLS are up.
    pub connected: bool,
    /// When they came up.
    pub connected_at: Option<Instant>,
    /// Packets sent (publisher; only with [`PeerOptions::keep_packets`]).
    pub sent: Vec<Packet>,
    /// Packets received (viewer; only with [`PeerOptions::keep_packets`]).
    pub received: Vec<Packet>,
    /// Packets sent, counted always.
    pub sent_count: u64,
    /// Received audio and video, counted always: `[audio, video]`.
    pub rx: [StreamStats; 2],
    /// Send-to-receive delay of every received packet, in microseconds.
    pub latencies_us: Vec<u32>,
    /// When the WHIP/WHEP POST was sent.
    pub post_at: Option<Instant>,
    /// When the first media packet arrived.
    pub first_packet_at: Option<Instant>,
    /// When the first video keyframe packet arrived.
    pub first_keyframe_at: Option<Instant>,
    /// Video packets received per simulcast layer tag (index 1 to 3 for
    /// q, h, f; 0 for a publisher without simulcast), full subscribers only.
    pub video_layers: [u64; 4],
    /// Keyframe requests received from the server (publisher), honoured
    /// or not (see `KEYFRAME_REQUEST_FLOOR`).
    pub keyframe_requests: u32,
    /// HTTP status of each ICE restart PATCH, in order.
    pub ice_restarts: Vec<u16>,
    /// Every ICE connection state the peer went through, in order.
    pub ice_states: Vec<IceConnectionState>,
}

/// A running test peer. Dropping it stops the peer without telling the
/// server (like a vanished browser); [`Peer::delete`] ends it properly.
pub struct Peer {
    /// The session resource URL from the `Location` header.
    pub resource: String,
    /// The bearer token the session was created with.
    token: Option<String>,
    relay: Option<LossyRelay>,
    state: Arc<Mutex<PeerState>>,
    commands: watch::Sender<PeerCommand>,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerCommand {
    Run,
    RequestKeyframe,
    RestartIce,
    Stop,
}

impl Peer {
    /// Negotiate with the server and start the peer's task.
    pub async fn start(options: PeerOptions) -> Result<Peer, PeerError> {
        if options.clips && options.video != VideoCodec::Vp8 {
            return Err(PeerError::Local("the shipped clips are VP8".into()));
        }
        let socket = Socket::open(options.count_only && !options.publish)
            .await
            .map_err(|e| PeerError::Local(e.to_string()))?;
        let local = socket
            .local()
            .map_err(|e| PeerError::Local(e.to_string()))?;
        let now = Instant::now();
        // Test peers share one certificate of their own, as the server's
        // sessions share the server's: a DTLS set-up per peer would cost
        // the tester about a millisecond and a half of CPU each.
        static PEERS: OnceLock<DtlsSetup> = OnceLock::new();
        let builder = PEERS
            .get_or_init(DtlsSetup::new)
            .apply(Rtc::builder())
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false);
        let builder = match options.video {
            VideoCodec::Vp8 => builder.enable_vp8(true),
            VideoCodec::H264 => builder.enable_h264(true),
            VideoCodec::Vp9 => builder.enable_vp9(true),
            VideoCodec::Av1 => builder.enable_av1(true),
        };
        let mut rtc = builder.build(now);
        let candidate =
            Candidate::host(local, "udp").map_err(|e| PeerError::Local(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let dir = if options.publish {
            Direction::SendOnly
        } else {
            Direction::RecvOnly
        };
        let mut change = rtc.sdp_api();
        let audio = change.add_media(MediaKind::Audio, dir, Some("test".into()), None, None);
        let simulcast = (options.publish && options.simulcast).then(|| {
            let mut s = Simulcast::new();
            for (rid, _) in SIMULCAST {
                s.add_send_layer(SimulcastLayer::new(rid));
            }
            s
        });
        let video = (!options.audio_only)
            .then(|| change.add_media(MediaKind::Video, dir, Some("test".into()), None, simulcast));
        let (offer, pending) = change.apply().ok_or(PeerError::Local("no offer".into()))?;
        let endpoint = if options.publish { "whip" } else { "whep" };
        let mut query = Vec::new();
        if let Some(layer) = options.layer.as_deref().filter(|_| !options.publish) {
            query.push(format!("layer={layer}"));
        }
        if let Some(name) = &options.participant {
            query.push(format!("participant={name}"));
        }
        let mut url = format!("{}/{}/{}", options.url, endpoint, options.room);
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        let post_at = Instant::now();
        let (answer, location) =
            post_offer(&url, &offer.to_sdp_string(), options.token.as_deref()).await?;
        let resource = absolute(&options.url, &location);
        let (answer, relay) = match options.loss {
            None => (answer, None),
            Some(loss) => {
                let server = first_candidate(&answer)
                    .ok_or(PeerError::Local("no candidate in the answer".into()))?;
                let relay = LossyRelay::start(server, loss)
                    .await
                    .map_err(|e| PeerError::Local(e.to_string()))?;
                (redirect_candidate(&answer, server, relay.addr), Some(relay))
            }
        };
        accept(&mut rtc, pending, &answer)?;
        let state = Arc::new(Mutex::new(PeerState {
            post_at: Some(post_at),
            ..PeerState::default()
        }));
        let link = socket.link(&answer, &state)?;
        let http = Http {
            resource: resource.clone(),
            answer,
        };
        let (commands, rx) = watch::channel(PeerCommand::Run);
        let driver = Driver {
            http,
            rtc,
            link,
            local,
            state: state.clone(),
            audio,
            video,
            publish: options.publish,
            codec: match options.video {
                VideoCodec::Vp8 => Codec::Vp8,
                VideoCodec::H264 => Codec::H264,
                VideoCodec::Vp9 => Codec::Vp9,
                VideoCodec::Av1 => Codec::Av1,
            },
            audio_media: SyntheticMedia::default(),
            silent: options.silent,
            audio_seq: 0,
            layers: if options.audio_only {
                Vec::new()
            } else if options.clips {
                clip_layers(options.simulcast)?
            } else if options.simulcast {
                SIMULCAST
                    .iter()
                    .map(|(rid, shape)| VideoLayer {
                        rid: Some((*rid).into()),
                        media: SyntheticMedia::shaped(options.video, *shape),
                        seq: 0,
                    })
                    .collect()
            } else {
                vec![VideoLayer {
                    rid: None,
                    media: SyntheticMedia::new(options.video),
                    seq: 0,
                }]
            },
            paced: VecDeque::new(),
            pacer: Pacer::new(options.pacer_burst, Instant::now()),
            keyframe_honoured: None,
            arrived: None,
            keep_packets: options.keep_packets,
            clips: options.clips,
            video_codec: options.video,
            remb: options.remb_kbps.map(|kbps| (Bitrate::kbps(kbps), None)),
        };
        let task = tokio::spawn(driver.run(rx));
        Ok(Peer {
            resource,
            token: options.token.clone(),
            relay,
            state,
            commands,
            task,
        })
    }

    /// Packets the peer's lossy relay dropped (0 without one).
    pub fn dropped(&self) -> u64 {
        self.relay.as_ref().map_or(0, LossyRelay::dropped)
    }

    /// Look at what the peer recorded so far.
    pub fn with_state<R>(&self, f: impl FnOnce(&PeerState) -> R) -> R {
        f(&self.state.lock())
    }

    /// Wait until `f` holds on the recorded state, or `timeout` passes.
    pub async fn wait_for(&self, timeout: Duration, f: impl Fn(&PeerState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f(&self.state.lock()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        f(&self.state.lock())
    }

    /// Ask the server for another simulcast layer (`Some("q")`) or for
    /// automatic selection (`None`) through the session's layer resource.
    /// Returns the HTTP status.
    pub async fn choose_layer(&self, layer: Option<&str>) -> Result<u16, PeerError> {
        let body = match layer {
            Some(name) => serde_json::json!({ "encodingId": name }),
            None => serde_json::json!({}),
        };
        let mut request = http().post(format!("{}/layer", self.resource)).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        Ok(request
            .send()
            .await
            .map_err(|e| PeerError::Http(e.to_string()))?
            .status()
            .as_u16())
    }

    /// Send a PLI for the video track (viewer).
    pub fn request_keyframe(&self) {
        let _ = self.commands.send(PeerCommand::RequestKeyframe);
    }

    /// Restart ICE with new credentials through an HTTP PATCH (RFC 9725
    /// 4.4); the outcome lands in [`PeerState::ice_restarts`].
    pub fn restart_ice(&self) {
        let _ = self.commands.send(PeerCommand::RestartIce);
    }

    /// Stop the peer's task without telling the server.
    pub async fn vanish(self) {
        let _ = self.commands.send(PeerCommand::Stop);
        let _ = self.task.await;
    }

    /// End the session with an HTTP DELETE, then stop. Returns the status.
    pub async fn delete(self) -> Result<u16, PeerError> {
        let mut request = http().delete(&self.resource);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let status = request
            .send()
            .await
            .map_err(|e| PeerError::Http(e.to_string()))?
            .status()
            .as_u16();
        self.vanish().await;
        Ok(status)
    }
}

/// How long a request to the server may take before the peer gives up.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP client for one request. Not shared: a pooled connection
/// belongs to the runtime that opened it, and tests run a runtime each.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .unwrap_or_default()
}

/// POST an SDP offer; returns the answer and the `Location` header.
pub async fn post_offer(
    url: &str,
    offer: &str,
    token: Option<&str>,
) -> Result<(String, String), PeerError> {
    let mut request = http()
        .post(url)
        .header("content-type", "application/sdp")
        .body(offer.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| PeerError::Http(e.to_string()))?;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response
        .text()
        .await
        .map_err(|e| PeerError::Http(e.to_string()))?;
    if status != 201 {
        return Err(PeerError::Status(status, body));
    }
    Ok((body, location))
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

fn accept(rtc: &mut Rtc, pending: SdpPendingOffer, answer: &str) -> Result<(), PeerError> {
    let answer = SdpAnswer::from_sdp_string(answer).map_err(|e| PeerError::Local(e.to_string()))?;
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .map_err(|e| PeerError::Local(e.to_string()))
}

/// A peer's socket while it negotiates.
enum Socket {
    /// A socket of its own, which the peer's task reads.
    Own(UdpSocket),
    /// A count-only subscriber's endpoint, which the receive hub reads.
    #[cfg(target_os = "linux")]
    Counted(Endpoint),
}

impl Socket {
    /// An endpoint for a count-only subscriber (`counted`, on Linux; a
    /// shared socket's address once [`crate::endpoint::share_one_socket`]
    /// ran), else a socket of its own on 127.0.0.1.
    async fn open(counted: bool) -> std::io::Result<Socket> {
        #[cfg(target_os = "linux")]
        if counted {
            return Endpoint::new().map(Socket::Counted);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = counted;
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        #[cfg(target_os = "linux")]
        crate::arrival::stamp_arrivals(&socket)?;
        Ok(Socket::Own(socket))
    }

    /// The address the peer advertises as its host candidate.
    fn local(&self) -> std::io::Result<SocketAddr> {
        match self {
            Socket::Own(socket) => socket.local_addr(),
            #[cfg(target_os = "linux")]
            Socket::Counted(endpoint) => Ok(endpoint.local()),
        }
    }

    /// The link of a peer whose server answered `answer`: a count-only
    /// subscriber's endpoint goes to the hub, which counts the streams the
    /// answer names into `state`.
    fn link(self, answer: &str, state: &Arc<Mutex<PeerState>>) -> Result<Link, PeerError> {
        match self {
            Socket::Own(socket) => Ok(Link::Own(socket)),
            #[cfg(target_os = "linux")]
            Socket::Counted(endpoint) => {
                let (tx, rest) = mpsc::unbounded_channel();
                let registration = hub::register(
                    &endpoint,
                    hub::Subscription {
                        streams: crate::counting::ssrcs_by_kind(answer),
                        state: state.clone(),
                        rest: tx,
                    },
                )
                .map_err(|e| PeerError::Local(e.to_string()))?;
                Ok(Link::Hub {
                    _registration: registration,
                    endpoint,
                    rest,
                })
            }
        }
    }
}

/// How the peer's datagrams come in and go out.
enum Link {
    /// The peer's task reads its socket itself.
    Own(UdpSocket),
    /// The receive hub reads the endpoint, counts media and passes the rest
    /// on; the task sends through the endpoint.
    #[cfg(target_os = "linux")]
    Hub {
        _registration: hub::Registration,
        endpoint: Endpoint,
        rest: mpsc::UnboundedReceiver<hub::Datagram>,
    },
}

impl Link {
    /// The next datagram for str0m, with when it reached a socket of the
    /// peer's own (where the system says). Never completes once the hub
    /// has let the subscriber go, as for a peer whose network died.
    async fn recv(
        &mut self,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, SocketAddr, Option<Instant>)> {
        match self {
            #[cfg(target_os = "linux")]
            Link::Own(socket) => crate::arrival::recv(socket, buf).await,
            #[cfg(not(target_os = "linux"))]
            Link::Own(socket) => socket.recv_from(buf).await.map(|(n, a)| (n, a, None)),
            #[cfg(target_os = "linux")]
            Link::Hub { rest, .. } => {
                let Some((datagram, source)) = rest.recv().await else {
                    return std::future::pending().await;
                };
                let n = datagram.len().min(buf.len());
                buf[..n].copy_from_slice(&datagram[..n]);
                Ok((n, source, None))
            }
        }
    }

    /// Send a datagram; one the kernel refuses is lost, as on a network.
    async fn send(&self, contents: &[u8], destination: SocketAddr) {
        match self {
            Link::Own(socket) => {
                let _ = socket.send_to(contents, destination).await;
            }
            #[cfg(target_os = "linux")]
            Link::Hub { endpoint, .. } => {
                let _ = endpoint.send_to(contents, destination);
            }
        }
    }
}

/// One outgoing video stream (a simulcast layer, or the only one).
struct VideoLayer {
    rid: Option<Rid>,
    media: SyntheticMedia,
    /// Last sequence number written.
    seq: u64,
}

/// One video packet waiting for its paced send time.
struct PacedPacket {
    layer: usize,
    payload: Vec<u8>,
    marker: bool,
    ts: u32,
}

/// How often a viewer with [`PeerOptions::remb_kbps`] reports it (what
/// Chromium does).
const REMB_EVERY: Duration = Duration::from_millis(200);

/// Most due timeouts [`Driver::drain`] handles in a row before it leaves
/// the rest to the timer.
const MAX_DUE_IN_A_ROW: u32 = 8;

/// Time between video frames (30 fps).
const FRAME_INTERVAL: Duration = Duration::from_millis(33);
/// A publisher ignores keyframe requests closer than this to the last one
/// it honoured, whatever their layer, as a browser does (libwebrtc's
/// `EncoderRtcpFeedback`).
const KEYFRAME_REQUEST_FLOOR: Duration = Duration::from_millis(300);

/// The items of `queues` one from each queue in turn, with the index of
/// the queue each came from. A browser's pacer serves the streams of one
/// priority this way (libwebrtc's pacer queue goes round the SSRCs), so a
/// simulcast frame's full-resolution packets are spread over the whole
/// pacing window instead of waiting behind the smaller layers' frames.
fn round_robin<T>(
    queues: impl IntoIterator<Item = impl IntoIterator<Item = T>>,
) -> impl Iterator<Item = (usize, T)> {
    let mut queues: Vec<_> = queues.into_iter().map(IntoIterator::into_iter).collect();
    let mut next = 0;
    let mut dry = 0;
    std::iter::from_fn(move || {
        while dry < queues.len() {
            let at = next;
            next = (next + 1) % queues.len();
            if let Some(item) = queues[at].next() {
                dry = 0;
                return Some((at, item));
            }
            dry += 1;
        }
        None
    })
}

/// The video layers of a publisher of the shipped clips: q, h and f, or
/// just f.
fn clip_layers(simulcast: bool) -> Result<Vec<VideoLayer>, PeerError> {
    let rids: &[&str] = if simulcast { &["q", "h", "f"] } else { &["f"] };
    rids.iter()
        .map(|rid| {
            let clip = Clip::layer(rid)
                .ok_or_else(|| PeerError::Local(format!("no clip for layer {rid}")))?;
            Ok(VideoLayer {
                rid: simulcast.then(|| (*rid).into()),
                media: SyntheticMedia::looping(clip),
                seq: 0,
            })
        })
        .collect()
}

/// What the peer needs to talk to its session resource again.
struct Http {
    resource: String,
    /// The server's SDP answer, reused with new credentials after a restart.
    answer: String,
}

/// The peer's event loop.
struct Driver {
    http: Http,
    rtc: Rtc,
    link: Link,
    local: SocketAddr,
    state: Arc<Mutex<PeerState>>,
    audio: Mid,
    /// The video section (none for audio-only peers).
    video: Option<Mid>,
    publish: bool,
    codec: Codec,
    audio_media: SyntheticMedia,
    /// Send silence as the audio level.
    silent: bool,
    /// Last audio sequence number written.
    audio_seq: u64,
    /// The video streams sent: one, or one per simulcast layer.
    layers: Vec<VideoLayer>,
    /// Video packets of the current frame not sent yet, in order.
    paced: VecDeque<PacedPacket>,
    /// When they may leave.
    pacer: Pacer,
    /// When the last keyframe request was honoured.
    keyframe_honoured: Option<Instant>,
    /// When the datagram str0m handles last reached the peer's socket
    /// (the kernel's stamp), for the latency of the packets it brings.
    arrived: Option<Instant>,
    keep_packets: bool,
    /// Media are the shipped clips: payloads carry no stamps or tags.
    clips: bool,
    video_codec: VideoCodec,
    /// The REMB estimate to report and when it last went out.
    remb: Option<(Bitrate, Option<Instant>)>,
}

impl Driver {
    async fn run(mut self, mut commands: watch::Receiver<PeerCommand>) {
        let mut buf = vec![0u8; 2048];
        let start = Instant::now();
        let mut next_video = start;
        let mut next_audio = start;
        loop {
            let Some(timeout) = self.drain().await else {
                return;
            };
            let connected = self.state.lock().connected;
            let media_due = if self.publish && connected {
                let paced = if self.paced.is_empty() {
                    next_video
                } else {
                    self.pacer.next_send()
                };
                next_video.min(next_audio).min(paced)
            } else {
                timeout
            };
            let wake = timeout.min(media_due).max(Instant::now());
            tokio::select! {
                received = self.link.recv(&mut buf) => {
                    let Ok((n, source, arrived)) = received else { continue };
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    self.arrived = arrived;
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.local,
                        contents,
                    });
                    if self.rtc.handle_input(input).is_err() {
                        return;
                    }
                }
                changed = commands.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let command = *commands.borrow_and_update();
                    match command {
                        PeerCommand::Stop => return,
                        PeerCommand::RequestKeyframe => self.send_pli(),
                        PeerCommand::RestartIce => {
                            let status = self.restart_ice().await;
                            self.state.lock().ice_restarts.push(status);
                        }
                        PeerCommand::Run => {}
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if self.rtc.handle_input(Input::Timeout(now)).is_err() {
                        return;
                    }
                    if self.publish && self.state.lock().connected {
                        if now >= next_video {
                            self.queue_video_frame(now);
                            next_video += FRAME_INTERVAL;
                        }
                        self.send_paced(now).await;
                        if now >= next_audio {
                            self.send_audio(now).await;
                            next_audio += Duration::from_millis(20);
                        }
                    }
                }
            }
        }
    }

    /// Poll until timeout, sending datagrams and recording events. A
    /// timeout already due is handled at once: str0m asks for one to
    /// release media just written, and waiting for a timer (tokio's tick
    /// is a millisecond) would hold every packet the publisher sends for
    /// up to that long, which the latency measured would then include.
    async fn drain(&mut self) -> Option<Instant> {
        let mut due_in_a_row = 0;
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    let now = Instant::now();
                    // Bounded, in case str0m's next timeout stays due.
                    if t > now || due_in_a_row == MAX_DUE_IN_A_ROW {
                        return Some(t);
                    }
                    due_in_a_row += 1;
                    if self.rtc.handle_input(Input::Timeout(now)).is_err() {
                        return None;
                    }
                }
                Ok(Output::Transmit(t)) => {
                    self.link.send(&t.contents, t.destination).await;
                }
                Ok(Output::Event(e)) => self.on_event(e),
                Err(_) => return None,
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                let mut state = self.state.lock();
                state.connected = true;
                state.connected_at.get_or_insert_with(Instant::now);
            }
            Event::IceConnectionStateChange(state) => self.state.lock().ice_states.push(state),
            Event::KeyframeRequest(req) => {
                self.state.lock().keyframe_requests += 1;
                let now = Instant::now();
                if self
                    .keyframe_honoured
                    .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_REQUEST_FLOOR)
                {
                    return;
                }
                self.keyframe_honoured = Some(now);
                for layer in &mut self.layers {
                    if req.rid.is_none() || layer.rid == req.rid {
                        layer.media.request_keyframe();
                    }
                }
            }
            Event::RtpPacket(p) => {
                let mid = self
                    .rtc
                    .direct_api()
                    .stream_rx(&p.header.ssrc)
                    .map(|s| s.mid());
                let kind = if mid.is_some() && mid == self.video {
                    Kind::Video
                } else {
                    Kind::Audio
                };
                let mut state = self.state.lock();
                state.rx[usize::from(kind == Kind::Video)].record(*p.seq_no, p.payload.len());
                // Packets sent before the peer connected are ones the
                // server kept to start it on (a recent keyframe and what
                // followed): their delay is not forwarding's.
                if let Some(sent) = sent_at(&p.payload).filter(|_| !self.clips)
                    && state.connected_at.is_some_and(|c| sent >= c)
                {
                    let arrived = self.arrived.unwrap_or(p.timestamp);
                    let delay = arrived.saturating_duration_since(sent);
                    state
                        .latencies_us
                        .push(delay.as_micros().min(u128::from(u32::MAX)) as u32);
                }
                state.first_packet_at.get_or_insert(p.timestamp);
                if kind == Kind::Video {
                    if let Some((bitrate, last)) = &mut self.remb
                        && last
                            .is_none_or(|t| p.timestamp.saturating_duration_since(t) >= REMB_EVERY)
                        && let Some(stream) = self.rtc.direct_api().stream_rx(&p.header.ssrc)
                    {
                        stream.request_remb(*bitrate);
                        *last = Some(p.timestamp);
                    }
                    if self.video_codec.starts_keyframe(&p.payload) {
                        state.first_keyframe_at.get_or_insert(p.timestamp);
                    }
                    if let Some(tag) =
                        layer_tag(self.video_codec, &p.payload).filter(|_| !self.clips)
                    {
                        state.video_layers[usize::from(tag.min(3))] += 1;
                    }
                }
                if self.keep_packets {
                    state.received.push(Packet {
                        kind,
                        seq: *p.seq_no,
                        ts: p.header.timestamp,
                        payload: p.payload.clone(),
                        audio_level: p.header.ext_vals.audio_level,
                        at: p.timestamp,
                    });
                }
            }
            _ => {}
        }
    }

    fn payload_type(&self, codec: Codec) -> Option<Pt> {
        self.rtc
            .codec_config()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
    }

    /// Make the next frame of every layer and queue its packets for
    /// [`Driver::send_paced`], the first one due now.
    fn queue_video_frame(&mut self, now: Instant) {
        let frames = self.layers.iter_mut().map(|video| {
            let (packets, _, ts) = video.media.next_video_frame(now);
            packets
                .into_iter()
                .map(move |(payload, marker)| (payload, marker, ts))
        });
        let queued = self.paced.len();
        self.paced.extend(
            round_robin(frames).map(|(layer, (payload, marker, ts))| PacedPacket {
                layer,
                payload,
                marker,
                ts,
            }),
        );
        let bytes = self.paced.range(queued..).map(|p| p.payload.len()).sum();
        self.pacer.on_frame(bytes, FRAME_INTERVAL);
    }

    /// Send the queued video packets that are due at `now`, each stamped
    /// with the moment it is handed to str0m: the packets of a burst leave
    /// one after the other, and a stamp from before the burst would count
    /// the tester's own sending as latency.
    async fn send_paced(&mut self, now: Instant) {
        let Some(pt) = self.payload_type(self.codec) else {
            return;
        };
        while self.pacer.next_send() <= now
            && let Some(mut packet) = self.paced.pop_front()
        {
            if self.layers[packet.layer].media.stamps() {
                stamp(&mut packet.payload, Instant::now());
            }
            self.pacer.on_sent(packet.payload.len(), now);
            let payload: Arc<[u8]> = packet.payload.into();
            let layer = &mut self.layers[packet.layer];
            layer.seq += 1;
            let (rid, seq) = (layer.rid, layer.seq);
            let write = RtpWrite::new(pt, seq.into(), packet.ts, now, payload.clone())
                .marker(packet.marker)
                .nackable(true);
            if let Some(video) = self.video
                && let Some(stream) = self.rtc.direct_api().stream_tx_by_mid(video, rid)
            {
                stream.write_rtp(write);
                self.record_sent(Kind::Video, seq, packet.ts, payload, None, now);
            }
            if self.drain().await.is_none() {
                return;
            }
        }
    }

    async fn send_audio(&mut self, now: Instant) {
        let Some(pt) = self.payload_type(Codec::Opus) else {
            return;
        };
        // Stamped as it goes (video may just have gone before it).
        let (payload, ts, level) = self.audio_media.next_audio(Instant::now());
        let level = if self.silent { -127 } else { level };
        let payload: Arc<[u8]> = payload.into();
        self.audio_seq += 1;
        let seq = self.audio_seq;
        let ext_vals = ExtensionValues {
            audio_level: Some(level),
            voice_activity: Some(level > -50),
            ..ExtensionValues::default()
        };
        let write = RtpWrite::new(pt, seq.into(), ts, now, payload.clone()).ext_vals(ext_vals);
        if let Some(stream) = self.rtc.direct_api().stream_tx_by_mid(self.audio, None) {
            stream.write_rtp(write);
            self.record_sent(Kind::Audio, seq, ts, payload, Some(level), now);
        }
        let _ = self.drain().await;
    }

    fn record_sent(
        &self,
        kind: Kind,
        seq: u64,
        ts: u32,
        payload: Arc<[u8]>,
        audio_level: Option<i8>,
        at: Instant,
    ) {
        let mut state = self.state.lock();
        state.sent_count += 1;
        if self.keep_packets {
            state.sent.push(Packet {
                kind,
                seq,
                ts,
                payload,
                audio_level,
                at,
            });
        }
    }

    /// Restart ICE: new local credentials go to the server in a PATCH, its
    /// new credentials come back in the answer fragment. Returns the HTTP
    /// status (0 when the request failed).
    async fn restart_ice(&mut self) -> u16 {
        let mut api = self.rtc.sdp_api();
        let creds = api.ice_restart(true);
        let Some((_, pending)) = api.apply() else {
            return 0;
        };
        if self.drain().await.is_none() {
            return 0;
        }
        let frag = format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
            creds.ufrag, creds.pass
        );
        let response = http()
            .patch(&self.http.resource)
            .header("content-type", "application/trickle-ice-sdpfrag")
            .header("if-match", "*")
            .body(frag)
            .send()
            .await;
        let Ok(response) = response else {
            return 0;
        };
        let status = response.status().as_u16();
        let Ok(body) = response.text().await else {
            return 0;
        };
        let line = |prefix: &str| body.lines().find_map(|l| l.strip_prefix(prefix));
        let old = |prefix: &str| {
            self.http
                .answer
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
        };
        if let (200, Some(ufrag), Some(pwd), Some(old_ufrag), Some(old_pwd)) = (
            status,
            line("a=ice-ufrag:"),
            line("a=ice-pwd:"),
            old("a=ice-ufrag:"),
            old("a=ice-pwd:"),
        ) {
            // The server's credentials appear in a=ice-ufrag/pwd and in the
            // `ufrag` attribute of its candidates: swap them everywhere.
            let answer = self
                .http
                .answer
                .replace(old_ufrag, ufrag)
                .replace(old_pwd, pwd);
            if accept(&mut self.rtc, pending, &answer).is_err() {
                return 0;
            }
            self.http.answer = answer;
        }
        status
    }

    fn send_pli(&mut self) {
        if let Some(video) = self.video
            && let Some(stream) = self.rtc.direct_api().stream_rx_by_mid(video, None)
        {
            stream.request_keyframe(KeyframeRequestKind::Pli);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::round_robin;

    #[test]
    fn layers_take_turns_until_each_frame_is_sent() {
        let order: Vec<(usize, char)> =
            round_robin([vec!['q'], vec!['h', 'i'], vec!['f', 'g', 'k']]).collect();
        assert_eq!(
            order,
            [(0, 'q'), (1, 'h'), (2, 'f'), (1, 'i'), (2, 'g'), (2, 'k')]
        );
        assert_eq!(round_robin(Vec::<Vec<u8>>::new()).count(), 0);
        assert_eq!(round_robin([Vec::<u8>::new(), vec![]]).count(), 0);
    }
}
