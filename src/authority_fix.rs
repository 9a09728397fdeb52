//! A read-side filter for client connections that repairs one malformed HTTP/2 header.
//!
//! etcdctl 3.4 and other Go clients built on etcd's clientv3 dial single endpoints as
//! `passthrough:///http://127.0.0.1:2379` for `endpoint status`, `endpoint hashkv`, `defrag` and
//! `move-leader`, and send the whole `http://127.0.0.1:2379` as the `:authority` pseudo-header.
//! etcd's Go server accepts it; the `h2` crate under tonic rejects the stream as malformed
//! (RST_STREAM PROTOCOL_ERROR). [`AuthorityFix`] sits between the socket and the HTTP/2 server:
//! it re-frames every HEADERS block the client sends, with `:authority` reduced to `host:port`.
//! HTTP/1.1 connections (health checks, metrics) pass through untouched.
//!
//! The first header block of a connection decides. If its `:authority` needs no repair (every
//! client but those dials: a gRPC channel sends one authority on all its streams) that block
//! and everything after it pass unchanged, so well-behaved connections cost no HPACK work: the
//! profile of a 64-client put load had a fifth of the workers' time in decoding and re-encoding
//! here. If it does need repair, from then on every header block is decoded (keeping the
//! client's HPACK table in step) and re-encoded with our own encoder, so the server's HPACK
//! decoder only ever sees our encoding on that connection. A header block the filter cannot
//! follow ends the connection (the read fails) rather than reaching the server in the client's
//! encoding.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which the server never raises for clients.
const FRAME_PAYLOAD_BYTES_MAX: usize = 16_384;
/// HTTP/2's default SETTINGS_HEADER_TABLE_SIZE, which the server never changes.
const HEADER_TABLE_BYTES_MAX: usize = 4096;
/// A header block larger than this is refused (the server's own limit is far lower).
const HEADER_BLOCK_BYTES_MAX: usize = 1 << 20;

enum Mode {
    /// Not yet enough bytes to tell HTTP/2 from HTTP/1.
    Undecided,
    /// HTTP/2: frames are parsed and HEADERS blocks rewritten.
    Frames,
    /// HTTP/1: bytes pass unchanged.
    Passthrough,
    /// HTTP/2 we could not follow (a malformed or oversized header block, frames out of order):
    /// what came before goes out, then reading fails and the server drops the connection. The
    /// client's bytes cannot be handed on as they are: the server's HPACK table follows our
    /// encoder, not the client's, so it would read later header blocks wrong.
    Refused,
}

struct Pending {
    stream_id: u32,
    end_stream: bool,
    block: Vec<u8>,
    /// The block's frames as the client sent them, kept for the connection's first block only
    /// (handed on unchanged if it needs no repair).
    frames: Vec<u8>,
}

