//! The server's side of the WebSocket wire, for writing (RFC 6455 §5.2):
//! server frames are unmasked, so a frame is a 2-10 byte header followed by
//! the payload as it is. That lets a session write the shared frame bytes of
//! an event straight from its queue: header and payload go to the kernel in
//! one gathered write with the frames queued behind them, and the connection keeps
//! no write buffer of its own between writes. The shard's loop and the
//! client's writer task write through the same [`WireWriter`] (docs/architecture.md, "Who
//! writes"). To a connection that negotiated permessage-deflate, a frame
//! that has a compressed form is written as that, with RSV1 set (RFC 7692
//! §6): the compressed bytes are shared like the text. Reading (masking,
//! fragments, limits, UTF-8) stays with tungstenite.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::application::outbox::{DirectWriter, Outbox};
use crate::domain::protocol::CloseCode;
use crate::telemetry::METRICS;

const TEXT: u8 = 0x1;
/// RSV1 in a message's first frame: "this message is compressed".
const COMPRESSED: u8 = 0x40;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
/// Frames gathered into one write: two slices each, well under IOV_MAX.
const BATCH_FRAMES: usize = 64;
/// Slices in one write: the batch, and room for control frames before it.
const MAX_SLICES: usize = 2 * BATCH_FRAMES + 8;

/// A frame header: FIN set, no mask, the shortest length encoding; `opcode`
/// may carry RSV1.
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
    /// Events among them (the rest are the gateway's own frames).
    pub events: usize,
}

/// The write side of a client's socket, shared by the client's writer task
/// and the shard's loop (as the outbox's [`DirectWriter`]). Every method
/// takes `&self` and holds the inner state only while it runs, never across
/// an await, so the two can take turns on one thread.
pub struct WireWriter {
    socket: Rc<TcpStream>,
    /// permessage-deflate was negotiated: compressed forms are written.
    deflate: bool,
    state: RefCell<WriterState>,
}

struct WriterState {
    /// Control frames (pings, pongs) and any frame begun but not finished, in
    /// the order they go out; queued events follow them.
    started: VecDeque<Outgoing>,
    /// When the socket last took bytes.
    progressed_at: Instant,
    /// A close frame is on its way: nothing else may follow it.
    closing: bool,
}

impl WireWriter {
    pub fn new(socket: Rc<TcpStream>, deflate: bool) -> Self {
        let state = WriterState { started: VecDeque::new(), progressed_at: Instant::now(), closing: false };
        Self { socket, deflate, state: RefCell::new(state) }
    }

    pub fn queue_ping(&self) {
        self.queue_control(Outgoing::new(PING, Bytes::new(), None));
    }

    pub fn queue_pong(&self, payload: Bytes) {
        self.queue_control(Outgoing::new(PONG, payload, None));
    }

    /// Control frames go ahead of every frame not yet begun: a ping behind a
    /// long backlog would reach even a reading client too late for its pong.
    fn queue_control(&self, control: Outgoing) {
        let started = &mut self.state.borrow_mut().started;
        let first_unbegun = started.iter().position(|outgoing| outgoing.written == 0);
        started.insert(first_unbegun.unwrap_or(started.len()), control);
    }

    /// Whether anything waits for the socket, besides the outbox's queue.
    pub fn has_started(&self) -> bool {
        !self.state.borrow().started.is_empty()
    }

    /// When the socket last took bytes, from either writer.
    pub fn progressed_at(&self) -> Instant {
        self.state.borrow().progressed_at
    }

    /// Resolves when the socket may take bytes. Cancel-safe. Only the
    /// client's writer task waits (the shard's loop never does), so the
    /// socket's own waker slot serves: a future of a pointer's size, where
    /// `TcpStream::writable` would keep a waiter node in every idle session.
    pub async fn writable(&self) -> io::Result<()> {
        poll_fn(|cx| self.socket.poll_write_ready(cx)).await
    }

    /// Writes as much as the socket takes now, without waiting: started
    /// frames first, then the outbox's queue, up to 64 frames per system
    /// call. Counts what it wrote in the metrics.
    pub fn write_ready(&self, outbox: &Outbox) -> io::Result<Written> {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let mut written = Written::default();
        let mut compression = Compression::default();
        let result = loop {
            if state.started.is_empty() {
                outbox.fill_batch(BATCH_FRAMES, |next| {
                    let outgoing = match next.frame.deflated().filter(|_| self.deflate) {
                        Some(deflated) => Outgoing::new(TEXT | COMPRESSED, deflated.clone(), Some(next.seq)),
                        None => Outgoing::new(TEXT, next.frame.utf8_bytes().clone(), Some(next.seq)),
                    };
                    if self.deflate {
                        compression.before += next.frame.len();
                        compression.after += outgoing.payload.len();
                    }
                    state.started.push_back(outgoing);
                });
                if state.started.is_empty() {
                    break Ok(());
                }
            }
            let sent = match write_started(&self.socket, &state.started) {
                Ok(sent) => sent,
                Err(error) => break Err(error),
            };
            written.bytes += sent.bytes;
            // Out of the queue before the next batch is taken from it.
            advance(&mut state.started, sent.bytes, |seq| {
                written.frames += 1;
                if let Some(routed_at) = outbox.pop_written(seq) {
                    written.events += 1;
                    METRICS.delivery_seconds.observe(routed_at.elapsed().as_secs_f64());
                }
            });
            // A socket that took less than it was offered is full: asking
            // again would only hear so.
            if !sent.all {
                break Ok(());
            }
        };
        if written.bytes > 0 {
            state.progressed_at = Instant::now();
            METRICS.frames_sent.inc_by(written.frames as u64);
        }
        compression.count();
        result.map(|()| written)
    }

