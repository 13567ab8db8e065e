//! A small netlink message encoder and a synchronous request/ack loop over neli's
//! `NlSocket`. rtnetlink (links, addresses, routes) and nf_tables share it: both are just
//! headers plus nested type-length-value attributes.

use neli::consts::socket::{Msg, NlFamily};
use neli::socket::NlSocket;
use neli::utils::Groups;
use std::io;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const HEADER_LEN: usize = 16;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message under construction.
pub struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    /// A message of `msg_type` with `flags`; `seq` is filled in when sent.
    pub fn new(msg_type: u16, flags: u16) -> Message {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&[0; 4]); // length, set by `finish`
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&[0; 8]); // seq, pid
        Message {
            buf,
            nests: Vec::new(),
        }
    }

    /// The fixed family header (ifinfomsg, ifaddrmsg, rtmsg, nfgenmsg), padded to 4.
    pub fn header(mut self, bytes: &[u8]) -> Message {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn attr(&mut self, attr_type: u16, payload: &[u8]) -> &mut Message {
        self.attr_parts(attr_type, &[payload])
    }

    /// An attribute whose payload is `parts` one after the other, copied straight into the
    /// message (no scratch buffer).
    fn attr_parts(&mut self, attr_type: u16, parts: &[&[u8]]) -> &mut Message {
        let len = 4 + parts.iter().map(|p| p.len()).sum::<usize>();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&attr_type.to_ne_bytes());
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, attr_type: u16, value: &str) -> &mut Message {
        self.attr_parts(attr_type, &[value.as_bytes(), &[0]])
    }

    pub fn attr_u32(&mut self, attr_type: u16, value: u32) -> &mut Message {
        self.attr(attr_type, &value.to_ne_bytes())
    }

    /// Big-endian u32, as nf_tables wants every integer attribute.
    pub fn attr_be32(&mut self, attr_type: u16, value: u32) -> &mut Message {
        self.attr(attr_type, &value.to_be_bytes())
    }

    pub fn begin_nest(&mut self, attr_type: u16) -> &mut Message {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(attr_type | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end_nest(&mut self) -> &mut Message {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    /// Raw bytes inside the current position (a nested header such as the veth peer's
    /// ifinfomsg).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Message {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// A received message: its type and the bytes after the netlink header.
pub struct Received {
    pub msg_type: u16,
    pub payload: Vec<u8>,
}

/// A netlink socket of one family, bound in the network namespace of the thread that
/// opened it.
pub struct Socket {
    socket: NlSocket,
    seq: u32,
}

impl Socket {
    pub fn open(family: NlFamily) -> io::Result<Socket> {
        let socket = NlSocket::connect(family, None, Groups::empty())?;
        socket.set_recv_buffer_size(1 << 20)?;
        Ok(Socket { socket, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement.
    pub fn request(&mut self, message: Message) -> io::Result<()> {
        self.transact(vec![message], false).map(|_| ())
    }

    /// Sends several messages in one write (an nf_tables batch, or rtnetlink requests the
    /// kernel handles in order) and waits until every
    /// message that asked for an acknowledgement has one, or the first error.
    pub fn batch(&mut self, messages: Vec<Message>) -> io::Result<()> {
        self.transact(messages, false).map(|_| ())
    }

    /// Sends a dump (or get) request and returns every answer until NLMSG_DONE.
    pub fn dump(&mut self, message: Message) -> io::Result<Vec<Received>> {
        self.transact(vec![message], true)
    }

    fn transact(&mut self, messages: Vec<Message>, is_dump: bool) -> io::Result<Vec<Received>> {
        let mut out = Vec::new();
        let mut waiting = std::collections::BTreeSet::new();
        for message in messages {
            self.seq = self.seq.wrapping_add(1);
            let flags = u16::from_ne_bytes([message.buf[6], message.buf[7]]);
            if flags & NLM_F_ACK != 0 || is_dump {
                waiting.insert(self.seq);
            }
            out.extend_from_slice(&message.finish(self.seq));
        }
        self.socket.send(&out, Msg::empty())?;
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while !waiting.is_empty() {
            let (len, _) = self.socket.recv(&mut buf[..], Msg::empty())?;
            let mut offset = 0;
            while offset + HEADER_LEN <= len {
                let msg_len = u32_at(&buf, offset) as usize;
                if msg_len < HEADER_LEN || offset + msg_len > len {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let msg_type = u16::from_ne_bytes([buf[offset + 4], buf[offset + 5]]);
                let msg_flags = u16::from_ne_bytes([buf[offset + 6], buf[offset + 7]]);
                let seq = u32_at(&buf, offset + 8);
                let payload = &buf[offset + HEADER_LEN..offset + msg_len];
                offset += align4(msg_len);
                // Answers to an earlier request that failed part-way are not ours to read.
                if !waiting.contains(&seq) {
                    continue;
                }
                match msg_type {
                    NLMSG_ERROR if payload.len() < 4 => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "short netlink error",
                        ));
                    }
                    NLMSG_ERROR => {
                        let errno =
                            i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        waiting.remove(&seq);
                    }
                    NLMSG_DONE => {
                        waiting.remove(&seq);
                    }
                    _ => {
                        answers.push(Received {
                            msg_type,
                            payload: payload.to_vec(),
                        });
                        // A plain get answers with one message and no DONE.
                        if msg_flags & NLM_F_MULTI == 0 {
                            waiting.remove(&seq);
                        }
                    }
                }
            }
        }
        Ok(answers)
    }
}

fn u32_at(buf: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes([
        buf[offset],
        buf[offset + 1],
        buf[offset + 2],
        buf[offset + 3],
    ])
}

/// Iterates the attributes in `bytes` as (type without flags, payload).
pub fn attrs(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset + 4 > bytes.len() {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[offset], bytes[offset + 1]]) as usize;
        let attr_type = u16::from_ne_bytes([bytes[offset + 2], bytes[offset + 3]]) & 0x3fff;
        if len < 4 || offset + len > bytes.len() {
            return None;
        }
        let payload = &bytes[offset + 4..offset + len];
        offset += align4(len);
        Some((attr_type, payload))
    })
}

/// A NUL-terminated string attribute's text.
pub fn attr_string(payload: &[u8]) -> String {
    let end = payload
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(payload.len());
    String::from_utf8_lossy(&payload[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_nested_attributes_with_lengths_and_padding() {
        let mut m = Message::new(16, NLM_F_REQUEST | NLM_F_ACK).header(&[0; 16]);
        m.attr_str(3, "br0");
        m.begin_nest(18);
        m.attr_str(1, "bridge");
        m.end_nest();
        let bytes = m.finish(7);
        assert_eq!(bytes.len() as u32, u32_at(&bytes, 0));
        assert_eq!(u32_at(&bytes, 8), 7);
        let body = &bytes[32..];
        let parsed: Vec<(u16, Vec<u8>)> = attrs(body).map(|(t, p)| (t, p.to_vec())).collect();
        assert_eq!(parsed[0], (3, b"br0\0".to_vec()));
        assert_eq!(parsed[1].0, 18);
        let inner: Vec<(u16, String)> = attrs(&parsed[1].1)
            .map(|(t, p)| (t, attr_string(p)))
            .collect();
        assert_eq!(inner, vec![(1, "bridge".to_string())]);
    }
}
