//! Client frames counted as they come off the wire, before tungstenite
//! assembles them into messages (SPEC §2.5). Charging messages would let a
//! client send empty continuation frames for ever (they never complete a
//! message and never grow one), spinning its shard for every section on it.
//! So every frame header that arrives is read here: every frame, control and
//! continuation frames included, is charged to the client's rate; a
//! fragmented message may have [`MAX_FRAGMENTS`] fragments and must
//! complete within its deadline; a frame that breaks the framing rules is a
//! protocol error. Payload bytes are only skipped: tungstenite still does
//! the decoding, masking and size checks.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep, sleep_until};

use crate::domain::protocol::CloseCode;

use super::rate::TokenBucket;

/// Fragments one message may have.
pub const MAX_FRAGMENTS: u32 = 64;

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;

/// A message begun with FIN clear, waiting for its last fragment.
struct Fragmented {
    fragments: u32,
    deadline: Instant,
}

pub struct FrameMeter {
    bucket: TokenBucket,
    /// How long a fragmented message may take to complete.
    fragment_timeout: Duration,
    header: [u8; MAX_HEADER],
    /// Header bytes read so far, and how many this header has.
    have: usize,
    need: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    message: Option<Fragmented>,
    violation: Option<CloseCode>,
}

impl FrameMeter {
    /// `per_second` frames sustained, bursts of twice that.
    pub fn new(per_second: u32, fragment_timeout: Duration) -> Self {
        Self {
            bucket: TokenBucket::new(per_second),
            fragment_timeout,
            header: [0; MAX_HEADER],
            have: 0,
            need: 2,
            payload_left: 0,
            message: None,
            violation: None,
        }
    }

    /// Reads the frame headers in `bytes`, the next bytes from the client.
    /// Once a frame breaks a rule, that rule's close code, for good.
    pub fn observe(&mut self, mut bytes: &[u8]) -> Result<(), CloseCode> {
        while !bytes.is_empty() {
            if let Some(code) = self.violation {
                return Err(code);
            }
            if self.payload_left > 0 {
                let skipped = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= skipped;
                bytes = &bytes[skipped as usize..];
                continue;
            }
            let taken = (self.need - self.have).min(bytes.len());
            self.header[self.have..self.have + taken].copy_from_slice(&bytes[..taken]);
            self.have += taken;
            bytes = &bytes[taken..];
            if self.have == self.need {
                self.header_ready();
            }
        }
        self.violation.map_or(Ok(()), Err)
    }

    /// The header bytes asked for are here: either the first two, which
    /// tell how long the header is, or the whole header.
    fn header_ready(&mut self) {
        let (first, second) = (self.header[0], self.header[1]);
        let length_bytes = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask_bytes = if second & 0x80 != 0 { 4 } else { 0 };
        let need = 2 + length_bytes + mask_bytes;
        if self.need < need {
            self.need = need;
            return;
        }
        let length = match length_bytes {
            0 => u64::from(second & 0x7f),
            _ => self.header[2..2 + length_bytes].iter().fold(0u64, |n, &byte| n << 8 | u64::from(byte)),
        };
        (self.have, self.need, self.payload_left) = (0, 2, length);
        if let Err(code) = self.frame(first & 0x80 != 0, first & 0x0f) {
            self.violation = Some(code);
        }
    }

    fn frame(&mut self, fin: bool, opcode: u8) -> Result<(), CloseCode> {
        if !self.bucket.allow() {
            return Err(CloseCode::POLICY_VIOLATION);
        }
        match (opcode, &mut self.message) {
            // A continuation of the message in progress.
            (0x0, Some(message)) => {
                message.fragments += 1;
                if message.fragments > MAX_FRAGMENTS {
                    return Err(CloseCode::UNFINISHED_MESSAGE);
                }
                if fin {
                    self.message = None;
                }
            }
            // A continuation of nothing, or a new message inside one.
            (0x0, None) | (0x1 | 0x2, Some(_)) => return Err(CloseCode::PROTOCOL_ERROR),
            (0x1 | 0x2, None) if !fin => {
                self.message = Some(Fragmented { fragments: 1, deadline: Instant::now() + self.fragment_timeout });
            }
            // Whole messages and control frames (which may come between fragments).
            (0x1 | 0x2 | 0x8 | 0x9 | 0xA, _) => {}
            _ => return Err(CloseCode::PROTOCOL_ERROR),
        }
        Ok(())
    }

    /// When the fragmented message in progress must be complete.
    pub fn deadline(&self) -> Option<Instant> {
        self.message.as_ref().map(|message| message.deadline)
    }

    pub fn violation(&self) -> Option<CloseCode> {
        self.violation
    }

    /// A rule checked elsewhere (a compressed message's) was broken: the
    /// stream ends as for the meter's own.
    pub fn refuse(&mut self, code: CloseCode) {
        self.violation.get_or_insert(code);
    }

    /// The deadline passed with the message still unfinished.
    pub fn timed_out(&mut self) {
        self.violation = Some(CloseCode::UNFINISHED_MESSAGE);
    }
}