    /// Writes a close frame after the frame being written, if one is (a frame
    /// cannot be abandoned midway), waiting for the socket as needed.
    pub async fn close(&self, code: CloseCode) -> io::Result<()> {
        {
            let mut state = self.state.borrow_mut();
            state.closing = true;
            state.started.retain(|outgoing| outgoing.written > 0);
            let mut payload = code.code.to_be_bytes().to_vec();
            payload.extend_from_slice(code.reason.as_bytes());
            state.started.push_back(Outgoing::new(CLOSE, Bytes::from(payload), None));
        }
        loop {
            {
                let mut state = self.state.borrow_mut();
                let sent = write_started(&self.socket, &state.started)?;
                // The queue is left as it is: the session ends with this close.
                advance(&mut state.started, sent.bytes, |_| {});
                if state.started.is_empty() {
                    // Nothing follows a close frame: the client sees the end
                    // of the stream now, not when the socket is dropped.
                    return self.socket_ref().shutdown(Shutdown::Write);
                }
            }
            self.writable().await?;
        }
    }

    fn socket_ref(&self) -> SockRef<'_> {
        SockRef::from(&*self.socket)
    }
}

impl DirectWriter for WireWriter {
    fn write_now(&self, outbox: &Outbox) -> bool {
        // The writer task, closing, owns the socket's last bytes; and a client
        // told to go at once gets nothing more before its close frame.
        let closing_now = outbox.close_request().is_some_and(|close| !close.after_drain);
        if closing_now || self.state.borrow().closing {
            return false;
        }
        // An error is the writer task's to meet again, and end the session on.
        let failed = self.write_ready(outbox).is_err();
        failed || self.has_started() || outbox.has_writable()
    }
}

/// Payload bytes of the frames taken for writing to a connection that
/// negotiated compression: their text, and what is sent instead.
#[derive(Default)]
struct Compression {
    before: usize,
    after: usize,
}

impl Compression {
    fn count(&self) {
        if self.before > 0 {
            METRICS.deflate_bytes_before.inc_by(self.before as u64);
            METRICS.deflate_bytes_after.inc_by(self.after as u64);
        }
    }
}

/// What one gathered write did.
struct Sent {
    bytes: usize,
    /// The socket took everything it was offered.
    all: bool,
}

