//! The clients: a minimal WebSocket client per connection, and the fleet that checks every
//! frame arrived exactly once.

use super::*;

// ---------------------------------------------------------------------------------------------
// Clients

pub(crate) struct Shared {
    pub(crate) started: Instant,
    pub(crate) epoch: Instant,
    pub(crate) live: AtomicUsize,
    pub(crate) last_live_us: AtomicU64,
    pub(crate) failed: AtomicUsize,
    pub(crate) ended: AtomicUsize,
    pub(crate) outcomes: Mutex<BTreeMap<String, usize>>,
    pub(crate) frames: AtomicU64,
    pub(crate) other_frames: AtomicU64,
    pub(crate) dups: AtomicU64,
    pub(crate) gaps: AtomicU64,
    /// Per client: the next sequence number it expects (= how many it has in order).
    pub(crate) progress: Vec<AtomicU64>,
    /// Per client: still connected and reading.
    pub(crate) alive: Vec<AtomicBool>,
    /// Per client: connected with a staff token.
    pub(crate) staff: Vec<bool>,
    /// Frames with a sequence number and their payload bytes, received by staff clients
    /// (`[0]`) and by public ones (`[1]`): the public frames of reservations are cut.
    pub(crate) by_audience: [(AtomicU64, AtomicU64); 2],
    /// The clients offer permessage-deflate (`LOAD_DEFLATE=1`).
    pub(crate) deflate: bool,
    /// Frames with a sequence number: bytes on the wire (headers included), and of their text.
    pub(crate) wire: Bytes2,
    /// Snapshot frames: how many, bytes on the wire (headers included), and of their text.
    pub(crate) snapshots: AtomicU64,
    pub(crate) snapshot_bytes: Bytes2,
    pub(crate) latency: Latencies,
}

/// Bytes on the wire, and of the text they carry.
#[derive(Default)]
pub(crate) struct Bytes2 {
    pub(crate) wire: AtomicU64,
    pub(crate) text: AtomicU64,
}

impl Bytes2 {
    pub(crate) fn add(&self, wire: u64, text: u64) {
        self.wire.fetch_add(wire, Relaxed);
        self.text.fetch_add(text, Relaxed);
    }

    /// `B on the wire each (B of text: ratio)` over `count` frames.
    pub(crate) fn per(&self, count: u64) -> String {
        let (wire, text) = (self.wire.load(Relaxed) as f64, self.text.load(Relaxed) as f64);
        let n = count.max(1) as f64;
        format!("{:.0} B on the wire each ({:.0} B of text: {:.2}x)", wire / n, text / n, wire / text.max(1.0))
    }
}

/// The text of a compressed message (RFC 7692 §7.2.2), with this thread's inflater: one per
/// worker thread, not one per client, so that an idle fleet holds none.
pub(crate) fn inflate(payload: &[u8]) -> Vec<u8> {
    thread_local! {
        static INFLATER: std::cell::RefCell<flate2::Decompress> = std::cell::RefCell::new(flate2::Decompress::new(false));
    }
    INFLATER.with_borrow_mut(|inflater| {
        inflater.reset(false);
        let message = [payload, &[0x00, 0x00, 0xff, 0xff]].concat();
        let mut text = Vec::with_capacity(8 * payload.len() + 256);
        loop {
            let read = inflater.total_in() as usize;
            let status = inflater
                .decompress_vec(&message[read..], &mut text, flate2::FlushDecompress::Sync)
                .expect("a compressed frame the gateway sent inflates");
            if inflater.total_in() as usize == message.len() && text.len() < text.capacity()
                || status == flate2::Status::StreamEnd
            {
                return text;
            }
            text.reserve(text.capacity());
        }
    })
}

impl Shared {
    pub(crate) fn outcome(&self, what: String) {
        *self.outcomes.lock().unwrap().entry(what).or_default() += 1;
    }
}

pub(crate) struct Fleet {
    pub(crate) shared: Arc<Shared>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) handles: Vec<tokio::task::JoinHandle<()>>,
    pub(crate) section_of: Vec<usize>,
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(crate) fn number_after(hay: &[u8], key: &[u8]) -> Option<(u64, usize)> {
    let at = find(hay, key)? + key.len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let value = hay[at..at + digits].iter().fold(0u64, |v, b| v * 10 + u64::from(b - b'0'));
    Some((value, at + digits))
}