/// Wraps a client connection; see the module documentation.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    raw: BytesMut,
    out: BytesMut,
    eof: bool,
    pending: Option<Pending>,
    /// Whether the connection's first header block needed its authority repaired (then every
    /// block is re-encoded); false until that block is complete.
    rewriting: bool,
    decoder: fluke_hpack::Decoder<'static>,
    encoder: fluke_hpack::Encoder<'static>,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            mode: Mode::Undecided,
            raw: BytesMut::with_capacity(16 * 1024),
            out: BytesMut::with_capacity(16 * 1024),
            eof: false,
            pending: None,
            rewriting: false,
            decoder: {
                let mut decoder = fluke_hpack::Decoder::new();
                // The server never advertises a SETTINGS_HEADER_TABLE_SIZE, so a client may use
                // HTTP/2's default at most; without the limit a size update lets one client
                // grow our table without bound.
                decoder.set_max_allowed_table_size(HEADER_TABLE_BYTES_MAX);
                decoder
            },
            encoder: fluke_hpack::Encoder::new(),
        }
    }

    /// Moves whatever can be handled from `raw` to `out`.
    fn process(&mut self) {
        loop {
            match self.mode {
                Mode::Undecided => {
                    let n = self.raw.len().min(PREFACE.len());
                    if self.raw[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                    } else if n == PREFACE.len() {
                        self.out.put(self.raw.split_to(PREFACE.len()));
                        self.mode = Mode::Frames;
                    } else if self.eof {
                        self.mode = Mode::Passthrough;
                    } else {
                        return;
                    }
                }
                Mode::Passthrough => {
                    self.out.put(self.raw.split());
                    return;
                }
                Mode::Refused => {
                    self.raw.clear();
                    return;
                }
                Mode::Frames => {
                    if self.raw.len() < FRAME_HEADER_BYTES {
                        return;
                    }
                    let len = (usize::from(self.raw[0]) << 16)
                        | (usize::from(self.raw[1]) << 8)
                        | usize::from(self.raw[2]);
                    if self.raw.len() < FRAME_HEADER_BYTES + len {
                        return;
                    }
                    let kind = self.raw[3];
                    if self.pending.is_some() && kind != TYPE_CONTINUATION {
                        // HTTP/2 allows nothing between a HEADERS frame and its CONTINUATIONs.
                        self.refuse("a frame inside a header block");
                        continue;
                    }
                    if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
                        self.out.put(self.raw.split_to(FRAME_HEADER_BYTES + len));
                        continue;
                    }
                    let frame = self.raw.split_to(FRAME_HEADER_BYTES + len);
                    if !self.header_frame(&frame) {
                        self.refuse("a header block that cannot be followed");
                    }
                }
            }
        }
    }

    fn refuse(&mut self, why: &'static str) {
        tracing::debug!(why, "closing an HTTP/2 client connection");
        self.raw.clear();
        self.pending = None;
        self.mode = Mode::Refused;
    }

    /// Handles one HEADERS or CONTINUATION frame. Returns false if it cannot be followed.
    fn header_frame(&mut self, frame: &[u8]) -> bool {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut payload = &frame[FRAME_HEADER_BYTES..];
        if kind == TYPE_HEADERS {
            if self.pending.is_some() {
                return false;
            }
            if flags & FLAG_PADDED != 0 {
                let Some((&pad, rest)) = payload.split_first() else {
                    return false;
                };
                if usize::from(pad) > rest.len() {
                    return false;
                }
                payload = &rest[..rest.len() - usize::from(pad)];
            }
            if flags & FLAG_PRIORITY != 0 {
                if payload.len() < 5 {
                    return false;
                }
                payload = &payload[5..];
            }
            self.pending = Some(Pending {
                stream_id,
                end_stream: flags & FLAG_END_STREAM != 0,
                block: payload.to_vec(),
                frames: if self.rewriting {
                    Vec::new()
                } else {
                    frame.to_vec()
                },
            });
        } else {
            let rewriting = self.rewriting;
            match self.pending.as_mut() {
                Some(p) if p.stream_id == stream_id => {
                    p.block.extend_from_slice(payload);
                    if !rewriting {
                        p.frames.extend_from_slice(frame);
                    }
                }
                _ => return false,
            }
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.block.len() > HEADER_BLOCK_BYTES_MAX)
        {
            return false;
        }
        if flags & FLAG_END_HEADERS == 0 {
            return true;
        }
        let pending = self
            .pending
            .take()
            .expect("a header block is being collected");
        if !hpack_well_formed(&pending.block) {
            return false;
        }
        let Ok(mut headers) = self.decoder.decode(&pending.block) else {
            return false;
        };
        let mut repaired = false;
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" {
                repaired |= repair_authority(value);
            }
        }
        if !self.rewriting && !repaired {
            // The first block needs nothing: the connection is handed on as the client sends it.
            self.out.put_slice(&pending.frames);
            self.mode = Mode::Passthrough;
            return true;
        }
        self.rewriting = true;
        let block = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        self.write_block(pending.stream_id, pending.end_stream, &block);
        true
    }

    fn write_block(&mut self, stream_id: u32, end_stream: bool, block: &[u8]) {
        let mut chunks = block.chunks(FRAME_PAYLOAD_BYTES_MAX).peekable();
        let mut first = true;
        if block.is_empty() {
            let flags = FLAG_END_HEADERS | if end_stream { FLAG_END_STREAM } else { 0 };
            put_frame_header(&mut self.out, 0, TYPE_HEADERS, flags, stream_id);
            return;
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let (kind, mut flags) = if first {
                (TYPE_HEADERS, if end_stream { FLAG_END_STREAM } else { 0 })
            } else {
                (TYPE_CONTINUATION, 0)
            };
            if last {
                flags |= FLAG_END_HEADERS;
            }
            put_frame_header(&mut self.out, chunk.len(), kind, flags, stream_id);
            self.out.put_slice(chunk);
            first = false;
        }
    }
}