/// One gathered write of the started frames; WouldBlock is no error.
///
/// `sendmsg`, not `writev`: a socket's `writev` goes through the file layer
/// first (`vfs_writev`, the file position lock), which cost the gateway about
/// a twentieth of its CPU when every delivery is one write (BENCHMARKS.md).
fn write_started(socket: &TcpStream, started: &VecDeque<Outgoing>) -> io::Result<Sent> {
    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
    let (mut count, mut offered) = (0, 0);
    for slice in started.iter().flat_map(Outgoing::remaining).filter(|slice| !slice.is_empty()).take(MAX_SLICES) {
        slices[count] = IoSlice::new(slice);
        count += 1;
        offered += slice.len();
    }
    // A peer gone is an error to return, never a SIGPIPE.
    let send = || SockRef::from(socket).send_vectored_with_flags(&slices[..count], libc::MSG_NOSIGNAL);
    match socket.try_io(Interest::WRITABLE, send) {
        Ok(bytes) => Ok(Sent { bytes, all: bytes == offered }),
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(Sent { bytes: 0, all: false }),
        Err(error) => Err(error),
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

/// The client's socket as tungstenite's reader wants it: reads go to the
/// socket, and what tungstenite would write by itself (its automatic
/// replies) is dropped, since the session answers pings and closes through
/// its own writer.
pub struct ReadOnly(pub Rc<TcpStream>);

impl AsyncRead for ReadOnly {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // A WouldBlock clears the readiness, so the next poll waits for the socket.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
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
    use std::io::Read;

    use super::*;
    use crate::domain::audience::{Audience, UserId};
    use crate::domain::entity::{Action, EntityKind};
    use crate::domain::frame::Frame;
    use crate::domain::limits::QueueLimits;
    use crate::domain::snapshot::Snapshot;

    /// A loopback connection: the server's side for a writer, the client's
    /// (blocking) to read.
    fn connected() -> (Rc<TcpStream>, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (Rc::new(TcpStream::from_std(server).unwrap()), client)
    }

    /// The frames in what a client read: (opcode, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let (len, header) = match bytes[1] {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
                short => (usize::from(short), 2),
            };
            frames.push((bytes[0] & 0x0f, bytes[header..header + len].to_vec()));
            bytes = &bytes[header + len..];
        }
        frames
    }

    /// What the shard writes and what the writer task finishes reach the
    /// client as one stream, in queue order, and nothing follows the close.
    #[tokio::test]
    async fn a_full_socket_is_finished_by_the_writer_task_in_order_and_the_close_ends_the_stream() {
        let (socket, mut client) = connected();
        let writer = WireWriter::new(socket, false);
        let outbox = Outbox::new(QueueLimits { max_frames: 1 << 20, max_bytes: 1 << 30 }, UserId::new("u1"));
        outbox.go_live(&Snapshot::parse(br#"{"id":"s"}"#).unwrap(), Audience::Staff);
        let padding = "x".repeat(16 << 10);
        let frame =
            |n: usize| Frame::event(EntityKind::Table, Action::Updated, &format!(r#"{{"n":{n},"p":"{padding}"}}"#));
        let mut pushed = 0;
        // The client does not read yet: the shard writes until the socket is full.
        while !writer.write_now(&outbox) {
            assert!(pushed < 10_000, "a loopback socket that never fills");
            outbox.push_control(frame(pushed));
            pushed += 1;
        }
        for n in pushed..pushed + 10 {
            outbox.push_control(frame(n));
        }
        assert!(writer.write_now(&outbox), "still full: left for the writer task");

        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            client.read_to_end(&mut bytes).unwrap();
            bytes
        });
        while writer.has_started() || outbox.has_writable() {
            writer.writable().await.unwrap();
            writer.write_ready(&outbox).unwrap();
        }
        writer.close(CloseCode::NORMAL).await.unwrap();
        outbox.push_control(frame(usize::MAX));
        assert!(!writer.write_now(&outbox), "closing: the shard writes nothing more");

        let frames = frames(&reader.join().unwrap());
        let snapshot = &frames[0];
        assert_eq!((snapshot.0, snapshot.1.starts_with(br#"{"event":"section.snapshot""#)), (TEXT, true));
        let events: Vec<Vec<u8>> = frames[1..frames.len() - 1].iter().map(|(_, payload)| payload.clone()).collect();
        let expected: Vec<Vec<u8>> = (0..pushed + 10).map(|n| frame(n).utf8_bytes().to_vec()).collect();
        assert!(events == expected, "{} frames arrived, {} expected, in order", events.len(), expected.len());
        assert_eq!(frames.last().unwrap().0, CLOSE, "the stream ends with the close frame");
    }

    /// A frame with a compressed form goes out as that, RSV1 set, to a
    /// connection that negotiated compression only; the rest as text.
    #[tokio::test]
    async fn compressed_forms_go_only_to_connections_that_negotiated_them() {
        let text = Frame::event(EntityKind::Table, Action::Updated, r#"{"id":"t1"}"#);
        let compressed = text.clone().with_deflated(Bytes::from_static(b"squeezed"));
        for deflate in [true, false] {
            let (socket, mut client) = connected();
            let writer = WireWriter::new(socket, deflate);
            let outbox = Outbox::new(QueueLimits { max_frames: 16, max_bytes: 1 << 20 }, UserId::new("u1"));
            outbox.go_live(&Snapshot::parse(br#"{"id":"s"}"#).unwrap(), Audience::Staff);
            outbox.push_control(compressed.clone());
            outbox.push_control(text.clone());
            while writer.has_started() || outbox.has_writable() {
                writer.writable().await.unwrap();
                writer.write_ready(&outbox).unwrap();
            }
            writer.close(CloseCode::NORMAL).await.unwrap();
            let mut bytes = Vec::new();
            client.read_to_end(&mut bytes).unwrap();
            let first_bytes: Vec<u8> = {
                let mut firsts = Vec::new();
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    firsts.push(rest[0]);
                    let len = usize::from(rest[1]);
                    rest = &rest[2 + len..];
                }
                firsts
            };
            let payloads: Vec<Vec<u8>> = frames(&bytes).into_iter().map(|(_, payload)| payload).collect();
            if deflate {
                assert_eq!(first_bytes[1], 0x80 | COMPRESSED | TEXT, "RSV1 on the compressed frame");
                assert_eq!(payloads[1], b"squeezed");
            } else {
                assert_eq!(first_bytes[1], 0x80 | TEXT);
                assert_eq!(payloads[1], text.utf8_bytes().to_vec());
            }
            assert_eq!(first_bytes[2], 0x80 | TEXT, "a frame without a compressed form: text");
            assert_eq!(payloads[2], text.utf8_bytes().to_vec());
        }
    }

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
