//! NBD wire messages: constants, and encode/decode of every fixed-size header and option payload metac uses.
//!
//! Pure functions over byte slices, no IO: the server and the client read a header into a fixed array, decode it
//! here, check its length field against the bounds below, and only then read (and allocate for) the payload.
//! Everything is big-endian ("network byte order") as the protocol says. The subset is fixed newstyle negotiation
//! with `NBD_OPT_GO`/`NBD_OPT_INFO` and simple replies (no structured replies, no extended headers).

/// `NBDMAGIC`: first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle magic, sent by the server after `NBDMAGIC` and by the client before every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of an oldstyle server greeting, which metac does not speak.
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic that starts every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic that starts every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic that starts every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk (never negotiated by metac; seen only from a broken peer).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Largest option payload either side accepts. Strings are at most 4096 bytes by the spec; GO/INFO add a few
/// fixed fields and a short list of info requests.
pub const MAX_OPTION_LEN: u32 = 16 * 1024;
/// Largest READ or WRITE payload the server accepts (also advertised as the maximum block size).
pub const MAX_REQUEST_LEN: u32 = 32 * 1024 * 1024;
/// The 124 zero bytes that end an `NBD_OPT_EXPORT_NAME` reply unless `NO_ZEROES` was negotiated.
pub const EXPORT_NAME_PADDING: usize = 124;

pub mod handshake {
    //! Handshake flags (server, 16 bits) and client flags (32 bits), exchanged right after the greeting.

    /// Server speaks fixed newstyle.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// Server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
    pub const NO_ZEROES: u16 = 1 << 1;
    /// Client speaks fixed newstyle.
    pub const C_FIXED_NEWSTYLE: u32 = 1 << 0;
    /// Client asks the server to omit the 124 zero bytes.
    pub const C_NO_ZEROES: u32 = 1 << 1;
}

pub mod opt {
    //! Option codes (`NBD_OPT_*`) a client sends during option haggling.

    /// Choose an export and start transmission; no error reply is possible.
    pub const EXPORT_NAME: u32 = 1;
    /// End the session during haggling.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Upgrade to TLS (refused: metac streams are already authenticated and encrypted).
    pub const STARTTLS: u32 = 5;
    /// Ask about an export without choosing it.
    pub const INFO: u32 = 6;
    /// Choose an export and start transmission, with error replies.
    pub const GO: u32 = 7;
    /// Ask for structured replies (refused).
    pub const STRUCTURED_REPLY: u32 = 8;
}

pub mod rep {
    //! Option reply types (`NBD_REP_*`); errors have bit 31 set.

    /// Option done.
    pub const ACK: u32 = 1;
    /// One export in an `NBD_OPT_LIST` answer.
    pub const SERVER: u32 = 2;
    /// One piece of export information for `NBD_OPT_INFO`/`NBD_OPT_GO`.
    pub const INFO: u32 = 3;
    /// Bit set in every error reply type.
    pub const ERR: u32 = 1 << 31;
    /// Option not supported.
    pub const ERR_UNSUP: u32 = ERR | 1;
    /// Option forbidden by policy.
    pub const ERR_POLICY: u32 = ERR | 2;
    /// Option syntactically invalid.
    pub const ERR_INVALID: u32 = ERR | 3;
    /// Unknown export.
    pub const ERR_UNKNOWN: u32 = ERR | 6;
    /// Option or reply too large.
    pub const ERR_TOO_BIG: u32 = ERR | 9;
}

pub mod info {
    //! Information types (`NBD_INFO_*`) of an `NBD_REP_INFO` reply.

    /// Size and transmission flags (always sent).
    pub const EXPORT: u16 = 0;
    /// Export name.
    pub const NAME: u16 = 1;
    /// Export description.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

pub mod tflag {
    //! Transmission flags (`NBD_FLAG_*`, 16 bits, sent with the export size): what the export supports.

    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Writes are refused.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_CMD_TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` (and its `NO_HOLE` flag) is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// Flush and FUA on one connection are visible on all connections to the same export.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_CMD_CACHE` is supported.
    pub const SEND_CACHE: u16 = 1 << 10;
}

pub mod cmd {
    //! Request types (`NBD_CMD_*`) of the transmission phase.

    /// Read `len` bytes at `offset`.
    pub const READ: u16 = 0;
    /// Write the `len` bytes that follow the header at `offset`.
    pub const WRITE: u16 = 1;
    /// Disconnect; no reply.
    pub const DISC: u16 = 2;
    /// Make completed writes durable.
    pub const FLUSH: u16 = 3;
    /// Discard a range: its contents become unspecified, and the space may be given back.
    pub const TRIM: u16 = 4;
    /// Read a range ahead into the server's cache; no data in the reply.
    pub const CACHE: u16 = 5;
    /// Make a range read as zeroes, punching a hole unless `NO_HOLE` is set.
    pub const WRITE_ZEROES: u16 = 6;

