//! SRTP for a viewer's direct egress ([`crate::egress`]): session keys
//! derived from the DTLS-SRTP export (RFC 3711 section 4.3, RFC 5764), RTP
//! packets sealed in place with the AEAD AES-GCM transforms of RFC 7714,
//! SRTCP packets opened and sealed again so sender reports can be
//! corrected before they leave, and the viewer's SRTCP opened to read its
//! NACKs.
//!
//! The AEAD runs on ring, whose AES-GCM costs about half of aws-lc-rs's
//! per packet (less set-up per call, AVX2 with VAES where the CPU has it);
//! the key derivation, once per session, on aws-lc-rs.
//!
//! Only the AEAD profiles are handled; a session that negotiated
//! AES_CM_128_HMAC_SHA1_80 keeps str0m's egress.

use aws_lc_rs::cipher::{AES_128, AES_256, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Bytes of the authentication tag after an AES-GCM sealed packet.
pub const TAG_LEN: usize = 16;
/// Bytes of a session salt, and of a master salt, in the AEAD profiles.
const SALT_LEN: usize = 12;
/// Bytes of the SRTCP trailer: the E flag and the 31-bit SRTCP index.
const SRTCP_TRAILER: usize = 4;
/// Bytes of an RTCP header that stay in the clear (and are authenticated).
const RTCP_CLEAR: usize = 8;

/// The SRTP protection profiles a DTLS handshake can settle on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// AES_CM_128_HMAC_SHA1_80 (RFC 5764): not handled here.
    Aes128CmSha1_80,
    /// AEAD_AES_128_GCM (RFC 7714).
    AeadAes128Gcm,
    /// AEAD_AES_256_GCM (RFC 7714).
    AeadAes256Gcm,
    /// A profile added to the DTLS library after this code was written.
    Other,
}

impl Profile {
    /// Bytes of a master key, for the AEAD profiles.
    fn key_len(self) -> Option<usize> {
        match self {
            Profile::Aes128CmSha1_80 | Profile::Other => None,
            Profile::AeadAes128Gcm => Some(16),
            Profile::AeadAes256Gcm => Some(32),
        }
    }
}

/// What a DTLS-SRTP handshake exported (RFC 5764 section 4.2): client and
/// server master keys, then client and server master salts.
pub struct SrtpKeys {
    /// The negotiated profile.
    pub profile: Profile,
    /// The exported keying material, both directions.
    pub material: Vec<u8>,
    /// Whether this side was the DTLS client, whose keys come first.
    pub client: bool,
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("profile", &self.profile)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// One direction's sealing key and salt for RTP or RTCP.
struct Sealer {
    key: LessSafeKey,
    salt: [u8; SALT_LEN],
}

impl Sealer {
    /// The nonce for `ssrc` and `index` laid out as RFC 7714 sections 8.1
    /// (RTP: ROC and sequence number) and 9.1 (RTCP: the SRTCP index)
    /// want, XORed with the session salt.
    fn nonce(&self, ssrc: u32, index: [u8; 6]) -> Nonce {
        let mut iv = [0u8; SALT_LEN];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..12].copy_from_slice(&index);
        for (b, s) in iv.iter_mut().zip(self.salt) {
            *b ^= s;
        }
        Nonce::assume_unique_for_key(iv)
    }
}

/// The keys of one direction: this side's, to seal RTP and reseal the
/// SRTCP str0m writes, or the peer's, to open the SRTCP it sends.
pub struct SrtpContext {
    rtp: Sealer,
    rtcp: Sealer,
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpContext")
    }
}

/// Session key label of the SRTP encryption key (RFC 3711 section 4.3.1).
const LABEL_RTP_KEY: u8 = 0;
/// Session key label of the SRTP salt.
const LABEL_RTP_SALT: u8 = 2;
/// Session key label of the SRTCP encryption key.
const LABEL_RTCP_KEY: u8 = 3;
/// Session key label of the SRTCP salt.
const LABEL_RTCP_SALT: u8 = 5;

