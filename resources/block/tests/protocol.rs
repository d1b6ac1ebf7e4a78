//! The server driven by a hand-written client speaking raw NBD: option haggling corner cases, error replies that
//! keep the connection usable, and heavy pipelining (many requests sent before any reply is read).

mod common;

use common::random_bytes;
use metac_block::nbd::proto::{
    cflag, cmd, errno, handshake, info, opt, rep, tflag, Greeting, Info, InfoRequest, OptionHeader, OptionReplyHeader,
    Request, SimpleReply, MAX_OPTION_LEN, MAX_REQUEST_LEN,
};
use metac_block::{serve, Error, Export, Stats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A client that speaks NBD one message at a time.
struct Raw {
    s: UnixStream,
    server: JoinHandle<Result<Stats, Error>>,
    _dir: tempfile::TempDir,
    data: Vec<u8>,
}

impl Raw {
    /// Starts `serve` on one end of a socket pair over a file of `len` pseudo-random bytes.
    fn start(len: usize, read_only: bool) -> Raw {
        let dir = tempfile::tempdir().unwrap();
        let data = random_bytes(len, 42);
        let path = dir.path().join("disk");
        std::fs::write(&path, &data).unwrap();
        let export = Export::open(&path, read_only).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let server = tokio::spawn(async move { serve(a, &export, CancellationToken::new()).await });
        Raw { s: b, server, _dir: dir, data }
    }

    async fn greet(&mut self, client_flags: u32) -> Greeting {
        let mut g = [0u8; Greeting::LEN];
        self.s.read_exact(&mut g).await.unwrap();
        self.s.write_all(&client_flags.to_be_bytes()).await.unwrap();
        Greeting::decode(&g).unwrap()
    }

    async fn option(&mut self, option: u32, payload: &[u8]) {
        self.s.write_all(&OptionHeader { option, len: payload.len() as u32 }.encode()).await.unwrap();
        self.s.write_all(payload).await.unwrap();
    }

    async fn reply(&mut self) -> (OptionReplyHeader, Vec<u8>) {
        let mut h = [0u8; OptionReplyHeader::LEN];
        self.s.read_exact(&mut h).await.unwrap();
        let h = OptionReplyHeader::decode(&h).unwrap();
        let mut data = vec![0u8; h.len as usize];
        self.s.read_exact(&mut data).await.unwrap();
        (h, data)
    }

    /// `NBD_OPT_GO`; returns the export's size and transmission flags.
    async fn go(&mut self) -> (u64, u16) {
        self.option(opt::GO, &InfoRequest::encode(b"whatever", &[])).await;
        let mut export = None;
        loop {
            let (h, data) = self.reply().await;
            assert_eq!(h.option, opt::GO);
            match h.reply {
                rep::INFO => {
                    if let Info::Export { size, flags } = Info::decode(&data).unwrap() {
                        export = Some((size, flags));
                    }
                }
                rep::ACK => return export.expect("NBD_INFO_EXPORT before ACK"),
                other => panic!("unexpected reply {other:#x}"),
            }
        }
    }

    async fn request(&mut self, command: u16, flags: u16, handle: u64, offset: u64, len: u32) {
        self.s.write_all(&Request { flags, command, handle, offset, len }.encode()).await.unwrap();
    }

    async fn simple_reply(&mut self) -> SimpleReply {
        let mut h = [0u8; SimpleReply::LEN];
        self.s.read_exact(&mut h).await.unwrap();
        SimpleReply::decode(&h).unwrap()
    }

    async fn expect_reply(&mut self, handle: u64, error: u32) {
        assert_eq!(self.simple_reply().await, SimpleReply { error, handle });
    }

    async fn disconnect(mut self) -> Stats {
        self.request(cmd::DISC, 0, 0, 0, 0).await;
        let mut rest = Vec::new();
        self.s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing after DISC");
        self.server.await.unwrap().unwrap()
    }
}

const FLAGS: u32 = handshake::C_FIXED_NEWSTYLE | handshake::C_NO_ZEROES;

#[tokio::test]
async fn haggling_survives_unknown_and_oversized_options() {
    let mut c = Raw::start(10_000, true);
    let g = c.greet(FLAGS).await;
    assert_eq!(g.flags, handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES);
    for o in [opt::STRUCTURED_REPLY, opt::STARTTLS, 10, 4242] {
        c.option(o, &[]).await;
        assert_eq!(c.reply().await.0.reply, rep::ERR_UNSUP);
    }
    c.option(opt::INFO, &vec![0u8; MAX_OPTION_LEN as usize + 1]).await;
    assert_eq!(c.reply().await.0.reply, rep::ERR_TOO_BIG);
    c.option(opt::GO, &[1, 2, 3]).await;
    assert_eq!(c.reply().await.0.reply, rep::ERR_INVALID);
    c.option(opt::LIST, &[]).await;
    assert_eq!(c.reply().await, (OptionReplyHeader { option: opt::LIST, reply: rep::SERVER, len: 4 }, vec![0; 4]));
    assert_eq!(c.reply().await.0.reply, rep::ACK);
    c.option(opt::INFO, &InfoRequest::encode(b"", &[info::BLOCK_SIZE])).await;
    assert_eq!(c.reply().await.0.reply, rep::INFO);
    let (_, bs) = c.reply().await;
    assert!(matches!(Info::decode(&bs), Ok(Info::BlockSize(b)) if b.max == MAX_REQUEST_LEN));
    assert_eq!(c.reply().await.0.reply, rep::ACK);
    let (size, flags) = c.go().await;
    assert_eq!(size, 10_000);
    assert_ne!(flags & tflag::READ_ONLY, 0);
    c.request(cmd::READ, 0, 1, 0, 10_000).await;
    c.expect_reply(1, 0).await;
    let mut data = vec![0u8; 10_000];
    c.s.read_exact(&mut data).await.unwrap();
    assert!(data == c.data);
    assert_eq!(c.disconnect().await.requests, 2);
}

#[tokio::test]
async fn abort_and_export_name() {
    let mut c = Raw::start(100, true);
    c.greet(FLAGS).await;
    c.option(opt::ABORT, &[]).await;
    assert_eq!(c.reply().await.0.reply, rep::ACK);
    assert_eq!(c.server.await.unwrap().unwrap(), Stats::default());

    // A client that does not ask for NO_ZEROES gets them.
    let mut c = Raw::start(100, false);
    c.greet(handshake::C_FIXED_NEWSTYLE).await;
    c.option(opt::EXPORT_NAME, b"name").await;
    let mut reply = [0u8; 10 + 124];
    c.s.read_exact(&mut reply).await.unwrap();
    assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 100);
    assert_eq!(u16::from_be_bytes([reply[8], reply[9]]) & tflag::READ_ONLY, 0);
    assert!(reply[10..].iter().all(|&b| b == 0));
    c.request(cmd::FLUSH, 0, 5, 0, 0).await;
    c.expect_reply(5, 0).await;
    c.disconnect().await;

    let mut c = Raw::start(100, false);
    c.greet(1 << 7).await;
    assert!(matches!(c.server.await.unwrap(), Err(Error::Violation(_))));
}

