//! The raw pre-framed writer: a child process (`LOAD_ROLE=raw`) that the gateway is measured
//! beside, and the handle the rows drive it by.

use super::*;

// ---------------------------------------------------------------------------------------------
// The raw writer (child process, LOAD_ROLE=raw)

pub(crate) struct RawStats {
    pub(crate) conns: AtomicU64,
    pub(crate) frames: AtomicU64,
    pub(crate) slow_drops: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    /// Its own latency, the raw side of `mesaya_delivery_seconds`: from the moment an event was
    /// read off stdin to the moment the last byte of its frame was written to a socket.
    pub(crate) latency: Latencies,
}

pub(crate) enum ShardMsg {
    Conn([u8; 36], TcpStream),
    /// A frame, and when it was read off stdin.
    Event([u8; 36], Bytes, Instant),
}

pub(crate) struct RawConn {
    pub(crate) stream: Option<TcpStream>,
    pub(crate) pending: BytesMut,
    /// For each frame not yet wholly written: where it ends in the bytes ever queued in
    /// `pending`, and when it was read.
    pub(crate) waiting: std::collections::VecDeque<(u64, Instant)>,
    pub(crate) queued: u64,
    pub(crate) flushed: u64,
}

impl RawConn {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self { stream: Some(stream), pending: BytesMut::new(), waiting: Default::default(), queued: 0, flushed: 0 }
    }

    pub(crate) fn queue(&mut self, bytes: &[u8], read_at: Instant) {
        self.pending.extend_from_slice(bytes);
        self.queued += bytes.len() as u64;
        self.waiting.push_back((self.queued, read_at));
    }

    /// `n` bytes of `pending` were written: the frames they end are delivered.
    pub(crate) fn flushed(&mut self, n: usize, latency: &Latencies) {
        self.pending.advance(n);
        self.flushed += n as u64;
        while let Some(&(end, read_at)) = self.waiting.front()
            && end <= self.flushed
        {
            latency.record(read_at.elapsed().as_micros() as u64);
            self.waiting.pop_front();
        }
    }

    pub(crate) fn drop_stream(&mut self) {
        self.stream = None;
        self.pending = BytesMut::new();
        self.waiting.clear();
    }
}