    /// The command's name, for messages.
    pub fn name(command: u16) -> &'static str {
        match command {
            READ => "READ",
            WRITE => "WRITE",
            DISC => "DISC",
            FLUSH => "FLUSH",
            TRIM => "TRIM",
            CACHE => "CACHE",
            WRITE_ZEROES => "WRITE_ZEROES",
            _ => "unknown command",
        }
    }
}

pub mod cflag {
    //! Per-request flags (`NBD_CMD_FLAG_*`).

    /// Force unit access: the write is durable before the reply.
    pub const FUA: u16 = 1 << 0;
    /// `NBD_CMD_WRITE_ZEROES` must allocate: no hole may be punched.
    pub const NO_HOLE: u16 = 1 << 1;
}

pub mod errno {
    //! Error values of the reply `error` field, fixed by the spec (not the host's errno).

    /// Operation not permitted (write to a read-only export).
    pub const EPERM: u32 = 1;
    /// Input/output error.
    pub const EIO: u32 = 5;
    /// Cannot allocate memory.
    pub const ENOMEM: u32 = 12;
    /// Invalid argument (bad range, unknown command or flag, request too large).
    pub const EINVAL: u32 = 22;
    /// No space left on device (write past the end).
    pub const ENOSPC: u32 = 28;
    /// Value too large.
    pub const EOVERFLOW: u32 = 75;
    /// Operation not supported.
    pub const ENOTSUP: u32 = 95;
    /// Server shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// A message that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A magic number is wrong: the peer does not speak (this phase of) NBD.
    #[error("bad NBD magic in {what}: {got:#x}")]
    BadMagic {
        /// Which message.
        what: &'static str,
        /// The value received.
        got: u64,
    },
    /// The peer is an oldstyle NBD server.
    #[error("the server uses oldstyle NBD negotiation, which is not supported")]
    Oldstyle,
    /// A payload's inner lengths do not add up.
    #[error("malformed {what} payload ({len} bytes)")]
    Malformed {
        /// Which payload.
        what: &'static str,
        /// Its length.
        len: usize,
    },
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Handshake flags ([`handshake::FIXED_NEWSTYLE`], [`handshake::NO_ZEROES`]).
    pub flags: u16,
}

impl Greeting {
    /// Encoded length.
    pub const LEN: usize = 18;

    /// Encodes the greeting.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
        b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[16..].copy_from_slice(&self.flags.to_be_bytes());
        b
    }

    /// Decodes a greeting, refusing oldstyle servers.
    pub fn decode(b: &[u8; Self::LEN]) -> Result<Self, Error> {
        let magic = be64(b, 0);
        if magic != NBDMAGIC {
            return Err(Error::BadMagic { what: "greeting", got: magic });
        }
        match be64(b, 8) {
            IHAVEOPT => Ok(Greeting { flags: be16(b, 16) }),
            OLDSTYLE_MAGIC => Err(Error::Oldstyle),
            got => Err(Error::BadMagic { what: "greeting", got }),
        }
    }
}

/// Header of an option sent by the client: `IHAVEOPT`, option code, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option code ([`opt`]).
    pub option: u32,
    /// Length of the payload that follows.
    pub len: u32,
}

impl OptionHeader {
    /// Encoded length.
    pub const LEN: usize = 16;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Decodes the header; the caller bounds `len` before reading the payload.
    pub fn decode(b: &[u8; Self::LEN]) -> Result<Self, Error> {
        let magic = be64(b, 0);
        if magic != IHAVEOPT {
            return Err(Error::BadMagic { what: "option", got: magic });
        }
        Ok(OptionHeader { option: be32(b, 8), len: be32(b, 12) })
    }
}

/// Header of an option reply: magic, option code, reply type, payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option this answers.
    pub option: u32,
    /// Reply type ([`rep`]).
    pub reply: u32,
    /// Length of the payload that follows.
    pub len: u32,
}

impl OptionReplyHeader {
    /// Encoded length.
    pub const LEN: usize = 20;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        b[8..12].copy_from_slice(&self.option.to_be_bytes());
        b[12..16].copy_from_slice(&self.reply.to_be_bytes());
        b[16..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Decodes the header; the caller bounds `len` before reading the payload.
    pub fn decode(b: &[u8; Self::LEN]) -> Result<Self, Error> {
        let magic = be64(b, 0);
        if magic != OPTION_REPLY_MAGIC {
            return Err(Error::BadMagic { what: "option reply", got: magic });
        }
        Ok(OptionReplyHeader { option: be32(b, 8), reply: be32(b, 12), len: be32(b, 16) })
    }
}

/// Appends one option reply (header and payload) to `out`. `data` must be shorter than [`MAX_OPTION_LEN`].
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[u8]) {
    debug_assert!(data.len() <= MAX_OPTION_LEN as usize);
    out.extend_from_slice(&OptionReplyHeader { option, reply, len: data.len() as u32 }.encode());
    out.extend_from_slice(data);
}