#[tokio::test]
async fn errors_keep_the_connection_usable() {
    let mut c = Raw::start(1 << 20, true);
    c.greet(FLAGS).await;
    c.go().await;
    c.request(cmd::READ, 0, 1, (1 << 20) - 10, 11).await;
    c.expect_reply(1, errno::EINVAL).await;
    c.request(cmd::READ, 0, 2, 0, MAX_REQUEST_LEN + 1).await;
    c.expect_reply(2, errno::EINVAL).await;
    c.request(cmd::READ, cflag::FUA, 3, 0, 1).await;
    c.expect_reply(3, errno::EINVAL).await;
    c.request(cmd::WRITE, 0, 4, 0, 5000).await;
    c.s.write_all(&[9u8; 5000]).await.unwrap();
    c.expect_reply(4, errno::EPERM).await;
    // A read-only export refuses every kind of write, TRIM too.
    c.request(cmd::TRIM, 0, 5, 0, 4096).await;
    c.expect_reply(5, errno::EPERM).await;
    c.request(99, 0, 6, 0, 0).await;
    c.expect_reply(6, errno::EINVAL).await;
    c.request(cmd::READ, 0, 7, 1000, 24).await;
    c.expect_reply(7, 0).await;
    let mut d = [0u8; 24];
    c.s.read_exact(&mut d).await.unwrap();
    assert_eq!(&d[..], &c.data[1000..1024]);
    let stats = c.disconnect().await;
    assert_eq!((stats.requests, stats.errors, stats.bytes_read), (8, 6, 24));
}

