//! TLS records after the handshake, sealed and opened in place in the proxy's own buffers.
//!
//! rustls does the handshake (and every check of certificates); then its connection is
//! turned into a `KernelConnection`, the API it offers for kernel TLS, which hands over the
//! traffic keys and sequence numbers and still derives new keys on a TLS 1.3 key update.
//! The records themselves are done here with ring's AEADs, as the kernel would: a record
//! read from the network is decrypted where it lies and its payload written to the app
//! from there, and the app's bytes are read straight into record-sized slots and sealed
//! there. rustls's own record layer copies every record into a buffer of its own, twice
//! per direction; this way the proxy copies nothing between the two sockets.
//!
//! Both TLS 1.3 (RFC 8446 §5) and TLS 1.2 (RFC 5246 §6.2.3.3, RFC 7905) records are
//! handled, with AES-GCM and ChaCha20-Poly1305, the only AEADs the proxy's provider has.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite};
use std::ops::Range;

/// Record header: type, version, length.
pub const HEADER: usize = 5;
/// The most payload a record carries.
pub const MAX_PAYLOAD: usize = 16384;
/// The longest record accepted: TLS 1.2 allows 2048 bytes of expansion (1.3 only 256).
pub const MAX_RECORD: usize = HEADER + MAX_PAYLOAD + 2048;
const TAG: usize = 16;
/// TLS 1.2 AES-GCM's explicit nonce, sent before each record's ciphertext.
const EXPLICIT_NONCE: usize = 8;
/// Post-handshake handshake messages kept while they arrive in pieces.
const MAX_HANDSHAKE: usize = 64 * 1024;

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

const HELLO_REQUEST: u8 = 0;
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;

/// What a record held, for the pump.
#[derive(Debug, PartialEq)]
pub enum Opened {
    /// Application bytes: where they are within the record.
    Data(Range<usize>),
    /// The peer's close_notify: its stream has ended.
    Closed,
    /// Nothing for the app (a session ticket, a key update, an empty record).
    Nothing,
}

/// One direction's key, IV and sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// TLS 1.2 AES-GCM: 4 bytes of implicit IV, then an explicit nonce in each record.
    explicit_nonce: bool,
}

impl Direction {
    fn new(
        (seq, secrets): (u64, ConnectionTrafficSecrets),
        tls12: bool,
    ) -> Result<Direction, String> {
        let (algorithm, key, iv, gcm) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, false)
            }
            _ => return Err("a cipher suite the proxy cannot use".into()),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| "a traffic key of the wrong length".to_string())?;
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| "an IV of the wrong length".to_string())?;
        Ok(Direction {
            key: LessSafeKey::new(key),
            iv,
            seq,
            explicit_nonce: tls12 && gcm,
        })
    }

    /// The IV with the sequence number XORed into its last 8 bytes, and the next number.
    fn next_nonce(&mut self) -> Result<[u8; 12], String> {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or("the record sequence number ran out")?;
        Ok(nonce)
    }

    /// Bytes before and after a payload in a record.
    fn overhead(&self, tls13: bool) -> (usize, usize) {
        let prefix = HEADER
            + if self.explicit_nonce {
                EXPLICIT_NONCE
            } else {
                0
            };
        (prefix, TAG + usize::from(tls13))
    }
}

/// The rustls side kept for key updates.
enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_rx_secret(),
            Kernel::Server(k) => k.update_rx_secret(),
        }
    }

    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_tx_secret(),
            Kernel::Server(k) => k.update_tx_secret(),
        }
    }
}

/// An established TLS session: seals records for the peer and opens the peer's.
pub struct Session {
    tls13: bool,
    tx: Direction,
    rx: Direction,
    kernel: Kernel,
    /// Records sealed with one key before it must be replaced (AES-GCM's limit).
    limit: u64,
    /// Post-handshake handshake bytes not yet a whole message.
    handshake: Vec<u8>,
    /// A key update to send before the next record: asked by the peer, or our limit.
    key_update_due: bool,
}

impl Session {
    pub fn client(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ClientConnectionData>,
    ) -> Result<Session, String> {
        let (version, suite) = (kernel.protocol_version(), kernel.negotiated_cipher_suite());
        Session::new(secrets, Kernel::Client(kernel), version, suite)
    }

