//! Sockets read in large chunks without a large buffer per socket, and a WebSocket's switch
//! sent with its first frame.
//!
//! tungstenite reads at most its read buffer's size per call, and that buffer lives as long as
//! the socket: small (256 bytes) so that idle sockets stay cheap, which alone would cost a
//! signaling message of ~700 bytes three `read` calls. Under it, each read goes to the kernel
//! through one scratch buffer per thread, and what the caller had no room for is kept for its
//! next read in a spare buffer allocated only while some is left. One `read` call per arrival,
//! however small the caller's buffer; nothing held while the socket idles.
//!
//! The handshake's `101 Switching Protocols` is held back until the socket's first frame (the
//! session's `welcome`, or a close) and leaves with it in one write. A client can do nothing with
//! the switch before its welcome, and on loopback or a LAN every segment costs the sender the
//! receiver's whole TCP path and a wake-up: one segment instead of two per accepted socket.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one `read` call takes; also the most a socket can hold spare.
const CHUNK: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
}

/// The start of the response that turns the connection into a WebSocket. Nothing else written
/// on a connection starts so: other responses carry other statuses, and a WebSocket frame's
/// first byte is never `H` (that would be a close with RSV1 set, which nothing here negotiates).
const SWITCHING: &[u8] = b"HTTP/1.1 101 ";

/// A stream read through the thread's scratch buffer.
pub struct ReadAhead<S> {
    inner: S,
    /// Allocated only while something is held: a busy socket's leftover read, or the switch.
    held: Option<Box<Held>>,
}

