//! One DTLS set-up for every session of the process.
//!
//! Left to itself, every new str0m [`Rtc`](str0m::Rtc) generates a
//! certificate of its own and builds a DTLS configuration, and building
//! that configuration re-validates the crypto library with real key
//! exchanges (X25519, P-256 and P-384): 1.3 to 1.9 ms of CPU per session
//! on this project's machines, more than all the rest of setting one up
//! (`cargo bench -p sluice-session --bench accept`). The server instead
//! makes one DTLS configuration per MTU, validated once, and one
//! certificate (renewed monthly) for all its sessions, as mediasoup does
//! with one certificate per worker. Every session still runs its own
//! handshake with fresh ephemeral keys.
//!
//! The set-up also lets a session see the SRTP keys its handshake
//! exported ([`capture_keys`]), which a viewer's direct egress needs
//! (`crate::egress`).

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use str0m::RtcConfig;
use str0m::crypto::dtls::SrtpProfile;
use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};
use str0m::crypto::{CryptoError, CryptoProvider};

use crate::srtp::{Profile, SrtpKeys};

/// Where one session's DTLS instance leaves the SRTP keys it exports.
pub(crate) type KeySlot = Arc<Mutex<Option<SrtpKeys>>>;

thread_local! {
    /// The slot DTLS instances made on this thread report to, set for the
    /// length of one [`capture_keys`] call.
    static CAPTURE: RefCell<Option<KeySlot>> = const { RefCell::new(None) };
}

/// Run `build` (which makes an `Rtc`) so that the DTLS instance it makes
/// reports the SRTP keys of its handshake to the returned slot. str0m
/// makes the instance while building and never tells which `Rtc` a
/// provider call is for, hence the thread-local hand-over.
pub(crate) fn capture_keys<T>(build: impl FnOnce() -> T) -> (T, KeySlot) {
    /// Clears the hand-over however `build` ends.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            CAPTURE.with(|c| c.borrow_mut().take());
        }
    }
    let slot = KeySlot::default();
    CAPTURE.with(|c| *c.borrow_mut() = Some(slot.clone()));
    let _clear = Clear;
    (build(), slot)
}

/// How long the server gives new sessions one certificate before it makes
/// the next. dimpl's certificates are valid for 365 days from their
/// making; a session keeps the certificate it started with.
const CERTIFICATE_TURN: Duration = Duration::from_secs(30 * 24 * 3600);

/// A DTLS certificate that many `Rtc`s share, and the process's DTLS
/// configurations.
pub struct DtlsSetup {
    cert: DtlsCert,
    made: Instant,
}

impl DtlsSetup {
    /// A set-up with a new certificate.
    pub fn new() -> DtlsSetup {
        DtlsSetup::made_at(Instant::now())
    }

    fn made_at(made: Instant) -> DtlsSetup {
        DtlsSetup {
            cert: CONFIGS
                .generate_certificate()
                .expect("generate a DTLS certificate"),
            made,
        }
    }

    /// The set-up for a new server session: the same for every session,
    /// with a new certificate every 30 days.
    pub fn server() -> Arc<DtlsSetup> {
        static SERVER: Mutex<Renewing> = Mutex::new(Renewing { current: None });
        SERVER
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(Instant::now())
    }

    /// `builder` with this set-up's certificate and the shared DTLS
    /// configurations.
    pub fn apply(&self, builder: RtcConfig) -> RtcConfig {
        builder
            .set_crypto_provider(provider())
            .set_dtls_cert(self.cert.clone())
    }
}

impl Default for DtlsSetup {
    fn default() -> Self {
        DtlsSetup::new()
    }
}

/// The server's set-up, renewed every [`CERTIFICATE_TURN`].
struct Renewing {
    current: Option<Arc<DtlsSetup>>,
}

impl Renewing {
    fn get(&mut self, now: Instant) -> Arc<DtlsSetup> {
        match &self.current {
            Some(setup) if now.saturating_duration_since(setup.made) < CERTIFICATE_TURN => {
                setup.clone()
            }
            _ => self
                .current
                .insert(Arc::new(DtlsSetup::made_at(now)))
                .clone(),
        }
    }
}

/// The DTLS configurations of the process, one per MTU.
static CONFIGS: SharedConfigs = SharedConfigs {
    configs: Mutex::new(Vec::new()),
};

/// aws-lc's crypto provider (what str0m picks itself), with DTLS built
/// from [`CONFIGS`].
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(CryptoProvider {
                dtls_provider: &CONFIGS,
                ..str0m_aws_lc_rs::default_provider()
            })
        })
        .clone()
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
        Ok(Box::new(Instance {
            dtls,
            keys: CAPTURE.with(|c| c.borrow().clone()),
        }))
    }
}

/// One session's DTLS state: dimpl's, as str0m wants to see it, and where
/// to report its SRTP keys.
struct Instance {
    dtls: dimpl::Dtls,
    keys: Option<KeySlot>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Instance")
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.dtls.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.dtls.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let output = self.dtls.poll_output(buf);
        if let (DtlsOutput::KeyingMaterial(material, profile), Some(slot)) = (&output, &self.keys) {
            let profile = match profile {
                SrtpProfile::AES128_CM_SHA1_80 => Profile::Aes128CmSha1_80,
                SrtpProfile::AEAD_AES_128_GCM => Profile::AeadAes128Gcm,
                SrtpProfile::AEAD_AES_256_GCM => Profile::AeadAes256Gcm,
                _ => Profile::Other,
            };
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(SrtpKeys {
                profile,
                material: material.to_vec(),
                client: self.dtls.is_active(),
            });
        }
        output
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.dtls.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.dtls.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.dtls.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.dtls.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.dtls.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.dtls.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.dtls.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's certificate stays for 30 days, then a new one comes.
    #[test]
    fn the_server_certificate_is_renewed_monthly() {
        let t0 = Instant::now();
        let mut server = Renewing { current: None };
        let first = server.get(t0);
        assert!(Arc::ptr_eq(
            &first,
            &server.get(t0 + Duration::from_secs(3600))
        ));
        let later = server.get(t0 + CERTIFICATE_TURN);
        assert!(!Arc::ptr_eq(&first, &later));
        assert_ne!(first.cert.certificate, later.cert.certificate);
    }
}