    pub fn server(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Session, String> {
        let (version, suite) = (kernel.protocol_version(), kernel.negotiated_cipher_suite());
        Session::new(secrets, Kernel::Server(kernel), version, suite)
    }

    fn new(
        secrets: ExtractedSecrets,
        kernel: Kernel,
        version: ProtocolVersion,
        suite: SupportedCipherSuite,
    ) -> Result<Session, String> {
        let tls13 = match version {
            ProtocolVersion::TLSv1_3 => true,
            ProtocolVersion::TLSv1_2 => false,
            other => return Err(format!("{other:?} is not spoken here")),
        };
        let limit = match suite {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        Ok(Session {
            tls13,
            tx: Direction::new(secrets.tx, !tls13)?,
            rx: Direction::new(secrets.rx, !tls13)?,
            kernel,
            limit,
            handshake: Vec::new(),
            key_update_due: false,
        })
    }

    /// A TLS 1.3 session that moves to a new key every `records` records (tests: the
    /// real limit is millions of records).
    #[cfg(test)]
    pub fn with_key_limit(mut self, records: u64) -> Session {
        if self.tls13 {
            self.limit = records;
        }
        self
    }

    /// Bytes before and after a payload in a sealed record: where to put the app's bytes.
    pub fn overhead(&self) -> (usize, usize) {
        self.tx.overhead(self.tls13)
    }

    /// The length of the record at the start of `buf`, once all of it is there.
    pub fn record_len(buf: &[u8]) -> Result<Option<usize>, String> {
        let Some(header) = buf.get(..HEADER) else {
            return Ok(None);
        };
        let len = HEADER + usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_RECORD {
            return Err(format!("a TLS record of {len} bytes"));
        }
        Ok((buf.len() >= len).then_some(len))
    }

    /// Decrypts one whole record (`record_len` bytes) in place.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, String> {
        let (header, body) = record.split_at_mut(HEADER);
        let typ = header[0];
        if header[1..3] != [3, 3] {
            return Err("a record of another TLS version".into());
        }
        let (typ, range) = if self.tls13 {
            if typ != APPLICATION_DATA {
                return Err(format!("an unprotected record of type {typ}"));
            }
            let nonce = Nonce::assume_unique_for_key(self.rx.next_nonce()?);
            let plain = self
                .rx
                .key
                .open_in_place(nonce, Aad::from(&header[..]), body)
                .map_err(|_| "a record that does not decrypt")?;
            // The content type is the last byte that is not padding.
            let end = plain
                .iter()
                .rposition(|&b| b != 0)
                .ok_or("a record with no content type")?;
            (plain[end], HEADER..HEADER + end)
        } else {
            if !matches!(typ, APPLICATION_DATA | ALERT | HANDSHAKE) {
                return Err(format!("a record of type {typ}"));
            }
            let skip = if self.rx.explicit_nonce {
                EXPLICIT_NONCE
            } else {
                0
            };
            let len = body
                .len()
                .checked_sub(skip + TAG)
                .ok_or("a record too short for its tag")?;
            let mut nonce = self.rx.iv;
            let seq = self.rx.seq;
            if self.rx.explicit_nonce {
                nonce[4..].copy_from_slice(&body[..EXPLICIT_NONCE]);
                self.rx.next_nonce()?;
            } else {
                nonce = self.rx.next_nonce()?;
            }
            let aad = tls12_aad(seq, typ, len);
            self.rx
                .key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut body[skip..],
                )
                .map_err(|_| "a record that does not decrypt")?;
            let start = HEADER + skip;
            (typ, start..start + len)
        };
        match typ {
            APPLICATION_DATA if range.is_empty() => Ok(Opened::Nothing),
            APPLICATION_DATA => Ok(Opened::Data(range)),
            ALERT => alert(&record[range]),
            HANDSHAKE => {
                self.handshake_messages(&record[range])?;
                Ok(Opened::Nothing)
            }
            CHANGE_CIPHER_SPEC => Err("a protected change_cipher_spec".into()),
            other => Err(format!("a record of type {other}")),
        }
    }