/// A client's read half that shows every byte to the meter first. Once a
/// frame breaks a rule, or a fragmented message outlives its deadline while
/// the client sends nothing more, it reads as the end of the stream:
/// tungstenite never sees that frame nor anything after it.
pub struct Metered<R> {
    inner: R,
    meter: Rc<RefCell<FrameMeter>>,
    /// Armed only while a fragmented message is unfinished, so an idle
    /// connection holds no timer.
    unfinished: Option<Pin<Box<Sleep>>>,
}

impl<R> Metered<R> {
    pub fn new(inner: R, meter: Rc<RefCell<FrameMeter>>) -> Self {
        Self { inner, meter, unfinished: None }
    }

    /// Whether the unfinished message's deadline has passed (arming the
    /// timer for it, or dropping a timer no longer needed).
    fn unfinished_too_long(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(due) = self.meter.borrow().deadline() else {
            self.unfinished = None;
            return false;
        };
        let timer = self.unfinished.get_or_insert_with(|| Box::pin(sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Metered<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.meter.borrow().violation().is_some() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        if Pin::new(&mut self.inner).poll_read(cx, buf)?.is_pending() {
            if !self.unfinished_too_long(cx) {
                return Poll::Pending;
            }
            self.meter.borrow_mut().timed_out();
            self.unfinished = None;
            return Poll::Ready(Ok(()));
        }
        if self.meter.borrow_mut().observe(&buf.filled()[before..]).is_err() {
            buf.set_filled(before);
        }
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncWrite + Unpin> AsyncWrite for Metered<R> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A masked client frame's header and payload.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => bytes.push(0x80 | n as u8),
            n if n <= 0xffff => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.extend_from_slice(payload);
        bytes
    }

    fn meter(per_second: u32) -> FrameMeter {
        FrameMeter::new(per_second, Duration::from_secs(10))
    }

    #[tokio::test(start_paused = true)]
    async fn every_frame_counts_empty_continuations_included() {
        let mut meter = meter(5);
        let mut wire = frame(false, 0x1, b"{");
        for _ in 0..9 {
            wire.extend(frame(false, 0x0, b""));
        }
        assert_eq!(meter.observe(&wire), Ok(()), "ten frames: the burst");
        assert_eq!(meter.observe(&frame(false, 0x0, b"")), Err(CloseCode::POLICY_VIOLATION));
        assert_eq!(meter.observe(b"anything"), Err(CloseCode::POLICY_VIOLATION), "for good");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_may_have_64_fragments_and_control_frames_between_them() {
        let mut meter = meter(1000);
        let mut wire = frame(false, 0x1, b"a");
        for _ in 0..62 {
            wire.extend(frame(false, 0x0, b"b"));
            wire.extend(frame(true, 0x9, b"ping"));
        }
        wire.extend(frame(true, 0x0, b"c"));
        assert_eq!(meter.observe(&wire), Ok(()));
        assert_eq!(meter.deadline(), None, "complete");
        let mut too_many = frame(false, 0x2, b"a");
        for _ in 0..MAX_FRAGMENTS {
            too_many.extend(frame(false, 0x0, b""));
        }
        assert_eq!(meter.observe(&too_many), Err(CloseCode::UNFINISHED_MESSAGE));
    }

    #[tokio::test(start_paused = true)]
    async fn framing_errors_are_protocol_errors() {
        for wire in
            [frame(true, 0x0, b"x"), frame(true, 0x3, b""), [frame(false, 0x1, b"a"), frame(true, 0x1, b"b")].concat()]
        {
            assert_eq!(meter(100).observe(&wire), Err(CloseCode::PROTOCOL_ERROR), "{wire:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_message_has_a_deadline() {
        let mut meter = meter(100);
        meter.observe(&frame(true, 0x1, b"whole")).unwrap();
        assert_eq!(meter.deadline(), None);
        meter.observe(&frame(false, 0x1, b"part")).unwrap();
        assert_eq!(meter.deadline(), Some(Instant::now() + Duration::from_secs(10)));
    }

    proptest! {
        /// However the bytes are split across reads, the same frames are seen.
        #[test]
        fn frames_are_found_whatever_the_reads(
            lengths in prop::collection::vec(0usize..70_000, 1..6),
            cuts in prop::collection::vec(1usize..5_000, 1..40),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            runtime.block_on(async {
                let wire: Vec<u8> = lengths.iter().flat_map(|&n| frame(true, 0x2, &vec![0u8; n])).collect();
                let mut meter = meter(lengths.len() as u32);
                let mut rest = &wire[..];
                for cut in cuts.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (now, later) = rest.split_at((*cut).min(rest.len()));
                    assert_eq!(meter.observe(now), Ok(()));
                    rest = later;
                }
                assert_eq!((meter.have, meter.payload_left), (0, 0), "ended on a frame boundary");
                // The burst holds twice the frames sent: one more than that is refused.
                let mut extra = frame(true, 0x2, b"");
                for _ in 0..lengths.len() {
                    extra.extend(frame(true, 0x2, b""));
                }
                assert_eq!(meter.observe(&extra), Err(CloseCode::POLICY_VIOLATION), "every frame was charged");
            });
        }
    }
}