/// Minimal server side of the WebSocket handshake: returns the section of the path and the token
/// after it (empty when there is none).
pub(crate) async fn raw_handshake(stream: &mut TcpStream) -> Option<([u8; 36], String)> {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    let end = loop {
        let read = stream.read(&mut buf[n..]).await.ok()?;
        if read == 0 {
            return None;
        }
        n += read;
        if let Some(end) = find(&buf[..n], b"\r\n\r\n") {
            break end;
        }
        if n == buf.len() {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let path = head.lines().next()?.split(' ').nth(1)?;
    let rest = path.strip_prefix("/ws/restaurant/")?;
    let section: [u8; 36] = rest.as_bytes().get(..36)?.try_into().ok()?;
    let token =
        rest.get(36..).unwrap_or("").strip_prefix('/').unwrap_or("").split('?').next().unwrap_or("").to_string();
    let key = header(head, "sec-websocket-key")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await.ok()?;
    Some((section, token))
}

/// The raw writer's snapshot call, the floor of the gateway's: the same GET with the client's
/// token to a stand-in API set up like the gateway's, on keep-alive connections, and the answer's
/// body spliced unparsed into a `section.snapshot` text frame.
pub(crate) struct RawSnapshots {
    pub(crate) api: std::net::SocketAddr,
    pub(crate) idle: Mutex<Vec<TcpStream>>,
    pub(crate) calls: AtomicU64,
}

impl RawSnapshots {
    pub(crate) async fn frame(&self, section: &[u8; 36], token: &str) -> Result<Vec<u8>, String> {
        let pooled = self.idle.lock().unwrap().pop();
        let mut api = match pooled {
            Some(api) => api,
            None => {
                let api = TcpStream::connect(self.api).await.map_err(|e| format!("API connect: {:?}", e.kind()))?;
                let _ = api.set_nodelay(true);
                api
            }
        };
        let request = format!(
            "GET /api/v1/sections/{} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Accept: application/json\r\nX-Forwarded-For: 127.0.0.1\r\nX-Request-Id: {:032x}\r\n\r\n",
            std::str::from_utf8(section).unwrap_or("?"),
            self.api,
            self.calls.fetch_add(1, Relaxed),
        );
        api.write_all(request.as_bytes()).await.map_err(|e| format!("API write: {:?}", e.kind()))?;
        let mut answer = BytesMut::with_capacity(8192);
        let head = read_head(&mut api, &mut answer).await.map_err(|why| format!("API: {why}"))?;
        if head.status != "200" {
            return Err(format!("API answered {}", head.status));
        }
        let head_end = head.len;
        let body_len = header(&head.text, "content-length")
            .and_then(|length| length.parse::<usize>().ok())
            .ok_or("API answer without Content-Length")?;
        while answer.len() < head_end + body_len {
            if api.read_buf(&mut answer).await.map_err(|e| format!("API read: {:?}", e.kind()))? == 0 {
                return Err("API closed mid-body".into());
            }
        }
        // Kept for the next call only when nothing followed the answer.
        if answer.len() == head_end + body_len {
            self.idle.lock().unwrap().push(api);
        }
        let body = &answer[head_end..head_end + body_len];
        Ok(text_frame(&[br#"{"event":"section.snapshot","payload":"#, body, b"}"]))
    }
}

/// One writer thread's sockets: every event is written to each socket of its section at once;
/// only what a socket does not take is queued, and flushed when it becomes writable.
pub(crate) async fn raw_shard(mut rx: mpsc::UnboundedReceiver<ShardMsg>, stats: Arc<RawStats>, max_pending: usize) {
    let mut conns: Vec<RawConn> = Vec::new();
    let mut sections: HashMap<[u8; 36], Vec<usize>> = HashMap::new();
    let mut blocked: Vec<usize> = Vec::new();
    enum Step {
        Msg(Option<ShardMsg>),
        Writable,
    }
    loop {
        let step = std::future::poll_fn(|cx| {
            for &i in &blocked {
                if let Some(stream) = &conns[i].stream
                    && stream.poll_write_ready(cx).is_ready()
                {
                    return Poll::Ready(Step::Writable);
                }
            }
            rx.poll_recv(cx).map(Step::Msg)
        })
        .await;
        match step {
            Step::Msg(None) => return,
            Step::Msg(Some(ShardMsg::Conn(section, stream))) => {
                sections.entry(section).or_default().push(conns.len());
                conns.push(RawConn::new(stream));
                stats.conns.fetch_add(1, Relaxed);
            }
            Step::Msg(Some(ShardMsg::Event(section, frame, read_at))) => {
                let Some(members) = sections.get(&section) else { continue };
                let mut delivered = 0;
                for &i in members {
                    let conn = &mut conns[i];
                    let Some(stream) = &conn.stream else { continue };
                    if conn.pending.is_empty() {
                        match stream.try_write(&frame) {
                            Ok(n) if n == frame.len() => stats.latency.record(read_at.elapsed().as_micros() as u64),
                            Ok(n) => {
                                conn.queue(&frame[n..], read_at);
                                blocked.push(i);
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                conn.queue(&frame, read_at);
                                blocked.push(i);
                            }
                            Err(_) => {
                                conn.drop_stream();
                                stats.write_errors.fetch_add(1, Relaxed);
                                stats.conns.fetch_sub(1, Relaxed);
                                continue;
                            }
                        }
                    } else {
                        conn.queue(&frame, read_at);
                        if conn.pending.len() > max_pending {
                            conn.drop_stream();
                            stats.slow_drops.fetch_add(1, Relaxed);
                            stats.conns.fetch_sub(1, Relaxed);
                            continue;
                        }
                    }
                    delivered += 1;
                }
                stats.frames.fetch_add(delivered, Relaxed);
            }
            Step::Writable => blocked.retain(|&i| {
                let conn = &mut conns[i];
                loop {
                    let Some(stream) = &conn.stream else { return false };
                    if conn.pending.is_empty() {
                        conn.pending = BytesMut::new();
                        return false;
                    }
                    match stream.try_write(&conn.pending) {
                        Ok(n) => conn.flushed(n, &stats.latency),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                        Err(_) => {
                            conn.drop_stream();
                            stats.write_errors.fetch_add(1, Relaxed);
                            stats.conns.fetch_sub(1, Relaxed);
                            return false;
                        }
                    }
                }
            }),
        }
    }
}

/// The raw writer's process: prints `PORT <port>`, then serves. Its stdin carries messages
/// `[kind u8][len u32 LE][body]`: kind 0 an event (36-byte section id, then the frame's bytes),
/// kind 1 a stats request, answered with one `STATS …` line on stdout (counters, then the p50,
/// p99 and p99.9 of its own latency in ms, NaN before any delivery), kind 2 "forget the latencies
/// so far" (the measured window starts). Exits when stdin closes. With `LOAD_RAW_SNAPSHOT_API`
/// set, each connect makes the snapshot call to that API before the client is held.
pub(crate) fn raw_main() {
    let shards = setting("LOAD_RAW_SHARDS", cores()).max(1);
    let max_pending = setting("LOAD_RAW_MAX_PENDING", 4 << 20);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(shards).enable_all().build().expect("runtime");
    let stats = Arc::new(RawStats {
        conns: AtomicU64::new(0),
        frames: AtomicU64::new(0),
        slow_drops: AtomicU64::new(0),
        write_errors: AtomicU64::new(0),
        connect_errors: AtomicU64::new(0),
        latency: Latencies::new(),
    });
    let snapshots = std::env::var(RAW_SNAPSHOT_API).ok().map(|api| {
        let api = api.parse().unwrap_or_else(|_| panic!("{RAW_SNAPSHOT_API}={api}: not an address"));
        Arc::new(RawSnapshots { api, idle: Mutex::default(), calls: AtomicU64::new(0) })
    });
    let owners: Arc<Mutex<HashMap<[u8; 36], usize>>> = Arc::default();
    let owner = {
        let owners = Arc::clone(&owners);
        move |section: [u8; 36]| {
            let mut owners = owners.lock().unwrap();
            let next = owners.len() % shards;
            *owners.entry(section).or_insert(next)
        }
    };
    let mut senders = Vec::new();
    for _ in 0..shards {
        let (tx, rx) = mpsc::unbounded_channel();
        runtime.spawn(raw_shard(rx, Arc::clone(&stats), max_pending));
        senders.push(tx);
    }
    let listener = runtime.block_on(async {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
        socket.listen(4096).expect("listen")
    });
    let port = listener.local_addr().expect("address").port();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "PORT {port}").unwrap();
        out.flush().unwrap();
    }
    {
        let senders = senders.clone();
        let stats = Arc::clone(&stats);
        let owner = owner.clone();
        runtime.spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let senders = senders.clone();
                let stats = Arc::clone(&stats);
                let owner = owner.clone();
                let snapshots = snapshots.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let connect = async {
                        let (section, token) = raw_handshake(&mut stream).await.ok_or("handshake")?;
                        if let Some(snapshots) = &snapshots {
                            let frame = snapshots.frame(&section, &token).await?;
                            stream.write_all(&frame).await.map_err(|e| format!("snapshot frame: {:?}", e.kind()))?;
                        }
                        Ok::<_, String>(section)
                    };
                    match tokio::time::timeout(Duration::from_secs(10), connect).await {
                        Ok(Ok(section)) => {
                            let _ = senders[owner(section)].send(ShardMsg::Conn(section, stream));
                        }
                        Ok(Err(why)) => {
                            if stats.connect_errors.fetch_add(1, Relaxed) == 0 {
                                eprintln!("raw writer: first failed connect: {why}");
                            }
                        }
                        Err(_) => {
                            if stats.connect_errors.fetch_add(1, Relaxed) == 0 {
                                eprintln!("raw writer: first failed connect: no answer within 10 s");
                            }
                        }
                    }
                });
            }
        });
    }
    let mut input = std::io::stdin().lock();
    loop {
        let mut head = [0u8; 5];
        if input.read_exact(&mut head).is_err() {
            std::process::exit(0);
        }
        let len = u32::from_le_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        if input.read_exact(&mut body).is_err() {
            std::process::exit(0);
        }
        match head[0] {
            0 => {
                let section: [u8; 36] = body[..36].try_into().unwrap();
                let frame = Bytes::from(body).slice(36..);
                let _ = senders[owner(section)].send(ShardMsg::Event(section, frame, Instant::now()));
            }
            2 => stats.latency.reset(),
            _ => {
                let latency = |q: f64| stats.latency.quantile_ms(q).unwrap_or(f64::NAN);
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "STATS {} {} {} {} {} {} {} {}",
                    stats.conns.load(Relaxed),
                    stats.frames.load(Relaxed),
                    stats.slow_drops.load(Relaxed),
                    stats.write_errors.load(Relaxed),
                    stats.connect_errors.load(Relaxed),
                    latency(0.5),
                    latency(0.99),
                    latency(0.999)
                )
                .unwrap();
                out.flush().unwrap();
            }
        }
    }
}