#[derive(Default)]
struct Held {
    /// Bytes read that the caller had no room for, with how many of them it has taken since.
    spare: Vec<u8>,
    taken: usize,
    /// The `101` response, not yet written.
    switching: Vec<u8>,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead { inner, held: None }
    }

    /// How many bytes are held for the next read (zero while idle).
    #[cfg(test)]
    fn spare_len(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.spare.len() - h.taken)
    }

    fn held_mut(&mut self) -> &mut Held {
        self.held.get_or_insert_with(Box::default)
    }

    /// Frees the box once neither part holds anything.
    fn release_if_empty(&mut self) {
        if self.held.as_ref().is_some_and(|h| h.spare.is_empty() && h.switching.is_empty()) {
            self.held = None;
        }
    }

    fn switching(&self) -> bool {
        self.held.as_ref().is_some_and(|h| !h.switching.is_empty())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(held) = this.held.as_mut().filter(|h| !h.spare.is_empty()) {
            let n = (held.spare.len() - held.taken).min(buf.remaining());
            buf.put_slice(&held.spare[held.taken..held.taken + n]);
            held.taken += n;
            if held.taken == held.spare.len() {
                held.spare = Vec::new();
                held.taken = 0;
                this.release_if_empty();
            }
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() >= CHUNK {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        SCRATCH.with_borrow_mut(|scratch| {
            let mut chunk = ReadBuf::new(scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let read = chunk.filled();
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read[..n]);
            if n < read.len() {
                this.held_mut().spare = read[n..].to_vec();
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> ReadAhead<S> {
    /// Writes out the held switch, before anything else.
    fn poll_switching(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(held) = self.held.as_mut().filter(|h| !h.switching.is_empty()) {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &held.switching))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            held.switching.drain(..n);
            self.release_if_empty();
        }
        Poll::Ready(Ok(()))
    }

    /// Holds a `101` response instead of writing it; `None` for anything else.
    fn hold_switching(&mut self, bufs: &[io::IoSlice<'_>]) -> Option<usize> {
        if self.switching() || !bufs.first().is_some_and(|b| b.starts_with(SWITCHING)) {
            return None;
        }
        let switching = &mut self.held_mut().switching;
        for b in bufs {
            switching.extend_from_slice(b);
        }
        Some(switching.len())
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.held.is_none() && !buf.starts_with(SWITCHING) {
            return Pin::new(&mut self.get_mut().inner).poll_write(cx, buf);
        }
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(n) = this.hold_switching(bufs) {
            return Poll::Ready(Ok(n));
        }
        if let Some(held) = this.held.as_mut().filter(|h| !h.switching.is_empty()) {
            // The first frame: the switch and it in one write (a short write finishes the
            // switch alone first).
            let pending = held.switching.len();
            let mut both = Vec::with_capacity(bufs.len() + 1);
            both.push(io::IoSlice::new(&held.switching));
            both.extend_from_slice(bufs);
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &both))?;
            if n >= pending {
                held.switching = Vec::new();
                this.release_if_empty();
                if n > pending {
                    return Poll::Ready(Ok(n - pending));
                }
            } else {
                held.switching.drain(..n);
                ready!(this.poll_switching(cx))?;
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    /// While the switch is held, a flush leaves it held: it goes with the first frame (hyper
    /// flushes the response before handing the socket over; the session writes its first frame
    /// right after, and flushes that).
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.switching() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_switching(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// A listener whose connections are read ahead.
pub struct ReadAheadListener<L>(pub L);

impl<L: Listener> Listener for ReadAheadListener<L> {
    type Io = ReadAhead<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (ReadAhead::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_take_one_arrival_in_order_and_hold_nothing_once_it_is_taken() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut server = ReadAhead::new(server);
        let sent: Vec<u8> = (0..700u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 256];
        let n = server.read(&mut small).await.unwrap();
        got.extend_from_slice(&small[..n]);
        assert_eq!(n, 256);
        assert_eq!(server.spare_len(), 700 - 256, "the rest of the arrival is held");
        // Written after the first read: it can only come after what was held.
        client.write_all(b"next").await.unwrap();
        while got.len() < 704 {
            let n = server.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(&got[..700], &sent[..]);
        assert_eq!(&got[700..], b"next");
        assert_eq!(server.spare_len(), 0);
        assert!(server.held.is_none(), "an idle socket holds no spare buffer");
    }

    #[tokio::test]
    async fn an_arrival_larger_than_a_chunk_is_read_whole_and_the_end_of_the_stream_is_seen() {
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let mut server = ReadAhead::new(server);
        let sent: Vec<u8> = (0..3 * CHUNK as u32 + 17).map(|i| (i % 253) as u8).collect();
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        let mut small = [0u8; 300];
        loop {
            let n = server.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert!(server.held.is_none());
    }

    /// Records each write call; takes at most `limit` bytes per call.
    struct Wire {
        writes: Vec<Vec<u8>>,
        limit: usize,
    }

    impl Wire {
        fn new(limit: usize) -> Wire {
            Wire { writes: Vec::new(), limit }
        }

        fn sent(&self) -> Vec<u8> {
            self.writes.concat()
        }
    }

    impl AsyncWrite for Wire {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let mut call: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            call.truncate(this.limit);
            let n = call.len();
            this.writes.push(call);
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    const SWITCH_HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n";
    const SWITCH_END: &[u8] = b"\r\n";

    /// Writes the switch the way hyper does (vectored, then a flush), as a server would.
    async fn switch(socket: &mut ReadAhead<Wire>) {
        let parts = [io::IoSlice::new(SWITCH_HEAD), io::IoSlice::new(SWITCH_END)];
        let n = socket.write_vectored(&parts).await.unwrap();
        assert_eq!(n, SWITCH_HEAD.len() + SWITCH_END.len(), "the whole switch is taken");
        socket.flush().await.unwrap();
    }

    #[tokio::test]
    async fn the_switch_waits_for_the_first_frame_and_leaves_with_it_in_one_write() {
        let mut socket = ReadAhead::new(Wire::new(usize::MAX));
        switch(&mut socket).await;
        assert!(socket.inner.writes.is_empty(), "a flush does not send the switch alone");
        socket.write_all(b"\x81\x07welcome").await.unwrap();
        socket.flush().await.unwrap();
        assert_eq!(socket.inner.writes, vec![[SWITCH_HEAD, SWITCH_END, b"\x81\x07welcome"].concat()]);
        assert!(socket.held.is_none(), "nothing is held once the switch is out");
        socket.write_all(b"\x81\x01x").await.unwrap();
        assert_eq!(socket.inner.writes.len(), 2, "later frames go straight through");
    }

    #[tokio::test]
    async fn short_writes_still_send_the_switch_whole_and_first() {
        let mut socket = ReadAhead::new(Wire::new(7));
        switch(&mut socket).await;
        let frame: Vec<u8> = (0..40u8).collect();
        socket.write_all(&frame).await.unwrap();
        assert_eq!(socket.inner.sent(), [SWITCH_HEAD, SWITCH_END, &frame].concat());
        assert!(socket.held.is_none());
    }

    #[tokio::test]
    async fn a_socket_shut_down_before_any_frame_still_sends_the_switch() {
        let mut socket = ReadAhead::new(Wire::new(usize::MAX));
        switch(&mut socket).await;
        socket.shutdown().await.unwrap();
        assert_eq!(socket.inner.sent(), [SWITCH_HEAD, SWITCH_END].concat());
    }

    #[tokio::test]
    async fn other_responses_are_written_at_once() {
        let mut socket = ReadAhead::new(Wire::new(usize::MAX));
        let parts = [io::IoSlice::new(b"HTTP/1.1 401 Unauthorized\r\n"), io::IoSlice::new(SWITCH_END)];
        let n = socket.write_vectored(&parts).await.unwrap();
        assert_eq!(socket.inner.writes.len(), 1, "written at once, not held");
        assert_eq!(socket.inner.sent().len(), n);
        assert!(socket.held.is_none());
    }
}
