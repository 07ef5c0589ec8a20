//! Client messages compressed with permessage-deflate (RFC 7692 §6-7),
//! inflated before tungstenite reads them: tungstenite knows no extension,
//! so a compressed message (RSV1 on its first frame) is taken off the wire
//! here, unmasked, inflated, and handed on as one plain frame, while every
//! other frame passes as it came. Control frames between a compressed
//! message's fragments pass at once, as they would have.
//!
//! The inflated size is bounded by `WS_MAX_FRAME_BYTES` as it grows (a
//! decompression bomb closes with 1009 having cost at most that), and so is
//! the compressed size. The gateway answered with `client_no_context_takeover`,
//! so every message is a deflate stream of its own: the inflate state exists
//! only while a compressed message is arriving, and a connection that sends
//! nothing holds none. Only a connection that negotiated the extension reads
//! through this.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::domain::protocol::CloseCode;

use super::frame_meter::FrameMeter;

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEADER: usize = 14;
/// Put back at a message's end before inflating it (RFC 7692 §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
const RSV1: u8 = 0x40;
const FIN: u8 = 0x80;
/// Unmasked payload is inflated through a buffer of this size.
const CHUNK: usize = 1024;

pub struct Inflating<R> {
    inner: R,
    /// Where a broken rule is recorded: the reader closes with its code.
    meter: Rc<RefCell<FrameMeter>>,
    max_bytes: usize,
    frame: FrameReader,
    /// Bytes for tungstenite not handed over yet; unallocated when empty.
    out: Vec<u8>,
    /// The compressed message arriving, if one is.
    message: Option<Box<Message>>,
}

/// Where the frame being read stands.
struct FrameReader {
    header: [u8; MAX_HEADER],
    have: u8,
    need: u8,
    payload_left: u64,
    /// The current frame's payload belongs to the compressed message.
    inflating: bool,
    /// Its mask key, turned so that the next payload byte takes `mask[0]`.
    mask: [u8; 4],
    /// The current frame ends the compressed message.
    last: bool,
}

struct Message {
    opcode: u8,
    stream: Decompress,
    text: Vec<u8>,
    compressed: u64,
}

impl<R> Inflating<R> {
    /// `pipelined`: what the client sent right behind its handshake.
    pub fn new(inner: R, meter: Rc<RefCell<FrameMeter>>, max_bytes: usize, pipelined: &[u8]) -> Self {
        let frame = FrameReader {
            header: [0; MAX_HEADER],
            have: 0,
            need: 2,
            payload_left: 0,
            inflating: false,
            mask: [0; 4],
            last: false,
        };
        let mut inflating = Self { inner, meter, max_bytes, frame, out: Vec::new(), message: None };
        inflating.take_in(pipelined);
        inflating
    }

    /// Passes `bytes`, the next from the client, through; a broken rule
    /// goes to the meter.
    fn take_in(&mut self, bytes: &[u8]) {
        if let Err(code) = self.take(bytes) {
            self.meter.borrow_mut().refuse(code);
        }
    }

    fn take(&mut self, mut bytes: &[u8]) -> Result<(), CloseCode> {
        while !bytes.is_empty() {
            if self.frame.payload_left > 0 {
                let n = self.frame.payload_left.min(bytes.len() as u64) as usize;
                let (payload, rest) = bytes.split_at(n);
                self.frame.payload_left -= n as u64;
                if self.frame.inflating {
                    self.inflate_masked(payload)?;
                } else {
                    self.out.extend_from_slice(payload);
                }
                bytes = rest;
            } else {
                let have = usize::from(self.frame.have);
                let taken = (usize::from(self.frame.need) - have).min(bytes.len());
                let (header, rest) = bytes.split_at(taken);
                self.frame.header[have..have + taken].copy_from_slice(header);
                self.frame.have += taken as u8;
                bytes = rest;
                if self.frame.have == self.frame.need {
                    self.header_ready()?;
                }
            }
            let at_frame_end = self.frame.payload_left == 0 && self.frame.have == 0 && self.frame.need == 2;
            if at_frame_end && self.frame.last {
                self.finish_message()?;
            }
        }
        Ok(())
    }

