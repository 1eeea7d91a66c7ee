//! Trickle ICE and ICE restarts over HTTP PATCH (RFC 9725 section 4.4,
//! `application/trickle-ice-sdpfrag` bodies, RFC 8840).

use str0m::Candidate;

use crate::negotiate::NegotiateError;

/// The parts of an SDP fragment a WHIP/WHEP PATCH carries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SdpFrag {
    /// `a=ice-ufrag`, when the client sends (new) credentials.
    pub ufrag: Option<String>,
    /// `a=ice-pwd`.
    pub pwd: Option<String>,
    /// Remote candidates (mDNS `.local` and TCP candidates are left out).
    pub candidates: Vec<Candidate>,
}

impl SdpFrag {
    /// Parse a fragment. Unknown lines (`m=`, `a=mid`, `a=end-of-candidates`)
    /// are ignored; a malformed candidate is an error.
    pub fn parse(text: &str) -> Result<SdpFrag, NegotiateError> {
        let mut frag = SdpFrag::default();
        for line in text.lines().map(str::trim) {
            if let Some(v) = line.strip_prefix("a=ice-ufrag:") {
                frag.ufrag = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("a=ice-pwd:") {
                frag.pwd = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("a=") {
                if !v.starts_with("candidate:") {
                    continue;
                }
                // Browsers hide host addresses behind mDNS names; the
                // server learns those peers from their checks instead.
                if v.contains(".local ") || v.contains(" tcp ") || v.contains(" TCP ") {
                    continue;
                }
                let candidate = Candidate::from_sdp_string(v).map_err(|e| {
                    NegotiateError::MalformedSdp(format!("bad candidate {v:?}: {e}"))
                })?;
                frag.candidates.push(candidate);
            }
        }
        if frag.ufrag.is_some() != frag.pwd.is_some() {
            return Err(NegotiateError::MalformedSdp(
                "an ICE restart needs both a=ice-ufrag and a=ice-pwd".into(),
            ));
        }
        Ok(frag)
    }
}

/// The first ICE credentials (`ufrag`, `pwd`) in an SDP.
pub(crate) fn credentials(sdp: &str) -> Option<(&str, &str)> {
    let find = |prefix: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim_end)
    };
    Some((find("a=ice-ufrag:")?, find("a=ice-pwd:")?))
}

/// `offer` with its ICE credentials replaced, to re-apply it as the
/// client's ICE restart offer.
pub(crate) fn with_credentials(offer: &str, ufrag: &str, pwd: &str) -> String {
    offer
        .lines()
        .map(|line| {
            if line.starts_with("a=ice-ufrag:") {
                format!("a=ice-ufrag:{ufrag}\r\n")
            } else if line.starts_with("a=ice-pwd:") {
                format!("a=ice-pwd:{pwd}\r\n")
            } else {
                format!("{}\r\n", line.trim_end())
            }
        })
        .collect()
}

/// The fragment answering an ICE restart: the server's new credentials and
/// the candidate lines of its answer.
pub(crate) fn restart_answer(ufrag: &str, pwd: &str, answer: &str) -> String {
    let mut frag = format!("a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n");
    let mut candidates = answer
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect::<Vec<_>>();
    candidates.dedup();
    for c in candidates {
        frag.push_str(c.trim_end());
        frag.push_str("\r\n");
    }
    frag.push_str("a=end-of-candidates\r\n");
    frag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_credentials_and_usable_candidates() {
        let frag = SdpFrag::parse(
            "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 9999 typ host\r\n\
             a=candidate:2 1 udp 2130706431 4a6f.local 9999 typ host\r\n\
             a=candidate:3 1 tcp 1518280447 127.0.0.1 9 typ host tcptype active\r\n\
             a=end-of-candidates\r\n",
        )
        .unwrap();
        assert_eq!(frag.ufrag.as_deref(), Some("EsAw"));
        assert_eq!(frag.pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(frag.candidates.len(), 1);
        assert_eq!(frag.candidates[0].addr().port(), 9999);
    }

    #[test]
    fn rejects_malformed_fragments() {
        assert!(SdpFrag::parse("a=candidate:garbage\r\n").is_err());
        assert!(SdpFrag::parse("a=ice-ufrag:only\r\n").is_err());
        assert_eq!(SdpFrag::parse("").unwrap(), SdpFrag::default());
    }

    #[test]
    fn rewrites_credentials_everywhere() {
        let offer = "v=0\r\na=ice-ufrag:old\r\na=ice-pwd:oldpwd\r\nm=audio\r\na=ice-ufrag:old\r\n";
        assert_eq!(credentials(offer), Some(("old", "oldpwd")));
        let new = with_credentials(offer, "new", "newpwd");
        assert!(!new.contains("old"));
        assert_eq!(credentials(&new), Some(("new", "newpwd")));
        assert_eq!(new.matches("a=ice-ufrag:new").count(), 2);
    }
}