/// Whether every integer and string length of an HPACK block decodes (RFC 7541 section 5),
/// with the decoder's own limit of five octets per integer. fluke-hpack 0.3 unwraps the
/// integer of a dynamic table size update, so a block ending inside one (`0x3f`) would panic
/// it; such a block is refused here first. The walk consumes exactly what the decoder does for
/// each representation, so it reaches every size update the decoder would.
fn hpack_well_formed(mut block: &[u8]) -> bool {
    while let Some(&first) = block.first() {
        let (prefix_bits, literal) = if first & 0x80 != 0 {
            (7, false)
        } else if first & 0x40 != 0 {
            (6, true)
        } else if first & 0x20 != 0 {
            (5, false)
        } else {
            (4, true)
        };
        let Some((index, mut used)) = hpack_integer(block, prefix_bits) else {
            return false;
        };
        if literal {
            let strings = if index == 0 { 2 } else { 1 };
            for _ in 0..strings {
                let Some((len, n)) = hpack_integer(&block[used..], 7) else {
                    return false;
                };
                match used.checked_add(n).and_then(|u| u.checked_add(len)) {
                    Some(end) if end <= block.len() => used = end,
                    _ => return false,
                }
            }
        }
        block = &block[used..];
    }
    true
}

/// An HPACK integer with a `prefix_bits`-bit prefix: its value and length, or `None` if it is
/// cut short or longer than five octets.
fn hpack_integer(bytes: &[u8], prefix_bits: u32) -> Option<(usize, usize)> {
    let mask = (1u8 << prefix_bits) - 1;
    let first = bytes.first()? & mask;
    if first < mask {
        return Some((usize::from(first), 1));
    }
    let mut value = usize::from(first);
    for (i, b) in bytes.iter().skip(1).take(4).enumerate() {
        value += usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 2));
        }
    }
    None
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    out.put_u8((len >> 16) as u8);
    out.put_u8((len >> 8) as u8);
    out.put_u8(len as u8);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream_id);
}