/// `(opcode, header length, payload length)` of the first complete frame in `buf`.
pub(crate) fn frame_at(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (mut header, len) = match buf[1] & 0x7f {
        126 => (4, u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize),
        127 => (10, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize),
        n => (2, n as usize),
    };
    if masked {
        header += 4;
    }
    (buf.len() >= header + len).then_some((opcode, header, len))
}

/// Next local port to try for a client socket; see [`connect`].
pub(crate) static NEXT_LOCAL_PORT: AtomicU64 = AtomicU64::new(0);
/// Below Linux's ephemeral range (32768–60999 by default): the tens of thousands of sockets a run
/// leaves in TIME_WAIT for a minute must not take the ports that servers started right after it
/// (the test suite's tansu, which binds without `SO_REUSEADDR`) are given by `bind(0)`.
pub(crate) const LOCAL_PORTS: std::ops::Range<u64> = 10_000..32_768;

/// Connects from a local port the harness picks itself. Left to the kernel, `connect` takes
/// longer and longer once about 14 000 of its ephemeral ports are taken (it searches the even
/// half of `ip_local_port_range` first): connects/s would measure that search, not the server.
pub(crate) async fn connect(port: u16) -> Result<TcpStream, String> {
    let mut last = String::new();
    for _ in 0..1000 {
        let offset = NEXT_LOCAL_PORT.fetch_add(1, Relaxed) % (LOCAL_PORTS.end - LOCAL_PORTS.start);
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], (LOCAL_PORTS.start + offset) as u16));
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {:?}", e.kind()))?;
        let _ = socket.set_reuseaddr(true);
        if let Err(e) = socket.bind(local) {
            last = format!("bind: {:?}", e.kind());
            continue;
        }
        match socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await {
            Ok(stream) => return Ok(stream),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable) => {
                last = format!("connect: {:?}", e.kind());
            }
            Err(e) => return Err(format!("connect: {:?}", e.kind())),
        }
    }
    Err(format!("no free local port ({last})"))
}

/// What a browser offers (`LOAD_DEFLATE=1`).
pub(crate) const DEFLATE_OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

pub(crate) async fn open(
    port: u16,
    path: &str,
    buf_cap: usize,
    deflate: bool,
) -> Result<(TcpStream, BytesMut), String> {
    let mut stream = connect(port).await?;
    let _ = stream.set_nodelay(true);
    let offer = if deflate { DEFLATE_OFFER } else { "" };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send request: {:?}", e.kind()))?;
    let mut buf = BytesMut::with_capacity(buf_cap.max(4096));
    let head = read_head(&mut stream, &mut buf).await.map_err(|why| format!("handshake: {why}"))?;
    if head.status != "101" {
        return Err(format!("HTTP {}", head.status));
    }
    buf.advance(head.len);
    Ok((stream, buf))
}

/// The head of an HTTP/1 answer.
pub(crate) struct Head {
    /// Up to its blank line.
    pub(crate) text: String,
    /// The second word of the status line (`?` when there is none).
    pub(crate) status: String,
    /// Its length in the bytes read, blank line included.
    pub(crate) len: usize,
}

/// Reads an HTTP/1 answer off `stream` into `buf` until its head is complete; what was read past
/// the head stays in `buf`, behind it.
pub(crate) async fn read_head(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Head, String> {
    loop {
        if stream.read_buf(buf).await.map_err(|e| format!("read: {:?}", e.kind()))? == 0 {
            return Err("closed before the end of the head".into());
        }
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = text.lines().next().and_then(|line| line.split(' ').nth(1)).unwrap_or("?").to_string();
            return Ok(Head { text, status, len: end + 4 });
        }
        if buf.len() > 16 << 10 {
            return Err("oversized head".into());
        }
    }
}