#[tokio::test]
async fn oversized_and_out_of_range_writes_are_skipped() {
    let mut c = Raw::start(1 << 20, false);
    c.greet(FLAGS).await;
    c.go().await;
    c.request(cmd::WRITE, 0, 1, 0, MAX_REQUEST_LEN + 1).await;
    let junk = vec![0xaau8; MAX_REQUEST_LEN as usize + 1];
    let (mut rd, mut wr) = c.s.split();
    let (sent, reply) = tokio::join!(wr.write_all(&junk), async {
        let mut h = [0u8; SimpleReply::LEN];
        rd.read_exact(&mut h).await.unwrap();
        SimpleReply::decode(&h).unwrap()
    });
    sent.unwrap();
    assert_eq!(reply, SimpleReply { error: errno::EINVAL, handle: 1 });
    c.request(cmd::WRITE, 0, 2, (1 << 20) - 1, 2).await;
    c.s.write_all(&[1, 2]).await.unwrap();
    c.expect_reply(2, errno::ENOSPC).await;
    c.request(cmd::WRITE, cflag::FUA, 3, 10, 3).await;
    c.s.write_all(&[1, 2, 3]).await.unwrap();
    c.expect_reply(3, 0).await;
    c.request(cmd::READ, 0, 4, 9, 5).await;
    c.expect_reply(4, 0).await;
    let mut d = [0u8; 5];
    c.s.read_exact(&mut d).await.unwrap();
    assert_eq!(d, [c.data[9], 1, 2, 3, c.data[13]]);
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_reads_sent_before_any_reply_is_read() {
    let mut c = Raw::start(4 << 20, true);
    c.greet(FLAGS).await;
    c.go().await;
    // 2000 requests (56 KB) go out at once; their replies (over 1 MB) far exceed the socket buffers.
    let mut reqs = Vec::new();
    for i in 0..2000u64 {
        reqs.extend_from_slice(
            &Request { flags: 0, command: cmd::READ, handle: i, offset: i * 512, len: 512 }.encode(),
        );
    }
    c.s.write_all(&reqs).await.unwrap();
    for i in 0..2000u64 {
        c.expect_reply(i, 0).await;
        let mut d = [0u8; 512];
        c.s.read_exact(&mut d).await.unwrap();
        assert_eq!(&d[..], &c.data[i as usize * 512..][..512]);
    }
    assert_eq!(c.disconnect().await.bytes_read, 2000 * 512);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_writes_sent_before_any_reply_is_read() {
    let mut c = Raw::start(4 << 20, false);
    c.greet(FLAGS).await;
    c.go().await;
    let new = random_bytes(4 << 20, 7);
    let (mut rd, mut wr) = c.s.split();
    // All writes and a flush are sent before reading: the server must keep reading while its replies queue up.
    let send = async {
        for (i, chunk) in new.chunks(4096).enumerate() {
            let req = Request { flags: 0, command: cmd::WRITE, handle: i as u64, offset: i as u64 * 4096, len: 4096 };
            wr.write_all(&req.encode()).await.unwrap();
            wr.write_all(chunk).await.unwrap();
        }
        wr.write_all(&Request { flags: 0, command: cmd::FLUSH, handle: 9999, offset: 0, len: 0 }.encode())
            .await
            .unwrap();
    };
    let sent = tokio::time::timeout(std::time::Duration::from_secs(20), send).await;
    sent.expect("the server stopped reading requests");
    for i in 0..1024u64 {
        let mut h = [0u8; SimpleReply::LEN];
        rd.read_exact(&mut h).await.unwrap();
        assert_eq!(SimpleReply::decode(&h).unwrap(), SimpleReply { error: 0, handle: i });
    }
    c.expect_reply(9999, 0).await;
    let stats = c.disconnect().await;
    assert_eq!(stats.bytes_written, 4 << 20);
}

#[tokio::test]
async fn garbage_request_ends_the_session_with_an_error() {
    let mut c = Raw::start(100, true);
    c.greet(FLAGS).await;
    c.go().await;
    c.s.write_all(&[0u8; Request::LEN]).await.unwrap();
    assert!(matches!(c.server.await.unwrap(), Err(Error::Proto(_))));
}

/// The server's outcome, if it ends within twice the handshake limit (on the paused clock), or a failure saying it
/// held on.
async fn outcome(server: JoinHandle<Result<Stats, Error>>) -> Result<Stats, Error> {
    match tokio::time::timeout(2 * metac_block::NEGOTIATION_TIMEOUT, server).await {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("the server still holds the connection"),
    }
}

/// Attack (issue 10, finding 6): a client that connects and never finishes the handshake held its connection (and
/// a bind slot) forever. It is cut after NEGOTIATION_TIMEOUT.
#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_the_handshake_is_cut() {
    let mut c = Raw::start(100, true);
    c.greet(FLAGS).await;
    let t = tokio::time::Instant::now();
    let r = outcome(c.server).await;
    assert!(matches!(&r, Err(Error::Stalled(why)) if why.contains("handshake")), "{r:?}");
    assert!(t.elapsed() >= metac_block::NEGOTIATION_TIMEOUT);
}

/// Attack: half a request header, then silence, held the server's reader forever.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_mid_request_is_cut() {
    let mut c = Raw::start(100, true);
    c.greet(FLAGS).await;
    c.go().await;
    c.s.write_all(&Request { flags: 0, command: cmd::READ, handle: 1, offset: 0, len: 10 }.encode()[..7])
        .await
        .unwrap();
    let r = outcome(c.server).await;
    assert!(matches!(&r, Err(Error::Stalled(why)) if why.contains("request header")), "{r:?}");
}

