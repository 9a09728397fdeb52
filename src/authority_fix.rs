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
//! Every header block is decoded (keeping the client's HPACK table in step) and re-encoded with
//! our own encoder, so the server's HPACK decoder only ever sees our encoding.

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
/// A header block larger than this is refused (the server's own limit is far lower).
const HEADER_BLOCK_BYTES_MAX: usize = 1 << 20;

enum Mode {
    /// Not yet enough bytes to tell HTTP/2 from HTTP/1.
    Undecided,
    /// HTTP/2: frames are parsed and HEADERS blocks rewritten.
    Frames,
    /// HTTP/1, or a connection we could not follow: bytes pass unchanged.
    Passthrough,
}

struct Pending {
    stream_id: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// Wraps a client connection; see the module documentation.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    raw: BytesMut,
    out: BytesMut,
    eof: bool,
    pending: Option<Pending>,
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
            decoder: fluke_hpack::Decoder::new(),
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
                    if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
                        self.out.put(self.raw.split_to(FRAME_HEADER_BYTES + len));
                        continue;
                    }
                    let frame = self.raw.split_to(FRAME_HEADER_BYTES + len);
                    if !self.header_frame(&frame) {
                        // Not something we can follow: hand it on as it is and stop
                        // interpreting; the server will judge the connection itself.
                        self.out.put(frame);
                        self.mode = Mode::Passthrough;
                    }
                }
            }
        }
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
            });
        } else {
            match self.pending.as_mut() {
                Some(p) if p.stream_id == stream_id => p.block.extend_from_slice(payload),
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
        let Ok(mut headers) = self.decoder.decode(&pending.block) else {
            return false;
        };
        for (name, value) in headers.iter_mut() {
            if name.as_slice() == b":authority" {
                repair_authority(value);
            }
        }
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

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    out.put_u8((len >> 16) as u8);
    out.put_u8((len >> 8) as u8);
    out.put_u8(len as u8);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream_id);
}

/// `http://host:port/` → `host:port`; anything without a scheme is left alone.
fn repair_authority(value: &mut Vec<u8>) {
    let Some(pos) = value.windows(3).position(|w| w == b"://") else {
        return;
    };
    let rest = &value[pos + 3..];
    let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
    *value = rest[..end].to_vec();
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
}
