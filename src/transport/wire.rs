//! The server's side of the WebSocket wire, for writing (RFC 6455 §5.2):
//! server frames are unmasked, so a frame is a 2-10 byte header followed by
//! the payload as it is. That lets a session write the shared frame bytes of
//! an event straight from its queue: header and payload go to the kernel in
//! one `writev` with the frames queued behind them, and the connection keeps
//! no write buffer of its own between writes. Reading (masking, fragments,
//! limits, UTF-8) stays with tungstenite.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::application::outbox::{Next, Outbox};
use crate::domain::protocol::CloseCode;

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
/// Frames gathered into one `writev`: two slices each, well under IOV_MAX.
const BATCH_FRAMES: usize = 64;

/// A frame header: FIN set, no mask, the shortest length encoding.
#[derive(Clone, Copy)]
struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    fn new(opcode: u8, payload_len: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode;
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if let Ok(short) = u16::try_from(payload_len) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        Self { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A frame on its way out: once its first byte is written it must be
/// finished, whatever happens to the queue it came from.
struct Outgoing {
    header: Header,
    payload: Bytes,
    /// Bytes of header + payload already written.
    written: usize,
    /// The queue entry it came from, removed once it is all written.
    seq: Option<u64>,
}

impl Outgoing {
    fn new(opcode: u8, payload: Bytes, seq: Option<u64>) -> Self {
        Self { header: Header::new(opcode, payload.len()), payload, written: 0, seq }
    }

    fn len(&self) -> usize {
        usize::from(self.header.len) + self.payload.len()
    }

    /// The unwritten rest, as at most two slices.
    fn remaining(&self) -> [&[u8]; 2] {
        let header = self.header.as_slice();
        if self.written < header.len() {
            [&header[self.written..], &self.payload]
        } else {
            [&[], &self.payload[self.written - header.len()..]]
        }
    }
}

/// What one write step did.
#[derive(Debug, Default)]
pub struct Written {
    pub bytes: usize,
    /// Queue entries fully written, and so removed from the outbox.
    pub frames: usize,
    /// When each event among them was routed, for the latency histogram.
    pub routed_at: Vec<std::time::Instant>,
}

/// The write half of a client's socket, with the frames started but not
/// finished.
pub struct WireWriter {
    half: OwnedWriteHalf,
    /// Control frames (pings, pongs) and any frame begun but not finished, in
    /// the order they go out; queued events follow them.
    started: VecDeque<Outgoing>,
    batch: Vec<Next>,
}

impl WireWriter {
    pub fn new(half: OwnedWriteHalf) -> Self {
        Self { half, started: VecDeque::new(), batch: Vec::new() }
    }

    pub fn queue_ping(&mut self) {
        self.queue_control(Outgoing::new(PING, Bytes::new(), None));
    }

    pub fn queue_pong(&mut self, payload: Bytes) {
        self.queue_control(Outgoing::new(PONG, payload, None));
    }

    /// Control frames go ahead of every frame not yet begun: a ping behind a
    /// long backlog would reach even a reading client too late for its pong.
    fn queue_control(&mut self, control: Outgoing) {
        let first_unbegun = self.started.iter().position(|outgoing| outgoing.written == 0);
        self.started.insert(first_unbegun.unwrap_or(self.started.len()), control);
    }

    /// Whether anything waits for the socket, besides the outbox's queue.
    pub fn has_started(&self) -> bool {
        !self.started.is_empty()
    }

    /// Resolves when the socket may take bytes. Cancel-safe.
    pub async fn writable(&self) -> io::Result<()> {
        self.half.writable().await
    }

    /// Writes as much as the socket takes now, without waiting: started
    /// frames first, then the outbox's queue, many frames per `writev`.
    pub fn write_ready(&mut self, outbox: &Outbox) -> io::Result<Written> {
        let mut written = Written::default();
        loop {
            if self.started.is_empty() {
                outbox.fill_batch(&mut self.batch, BATCH_FRAMES);
                let frames = self.batch.drain(..);
                self.started
                    .extend(frames.map(|next| Outgoing::new(TEXT, next.frame.utf8_bytes().clone(), Some(next.seq))));
                if self.started.is_empty() {
                    return Ok(written);
                }
            }
            let n = self.write_started()?;
            if n == 0 {
                return Ok(written);
            }
            written.bytes += n;
            // Out of the queue before the next batch is taken from it.
            advance(&mut self.started, n, |seq| {
                written.frames += 1;
                written.routed_at.extend(outbox.pop_written(seq));
            });
        }
    }

    /// One `writev` of the started frames; WouldBlock is no error.
    fn write_started(&mut self) -> io::Result<usize> {
        let slices: Vec<IoSlice<'_>> = self
            .started
            .iter()
            .flat_map(Outgoing::remaining)
            .filter(|slice| !slice.is_empty())
            .map(IoSlice::new)
            .collect();
        match self.half.try_write_vectored(&slices) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
            result => result,
        }
    }

    /// Writes a close frame after the frame being written, if one is (a frame
    /// cannot be abandoned midway), waiting for the socket as needed.
    pub async fn close(&mut self, code: CloseCode) -> io::Result<()> {
        self.started.retain(|outgoing| outgoing.written > 0);
        let mut payload = code.code.to_be_bytes().to_vec();
        payload.extend_from_slice(code.reason.as_bytes());
        self.started.push_back(Outgoing::new(CLOSE, Bytes::from(payload), None));
        while !self.started.is_empty() {
            self.half.writable().await?;
            let n = self.write_started()?;
            // The queue is left as it is: the session ends with this close.
            advance(&mut self.started, n, |_| {});
        }
        Ok(())
    }
}

/// Accounts `n` written bytes to the frames, front first: finished frames
/// leave (`finished` is told their queue entries), a half-written one stays
/// at the front.
fn advance(started: &mut VecDeque<Outgoing>, mut n: usize, mut finished: impl FnMut(u64)) {
    while let Some(front) = started.front_mut() {
        let left = front.len() - front.written;
        if n < left {
            front.written += n;
            return;
        }
        n -= left;
        if let Some(seq) = started.pop_front().and_then(|done| done.seq) {
            finished(seq);
        }
    }
}

/// The read half of a client's socket, as tungstenite's reader wants it:
/// what tungstenite would write by itself (its automatic replies) is
/// dropped, since the session answers pings and closes on its own writer.
pub struct ReadOnly(pub OwnedReadHalf);

impl AsyncRead for ReadOnly {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadOnly {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        assert_eq!(Header::new(TEXT, 5).as_slice(), &[0x81, 5]);
        assert_eq!(Header::new(PING, 0).as_slice(), &[0x89, 0]);
        assert_eq!(Header::new(TEXT, 126).as_slice(), &[0x81, 126, 0, 126]);
        assert_eq!(Header::new(TEXT, 65_535).as_slice(), &[0x81, 126, 0xff, 0xff]);
        assert_eq!(Header::new(CLOSE, 65_536).as_slice(), &[0x88, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn progress_is_counted_across_frames_and_a_half_written_frame_stays() {
        let outgoing = |payload: &'static [u8], seq| Outgoing::new(TEXT, Bytes::from_static(payload), Some(seq));
        let mut started = VecDeque::from([outgoing(b"abc", 1), outgoing(b"defgh", 2), outgoing(b"ij", 3)]);
        let mut advanced = |n| {
            let mut done = Vec::new();
            advance(&mut started, n, |seq| done.push(seq));
            done
        };
        assert_eq!(advanced(6), vec![1], "5 bytes for the first frame, 1 into the second's header");
        assert_eq!(advanced(6), vec![2]);
        assert_eq!(advanced(3), Vec::<u64>::new(), "the last frame's header and 1 payload byte");
        assert_eq!(advanced(1), vec![3]);
    }
}
