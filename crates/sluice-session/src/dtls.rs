//! One DTLS set-up for every session of the process.
//!
//! Left to itself, every new str0m [`Rtc`](str0m::Rtc) generates a
//! certificate of its own and builds a DTLS configuration, and building
//! that configuration re-validates the crypto library with real key
//! exchanges (X25519, P-256 and P-384): about a millisecond of CPU per
//! session, more than all the rest of setting one up. The server instead
//! makes one certificate and one DTLS configuration per MTU, validated
//! once, and gives them to every session, as mediasoup does with one
//! certificate per worker. Every session still runs its own handshake
//! with fresh ephemeral keys.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use str0m::RtcConfig;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};
use str0m::crypto::{CryptoError, CryptoProvider};

/// A DTLS certificate and configuration that many `Rtc`s share.
pub struct DtlsSetup {
    provider: Arc<CryptoProvider>,
    cert: DtlsCert,
}

impl DtlsSetup {
    /// A new certificate and DTLS provider. str0m wants its DTLS provider
    /// to live for the whole process, so each set-up keeps its provider
    /// (a few bytes) until the process ends: make one per kind of peer,
    /// not one per session.
    pub fn new() -> DtlsSetup {
        let dtls: &'static SharedConfigs = Box::leak(Box::new(SharedConfigs {
            configs: Mutex::new(Vec::new()),
        }));
        DtlsSetup {
            provider: Arc::new(CryptoProvider {
                dtls_provider: dtls,
                ..str0m_aws_lc_rs::default_provider()
            }),
            cert: dtls
                .generate_certificate()
                .expect("generate a DTLS certificate"),
        }
    }

    /// The set-up every server session of this process shares.
    pub fn server() -> &'static DtlsSetup {
        static SERVER: OnceLock<DtlsSetup> = OnceLock::new();
        SERVER.get_or_init(DtlsSetup::new)
    }

    /// `builder` with this set-up's crypto provider and certificate.
    pub fn apply(&self, builder: RtcConfig) -> RtcConfig {
        builder
            .set_crypto_provider(self.provider.clone())
            .set_dtls_cert(self.cert.clone())
    }
}

impl Default for DtlsSetup {
    fn default() -> Self {
        DtlsSetup::new()
    }
}

/// A DTLS provider that builds every instance from one configuration per
/// MTU (str0m passes the session's smallest MTU, the same for all).
#[derive(Debug)]
struct SharedConfigs {
    configs: Mutex<Vec<(Option<usize>, Arc<dimpl::Config>)>>,
}

impl SharedConfigs {
    /// The configuration for `mtu`, built (and the crypto library
    /// validated) on first use.
    fn config(&self, mtu: Option<usize>) -> Result<Arc<dimpl::Config>, CryptoError> {
        let mut configs = self.configs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, config)) = configs.iter().find(|(m, _)| *m == mtu) {
            return Ok(config.clone());
        }
        // ICE has proved the peer's address before DTLS starts, so a
        // server cookie would only cost a round trip.
        let mut builder = dimpl::Config::builder().use_server_cookie(false);
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let config = Arc::new(
            builder
                .build()
                .map_err(|e| CryptoError::Other(format!("DTLS configuration: {e}")))?,
        );
        configs.push((mtu, config.clone()));
        Ok(config)
    }
}

impl DtlsProvider for SharedConfigs {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        dimpl::certificate::generate_self_signed_certificate().ok()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let config = self.config(mtu)?;
        let dtls = match version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert.clone(), now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert.clone(), now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert.clone(), now),
            other => return Err(CryptoError::Other(format!("unsupported {other}"))),
        };
        Ok(Box::new(Instance(dtls)))
    }
}

/// One session's DTLS state: dimpl's, as str0m wants to see it.
struct Instance(dimpl::Dtls);

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Instance")
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.0.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}