/// Payload of `NBD_OPT_INFO` and `NBD_OPT_GO`: export name and the information types asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    /// Export name (any bytes; metac accepts every name).
    pub name: &'a [u8],
    /// Requested information types, big-endian `u16`s (length is even).
    requests: &'a [u8],
}

impl<'a> InfoRequest<'a> {
    /// A request for `name` with no extra information types.
    pub fn new(name: &'a [u8]) -> Self {
        InfoRequest { name, requests: &[] }
    }

    /// Decodes `u32 name length, name, u16 count, count × u16`; every length must match the payload exactly.
    pub fn decode(p: &'a [u8]) -> Result<Self, Error> {
        let bad = || Error::Malformed { what: "NBD_OPT_GO/INFO", len: p.len() };
        if p.len() < 6 {
            return Err(bad());
        }
        let name_len = be32(p, 0) as usize;
        let rest = p.len() - 4;
        if name_len > rest - 2 {
            return Err(bad());
        }
        let name = &p[4..4 + name_len];
        let count = be16(p, 4 + name_len) as usize;
        let requests = &p[6 + name_len..];
        if requests.len() != count * 2 {
            return Err(bad());
        }
        Ok(InfoRequest { name, requests })
    }

    /// The requested information types.
    pub fn requests(&self) -> impl Iterator<Item = u16> + 'a {
        self.requests.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]))
    }

    /// Encodes the payload, asking for the information types in `requests`.
    pub fn encode(name: &[u8], requests: &[u16]) -> Vec<u8> {
        let mut b = Vec::with_capacity(6 + name.len() + 2 * requests.len());
        b.extend_from_slice(&(name.len() as u32).to_be_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            b.extend_from_slice(&r.to_be_bytes());
        }
        b
    }
}

/// Block size constraints of an export (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Minimum alignment of offsets and lengths.
    pub min: u32,
    /// Preferred alignment (avoids read-modify-write on the server).
    pub preferred: u32,
    /// Largest READ/WRITE payload.
    pub max: u32,
}

/// One item of an `NBD_REP_INFO` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags ([`tflag`]).
        flags: u16,
    },
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize(BlockSize),
    /// Any other type, ignored.
    Other(u16),
}

impl Info {
    /// Encodes the `NBD_REP_INFO` payload for `Export` and `BlockSize` (others encode as the bare type).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(14);
        match *self {
            Info::Export { size, flags } => {
                b.extend_from_slice(&info::EXPORT.to_be_bytes());
                b.extend_from_slice(&size.to_be_bytes());
                b.extend_from_slice(&flags.to_be_bytes());
            }
            Info::BlockSize(s) => {
                b.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
                b.extend_from_slice(&s.min.to_be_bytes());
                b.extend_from_slice(&s.preferred.to_be_bytes());
                b.extend_from_slice(&s.max.to_be_bytes());
            }
            Info::Other(t) => b.extend_from_slice(&t.to_be_bytes()),
        }
        b
    }

    /// Decodes an `NBD_REP_INFO` payload; known types must have their exact length.
    pub fn decode(p: &[u8]) -> Result<Self, Error> {
        let bad = |what| Error::Malformed { what, len: p.len() };
        if p.len() < 2 {
            return Err(bad("NBD_REP_INFO"));
        }
        match be16(p, 0) {
            info::EXPORT if p.len() == 12 => Ok(Info::Export { size: be64(p, 2), flags: be16(p, 10) }),
            info::EXPORT => Err(bad("NBD_INFO_EXPORT")),
            info::BLOCK_SIZE if p.len() == 14 => {
                Ok(Info::BlockSize(BlockSize { min: be32(p, 2), preferred: be32(p, 6), max: be32(p, 10) }))
            }
            info::BLOCK_SIZE => Err(bad("NBD_INFO_BLOCK_SIZE")),
            t => Ok(Info::Other(t)),
        }
    }
}

/// A transmission request header (a WRITE is followed by `len` bytes of data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags ([`cflag`]).
    pub flags: u16,
    /// Command type ([`cmd`]).
    pub command: u16,
    /// Opaque handle echoed in the reply.
    pub handle: u64,
    /// Byte offset in the export.
    pub offset: u64,
    /// Byte count.
    pub len: u32,
}