impl SrtpContext {
    /// The keys of `keys` this side sends with (`sending`) or receives
    /// with; `None` for a profile this module does not handle or keying
    /// material of the wrong length.
    pub fn new(keys: &SrtpKeys, sending: bool) -> Option<SrtpContext> {
        let key_len = keys.profile.key_len()?;
        let m = &keys.material;
        if m.len() != 2 * (key_len + SALT_LEN) {
            return None;
        }
        // Client key, server key, client salt, server salt; the client
        // sends with the first of each.
        let (key_at, salt_at) = if keys.client == sending {
            (0, 2 * key_len)
        } else {
            (key_len, 2 * key_len + SALT_LEN)
        };
        let master = &m[key_at..key_at + key_len];
        let salt: [u8; SALT_LEN] = m[salt_at..salt_at + SALT_LEN].try_into().ok()?;
        let sealer = |key_label, salt_label| -> Option<Sealer> {
            let mut key = vec![0u8; key_len];
            derive(master, &salt, key_label, &mut key)?;
            let mut session_salt = [0u8; SALT_LEN];
            derive(master, &salt, salt_label, &mut session_salt)?;
            let algorithm = if key_len == 32 {
                &AES_256_GCM
            } else {
                &AES_128_GCM
            };
            Some(Sealer {
                key: LessSafeKey::new(UnboundKey::new(algorithm, &key).ok()?),
                salt: session_salt,
            })
        };
        Some(SrtpContext {
            rtp: sealer(LABEL_RTP_KEY, LABEL_RTP_SALT)?,
            rtcp: sealer(LABEL_RTCP_KEY, LABEL_RTCP_SALT)?,
        })
    }

    /// Start loading into the CPU's caches the RTP key (its AES round keys
    /// and GCM tables, several cache lines held inline), for a seal soon.
    pub fn prefetch_rtp(&self) {
        crate::cache::prefetch(&self.rtp);
    }

    /// Seal the RTP packet in `packet`: its first `header_len` bytes (the
    /// header with its extensions) are authenticated, the rest encrypted in
    /// place, and the tag appended. `index` is the packet's 48-bit SRTP
    /// index: rollover counter and sequence number.
    pub fn seal_rtp(&self, packet: &mut Vec<u8>, header_len: usize, ssrc: u32, index: u64) {
        let mut at = [0u8; 6];
        at.copy_from_slice(&index.to_be_bytes()[2..]);
        let nonce = self.rtp.nonce(ssrc, at);
        let (header, payload) = packet.split_at_mut(header_len);
        // Sealing only fails for inputs far beyond a datagram's size.
        if let Ok(tag) =
            self.rtp
                .key
                .seal_in_place_separate_tag(nonce, Aad::from(&*header), payload)
        {
            packet.extend_from_slice(tag.as_ref());
        }
    }

    /// Decrypt the SRTCP packet in `packet`, hand its plain RTCP (header
    /// included) to `edit`, and seal it again under the same index.
    /// Returns false, leaving `packet` as it was, if it is not an
    /// encrypted SRTCP packet sealed with these keys.
    pub fn reseal_rtcp(&self, packet: &mut [u8], edit: impl FnOnce(&mut [u8])) -> bool {
        // Opening wipes the body when the tag is wrong: keep the original.
        let original = packet.to_vec();
        let resealed = self.reseal_in_place(packet, edit);
        if !resealed {
            packet.copy_from_slice(&original);
        }
        resealed
    }

    /// The plain RTCP (header included) of the SRTCP packet `packet`, or
    /// `None` if it is not an encrypted SRTCP packet sealed with these keys.
    pub fn open_rtcp(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let mut plain = packet.to_vec();
        let opened = self.open_in_place(&mut plain)?;
        plain.truncate(opened.end);
        Some(plain)
    }

    /// [`SrtpContext::reseal_rtcp`] without restoring `packet` on failure.
    fn reseal_in_place(&self, packet: &mut [u8], edit: impl FnOnce(&mut [u8])) -> bool {
        let Some(Opened {
            end: plain_end,
            ssrc,
            index,
            mut aad,
        }) = self.open_in_place(packet)
        else {
            return false;
        };
        edit(&mut packet[..plain_end]);
        aad[..RTCP_CLEAR].copy_from_slice(&packet[..RTCP_CLEAR]);
        let (sealed, tag_out) =
            packet[RTCP_CLEAR..plain_end + TAG_LEN].split_at_mut(plain_end - RTCP_CLEAR);
        match self.rtcp.key.seal_in_place_separate_tag(
            self.rtcp.nonce(ssrc, index),
            Aad::from(aad),
            sealed,
        ) {
            Ok(tag) => {
                tag_out.copy_from_slice(tag.as_ref());
                true
            }
            Err(_) => false,
        }
    }