/// The raw writer's variable naming the stand-in API it makes its snapshot call to (`host:port`);
/// unset, it answers the handshake only.
pub(crate) const RAW_SNAPSHOT_API: &str = "LOAD_RAW_SNAPSHOT_API";

/// The harness's handle on its raw-writer child.
pub(crate) struct RawServer {
    // Field order is drop order: the child goes before the API it calls.
    pub(crate) child: Child,
    pub(crate) stdin: BufWriter<ChildStdin>,
    pub(crate) lines: std::sync::mpsc::Receiver<String>,
    pub(crate) port: u16,
    pub(crate) _api: Option<StandInApi>,
}

pub(crate) struct RawSnapshot {
    pub(crate) conns: u64,
    pub(crate) frames: u64,
    pub(crate) slow_drops: u64,
    pub(crate) write_errors: u64,
    pub(crate) connect_errors: u64,
    /// Since the last [`RawServer::restart_latency`].
    pub(crate) latency: Option<OwnLatency>,
}

impl RawServer {
    /// With `api`, every connect makes the snapshot call to it.
    pub(crate) fn start(shards: usize, api: Option<StandInApi>) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("own path"));
        if let Some(api) = &api {
            command.env(RAW_SNAPSHOT_API, api.base_url().trim_start_matches("http://"));
        }
        let mut child = command
            .env("LOAD_ROLE", "raw")
            .env("LOAD_RAW_SHARDS", shards.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the raw writer");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(10)).expect("the raw writer's port");
        let port = first.strip_prefix("PORT ").and_then(|p| p.parse().ok()).expect("PORT line");
        let stdin = BufWriter::with_capacity(1 << 16, child.stdin.take().unwrap());
        Self { child, stdin, lines, port, _api: api }
    }

    pub(crate) fn send_event(&mut self, section: &str, frame: &[u8]) {
        let len = (36 + frame.len()) as u32;
        self.stdin.write_all(&[0]).unwrap();
        self.stdin.write_all(&len.to_le_bytes()).unwrap();
        self.stdin.write_all(section.as_bytes()).unwrap();
        self.stdin.write_all(frame).unwrap();
    }

    pub(crate) fn stats(&mut self) -> RawSnapshot {
        self.stdin.write_all(&[1, 0, 0, 0, 0]).unwrap();
        self.stdin.flush().unwrap();
        let line = self.lines.recv_timeout(Duration::from_secs(10)).expect("a STATS line");
        let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
        let count = |i: usize| fields[i].parse::<u64>().expect("a STATS count");
        let seconds = |i: usize| fields[i].parse::<f64>().ok().filter(|v| v.is_finite()).map(|ms| ms / 1000.0);
        RawSnapshot {
            conns: count(0),
            frames: count(1),
            slow_drops: count(2),
            write_errors: count(3),
            connect_errors: count(4),
            latency: match (seconds(5), seconds(6), seconds(7)) {
                (Some(p50), Some(p99), Some(p999)) => Some(OwnLatency { p50, p99, p999, buckets: None }),
                _ => None,
            },
        }
    }

    pub(crate) fn restart_latency(&mut self) {
        self.stdin.write_all(&[2, 0, 0, 0, 0]).unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
