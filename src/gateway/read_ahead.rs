//! Sockets read in large chunks without a large buffer per socket.
//!
//! tungstenite reads at most its read buffer's size per call, and that buffer lives as long as
//! the socket: small (256 bytes) so that idle sockets stay cheap, which alone would cost a
//! signaling message of ~700 bytes three `read` calls. Under it, each read goes to the kernel
//! through one scratch buffer per thread, and what the caller had no room for is kept for its
//! next read in a spare buffer allocated only while some is left. One `read` call per arrival,
//! however small the caller's buffer; nothing held while the socket idles.

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

/// A stream read through the thread's scratch buffer.
pub struct ReadAhead<S> {
    inner: S,
    /// Bytes read that the caller had no room for, with how many of them it has taken since.
    spare: Option<Box<(Vec<u8>, usize)>>,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead { inner, spare: None }
    }

    /// How many bytes are held for the next read (zero while idle).
    #[cfg(test)]
    fn spare_len(&self) -> usize {
        self.spare.as_ref().map_or(0, |s| s.0.len() - s.1)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(spare) = &mut this.spare {
            let (bytes, taken) = &mut **spare;
            let n = (bytes.len() - *taken).min(buf.remaining());
            buf.put_slice(&bytes[*taken..*taken + n]);
            *taken += n;
            if *taken == bytes.len() {
                this.spare = None;
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
                this.spare = Some(Box::new((read[n..].to_vec(), 0)));
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
        assert!(server.spare.is_none(), "an idle socket holds no spare buffer");
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
        assert!(server.spare.is_none());
    }
}