    /// The header bytes asked for are here: the first two, which tell how
    /// long the header is, or all of it.
    fn header_ready(&mut self) -> Result<(), CloseCode> {
        let header = &self.frame.header;
        let (first, second) = (header[0], header[1]);
        let length_bytes = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let masked = second & 0x80 != 0;
        let need = 2 + length_bytes + if masked { 4 } else { 0 };
        if usize::from(self.frame.need) < need {
            self.frame.need = need as u8;
            return Ok(());
        }
        let length = match length_bytes {
            0 => u64::from(second & 0x7f),
            _ => header[2..2 + length_bytes].iter().fold(0u64, |n, &byte| n << 8 | u64::from(byte)),
        };
        let (fin, compressed, opcode) = (first & FIN != 0, first & RSV1 != 0, first & 0x0f);
        let inflating = match (opcode, compressed, self.message.is_some()) {
            // RSV1 is a message's mark: never on a control frame or a
            // continuation (RFC 7692 §6.1).
            (0x8.., true, _) | (0x0, true, _) => return Err(CloseCode::PROTOCOL_ERROR),
            // A new message inside the compressed one.
            (0x1 | 0x2, _, true) => return Err(CloseCode::PROTOCOL_ERROR),
            (0x1 | 0x2, true, false) => {
                self.message =
                    Some(Box::new(Message { opcode, stream: Decompress::new(false), text: Vec::new(), compressed: 0 }));
                true
            }
            (0x0, false, true) => true,
            _ => false,
        };
        if inflating {
            let message = self.message.as_mut().expect("a compressed message is arriving");
            message.compressed += length;
            // Unmasked client frames are tungstenite's to refuse; these it never sees.
            if !masked {
                return Err(CloseCode::PROTOCOL_ERROR);
            }
            if message.compressed > self.max_bytes as u64 {
                return Err(CloseCode::TOO_LARGE);
            }
            self.frame.mask.copy_from_slice(&header[need - 4..need]);
        } else {
            self.out.extend_from_slice(&header[..need]);
        }
        self.frame.inflating = inflating;
        self.frame.last = inflating && fin;
        (self.frame.have, self.frame.need, self.frame.payload_left) = (0, 2, length);
        Ok(())
    }

    fn inflate_masked(&mut self, payload: &[u8]) -> Result<(), CloseCode> {
        let mut buffer = [0u8; CHUNK];
        for chunk in payload.chunks(CHUNK) {
            for (i, (plain, &masked)) in buffer.iter_mut().zip(chunk).enumerate() {
                *plain = masked ^ self.frame.mask[i % 4];
            }
            self.frame.mask.rotate_left(chunk.len() % 4);
            self.inflate(&buffer[..chunk.len()])?;
        }
        Ok(())
    }

    /// Inflates `input` onto the message's text, never past the limit.
    fn inflate(&mut self, input: &[u8]) -> Result<(), CloseCode> {
        let max = self.max_bytes;
        let message = self.message.as_mut().expect("a compressed message is arriving");
        let mut read = 0;
        loop {
            if message.text.len() == message.text.capacity() {
                if message.text.len() > max {
                    return Err(CloseCode::TOO_LARGE);
                }
                // One byte past the limit shows a message over it.
                let room = (max + 1 - message.text.len()).min(message.text.len().max(CHUNK));
                message.text.reserve_exact(room);
            }
            let before = (message.stream.total_in(), message.text.len());
            let status = message
                .stream
                .decompress_vec(&input[read..], &mut message.text, FlushDecompress::None)
                .map_err(|_| CloseCode::PROTOCOL_ERROR)?;
            read += (message.stream.total_in() - before.0) as usize;
            if message.text.len() > max {
                return Err(CloseCode::TOO_LARGE);
            }
            let stalled = (message.stream.total_in(), message.text.len()) == before;
            // After a final block, what follows (the tail put back) is not read.
            if status == Status::StreamEnd || (read == input.len() && message.text.len() < message.text.capacity()) {
                return Ok(());
            }
            if stalled && message.text.len() < message.text.capacity() {
                return Ok(());
            }
        }
    }