/// The value of header `name` (any case) in an HTTP head.
pub(crate) fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// One client: connects (holding a permit until it is live), then reads every frame, checking
/// sequence numbers, answering pings.
pub(crate) async fn client(
    id: usize,
    port: u16,
    path: String,
    expect_snapshot: bool,
    buf_cap: usize,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
) {
    let mut permit = Some(permits.acquire_owned().await.expect("semaphore"));
    let opened = tokio::time::timeout(Duration::from_secs(30), open(port, &path, buf_cap, shared.deflate)).await;
    let (mut stream, mut buf) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(why)) => {
            shared.failed.fetch_add(1, Relaxed);
            shared.outcome(why);
            return;
        }
        Err(_) => {
            shared.failed.fetch_add(1, Relaxed);
            shared.outcome("no handshake within 30 s".into());
            return;
        }
    };
    let mut live = false;
    let go_live = |permit: &mut Option<tokio::sync::OwnedSemaphorePermit>| {
        *permit = None;
        shared.alive[id].store(true, Relaxed);
        shared.live.fetch_add(1, Relaxed);
        shared.last_live_us.fetch_max(shared.started.elapsed().as_micros() as u64, Relaxed);
    };
    if !expect_snapshot {
        live = true;
        go_live(&mut permit);
    }
    let mut next = 0u64;
    let mut reply = Vec::new();
    let end = loop {
        let (mut frames, mut bytes, mut wire) = (0u64, 0u64, 0u64);
        let mut others = 0u64;
        let mut closed = None;
        while let Some((opcode, header, len)) = frame_at(&buf) {
            // RSV1: a compressed message (permessage-deflate).
            let inflated = (buf[0] & 0x40 != 0).then(|| inflate(&buf[header..header + len]));
            let payload = inflated.as_deref().unwrap_or(&buf[header..header + len]);
            match opcode {
                1 if !live => {
                    if find(&payload[..payload.len().min(64)], b"section.snapshot").is_some() {
                        live = true;
                        go_live(&mut permit);
                        shared.snapshots.fetch_add(1, Relaxed);
                        shared.snapshot_bytes.add((header + len) as u64, payload.len() as u64);
                    } else {
                        others += 1;
                    }
                }
                1 => match number_after(payload, b"\"loadSeq\":") {
                    Some((seq, at)) => {
                        frames += 1;
                        bytes += payload.len() as u64;
                        wire += (header + len) as u64;
                        if seq == next {
                            next += 1;
                        } else if seq < next {
                            shared.dups.fetch_add(1, Relaxed);
                        } else {
                            shared.gaps.fetch_add(seq - next, Relaxed);
                            next = seq + 1;
                        }
                        if let Some((sent, _)) = number_after(&payload[at..], b"\"loadSent\":") {
                            shared.latency.record((shared.epoch.elapsed().as_micros() as u64).saturating_sub(sent));
                        }
                    }
                    None => others += 1,
                },
                8 => {
                    let code = payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                    closed = Some(format!("closed by the server with {code}"));
                }
                9 => {
                    // A pong with the ping's payload, masked as a client must.
                    let mask = [0x12u8, 0x34, 0x56, 0x78];
                    reply.push(0x8a);
                    reply.push(0x80 | len as u8);
                    reply.extend_from_slice(&mask);
                    reply.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
                }
                _ => {}
            }
            buf.advance(header + len);
            if closed.is_some() {
                break;
            }
        }
        if frames > 0 {
            shared.frames.fetch_add(frames, Relaxed);
            let (audience_frames, audience_bytes) = &shared.by_audience[usize::from(!shared.staff[id])];
            audience_frames.fetch_add(frames, Relaxed);
            audience_bytes.fetch_add(bytes, Relaxed);
            shared.wire.add(wire, bytes);
            shared.progress[id].store(next, Relaxed);
        }
        if others > 0 {
            shared.other_frames.fetch_add(others, Relaxed);
        }
        if let Some(closed) = closed {
            break closed;
        }
        if !reply.is_empty() {
            if stream.write_all(&reply).await.is_err() {
                break "write failed".into();
            }
            reply.clear();
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buf_cap.max(4096));
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) => break "connection closed by the server".into(),
            Ok(_) => {}
            Err(e) => break format!("read: {:?}", e.kind()),
        }
    };
    shared.alive[id].store(false, Relaxed);
    if !live {
        shared.failed.fetch_add(1, Relaxed);
    } else {
        shared.ended.fetch_add(1, Relaxed);
    }
    shared.outcome(end);
}