impl Request {
    /// Encoded length.
    pub const LEN: usize = 28;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&self.flags.to_be_bytes());
        b[6..8].copy_from_slice(&self.command.to_be_bytes());
        b[8..16].copy_from_slice(&self.handle.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    /// Decodes the header; the caller bounds `len` before reading a WRITE payload.
    pub fn decode(b: &[u8; Self::LEN]) -> Result<Self, Error> {
        let magic = be32(b, 0);
        if magic != REQUEST_MAGIC {
            return Err(Error::BadMagic { what: "request", got: magic.into() });
        }
        Ok(Request {
            flags: be16(b, 4),
            command: be16(b, 6),
            handle: be64(b, 8),
            offset: be64(b, 16),
            len: be32(b, 24),
        })
    }
}

/// A simple reply header (a successful READ reply is followed by the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// 0 or an [`errno`] value.
    pub error: u32,
    /// The request's handle.
    pub handle: u64,
}

impl SimpleReply {
    /// Encoded length.
    pub const LEN: usize = 16;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.error.to_be_bytes());
        b[8..].copy_from_slice(&self.handle.to_be_bytes());
        b
    }

    /// Decodes the header; a structured reply is an error since metac never negotiates them.
    pub fn decode(b: &[u8; Self::LEN]) -> Result<Self, Error> {
        let magic = be32(b, 0);
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(Error::BadMagic { what: "reply", got: magic.into() });
        }
        Ok(SimpleReply { error: be32(b, 4), handle: be64(b, 8) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&v[..N]);
        a
    }

    #[test]
    fn info_request_layout() {
        let p = InfoRequest::encode(b"disk", &[info::BLOCK_SIZE, info::NAME]);
        assert_eq!(p, [0, 0, 0, 4, b'd', b'i', b's', b'k', 0, 2, 0, 3, 0, 1]);
        let r = InfoRequest::decode(&p).unwrap();
        assert_eq!(r.name, b"disk");
        assert_eq!(r.requests().collect::<Vec<_>>(), [info::BLOCK_SIZE, info::NAME]);
        assert!(InfoRequest::decode(&p[..p.len() - 1]).is_err());
        assert!(InfoRequest::decode(&[0, 0, 0, 0, 0]).is_err());
        assert!(InfoRequest::decode(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
    }

    #[test]
    fn oldstyle_greeting_is_named() {
        let mut g = Greeting { flags: 0 }.encode();
        g[8..16].copy_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
        assert_eq!(Greeting::decode(&g), Err(Error::Oldstyle));
    }

    proptest! {
        #[test]
        fn request_roundtrip(flags: u16, command: u16, handle: u64, offset: u64, len: u32) {
            let r = Request { flags, command, handle, offset, len };
            prop_assert_eq!(Request::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn replies_roundtrip(error: u32, handle: u64, option: u32, reply: u32, len: u32) {
            let r = SimpleReply { error, handle };
            prop_assert_eq!(SimpleReply::decode(&r.encode()), Ok(r));
            let h = OptionReplyHeader { option, reply, len };
            prop_assert_eq!(OptionReplyHeader::decode(&h.encode()), Ok(h));
            let o = OptionHeader { option, len };
            prop_assert_eq!(OptionHeader::decode(&o.encode()), Ok(o));
        }

        #[test]
        fn info_roundtrip(size: u64, flags: u16, min: u32, preferred: u32, max: u32) {
            for i in [Info::Export { size, flags }, Info::BlockSize(BlockSize { min, preferred, max })] {
                prop_assert_eq!(Info::decode(&i.encode()), Ok(i));
            }
        }

        #[test]
        fn info_request_roundtrip(name in proptest::collection::vec(any::<u8>(), 0..300),
                                  reqs in proptest::collection::vec(any::<u16>(), 0..20)) {
            let p = InfoRequest::encode(&name, &reqs);
            let r = InfoRequest::decode(&p).unwrap();
            prop_assert_eq!(r.name, &name[..]);
            prop_assert_eq!(r.requests().collect::<Vec<_>>(), reqs);
        }

        #[test]
        fn any_bytes_decode_or_error(b in proptest::collection::vec(any::<u8>(), 28..64)) {
            let _ = Greeting::decode(&arr(&b));
            let _ = OptionHeader::decode(&arr(&b));
            let _ = OptionReplyHeader::decode(&arr(&b));
            let _ = Request::decode(&arr(&b));
            let _ = SimpleReply::decode(&arr(&b));
            let _ = Info::decode(&b);
            let _ = Info::decode(&b[..b[0] as usize % b.len()]);
            if let Ok(r) = InfoRequest::decode(&b) {
                prop_assert!(r.name.len() + r.requests().count() * 2 + 6 == b.len());
            }
        }
    }
}