    /// Decrypt the SRTCP packet in `packet` in place. `None` if it is not
    /// an encrypted SRTCP packet sealed with these keys (its body may then
    /// be wiped).
    fn open_in_place(&self, packet: &mut [u8]) -> Option<Opened> {
        let len = packet.len();
        if len < RTCP_CLEAR + TAG_LEN + SRTCP_TRAILER {
            return None;
        }
        let trailer: [u8; SRTCP_TRAILER] = packet[len - SRTCP_TRAILER..].try_into().ok()?;
        if trailer[0] & 0x80 == 0 {
            return None; // authenticated only: nothing to edit safely
        }
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let mut index = [0u8; 6];
        index[2..].copy_from_slice(&trailer);
        index[2] &= 0x7f;
        let mut aad = [0u8; RTCP_CLEAR + SRTCP_TRAILER];
        aad[..RTCP_CLEAR].copy_from_slice(&packet[..RTCP_CLEAR]);
        aad[RTCP_CLEAR..].copy_from_slice(&trailer);
        let body = &mut packet[RTCP_CLEAR..len - SRTCP_TRAILER];
        self.rtcp
            .key
            .open_in_place(self.rtcp.nonce(ssrc, index), Aad::from(aad), body)
            .ok()?;
        Some(Opened {
            end: len - SRTCP_TRAILER - TAG_LEN,
            ssrc,
            index,
            aad,
        })
    }
}

/// An SRTCP packet decrypted in place, and what sealing it again takes.
struct Opened {
    /// Where its plain RTCP ends.
    end: usize,
    ssrc: u32,
    /// Its SRTCP index, as the nonce takes it.
    index: [u8; 6],
    /// Its additional authenticated data.
    aad: [u8; RTCP_CLEAR + SRTCP_TRAILER],
}