impl Fleet {
    /// Starts the clients, at most `concurrency` connecting at a time.
    pub(crate) fn start(
        port: u16,
        clients: Clients,
        expect_snapshot: bool,
        settings: &Settings,
        buf_cap: usize,
        epoch: Instant,
    ) -> Fleet {
        let concurrency = settings.connect_concurrency;
        let Clients { paths, section_of, staff } = clients;
        let n = paths.len();
        let shared = Arc::new(Shared {
            started: Instant::now(),
            epoch,
            live: AtomicUsize::new(0),
            last_live_us: AtomicU64::new(0),
            failed: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            outcomes: Mutex::default(),
            frames: AtomicU64::new(0),
            other_frames: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            progress: (0..n).map(|_| AtomicU64::new(0)).collect(),
            alive: (0..n).map(|_| AtomicBool::new(false)).collect(),
            staff,
            by_audience: Default::default(),
            deflate: settings.deflate,
            wire: Bytes2::default(),
            snapshots: AtomicU64::new(0),
            snapshot_bytes: Bytes2::default(),
            latency: Latencies::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let handles = paths
            .into_iter()
            .enumerate()
            .map(|(id, path)| {
                let shared = Arc::clone(&shared);
                let permits = Arc::clone(&permits);
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = client(id, port, path, expect_snapshot, buf_cap, shared, permits) => {}
                        _ = stopped.changed() => {}
                    }
                })
            })
            .collect();
        Fleet { shared, stop, handles, section_of }
    }

    /// Waits until every client is live or failed (or `timeout`); returns the seconds from the
    /// start to the last client going live.
    pub(crate) async fn wait_live(&self, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        let n = self.section_of.len();
        while self.shared.live.load(Relaxed) + self.shared.failed.load(Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.shared.last_live_us.load(Relaxed) as f64 / 1e6
    }

    pub(crate) fn live(&self) -> usize {
        self.shared.live.load(Relaxed)
    }

    /// The smallest progress among the clients still alive.
    pub(crate) fn slowest(&self) -> u64 {
        let s = &self.shared;
        (0..s.progress.len())
            .filter(|&i| s.alive[i].load(Relaxed))
            .map(|i| s.progress[i].load(Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Frames received in order, clamped to what was expected.
    pub(crate) fn received_in_order(&self, expected: &[u64]) -> u64 {
        (0..self.section_of.len())
            .map(|i| self.shared.progress[i].load(Relaxed).min(expected[self.section_of[i]]))
            .sum()
    }

    pub(crate) fn expected_total(&self, expected: &[u64]) -> u64 {
        self.section_of.iter().map(|&s| expected[s]).sum()
    }

    pub(crate) async fn drain(&self, expected: &[u64], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let total = self.expected_total(expected);
        while self.received_in_order(expected) < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn exactness(&self, expected: &[u64]) -> Exactness {
        let s = &self.shared;
        let (mut tail, mut closed_tail) = (0, 0);
        let mut beyond = 0;
        for (i, &section) in self.section_of.iter().enumerate() {
            let next = s.progress[i].load(Relaxed);
            let missing = expected[section].saturating_sub(next);
            if s.alive[i].load(Relaxed) {
                tail += missing
            } else {
                closed_tail += missing
            }
            beyond += next.saturating_sub(expected[section]);
        }
        Exactness {
            expected: self.expected_total(expected),
            received: s.frames.load(Relaxed),
            lost: s.gaps.load(Relaxed) + closed_tail,
            undelivered: tail,
            dups: s.dups.load(Relaxed),
            unexpected: beyond,
            others: s.other_frames.load(Relaxed),
            ended_early: s.ended.load(Relaxed),
        }
    }

    /// Frames received and their mean size (the text of their WebSocket payload), by staff and by
    /// public clients (`None` when every client is public).
    pub(crate) fn audiences(&self) -> Option<String> {
        let s = &self.shared;
        let staff = s.staff.iter().filter(|&&staff| staff).count();
        if staff == 0 {
            return None;
        }
        let part = |i: usize, name: &str, clients: usize| {
            let (frames, bytes) = (s.by_audience[i].0.load(Relaxed), s.by_audience[i].1.load(Relaxed));
            format!(
                "{clients} {name} clients received {frames} frames of {:.0} B of text each",
                bytes as f64 / frames.max(1) as f64
            )
        };
        Some(format!("{}; {}", part(0, "staff", staff), part(1, "public", s.staff.len() - staff)))
    }

    pub(crate) fn outcomes(&self) -> String {
        let outcomes = self.shared.outcomes.lock().unwrap();
        if outcomes.is_empty() {
            return "none".into();
        }
        outcomes.iter().map(|(what, n)| format!("{n}× {what}")).collect::<Vec<_>>().join(", ")
    }

    pub(crate) async fn finish(self) {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + Duration::from_secs(15);
        for handle in self.handles {
            let left = deadline.saturating_duration_since(Instant::now());
            let abort = handle.abort_handle();
            if tokio::time::timeout(left, handle).await.is_err() {
                abort.abort();
            }
        }
        // Let both sides close the sockets before the next row opens new ones.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
