//! Finding the session a datagram belongs to, before any session has seen it.
//!
//! Known peers are found by their address; a new peer announces itself with a
//! STUN binding request whose USERNAME is `<server ufrag>:<peer ufrag>`
//! (RFC 8445 section 7.2.2), so the server ufrag names the session.

/// STUN magic cookie (RFC 8489 section 5).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// STUN USERNAME attribute type.
const ATTR_USERNAME: u16 = 0x0006;

/// The server-side ufrag of a STUN request's USERNAME, if `datagram` is a
/// well-formed STUN message that carries one.
pub fn stun_server_ufrag(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < 20 || datagram[0] & 0xc0 != 0 || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body = datagram.get(20..20 + length)?;
    let mut offset = 0;
    while offset + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[offset], body[offset + 1]]);
        let len = usize::from(u16::from_be_bytes([body[offset + 2], body[offset + 3]]));
        let value = body.get(offset + 4..offset + 4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        offset += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend((username.len() as u16).to_be_bytes());
        attr.extend(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend((attr.len() as u16).to_be_bytes());
        msg.extend(MAGIC_COOKIE);
        msg.extend([7u8; 12]);
        msg.extend(attr);
        msg
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