/// `http://host:port/` → `host:port`; anything without a scheme is left alone. True if the
/// value changed.
fn repair_authority(value: &mut Vec<u8>) -> bool {
    let Some(pos) = value.windows(3).position(|w| w == b"://") else {
        return false;
    };
    let rest = &value[pos + 3..];
    let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
    *value = rest[..end].to_vec();
    true
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::Refused) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "an HTTP/2 header block the authority filter cannot follow",
                )));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::Passthrough) && this.raw.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Ready(Ok(())) => {
                    if chunk_buf.filled().is_empty() {
                        this.eof = true;
                        // Hand on whatever is left unparsed; the server reports the truncation.
                        this.process();
                        let rest = this.raw.split();
                        this.out.put(rest);
                    } else {
                        this.raw.put_slice(chunk_buf.filled());
                        this.process();
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A TCP or unix socket listener whose connections are wrapped in [`AuthorityFix`].
pub struct FixingListener<L> {
    inner: L,
}

impl<L> FixingListener<L> {
    pub fn new(inner: L) -> FixingListener<L> {
        FixingListener { inner }
    }
}

/// Usually EMFILE: back off instead of spinning.
async fn accept_failed(e: io::Error) {
    tracing::warn!(error = %e, "accepting a client connection failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

impl axum::serve::Listener for FixingListener<tokio::net::TcpListener> {
    type Io = AuthorityFix<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (AuthorityFix::new(stream), addr);
                }
                Err(e) => accept_failed(e).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl axum::serve::Listener for FixingListener<tokio::net::UnixListener> {
    type Io = AuthorityFix<tokio::net::UnixStream>;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => return (AuthorityFix::new(stream), addr),
                Err(e) => accept_failed(e).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn headers_frame(block: &[u8], flags: u8, stream_id: u32) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, block.len(), TYPE_HEADERS, flags, stream_id);
        out.put_slice(block);
        out.to_vec()
    }

    async fn filtered(input: Vec<u8>) -> Vec<u8> {
        let mut fix = AuthorityFix::new(std::io::Cursor::new(input));
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.unwrap();
        out
    }

    fn decode_blocks(mut bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut decoder = fluke_hpack::Decoder::new();
        let mut blocks = Vec::new();
        while !bytes.is_empty() {
            let len = (usize::from(bytes[0]) << 16)
                | (usize::from(bytes[1]) << 8)
                | usize::from(bytes[2]);
            if bytes[3] == TYPE_HEADERS {
                blocks.push(decoder.decode(&bytes[9..9 + len]).unwrap());
            }
            bytes = &bytes[9 + len..];
        }
        blocks
    }

    #[tokio::test]
    async fn authority_with_a_scheme_is_reduced_to_host_and_port() {
        let mut client = fluke_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        // A SETTINGS frame passes unchanged.
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        for authority in [&b"http://127.0.0.1:2379"[..], b"127.0.0.1:2379"] {
            let block = client.encode(vec![
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", b"/etcdserverpb.Maintenance/Status"),
                (b":authority", authority),
                (b"content-type", b"application/grpc"),
            ]);
            input.extend(headers_frame(&block, FLAG_END_HEADERS, 1));
        }
        let out = filtered(input).await;
        let blocks = decode_blocks(&out);
        assert_eq!(blocks.len(), 2);
        for block in blocks {
            let authority = block.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"127.0.0.1:2379");
            assert!(
                block
                    .iter()
                    .any(|(n, v)| n == b":path" && v == b"/etcdserverpb.Maintenance/Status")
            );
        }
    }

    /// A connection whose first header block carries a plain authority is handed on byte for
    /// byte, without HPACK work, whatever comes later on it.
    #[tokio::test]
    async fn a_connection_that_needs_no_repair_passes_unchanged() {
        let mut client = fluke_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        for (stream, authority) in [(1, &b"127.0.0.1:2379"[..]), (3, b"127.0.0.1:2379")] {
            let block = client.encode(vec![
                (&b":method"[..], &b"POST"[..]),
                (b":path", b"/etcdserverpb.KV/Put"),
                (b":authority", authority),
            ]);
            // Padded, so a re-encoding would show.
            let mut payload = vec![2];
            payload.extend_from_slice(&block);
            payload.extend_from_slice(&[0, 0]);
            input.extend(headers_frame(
                &payload,
                FLAG_END_HEADERS | FLAG_PADDED,
                stream,
            ));
        }
        input.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 0, 1, 7]);
        assert_eq!(filtered(input.clone()).await, input);
    }

    #[tokio::test]
    async fn http1_passes_unchanged() {
        let request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(filtered(request.clone()).await, request);
    }

    #[test]
    fn repair_keeps_plain_authorities() {
        for (input, want) in [
            ("http://127.0.0.1:2379", "127.0.0.1:2379"),
            ("https://etcd-0.etcd:2379/", "etcd-0.etcd:2379"),
            ("127.0.0.1:2379", "127.0.0.1:2379"),
        ] {
            let mut v = input.as_bytes().to_vec();
            repair_authority(&mut v);
            assert_eq!(v, want.as_bytes());
        }
    }

    /// Properties of the filter: random header lists with every `:authority` form, HEADERS split
    /// into CONTINUATION frames at random points, padding and priority, HPACK dynamic table size
    /// updates, other frames between blocks, the input handed over in random pieces. The header
    /// lists the server decodes equal the client's but for the repaired authority, other frames
    /// pass byte for byte and in order, and nothing panics. 256 cases each: about a second in
    /// release.
    mod props {
        use std::io;
        use std::pin::Pin;
        use std::task::{Context, Poll};

        use proptest::collection::vec;
        use proptest::prelude::*;
        use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

        use super::*;

        /// Hands out `data` in pieces of the given sizes (then whatever is left).
        struct Pieces {
            data: Vec<u8>,
            sizes: Vec<usize>,
            at: usize,
        }

        impl AsyncRead for Pieces {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let size = if self.sizes.is_empty() {
                    usize::MAX
                } else {
                    self.sizes.remove(0).max(1)
                };
                let n = size.min(buf.remaining()).min(self.data.len() - self.at);
                buf.put_slice(&self.data[self.at..self.at + n]);
                self.at += n;
                Poll::Ready(Ok(()))
            }
        }

        fn run(data: Vec<u8>, sizes: Vec<usize>) -> (Vec<u8>, io::Result<()>) {
            let mut fix = AuthorityFix::new(Pieces { data, sizes, at: 0 });
            let mut out = Vec::new();
            let result = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(fix.read_to_end(&mut out))
                .map(|_| ());
            (out, result)
        }

        #[derive(Debug, Clone)]
        struct Block {
            headers: Vec<(Vec<u8>, Vec<u8>)>,
            stream_id: u32,
            end_stream: bool,
            /// Sizes of the HEADERS payload and each CONTINUATION, the last taking the rest.
            splits: Vec<usize>,
            padding: Option<u8>,
            priority: bool,
            table_size: Option<usize>,
        }

        #[derive(Debug, Clone)]
        enum Event {
            Block(Block),
            /// DATA, SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, GOAWAY or an unknown type.
            Frame(u8, u8, u32, Vec<u8>),
        }

        fn authority() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(b"127.0.0.1:2379".to_vec()),
                "(http|https|unix|unixs)://[a-z0-9.-]{0,12}(:[0-9]{1,5})?(/[a-z]{0,4})?"
                    .prop_map(String::into_bytes),
                "[a-z0-9.:\\[\\]-]{0,20}".prop_map(String::into_bytes),
                "[a-z:/]{0,12}".prop_map(String::into_bytes),
                vec(any::<u8>(), 0..20),
            ]
        }

        fn header() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
            prop_oneof![
                (Just(b":authority".to_vec()), authority()),
                (
                    prop_oneof![
                        Just(b":method".to_vec()),
                        Just(b":path".to_vec()),
                        Just(b":scheme".to_vec()),
                        Just(b"content-type".to_vec()),
                        Just(b"te".to_vec()),
                        Just(b"authorization".to_vec()),
                        "[a-z-]{1,12}".prop_map(String::into_bytes),
                    ],
                    prop_oneof![
                        Just(b"POST".to_vec()),
                        Just(b"application/grpc".to_vec()),
                        vec(any::<u8>(), 0..40),
                        vec(Just(b'x'), 0..3000),
                    ],
                ),
            ]
        }

        fn block() -> impl Strategy<Value = Block> {
            (
                vec(header(), 0..8),
                prop_oneof![Just(1u32), Just(3), 1..=0x7fff_ffffu32],
                any::<bool>(),
                vec(0..200usize, 0..4),
                proptest::option::of(any::<u8>()),
                any::<bool>(),
                proptest::option::of(prop_oneof![Just(0usize), Just(4096), 0..4096usize]),
            )
                .prop_map(
                    |(headers, stream_id, end_stream, splits, padding, priority, table_size)| {
                        // A block holding only a size update ends in one, which the decoder
                        // refuses (and a request without headers is malformed anyway).
                        let table_size = table_size.filter(|_| !headers.is_empty());
                        Block {
                            headers,
                            stream_id,
                            end_stream,
                            splits,
                            padding,
                            priority,
                            table_size,
                        }
                    },
                )
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                3 => block().prop_map(Event::Block),
                1 => (
                    prop_oneof![Just(0u8), Just(3), Just(4), Just(6), Just(7), Just(8), 10..=255u8],
                    any::<u8>(),
                    any::<u32>(),
                    vec(any::<u8>(), 0..64),
                )
                    .prop_map(|(kind, flags, stream, payload)| Event::Frame(kind, flags, stream, payload)),
            ]
        }

        fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
            let mut header = BytesMut::new();
            put_frame_header(&mut header, payload.len(), kind, flags, stream_id);
            out.extend_from_slice(&header);
            out.extend_from_slice(payload);
        }

        /// The client's bytes for `events`, and what the server must decode from the filter's
        /// output: each block's header list with the authority repaired, other frames as sent.
        fn client_bytes(events: &[Event]) -> (Vec<u8>, Vec<Event>) {
            let mut encoder = fluke_hpack::Encoder::new();
            let mut bytes = PREFACE.to_vec();
            let mut want = Vec::new();
            for event in events {
                match event {
                    Event::Frame(kind, flags, stream, payload) => {
                        frame(&mut bytes, *kind, *flags, *stream, payload);
                        want.push(event.clone());
                    }
                    Event::Block(b) => {
                        let mut block = Vec::new();
                        if let Some(size) = b.table_size {
                            let mut update = fluke_hpack::encoder::encode_integer(size, 5);
                            update[0] |= 0x20;
                            block.extend(update);
                            encoder.set_max_table_size(size);
                        }
                        block.extend(
                            encoder.encode(
                                b.headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
                            ),
                        );
                        let mut first = Vec::new();
                        let mut flags = if b.end_stream { FLAG_END_STREAM } else { 0 };
                        if let Some(pad) = b.padding {
                            flags |= FLAG_PADDED;
                            first.push(pad);
                        }
                        if b.priority {
                            flags |= FLAG_PRIORITY;
                            first.extend_from_slice(&[0x80, 0, 0, 1, 16]);
                        }
                        let mut rest = &block[..];
                        let mut pieces = Vec::new();
                        for split in &b.splits {
                            let n = (*split).min(rest.len());
                            pieces.push(&rest[..n]);
                            rest = &rest[n..];
                        }
                        pieces.push(rest);
                        let last = pieces.len() - 1;
                        for (i, piece) in pieces.iter().enumerate() {
                            let end = if i == last { FLAG_END_HEADERS } else { 0 };
                            if i == 0 {
                                let mut payload = first.clone();
                                payload.extend_from_slice(piece);
                                if let Some(pad) = b.padding {
                                    payload.extend(std::iter::repeat_n(0, usize::from(pad)));
                                }
                                frame(&mut bytes, TYPE_HEADERS, flags | end, b.stream_id, &payload);
                            } else {
                                frame(&mut bytes, TYPE_CONTINUATION, end, b.stream_id, piece);
                            }
                        }
                        let mut headers = b.headers.clone();
                        // The model of the repair: a scheme's `://` and anything from the
                        // first `/` after it go.
                        for (name, value) in &mut headers {
                            let at = value.windows(3).position(|w| w == b"://");
                            if let (true, Some(at)) = (name == b":authority", at) {
                                let host = &value[at + 3..];
                                let end =
                                    host.iter().position(|c| *c == b'/').unwrap_or(host.len());
                                *value = host[..end].to_vec();
                            }
                        }
                        want.push(Event::Block(Block {
                            headers,
                            ..b.clone()
                        }));
                    }
                }
            }
            (bytes, want)
        }

        /// The filter's output as the server reads it: checks every frame's shape and decodes
        /// each header block with one decoder for the connection.
        fn server_view(out: &[u8]) -> Result<Vec<Event>, TestCaseError> {
            prop_assert!(out.starts_with(PREFACE));
            let mut bytes = &out[PREFACE.len()..];
            let mut decoder = fluke_hpack::Decoder::new();
            let mut events = Vec::new();
            let mut pending: Option<(u32, bool, Vec<u8>)> = None;
            while !bytes.is_empty() {
                prop_assert!(bytes.len() >= FRAME_HEADER_BYTES);
                let len = (usize::from(bytes[0]) << 16)
                    | (usize::from(bytes[1]) << 8)
                    | usize::from(bytes[2]);
                let (kind, flags) = (bytes[3], bytes[4]);
                let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
                prop_assert!(bytes.len() >= FRAME_HEADER_BYTES + len);
                let payload = &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
                bytes = &bytes[FRAME_HEADER_BYTES + len..];
                if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
                    prop_assert!(pending.is_none(), "a frame inside a header block");
                    events.push(Event::Frame(kind, flags, stream, payload.to_vec()));
                    continue;
                }
                prop_assert!(len <= FRAME_PAYLOAD_BYTES_MAX);
                prop_assert_eq!(flags & (FLAG_PADDED | FLAG_PRIORITY), 0);
                match pending.as_mut() {
                    None => {
                        prop_assert_eq!(kind, TYPE_HEADERS);
                        pending = Some((stream, flags & FLAG_END_STREAM != 0, payload.to_vec()));
                    }
                    Some((id, _, block)) => {
                        prop_assert_eq!(kind, TYPE_CONTINUATION);
                        prop_assert_eq!(*id, stream);
                        block.extend_from_slice(payload);
                    }
                }
                if flags & FLAG_END_HEADERS != 0 {
                    let (stream_id, end_stream, block) = pending.take().unwrap();
                    let headers = decoder.decode(&block).map_err(|e| {
                        TestCaseError::fail(format!("the server cannot decode a block: {e:?}"))
                    })?;
                    events.push(Event::Block(Block {
                        headers,
                        stream_id,
                        end_stream,
                        splits: Vec::new(),
                        padding: None,
                        priority: false,
                        table_size: None,
                    }));
                }
            }
            prop_assert!(pending.is_none(), "the output ends inside a header block");
            Ok(events)
        }

        fn same(got: &[Event], want: &[Event]) -> Result<(), TestCaseError> {
            prop_assert_eq!(got.len(), want.len());
            for (got, want) in got.iter().zip(want) {
                match (got, want) {
                    (Event::Frame(k1, f1, s1, p1), Event::Frame(k2, f2, s2, p2)) => {
                        prop_assert_eq!((k1, f1, s1, p1), (k2, f2, s2, p2));
                    }
                    (Event::Block(g), Event::Block(w)) => {
                        prop_assert_eq!(&g.headers, &w.headers);
                        prop_assert_eq!(g.stream_id, w.stream_id & 0x7fff_ffff);
                        prop_assert_eq!(g.end_stream, w.end_stream);
                    }
                    _ => prop_assert!(false, "got {:?}, want {:?}", got, want),
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn the_server_sees_the_client_headers_with_the_authority_repaired(
                events in vec(event(), 0..6),
                sizes in vec(1..64usize, 0..40),
            ) {
                let (bytes, want) = client_bytes(&events);
                let (out, result) = run(bytes.clone(), sizes);
                prop_assert!(result.is_ok(), "{:?}", result);
                let first_repaired = events.iter().find_map(|e| match e {
                    Event::Block(b) => Some(b),
                    Event::Frame(..) => None,
                }).is_some_and(|b| b.headers.iter().any(|(n, v)| {
                    n == b":authority" && v.windows(3).any(|w| w == b"://")
                }));
                if first_repaired {
                    same(&server_view(&out)?, &want)?;
                } else {
                    // A connection whose first block needs nothing passes unchanged.
                    prop_assert_eq!(out, bytes);
                }
            }

            /// Any byte changed, cut or inserted after the preface: no panic, and what reaches
            /// the server is whole frames it can decode, in order, however the input ends.
            #[test]
            fn damaged_streams_are_handed_on_whole_or_refused(
                events in vec(event(), 1..5),
                flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
                sizes in vec(1..64usize, 0..40),
            ) {
                let (mut bytes, _) = client_bytes(&events);
                let len = bytes.len() - PREFACE.len();
                for (at, byte) in flips {
                    bytes[PREFACE.len() + at.index(len)] = byte;
                }
                let (out, result) = run(bytes.clone(), sizes);
                if result.is_ok() && out != bytes {
                    // Not refused and re-encoded: every block the server sees must decode with
                    // one decoder. A trailing partial frame (a cut length) is the server's to
                    // report, as is anything on a connection handed on unchanged.
                    let complete = complete_frames(&out);
                    server_view(&out[..complete])?;
                }
            }

            #[test]
            fn random_bytes_after_the_preface_never_panic(
                tail in vec(any::<u8>(), 0..512),
                sizes in vec(1..64usize, 0..20),
            ) {
                let mut bytes = PREFACE.to_vec();
                bytes.extend(tail);
                let _ = run(bytes, sizes);
            }

            /// Random bytes as the header block of a well-formed HEADERS frame: decoded and
            /// re-encoded, or refused, never a panic.
            #[test]
            fn random_header_blocks_never_panic(
                block in vec(any::<u8>(), 0..64),
                sizes in vec(1..64usize, 0..8),
            ) {
                let mut bytes = PREFACE.to_vec();
                frame(&mut bytes, TYPE_HEADERS, FLAG_END_HEADERS, 1, &block);
                let (out, result) = run(bytes.clone(), sizes);
                if result.is_ok() && out != bytes {
                    server_view(&out)?;
                }
            }

            /// A dynamic table size update above HTTP/2's default is refused, not obeyed.
            #[test]
            fn table_size_updates_above_the_default_are_refused(size in 4097..1usize << 30) {
                let mut update = fluke_hpack::encoder::encode_integer(size, 5);
                update[0] |= 0x20;
                let mut block = update;
                block.extend(fluke_hpack::Encoder::new().encode([(&b":method"[..], &b"GET"[..])]));
                let mut bytes = PREFACE.to_vec();
                frame(&mut bytes, TYPE_HEADERS, FLAG_END_HEADERS, 1, &block);
                let (out, result) = run(bytes, Vec::new());
                prop_assert!(result.is_err());
                prop_assert_eq!(out, PREFACE.to_vec());
            }
        }

        /// Found by `random_header_blocks_never_panic`: a block ending inside the integer of a
        /// table size update panicked the HPACK decoder (an unwrap in fluke-hpack 0.3.1).
        #[test]
        fn a_cut_table_size_update_is_refused_not_a_panic() {
            for block in [
                &[0x3f][..],
                &[0x3f, 0xff],
                &[0x3f, 0xff, 0xff, 0xff, 0xff, 0x01],
            ] {
                let mut bytes = PREFACE.to_vec();
                frame(&mut bytes, TYPE_HEADERS, FLAG_END_HEADERS, 1, block);
                let (out, result) = run(bytes, Vec::new());
                assert!(result.is_err(), "{block:?}");
                assert_eq!(out, PREFACE);
            }
        }

        /// The length of the whole frames at the start of `out` (after the preface).
        fn complete_frames(out: &[u8]) -> usize {
            let mut at = PREFACE.len().min(out.len());
            while out.len() - at >= FRAME_HEADER_BYTES {
                let len = (usize::from(out[at]) << 16)
                    | (usize::from(out[at + 1]) << 8)
                    | usize::from(out[at + 2]);
                if out.len() - at - FRAME_HEADER_BYTES < len {
                    break;
                }
                at += FRAME_HEADER_BYTES + len;
            }
            at
        }
    }
}