/// Fill `out` with the session key or salt of `label` (RFC 3711 section
/// 4.3.3, AES-CM as the PRF, key derivation rate 0): the AES counter-mode
/// keystream from an IV of the master salt (padded to 14 bytes) with the
/// label XORed into its eighth byte.
fn derive(master: &[u8], salt: &[u8; SALT_LEN], label: u8, out: &mut [u8]) -> Option<()> {
    let mut iv = [0u8; 16];
    iv[..SALT_LEN].copy_from_slice(salt);
    iv[7] ^= label;
    let algorithm = if master.len() == 32 {
        &AES_256
    } else {
        &AES_128
    };
    let key = EncryptingKey::ctr(UnboundCipherKey::new(algorithm, master).ok()?).ok()?;
    out.fill(0);
    key.less_safe_encrypt(out, EncryptionContext::Iv128(FixedLength::from(iv)))
        .ok()?;
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 appendix B.3: the AES-CM key derivation test vectors (a
    /// 14-byte master salt; the AEAD profiles use 12 bytes of it the same
    /// way).
    #[test]
    fn derives_the_rfc_3711_session_keys() {
        let master = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let salt14 = hex("0EC675AD498AFEEBB6960B3AABE6");
        let derive14 = |label: u8, len: usize| {
            let mut iv = [0u8; 16];
            iv[..14].copy_from_slice(&salt14);
            iv[7] ^= label;
            let key =
                EncryptingKey::ctr(UnboundCipherKey::new(&AES_128, &master).unwrap()).unwrap();
            let mut out = vec![0u8; len];
            key.less_safe_encrypt(&mut out, EncryptionContext::Iv128(FixedLength::from(iv)))
                .unwrap();
            out
        };
        assert_eq!(derive14(0, 16), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        assert_eq!(derive14(2, 14), hex("30CBBC08863D8C85D49DB34A9AE1"));
        // And the 12-byte form used here agrees on what it shares: the
        // last two salt bytes only reach the IV's bytes 12 and 13.
        let mut salt12 = [0u8; SALT_LEN];
        salt12.copy_from_slice(&salt14[..SALT_LEN]);
        let mut key = [0u8; 16];
        derive(&master, &salt12, 0, &mut key).unwrap();
        let mut iv = [0u8; 16];
        iv[..SALT_LEN].copy_from_slice(&salt12);
        let reference =
            EncryptingKey::ctr(UnboundCipherKey::new(&AES_128, &master).unwrap()).unwrap();
        let mut expected = [0u8; 16];
        reference
            .less_safe_encrypt(
                &mut expected,
                EncryptionContext::Iv128(FixedLength::from(iv)),
            )
            .unwrap();
        assert_eq!(key, expected);
    }

    fn keys(profile: Profile, client: bool) -> SrtpKeys {
        let key_len = profile.key_len().unwrap();
        SrtpKeys {
            profile,
            material: (0..2 * (key_len + SALT_LEN)).map(|i| i as u8).collect(),
            client,
        }
    }

    #[test]
    fn the_two_sides_use_different_halves() {
        let client = SrtpContext::new(&keys(Profile::AeadAes256Gcm, true), true).unwrap();
        let server = SrtpContext::new(&keys(Profile::AeadAes256Gcm, false), true).unwrap();
        let mut a = vec![0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 1, 2, 3];
        let mut b = a.clone();
        client.seal_rtp(&mut a, 12, 7, 1);
        server.seal_rtp(&mut b, 12, 7, 1);
        assert_eq!(a.len(), 15 + TAG_LEN);
        assert_eq!(a[..12], b[..12], "the header stays in the clear");
        assert_ne!(a[12..], b[12..]);
    }

    #[test]
    fn profiles_without_aead_and_short_material_are_refused() {
        let cm = SrtpKeys {
            profile: Profile::Aes128CmSha1_80,
            material: vec![0; 60],
            client: true,
        };
        assert!(SrtpContext::new(&cm, true).is_none());
        let mut short = keys(Profile::AeadAes128Gcm, true);
        short.material.pop();
        assert!(SrtpContext::new(&short, true).is_none());
    }

    #[test]
    fn srtcp_reseals_under_the_same_index_after_an_edit() {
        let sender = SrtpContext::new(&keys(Profile::AeadAes128Gcm, false), true).unwrap();
        // Seal a sender report as SRTCP by hand: clear header, body, tag,
        // E flag with index 5.
        let plain: Vec<u8> = [0x80, 200, 0, 6, 0, 0, 0, 9]
            .into_iter()
            .chain(0..20)
            .collect();
        let trailer = [0x80, 0, 0, 5];
        let mut aad = plain[..8].to_vec();
        aad.extend_from_slice(&trailer);
        let mut index = [0u8; 6];
        index[2..].copy_from_slice(&[0, 0, 0, 5]);
        let mut packet = plain.clone();
        let tag = sender
            .rtcp
            .key
            .seal_in_place_separate_tag(
                sender.rtcp.nonce(9, index),
                Aad::from(&aad[..]),
                &mut packet[8..],
            )
            .unwrap();
        packet.extend_from_slice(tag.as_ref());
        packet.extend_from_slice(&trailer);

        let mut seen = Vec::new();
        assert!(sender.reseal_rtcp(&mut packet, |p| {
            seen = p.to_vec();
            p[8] = 0xaa;
        }));
        assert_eq!(seen, plain, "the edit sees the plain packet");
        let mut again = Vec::new();
        assert!(sender.reseal_rtcp(&mut packet, |p| again = p.to_vec()));
        assert_eq!(again[8], 0xaa, "the edit was sealed");
        assert_eq!(packet[packet.len() - 4..], trailer);

        // The peer's receiving keys are this side's sending keys.
        let peer = SrtpContext::new(&keys(Profile::AeadAes128Gcm, true), false).unwrap();
        let opened = peer.open_rtcp(&packet).unwrap();
        assert_eq!(opened[8], 0xaa);
        assert_eq!(opened.len(), plain.len());

        packet[10] ^= 1;
        let tampered = packet.clone();
        assert!(!sender.reseal_rtcp(&mut packet, |_| panic!("tampered")));
        assert_eq!(packet, tampered, "a failed reseal leaves the packet");
        assert!(peer.open_rtcp(&packet).is_none());
    }
}