    /// Handshake messages after the handshake: a TLS 1.3 session ticket (not kept: the
    /// proxy does not resume) or key update, or a TLS 1.2 hello request (ignored: no
    /// renegotiation). Anything else ends the connection.
    fn handshake_messages(&mut self, bytes: &[u8]) -> Result<(), String> {
        if self.handshake.len() + bytes.len() > MAX_HANDSHAKE {
            return Err("a post-handshake message too long".into());
        }
        self.handshake.extend_from_slice(bytes);
        while let [typ, a, b, c, rest @ ..] = self.handshake.as_slice() {
            let len = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
            let Some(body) = rest.get(..len) else {
                return Ok(());
            };
            match (*typ, self.tls13) {
                (NEW_SESSION_TICKET, true) => {}
                (KEY_UPDATE, true) => {
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err("a malformed key update".into()),
                    };
                    // A key update ends its record (RFC 8446 §5.1).
                    if rest.len() != len {
                        return Err("a key update not at the end of its record".into());
                    }
                    let secrets = self.kernel.update_rx().map_err(|e| e.to_string())?;
                    self.rx = Direction::new(secrets, false)?;
                    self.key_update_due |= requested;
                }
                (HELLO_REQUEST, false) if len == 0 => {}
                (other, _) => return Err(format!("a handshake message of type {other}")),
            }
            self.handshake.drain(..4 + len);
        }
        Ok(())
    }

    /// Whether a key update must go out before the next record (`seal_key_update`).
    pub fn key_update_due(&self) -> bool {
        self.key_update_due || self.tx.seq >= self.limit
    }

    /// Seals the payload at `slot[prefix..prefix + len]` (`overhead`) as a record of
    /// `typ` in place: the record's length, from the start of `slot`.
    fn seal(&mut self, slot: &mut [u8], len: usize, typ: u8) -> Result<usize, String> {
        let (prefix, suffix) = self.overhead();
        if len > MAX_PAYLOAD || slot.len() < prefix + len + suffix {
            return Err("no room to seal a record".into());
        }
        let seq = self.tx.seq;
        let nonce = self.tx.next_nonce()?;
        // TLS 1.3 hides the type after the payload, under an application_data header.
        let (outer, plain_len) = if self.tls13 {
            slot[prefix + len] = typ;
            (APPLICATION_DATA, len + 1)
        } else {
            (typ, len)
        };
        let body_len = prefix - HEADER + plain_len + TAG;
        let header = record_header(outer, body_len);
        slot[..HEADER].copy_from_slice(&header);
        if self.tx.explicit_nonce {
            slot[HEADER..prefix].copy_from_slice(&nonce[4..]);
        }
        let tls12_aad = tls12_aad(seq, typ, len);
        let aad: &[u8] = if self.tls13 { &header } else { &tls12_aad };
        let (plain, after) = slot[prefix..].split_at_mut(plain_len);
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), plain)
            .map_err(|_| "sealing a record failed")?;
        after[..TAG].copy_from_slice(tag.as_ref());
        Ok(HEADER + body_len)
    }

    /// Seals application bytes at `slot[prefix..prefix + len]`: the record's length.
    pub fn seal_data(&mut self, slot: &mut [u8], len: usize) -> Result<usize, String> {
        self.seal(slot, len, APPLICATION_DATA)
    }

    /// Seals a close_notify alert at the start of `out`: the record's length.
    pub fn seal_close_notify(&mut self, out: &mut [u8]) -> Result<usize, String> {
        let (prefix, _) = self.overhead();
        out.get_mut(prefix..prefix + 2)
            .ok_or("no room for close_notify")?
            .copy_from_slice(&[1, 0]);
        self.seal(out, 2, ALERT)
    }

    /// Seals a TLS 1.3 key update at the start of `out` with the current key, then moves
    /// to the next key: the record's length. TLS 1.2 has no key update: at its limit the
    /// connection ends.
    pub fn seal_key_update(&mut self, out: &mut [u8]) -> Result<usize, String> {
        if !self.tls13 {
            return Err("the TLS 1.2 connection reached its key's limit".into());
        }
        let (prefix, _) = self.overhead();
        out.get_mut(prefix..prefix + 5)
            .ok_or("no room for a key update")?
            .copy_from_slice(&[KEY_UPDATE, 0, 0, 1, 0]);
        let len = self.seal(out, 5, HANDSHAKE)?;
        let secrets = self.kernel.update_tx().map_err(|e| e.to_string())?;
        self.tx = Direction::new(secrets, false)?;
        self.key_update_due = false;
        Ok(len)
    }
}

