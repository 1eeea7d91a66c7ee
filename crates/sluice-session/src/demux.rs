//! Finding the session a datagram belongs to, before any session has seen it,
//! and the few other things read out of STUN messages.
//!
//! Known peers are found by their address; a new peer announces itself with a
//! STUN binding request whose USERNAME is `<server ufrag>:<peer ufrag>`
//! (RFC 8445 section 7.2.2), so the server ufrag names the session.

/// STUN magic cookie (RFC 8489 section 5).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// STUN USERNAME attribute type.
const ATTR_USERNAME: u16 = 0x0006;
/// ICE's USE-CANDIDATE attribute type (RFC 8445 section 16.1).
const ATTR_USE_CANDIDATE: u16 = 0x0025;
/// STUN message types: binding request and binding success response.
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;

/// A STUN transaction id (RFC 8489 section 5).
pub type TransactionId = [u8; 12];

/// The type, transaction id and attributes of `datagram`, if it is a
/// well-formed STUN message.
fn stun(datagram: &[u8]) -> Option<(u16, TransactionId, &[u8])> {
    if datagram.len() < 20 || datagram[0] & 0xc0 != 0 || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let kind = u16::from_be_bytes([datagram[0], datagram[1]]);
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let id = datagram[8..20].try_into().ok()?;
    Some((kind, id, datagram.get(20..20 + length)?))
}

/// The value of the first attribute of type `wanted` among `attributes`.
fn attribute(attributes: &[u8], wanted: u16) -> Option<&[u8]> {
    let mut offset = 0;
    while offset + 4 <= attributes.len() {
        let kind = u16::from_be_bytes([attributes[offset], attributes[offset + 1]]);
        let len = usize::from(u16::from_be_bytes([
            attributes[offset + 2],
            attributes[offset + 3],
        ]));
        let value = attributes.get(offset + 4..offset + 4 + len)?;
        if kind == wanted {
            return Some(value);
        }
        offset += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// The server-side ufrag of a STUN request's USERNAME, if `datagram` is a
/// well-formed STUN message that carries one.
pub fn stun_server_ufrag(datagram: &[u8]) -> Option<&str> {
    let (_, _, attributes) = stun(datagram)?;
    let username = std::str::from_utf8(attribute(attributes, ATTR_USERNAME)?).ok()?;
    username.split(':').next()
}

/// The transaction id of `datagram` if it is a binding request that
/// nominates its candidate pair (it carries USE-CANDIDATE, which the
/// controlling ICE agent sends on the pair it picked).
pub fn nomination(datagram: &[u8]) -> Option<TransactionId> {
    let (kind, id, attributes) = stun(datagram)?;
    (kind == BINDING_REQUEST && attribute(attributes, ATTR_USE_CANDIDATE).is_some()).then_some(id)
}

/// The transaction id of `datagram` if it is a binding success response.
pub fn binding_success(datagram: &[u8]) -> Option<TransactionId> {
    let (kind, id, _) = stun(datagram)?;
    (kind == BINDING_SUCCESS).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        message(BINDING_REQUEST, username, false)
    }

    fn message(kind: u16, username: &str, use_candidate: bool) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend((username.len() as u16).to_be_bytes());
        attr.extend(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        if use_candidate {
            attr.extend([0x00, 0x25, 0, 0]);
        }
        let mut msg = kind.to_be_bytes().to_vec();
        msg.extend((attr.len() as u16).to_be_bytes());
        msg.extend(MAGIC_COOKIE);
        msg.extend([7u8; 12]);
        msg.extend(attr);
        msg
    }

    #[test]
    fn tells_nominations_and_their_answers() {
        assert_eq!(
            nomination(&message(BINDING_REQUEST, "srv:peer", true)),
            Some([7; 12])
        );
        assert_eq!(
            nomination(&message(BINDING_REQUEST, "srv:peer", false)),
            None
        );
        assert_eq!(
            nomination(&message(BINDING_SUCCESS, "srv:peer", true)),
            None
        );
        assert_eq!(
            binding_success(&message(BINDING_SUCCESS, "srv:peer", false)),
            Some([7; 12])
        );
        assert_eq!(
            binding_success(&message(BINDING_REQUEST, "a:b", true)),
            None
        );
        assert_eq!(nomination(&[0x80; 40]), None);
        assert_eq!(binding_success(&[0x00, 0x01]), None);
    }

    #[test]
    fn finds_server_ufrag() {
        assert_eq!(
            stun_server_ufrag(&binding_request("srv1:peer")),
            Some("srv1")
        );
    }

    #[test]
    fn rejects_non_stun_and_truncated_input() {
        assert_eq!(stun_server_ufrag(&[0x80; 40]), None);
        let mut msg = binding_request("a:b");
        msg.truncate(msg.len() - 3);
        assert_eq!(stun_server_ufrag(&msg), None);
        assert_eq!(stun_server_ufrag(&[]), None);
    }
}