/// Attack: a client pipelining reads and never reading a reply held the server's writer (and its buffers) forever.
#[tokio::test(start_paused = true)]
async fn a_client_that_takes_no_replies_is_cut() {
    let mut c = Raw::start(4 << 20, true);
    c.greet(FLAGS).await;
    c.go().await;
    for h in 0..16 {
        c.request(cmd::READ, 0, h, 0, 1 << 20).await;
    }
    let r = outcome(c.server).await;
    assert!(matches!(&r, Err(Error::Stalled(why)) if why.contains("repl")), "{r:?}");
}

/// An idle client is not an attack: an hour between requests is fine.
#[tokio::test(start_paused = true)]
async fn an_idle_client_keeps_its_connection() {
    let mut c = Raw::start(100, true);
    c.greet(FLAGS).await;
    c.go().await;
    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    c.request(cmd::READ, 0, 7, 0, 10).await;
    c.expect_reply(7, 0).await;
    let mut data = [0u8; 10];
    c.s.read_exact(&mut data).await.unwrap();
    assert_eq!(&data[..], &c.data[..10]);
    c.disconnect().await;
}

/// Attack (issue 10, finding 6, the client side): a server that sends its greeting and then nothing, with the stream
/// open, held `metac file cat` for ever. The client gives up after SERVER_STALL_TIMEOUT without a byte.
#[tokio::test(start_paused = true)]
async fn a_server_gone_silent_is_given_up_on() {
    let (client, mut server) = UnixStream::pair().unwrap();
    let greeting = Greeting { flags: handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES }.encode();
    server.write_all(&greeting).await.unwrap();
    let t = tokio::time::Instant::now();
    let mut out = vec![];
    let r = tokio::time::timeout(2 * metac_block::SERVER_STALL_TIMEOUT, metac_block::cat(client, &mut out, |_, _| {}))
        .await
        .expect("the client does not wait for ever");
    assert!(matches!(&r, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut), "{r:?}");
    assert!(t.elapsed() >= metac_block::SERVER_STALL_TIMEOUT);
    drop(server);
}