fn record_header(typ: u8, body: usize) -> [u8; HEADER] {
    let [hi, lo] = (body as u16).to_be_bytes();
    [typ, 3, 3, hi, lo]
}

/// TLS 1.2's additional data: sequence number, type, version, plaintext length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8..11].copy_from_slice(&[typ, 3, 3]);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// An alert from the peer: close_notify ends its stream, anything else the connection.
fn alert(body: &[u8]) -> Result<Opened, String> {
    match body {
        [_, 0] => Ok(Opened::Closed),
        // user_canceled is followed by close_notify (RFC 8446 §6.1).
        [1, 90] => Ok(Opened::Nothing),
        [_, description] => Err(format!("the peer sent alert {description}")),
        _ => Err("a malformed alert".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::handshake;
    use crate::proxy::tls::{self, testing::*};
    use rustls::ClientConnection;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// Our server's session, and the rustls client it shook hands with; their bytes go
    /// back and forth by hand from here.
    fn connected() -> (Session, ClientConnection) {
        let ca = make_ca();
        let store = tls::roots(&[ca.pem()]).unwrap();
        let (web, db) = (leaf(&ca, "web"), leaf(&ca, "db"));
        let public = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = public.local_addr().unwrap();
        let config = tls::client(&web, &store, expect("db")).unwrap();
        let client = std::thread::spawn(move || {
            let mut conn =
                ClientConnection::new(config, tls::sni("db", "dc1", TD).unwrap()).unwrap();
            let mut sock = TcpStream::connect(addr).unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).unwrap();
            }
            conn
        });
        let (mut net, _) = public.accept().unwrap();
        let Ok((established, _)) = handshake::accept(tls::server(&db, &store).unwrap(), &mut net)
        else {
            panic!("handshake")
        };
        assert!(established.leftover.is_empty() && established.early.is_empty());
        (established.session, client.join().unwrap())
    }

    /// The payloads of the records in `wire`, opened in turn.
    fn open_all(session: &mut Session, mut wire: Vec<u8>) -> Vec<u8> {
        let mut payloads = Vec::new();
        let mut at = 0;
        while let Some(len) = Session::record_len(&wire[at..]).unwrap() {
            let record = &mut wire[at..at + len];
            if let Opened::Data(r) = session.open(record).unwrap() {
                payloads.extend_from_slice(&record[r]);
            }
            at += len;
        }
        assert_eq!(at, wire.len(), "a record cut short");
        payloads
    }

    #[test]
    fn a_peers_request_for_a_key_update_is_answered_and_the_peer_follows_our_new_key() {
        let (mut ours, mut theirs) = connected();
        assert!(!ours.key_update_due());
        theirs.refresh_traffic_keys().unwrap();
        theirs.writer().write_all(b"after").unwrap();
        let mut wire = Vec::new();
        while theirs.wants_write() {
            theirs.write_tls(&mut wire).unwrap();
        }
        assert_eq!(open_all(&mut ours, wire), b"after");
        assert!(ours.key_update_due(), "the peer's request was not noted");

        let mut out = vec![0u8; 2 * MAX_RECORD];
        let update = ours.seal_key_update(&mut out).unwrap();
        assert!(!ours.key_update_due());
        let (prefix, suffix) = ours.overhead();
        let slot = &mut out[update..update + prefix + 5 + suffix];
        slot[prefix..prefix + 5].copy_from_slice(b"hello");
        let data = ours.seal_data(slot, 5).unwrap();
        // rustls reads the record after our key update only with our new key.
        theirs.read_tls(&mut &out[..update + data]).unwrap();
        theirs.process_new_packets().unwrap();
        let mut got = [0u8; 5];
        theirs.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
    }
}