    /// The compressed message is complete: its text goes to tungstenite as
    /// one frame, masked with a zero key (a client's frames are masked),
    /// and its inflate state is freed.
    fn finish_message(&mut self) -> Result<(), CloseCode> {
        self.frame.last = false;
        self.inflate(&TAIL)?;
        let message = self.message.take().expect("a compressed message is arriving");
        let len = message.text.len();
        self.out.push(FIN | message.opcode);
        match len {
            n if n < 126 => self.out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                self.out.push(0x80 | 126);
                self.out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        self.out.extend_from_slice(&[0; 4]);
        self.out.extend_from_slice(&message.text);
        Ok(())
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Inflating<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.out.is_empty() {
                let n = self.out.len().min(buf.remaining());
                buf.put_slice(&self.out[..n]);
                self.out.drain(..n);
                if self.out.is_empty() {
                    // An idle connection keeps no buffer.
                    self.out = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            // A broken rule ends the stream, as the meter's own do.
            if self.meter.borrow().violation().is_some() {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
            if buf.filled().len() == before {
                return Poll::Ready(Ok(()));
            }
            // What came goes through `out`, in order: a compressed message
            // is replaced by its text where it ends.
            let fresh = buf.filled()[before..].to_vec();
            buf.set_filled(before);
            self.take_in(&fresh);
        }
    }
}

impl<R: AsyncWrite + Unpin> AsyncWrite for Inflating<R> {
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
    use flate2::{Compress, Compression, FlushCompress};
    use proptest::prelude::*;
    use std::time::Duration;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![first];
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
        bytes.extend_from_slice(&MASK);
        bytes.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ MASK[i % 4]));
        bytes
    }

    /// `text` as a client compresses a message: raw deflate, tail removed.
    fn deflated(text: &[u8]) -> Vec<u8> {
        let mut stream = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(text.len() + 1024);
        stream.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    /// (opcode, unmasked payload) of every frame handed on.
    fn frames_out(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let (len, header) = match bytes[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
                short => (usize::from(short), 2),
            };
            assert_eq!(bytes[0] & RSV1, 0, "nothing compressed reaches tungstenite");
            let mask: [u8; 4] = bytes[header..header + 4].try_into().unwrap();
            let payload =
                bytes[header + 4..header + 4 + len].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            frames.push((bytes[0], payload));
            bytes = &bytes[header + 4 + len..];
        }
        frames
    }

    fn inflating(max_bytes: usize) -> (Inflating<()>, Rc<RefCell<FrameMeter>>) {
        let meter = Rc::new(RefCell::new(FrameMeter::new(1000, Duration::from_secs(10))));
        (Inflating::new((), Rc::clone(&meter), max_bytes, &[]), meter)
    }

    /// Feeds `wire` in reads of `cut` bytes; what went out, and the broken rule.
    fn run(max_bytes: usize, wire: &[u8], cut: usize) -> (Vec<(u8, Vec<u8>)>, Option<CloseCode>) {
        let (mut inflating, meter) = inflating(max_bytes);
        for read in wire.chunks(cut.max(1)) {
            inflating.take_in(read);
        }
        let violation = meter.borrow().violation();
        (frames_out(&inflating.out), violation)
    }

    #[test]
    fn a_compressed_message_is_handed_on_inflated_between_plain_frames() {
        let text = br#"{"event":"auth.refresh","payload":{"token":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}"#;
        let wire = [frame(0x81, b"plain"), frame(0x81 | RSV1, &deflated(text)), frame(0x89, b"ping")].concat();
        let (frames, violation) = run(1 << 16, &wire, 7);
        assert_eq!(violation, None);
        assert_eq!(frames, vec![(0x81, b"plain".to_vec()), (0x81, text.to_vec()), (0x89, b"ping".to_vec())]);
    }

    #[test]
    fn fragments_are_inflated_as_one_message_and_control_frames_pass_at_once() {
        let text = "{\"event\":\"ping\"}".repeat(40);
        let compressed = deflated(text.as_bytes());
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let wire = [frame(0x01 | RSV1, a), frame(0x8A, b"pong"), frame(0x80, b)].concat();
        let (frames, violation) = run(1 << 16, &wire, 3);
        assert_eq!(violation, None);
        assert_eq!(frames, vec![(0x8A, b"pong".to_vec()), (0x81, text.into_bytes())]);
    }

    #[test]
    fn a_bomb_is_too_large_before_it_costs_more_than_the_limit() {
        let bomb = deflated(&vec![b'a'; 10 << 20]);
        assert!(bomb.len() < 64 << 10, "a small frame");
        let (mut inflating, meter) = inflating(64 << 10);
        inflating.take_in(&frame(0x81 | RSV1, &bomb));
        assert_eq!(meter.borrow().violation(), Some(CloseCode::TOO_LARGE));
        assert!(inflating.message.as_ref().is_none_or(|m| m.text.capacity() <= (64 << 10) + 1 + CHUNK));
        assert_eq!(run(1 << 10, &frame(0x81 | RSV1, &deflated(&[b'a'; 1025])), 100).1, Some(CloseCode::TOO_LARGE));
        assert_eq!(run(1 << 10, &frame(0x81 | RSV1, &deflated(&[b'a'; 1024])), 100).1, None, "at the limit");
    }

    #[test]
    fn rsv1_where_it_does_not_belong_and_corrupt_data_are_protocol_errors() {
        let compressed = deflated(b"hello hello hello");
        for wire in [
            frame(0x89 | RSV1, b"ping"),
            [frame(0x01 | RSV1, &compressed), frame(0x80 | RSV1, b"")].concat(),
            [frame(0x01 | RSV1, &compressed), frame(0x81, b"new")].concat(),
            frame(0x81 | RSV1, &[0xff; 40]),
        ] {
            assert_eq!(run(1 << 16, &wire, 5).1, Some(CloseCode::PROTOCOL_ERROR), "{wire:?}");
        }
    }

    #[test]
    fn no_inflate_state_is_kept_between_messages() {
        let (mut inflating, _) = inflating(1 << 16);
        inflating.take_in(&frame(0x81 | RSV1, &deflated(b"{\"event\":\"ping\"}")));
        assert!(inflating.message.is_none(), "freed with the message");
        assert_eq!(frames_out(&inflating.out), vec![(0x81, b"{\"event\":\"ping\"}".to_vec())]);
    }

    proptest! {
        /// Whatever the messages and however the bytes are split across
        /// reads, tungstenite gets the same frames, each compressed message
        /// as its text, in order.
        #[test]
        fn messages_come_through_whatever_the_reads(
            messages in prop::collection::vec(("[ -~]{0,600}", any::<bool>(), 1usize..4), 1..6),
            cut in 1usize..300,
        ) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for (text, compress, fragments) in &messages {
                let payload = if *compress { deflated(text.as_bytes()) } else { text.as_bytes().to_vec() };
                let size = payload.len().div_ceil(*fragments).max(1);
                let parts: Vec<&[u8]> = if payload.is_empty() { vec![&[]] } else { payload.chunks(size).collect() };
                for (i, part) in parts.iter().enumerate() {
                    let fin = if i + 1 == parts.len() { FIN } else { 0 };
                    let opcode = if i == 0 { 0x1 } else { 0x0 };
                    let rsv1 = if i == 0 && *compress { RSV1 } else { 0 };
                    wire.extend(frame(fin | opcode | rsv1, part));
                    if !compress {
                        expected.push((fin | opcode, part.to_vec()));
                    }
                }
                if *compress {
                    expected.push((0x81, text.as_bytes().to_vec()));
                }
            }
            let (frames, violation) = run(1 << 16, &wire, cut);
            prop_assert_eq!(violation, None);
            prop_assert_eq!(frames, expected);
        }
    }
}
