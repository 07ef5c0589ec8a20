//! Configuration from the environment (names kept compatible with the
//! earlier Go service). Any problem is one [`ConfigError`] that names the
//! variable, and the process stops at start.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::domain::audience::{DEFAULT_PUBLIC_RESERVATION_FIELDS, PublicFields};
use crate::domain::limits::{PendingLimits, QueueLimits};

/// The default `KAFKA_TOPICS`: the v1 (`mesa-ya.<domain>.<verb>`) and v2
/// (`mesa-ya.<domain>.events`) topics of every section-related domain,
/// including the v1 `tables.selecting` / `tables.released` hints, so that
/// they are counted as skipped rather than silently unseen.
pub const DEFAULT_TOPICS: &str = r"^mesa-ya\.(sections|tables|objects|section-objects|reservations|restaurants)\.(events|created|updated|deleted|selecting|released)$";

/// The default `KAFKA_BROKERS`.
const DEFAULT_BROKERS: &str = "localhost:9092";

/// The longest any duration setting may be.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Descriptors kept for what is neither a client nor an API connection:
/// Kafka's sockets and wake-up pipes, the listeners, the admin listener's
/// connections (`transport::admin::MAX_CONNECTIONS`), the runtimes, logs.
const OTHER_FILES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, problem: impl Into<String>) -> Self {
        Self { variable, problem: problem.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub secret: Option<String>,
    pub public_key_pem: Option<String>,
    pub issuer: Option<String>,
    pub leeway: Duration,
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id_prefix: String,
    /// Exact names and `^regex` patterns, as librdkafka takes them.
    pub topics: Vec<String>,
    pub max_record_bytes: usize,
    /// librdkafka `fetch.wait.max.ms`: the longest an idle fetch waits, and
    /// so the worst added latency on brokers that do not answer early.
    pub fetch_wait_max: Duration,
}

#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub queue: QueueLimits,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub max_frame_bytes: usize,
    /// Client messages allowed per second (sustained); bursts up to twice.
    pub client_messages_per_second: u32,
    /// Clock leeway for `exp`: a session ends at `exp` + leeway (4401), as
    /// the upgrade accepted tokens up to `exp` + leeway.
    pub token_leeway: Duration,
    /// A socket that takes no bytes for this long is dropped.
    pub write_timeout: Duration,
    /// How long before a token's expiry `auth.expiring` is sent.
    pub refresh_notice: Duration,
    /// permessage-deflate (SPEC §2.9): `None` when `WS_COMPRESSION=off`.
    pub compression: Option<CompressionSettings>,
}

/// permessage-deflate when a client offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionSettings {
    /// Frames shorter than this go uncompressed.
    pub min_bytes: usize,
}

/// Who may connect, and how many at once, decided before the upgrade.
#[derive(Debug, Clone)]
pub struct AdmissionSettings {
    pub max_connections: usize,
    /// `0`: no cap.
    pub max_connections_per_user: usize,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Connections that have not upgraded yet.
    pub pending: PendingLimits,
}

/// Resuming after a reconnect; on when `RESUME_SECRET` is set.
#[derive(Debug, Clone)]
pub struct ResumeConfig {
    /// Signs resume tokens; shared by every instance behind one load balancer.
    pub secret: String,
    /// How old a token may be, and how long frames stay in the buffer.
    pub window: Duration,
    /// How old a chain of resumes may be before the API is asked again.
    pub reauth_after: Duration,
    /// Frames kept per section; 0: every resume falls back to a snapshot.
    pub buffer_frames: usize,
    /// Frame bytes kept for the whole instance.
    pub buffer_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub kafka: KafkaSettings,
    pub jwt: JwtSettings,
    pub allowed_roles: Vec<String>,
    pub required_permission: Option<String>,
    /// Roles that see every reservation whole (`WS_STAFF_ROLES`).
    pub staff_roles: Vec<String>,
    /// What public connections see of a reservation.
    pub public_reservation_fields: PublicFields,
    pub rest_base_url: String,
    pub snapshot_path: String,
    pub rest_timeout: Duration,
    pub snapshot_concurrency: usize,
    pub admission: AdmissionSettings,
    /// Where the operations endpoints are served instead of the public
    /// port, when `ADMIN_PORT` is set.
    pub admin: Option<SocketAddr>,
    pub shards: usize,
    pub session: SessionSettings,
    pub drain_timeout: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    pub resume: Option<ResumeConfig>,
}

/// Where a variable's effective value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Set,
    Default,
}

/// One variable as the configuration read it (for `--check-config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub variable: &'static str,
    /// The effective value as text; empty when unset with no default.
    pub value: String,
    pub source: Source,
}

/// The variables whose values are never shown.
pub const SECRET_VARIABLES: [&str; 3] = ["JWT_SECRET", "JWT_PUBLIC_KEY", "RESUME_SECRET"];

impl std::fmt::Display for Setting {
    /// One line: `NAME=value (set)`, `NAME=value (default)` or
    /// `NAME unset (default)`, secrets redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match self.source {
            Source::Set => "set",
            Source::Default => "default",
        };
        match (self.value.is_empty(), SECRET_VARIABLES.contains(&self.variable)) {
            (true, _) => write!(f, "{} unset ({source})", self.variable),
            (false, true) => write!(f, "{}=<redacted> ({source})", self.variable),
            (false, false) => write!(f, "{}={} ({source})", self.variable, self.value.replace('\n', "\\n")),
        }
    }
}

/// Reads variables through `lookup`; empty values count as unset. Notes
/// each variable's effective value as it goes.
struct Env<F> {
    lookup: F,
    read: RefCell<Vec<Setting>>,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn get(&self, name: &'static str) -> Option<String> {
        let value = (self.lookup)(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let source = if value.is_some() { Source::Set } else { Source::Default };
        self.note(name, value.clone().unwrap_or_default(), source);
        value
    }

    /// `name` was unset and takes `default`.
    fn defaulted(&self, name: &'static str, default: impl std::fmt::Display) {
        self.note(name, default.to_string(), Source::Default);
    }

    fn note(&self, variable: &'static str, value: String, source: Source) {
        let setting = Setting { variable, value, source };
        let mut read = self.read.borrow_mut();
        match read.iter_mut().find(|noted| noted.variable == variable) {
            Some(noted) => *noted = setting,
            None => read.push(setting),
        }
    }

    fn string(&self, name: &'static str, default: &str) -> String {
        self.get(name).unwrap_or_else(|| {
            self.defaulted(name, default);
            default.to_string()
        })
    }

    fn parsed<T: std::str::FromStr + std::fmt::Display>(
        &self,
        name: &'static str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => {
                self.defaulted(name, &default);
                Ok(default)
            }
            Some(raw) => raw.parse().map_err(|_| ConfigError::new(name, format!("expected {what}, got {raw:?}"))),
        }
    }

    fn positive(&self, name: &'static str, default: usize) -> Result<usize, ConfigError> {
        let value = self.parsed(name, default, "a positive integer")?;
        if value == 0 {
            return Err(ConfigError::new(name, "must be greater than 0"));
        }
        Ok(value)
    }

    /// A whole number, zero allowed.
    fn count(&self, name: &'static str, default: usize) -> Result<usize, ConfigError> {
        self.parsed(name, default, "a whole number")
    }

    fn duration(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let Some(raw) = self.get(name) else {
            self.defaulted(name, humantime::format_duration(default));
            return Ok(default);
        };
        let duration = humantime::parse_duration(&raw)
            .map_err(|e| ConfigError::new(name, format!("expected a duration like 5s or 800ms, got {raw:?} ({e})")))?;
        if duration.is_zero() {
            return Err(ConfigError::new(name, "must be longer than 0"));
        }
        // Deadlines are instants: a duration of centuries would overflow one.
        if duration > MAX_DURATION {
            return Err(ConfigError::new(name, format!("must be at most 24h, got {raw:?}")));
        }
        Ok(duration)
    }

    /// A size in bytes: a whole number, optionally with a unit (`KiB`,
    /// `MiB`, `GiB`, or the decimal `KB`, `MB`, `GB`).
    fn bytes(&self, name: &'static str, default: usize) -> Result<usize, ConfigError> {
        let Some(raw) = self.get(name) else {
            self.defaulted(name, default);
            return Ok(default);
        };
        let problem = || ConfigError::new(name, format!("expected a size like 64MiB or 1048576, got {raw:?}"));
        let digits = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
        let (number, unit) = raw.split_at(digits);
        let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            _ => return Err(problem()),
        };
        number.parse::<usize>().ok().and_then(|n| n.checked_mul(multiplier)).ok_or_else(problem)
    }

    fn list(&self, name: &'static str, default: &str) -> Vec<String> {
        self.string(name, default)
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// `WS_COMPRESSION` (`on`/`off`) and, when on, `WS_COMPRESSION_MIN_BYTES`.
fn compression<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Option<CompressionSettings>, ConfigError> {
    let on = match env.string("WS_COMPRESSION", "on").to_ascii_lowercase().as_str() {
        "on" => true,
        "off" => false,
        other => return Err(ConfigError::new("WS_COMPRESSION", format!("expected on or off, got {other:?}"))),
    };
    let min_bytes = env.count("WS_COMPRESSION_MIN_BYTES", 256)?;
    Ok(on.then_some(CompressionSettings { min_bytes }))
}

fn client_rate<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<u32, ConfigError> {
    let rate: u32 = env.parsed("WS_CLIENT_RATE", 10, "a positive whole number up to 4294967295")?;
    if rate == 0 {
        return Err(ConfigError::new("WS_CLIENT_RATE", "must be greater than 0"));
    }
    Ok(rate)
}

/// The shortest `RESUME_SECRET`: an HMAC key of fewer bytes than its hash
/// (SHA-256) is weaker than the tags it signs.
const MIN_RESUME_SECRET_BYTES: usize = 32;

/// `RESUME_SECRET`, empty when unset (resume off).
fn resume_secret<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<String, ConfigError> {
    let secret = env.get("RESUME_SECRET").unwrap_or_default();
    if !secret.is_empty() && secret.len() < MIN_RESUME_SECRET_BYTES {
        return Err(ConfigError::new(
            "RESUME_SECRET",
            format!(
                "must be at least {MIN_RESUME_SECRET_BYTES} bytes, got {} (e.g. openssl rand -base64 32)",
                secret.len()
            ),
        ));
    }
    Ok(secret)
}

/// `WS_PUBLIC_RESERVATION_FIELDS`: plain field names only, so that a typo
/// such as `user id` cannot silently hide a field from everyone.
fn public_reservation_fields<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<PublicFields, ConfigError> {
    let fields = env.list("WS_PUBLIC_RESERVATION_FIELDS", DEFAULT_PUBLIC_RESERVATION_FIELDS);
    if let Some(bad) = fields.iter().find(|field| !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) {
        return Err(ConfigError::new(
            "WS_PUBLIC_RESERVATION_FIELDS",
            format!("expected field names like status,tableId, got {bad:?}"),
        ));
    }
    Ok(PublicFields::new(fields))
}

fn trusted_proxies<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Vec<IpNet>, ConfigError> {
    env.list("TRUSTED_PROXIES", "")
        .iter()
        .map(|entry| {
            // A bare address is a network of one.
            entry.parse::<IpNet>().or_else(|_| entry.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                ConfigError::new(
                    "TRUSTED_PROXIES",
                    format!("expected CIDRs like 10.0.0.0/8 or addresses, got {entry:?}"),
                )
            })
        })
        .collect()
}

/// `WS_MAX_CONNECTIONS`: by default what the open-file limit leaves once the
/// connections not upgraded yet, the API connections (at most
/// `SNAPSHOT_CONCURRENCY` in use and as many kept idle, the snapshot
/// source's `ApiBudget`) and [`OTHER_FILES`] have theirs; when set, it must
/// fit beside them.
fn max_connections<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    open_files: usize,
    pending: usize,
    snapshot_concurrency: usize,
) -> Result<usize, ConfigError> {
    let api_connections = 2 * snapshot_concurrency;
    let room = open_files.saturating_sub(pending).saturating_sub(api_connections).saturating_sub(OTHER_FILES);
    let no_room = |what: String| {
        ConfigError::new(
            "WS_MAX_CONNECTIONS",
            format!(
                "{what} beside HTTP_MAX_PENDING ({pending}), twice SNAPSHOT_CONCURRENCY ({snapshot_concurrency}) \
                 API connections and {OTHER_FILES} descriptors for Kafka, the listeners and logs; raise the limit \
                 (ulimit -n) or lower one of them"
            ),
        )
    };
    match env.get("WS_MAX_CONNECTIONS") {
        None if room > 0 => {
            env.defaulted("WS_MAX_CONNECTIONS", room);
            Ok(room)
        }
        None => Err(no_room(format!("the open-file limit of {open_files} leaves no room for sessions"))),
        Some(_) => {
            let sessions = env.positive("WS_MAX_CONNECTIONS", room)?;
            if sessions > room {
                return Err(no_room(format!(
                    "{sessions} sessions do not fit in the open-file limit of {open_files}, which leaves room for {room}"
                )));
            }
            Ok(sessions)
        }
    }
}

/// `ADMIN_HOST:ADMIN_PORT`, when `ADMIN_PORT` is set.
fn admin_address<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Option<SocketAddr>, ConfigError> {
    let host = env.parsed("ADMIN_HOST", IpAddr::from([127, 0, 0, 1]), "an IP address")?;
    if env.get("ADMIN_PORT").is_none() {
        return Ok(None);
    }
    match env.parsed("ADMIN_PORT", 0u16, "a port number")? {
        // An unknown port that nothing could probe.
        0 => Err(ConfigError::new("ADMIN_PORT", "must be a port from 1 to 65535")),
        port => Ok(Some(SocketAddr::new(host, port))),
    }
}

impl Config {
    /// Reads the process environment. `open_files` is the process's limit
    /// on open descriptors, which bounds the default `WS_MAX_CONNECTIONS`.
    pub fn from_env(open_files: usize) -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok(), open_files)
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>, open_files: usize) -> Result<Self, ConfigError> {
        Self::read(lookup, open_files).0
    }

    /// [`Config::from_lookup`], and every variable it read, in order, with
    /// its effective value and where that came from; up to the first
    /// problem, when there is one.
    pub fn read(
        lookup: impl Fn(&str) -> Option<String>,
        open_files: usize,
    ) -> (Result<Self, ConfigError>, Vec<Setting>) {
        let env = Env { lookup, read: RefCell::default() };
        let config = Self::parse(&env, open_files);
        (config, env.read.into_inner())
    }

    /// One named part after another, in the order the variables are read:
    /// `--check-config` lists them so, and the first problem is the one told.
    fn parse<F: Fn(&str) -> Option<String>>(env: &Env<F>, open_files: usize) -> Result<Self, ConfigError> {
        let jwt = jwt_settings(env)?;
        let brokers = kafka_brokers(env);
        let topics = kafka_topics(env)?;
        let rest_base_url = rest_base_url(env)?;
        let snapshot_path = snapshot_path(env)?;
        let log_format = log_format(env)?;
        let log_level = log_level(env)?;
        let resume = resume_config(env)?;
        let snapshot_concurrency = env.positive("SNAPSHOT_CONCURRENCY", 256)?;
        let pending = pending_limits(env)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let token_leeway = jwt.leeway;
        Ok(Self {
            host: env.parsed("HOST", IpAddr::from([0, 0, 0, 0]), "an IP address")?,
            port: env.parsed("PORT", 8080, "a port number")?,
            kafka: kafka_settings(env, brokers, topics)?,
            jwt,
            allowed_roles: env.list("WS_ALLOWED_ROLES", "USER,OWNER,ADMIN"),
            required_permission: env.get("WS_REQUIRED_PERMISSION"),
            staff_roles: env.list("WS_STAFF_ROLES", "ADMIN"),
            public_reservation_fields: public_reservation_fields(env)?,
            rest_base_url,
            snapshot_path,
            rest_timeout: env.duration("REST_TIMEOUT", Duration::from_secs(5))?,
            snapshot_concurrency,
            admission: admission_settings(env, open_files, pending, snapshot_concurrency)?,
            admin: admin_address(env)?,
            shards: env.positive("SHARDS", cores)?,
            session: session_settings(env, token_leeway)?,
            drain_timeout: env.duration("DRAIN_TIMEOUT", Duration::from_secs(10))?,
            log_level,
            log_format,
            resume,
        })
    }
}

/// `JWT_*`: an HMAC secret or a PEM public key, at least one.
fn jwt_settings<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<JwtSettings, ConfigError> {
    let jwt = JwtSettings {
        secret: env.get("JWT_SECRET"),
        // PEM keys often travel through env files with literal `\n`s and
        // surrounding quotes (as the Go service and Nest accepted).
        public_key_pem: env
            .get("JWT_PUBLIC_KEY")
            .map(|pem| pem.trim_matches(|c| c == '"' || c == '\'').replace("\\n", "\n")),
        issuer: env.get("JWT_ISSUER"),
        leeway: env.duration("JWT_LEEWAY", Duration::from_secs(5))?,
    };
    if jwt.secret.is_none() && jwt.public_key_pem.is_none() {
        return Err(ConfigError::new("JWT_SECRET", "set JWT_SECRET (HMAC) or JWT_PUBLIC_KEY (PEM); neither is set"));
    }
    Ok(jwt)
}

/// `KAFKA_BROKERS`, or the Go service's `KAFKA_BROKER`.
fn kafka_brokers<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> String {
    env.get("KAFKA_BROKERS").or_else(|| env.get("KAFKA_BROKER")).unwrap_or_else(|| {
        env.defaulted("KAFKA_BROKERS", DEFAULT_BROKERS);
        DEFAULT_BROKERS.into()
    })
}

/// `KAFKA_TOPICS`: at least one, every `^pattern` a valid regex.
fn kafka_topics<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Vec<String>, ConfigError> {
    let topics = env.list("KAFKA_TOPICS", DEFAULT_TOPICS);
    if topics.is_empty() {
        return Err(ConfigError::new("KAFKA_TOPICS", "names no topic"));
    }
    for topic in topics.iter().filter(|t| t.starts_with('^')) {
        regex::Regex::new(topic).map_err(|e| {
            // A syntax error draws a caret diagram over several lines; the
            // process reports one line, so keep only the final `error: …`.
            let text = e.to_string();
            let why = text.lines().last().unwrap_or_default().trim().trim_start_matches("error: ");
            ConfigError::new("KAFKA_TOPICS", format!("bad regex {topic:?}: {why}"))
        })?;
    }
    Ok(topics)
}

/// The rest of the Kafka settings, read after the brokers and topics.
fn kafka_settings<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    brokers: String,
    topics: Vec<String>,
) -> Result<KafkaSettings, ConfigError> {
    Ok(KafkaSettings {
        brokers,
        group_id_prefix: env.string("KAFKA_GROUP_ID", "mesaya-realtime"),
        topics,
        max_record_bytes: env.positive("KAFKA_MAX_RECORD_BYTES", 1 << 20)?,
        fetch_wait_max: env.duration("KAFKA_FETCH_WAIT_MAX", Duration::from_millis(100))?,
    })
}

/// `REST_BASE_URL`: plain http, without a trailing slash.
fn rest_base_url<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<String, ConfigError> {
    let rest_base_url = env.string("REST_BASE_URL", "http://localhost:3000").trim_end_matches('/').to_string();
    match rest_base_url.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() && uri.query().is_none() => {
            Ok(rest_base_url)
        }
        Ok(uri) if uri.scheme_str() == Some("https") => Err(ConfigError::new(
            "REST_BASE_URL",
            "https is not supported: reach the API over plain http inside the cluster (e.g. a sidecar or service address)",
        )),
        _ => {
            Err(ConfigError::new("REST_BASE_URL", format!("expected http://host[:port][/path], got {rest_base_url:?}")))
        }
    }
}

/// `SECTION_SNAPSHOT_PATH`: absolute, with an `{id}` to fill in.
fn snapshot_path<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<String, ConfigError> {
    let snapshot_path = env.string("SECTION_SNAPSHOT_PATH", "/api/section/{id}");
    if !snapshot_path.starts_with('/') || !snapshot_path.contains("{id}") {
        return Err(ConfigError::new(
            "SECTION_SNAPSHOT_PATH",
            format!("must start with / and contain {{id}}, got {snapshot_path:?}"),
        ));
    }
    Ok(snapshot_path)
}

fn log_format<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<LogFormat, ConfigError> {
    match env.string("LOG_FORMAT", "json").to_ascii_lowercase().as_str() {
        "json" => Ok(LogFormat::Json),
        "text" | "pretty" => Ok(LogFormat::Text),
        other => Err(ConfigError::new("LOG_FORMAT", format!("expected json or text, got {other:?}"))),
    }
}

/// `LOG_LEVEL`: anything `tracing`'s filter takes.
fn log_level<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<String, ConfigError> {
    let log_level = env.string("LOG_LEVEL", "info");
    tracing_subscriber::EnvFilter::try_new(&log_level)
        .map_err(|e| ConfigError::new("LOG_LEVEL", format!("{log_level:?}: {e}")))?;
    Ok(log_level)
}

/// `RESUME_*`, every one read (`--check-config` lists them); `None` without
/// a secret.
fn resume_config<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Option<ResumeConfig>, ConfigError> {
    let resume = ResumeConfig {
        secret: resume_secret(env)?,
        window: env.duration("RESUME_WINDOW", Duration::from_secs(120))?,
        reauth_after: env.duration("RESUME_REAUTH_AFTER", Duration::from_secs(15 * 60))?,
        buffer_frames: env.count("RESUME_BUFFER", 1024)?,
        buffer_bytes: env.bytes("RESUME_BUFFER_BYTES", 64 << 20)?,
    };
    // An empty secret counts as unset.
    Ok((!resume.secret.is_empty()).then_some(resume))
}

fn pending_limits<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<PendingLimits, ConfigError> {
    Ok(PendingLimits {
        max_pending: env.positive("HTTP_MAX_PENDING", 1024)?,
        max_per_client: env.count("HTTP_MAX_PENDING_PER_IP", 32)?,
    })
}

fn admission_settings<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    open_files: usize,
    pending: PendingLimits,
    snapshot_concurrency: usize,
) -> Result<AdmissionSettings, ConfigError> {
    Ok(AdmissionSettings {
        max_connections: max_connections(env, open_files, pending.max_pending, snapshot_concurrency)?,
        max_connections_per_user: env.count("WS_MAX_CONNECTIONS_PER_USER", 64)?,
        trusted_proxies: trusted_proxies(env)?,
        pending,
    })
}

/// `WS_*` of a live session; its token leeway is `JWT_LEEWAY`'s.
fn session_settings<F: Fn(&str) -> Option<String>>(
    env: &Env<F>,
    token_leeway: Duration,
) -> Result<SessionSettings, ConfigError> {
    Ok(SessionSettings {
        queue: QueueLimits {
            max_frames: env.positive("WS_QUEUE_MAX_FRAMES", 1024)?,
            max_bytes: env.positive("WS_QUEUE_MAX_BYTES", 4 << 20)?,
        },
        ping_interval: env.duration("WS_PING_INTERVAL", Duration::from_secs(20))?,
        pong_timeout: env.duration("WS_PONG_TIMEOUT", Duration::from_secs(10))?,
        max_frame_bytes: env.positive("WS_MAX_FRAME_BYTES", 64 << 10)?,
        client_messages_per_second: client_rate(env)?,
        token_leeway,
        write_timeout: env.duration("WS_WRITE_TIMEOUT", Duration::from_secs(10))?,
        refresh_notice: env.duration("WS_REFRESH_NOTICE", Duration::from_secs(60))?,
        compression: compression(env)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        config_with_files(vars, 20_000)
    }

    fn config_with_files(vars: &[(&str, &str)], open_files: usize) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()), open_files)
    }

    #[test]
    fn defaults_need_only_a_key() {
        let config = config(&[("JWT_SECRET", "s3cret-s3cret-s3cret")]).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.kafka.brokers, "localhost:9092");
        assert_eq!(config.kafka.topics, vec![DEFAULT_TOPICS.to_string()]);
        assert_eq!(config.allowed_roles, vec!["USER", "OWNER", "ADMIN"]);
        assert_eq!(config.staff_roles, vec!["ADMIN"]);
        assert_eq!(config.public_reservation_fields, PublicFields::parse(DEFAULT_PUBLIC_RESERVATION_FIELDS));
        assert_eq!(config.snapshot_path, "/api/section/{id}");
        assert_eq!(config.rest_timeout, Duration::from_secs(5));
        assert!(config.shards >= 1);
        assert_eq!(
            config.admission.max_connections,
            20_000 - 1024 - 2 * 256 - 256,
            "the open-file limit minus the pending connections, the API's (in use and idle) and 256 more"
        );
        assert_eq!(config.admission.max_connections_per_user, 64);
        assert_eq!(config.admission.pending, PendingLimits { max_pending: 1024, max_per_client: 32 });
        assert_eq!(config.admin, None, "the operations endpoints stay on the public port");
        assert_eq!(config.session.write_timeout, Duration::from_secs(10));
        assert!(config.resume.is_none(), "resume is off without a secret");
        assert_eq!(config.session.compression, Some(CompressionSettings { min_bytes: 256 }), "compression on");
    }

    #[test]
    fn compression_is_turned_off_by_name() {
        let compression =
            |vars: &[(&str, &str)]| config(&[&[("JWT_SECRET", "k")], vars].concat()).unwrap().session.compression;
        assert_eq!(compression(&[("WS_COMPRESSION", "off")]), None);
        assert_eq!(compression(&[("WS_COMPRESSION", "OFF")]), None);
        assert_eq!(
            compression(&[("WS_COMPRESSION", "on"), ("WS_COMPRESSION_MIN_BYTES", "0")]),
            Some(CompressionSettings { min_bytes: 0 })
        );
    }

    #[test]
    fn resume_is_on_with_a_secret_and_sizes_take_units() {
        let resume = config(&[("JWT_SECRET", "k"), ("RESUME_SECRET", RESUME_KEY)]).unwrap().resume.unwrap();
        assert_eq!(
            (resume.window, resume.reauth_after, resume.buffer_frames, resume.buffer_bytes),
            (Duration::from_secs(120), Duration::from_secs(900), 1024, 64 << 20)
        );
        let sized = |value: &str| config_of(value).map(|c| c.resume.unwrap().buffer_bytes);
        assert_eq!(sized("1048576"), Ok(1 << 20));
        assert_eq!(sized("512KiB"), Ok(512 << 10));
        assert_eq!(sized("2 GiB"), Ok(2 << 30));
        assert_eq!(sized("5MB"), Ok(5_000_000));
        assert!(config(&[("JWT_SECRET", "k"), ("RESUME_SECRET", " ")]).unwrap().resume.is_none(), "blank is unset");
    }

    fn config_of(buffer_bytes: &str) -> Result<Config, ConfigError> {
        config(&[("JWT_SECRET", "k"), ("RESUME_SECRET", RESUME_KEY), ("RESUME_BUFFER_BYTES", buffer_bytes)])
    }

    /// A resume secret of the shortest length allowed.
    const RESUME_KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn trusted_proxies_take_cidrs_and_bare_addresses() {
        let config = config(&[("JWT_SECRET", "k"), ("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7,::1")]).unwrap();
        let nets: Vec<String> = config.admission.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, vec!["10.0.0.0/8", "192.168.1.7/32", "::1/128"]);
    }

    #[test]
    fn sessions_get_the_descriptors_the_pending_connections_the_api_and_the_rest_leave() {
        let key = ("JWT_SECRET", "k");
        let sessions = |vars: &[(&str, &str)], open_files| {
            config_with_files(&[&[key][..], vars].concat(), open_files).map(|c| c.admission.max_connections)
        };
        let small = [("HTTP_MAX_PENDING", "100"), ("SNAPSHOT_CONCURRENCY", "44")];
        assert_eq!(sessions(&small, 10_000), Ok(10_000 - 100 - 2 * 44 - 256));
        assert_eq!(sessions(&[small[0], small[1], ("WS_MAX_CONNECTIONS", "9556")], 10_000), Ok(9_556), "it fits");
        assert_eq!(sessions(&[("WS_MAX_CONNECTIONS", "5")], 1_797), Ok(5), "1024 + 2 × 256 + 256 + 5");

        let too_many = sessions(&[small[0], small[1], ("WS_MAX_CONNECTIONS", "9557")], 10_000).unwrap_err();
        assert_eq!(too_many.variable, "WS_MAX_CONNECTIONS");
        assert!(too_many.problem.contains("9557 sessions do not fit") && too_many.problem.contains("room for 9556"));
        let no_room = sessions(&[], 1_792).unwrap_err();
        assert_eq!(no_room.variable, "WS_MAX_CONNECTIONS", "the default has no room: {no_room}");
        assert!(no_room.problem.contains("HTTP_MAX_PENDING (1024)"), "{no_room}");
    }

    #[test]
    fn the_admin_listener_is_on_when_admin_port_is_set() {
        let key = ("JWT_SECRET", "k");
        let admin = |vars: &[(&str, &str)]| config(&[&[key][..], vars].concat()).map(|c| c.admin);
        assert_eq!(admin(&[("ADMIN_PORT", "9090")]), Ok(Some("127.0.0.1:9090".parse().unwrap())));
        assert_eq!(admin(&[("ADMIN_HOST", "::"), ("ADMIN_PORT", "9090")]), Ok(Some("[::]:9090".parse().unwrap())));
        assert_eq!(admin(&[("ADMIN_HOST", "10.0.0.7")]), Ok(None), "a host alone opens nothing");
        assert_eq!(admin(&[("ADMIN_PORT", "0")]).unwrap_err().variable, "ADMIN_PORT");
    }

    #[test]
    fn every_variable_read_is_reported_with_its_source_and_secrets_redacted() {
        let vars = [("JWT_SECRET", "s3cret-s3cret"), ("PORT", "9000"), ("REST_TIMEOUT", "2s")];
        let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        let (config, settings) = Config::read(lookup, 20_000);
        assert!(config.is_ok());
        let line = |variable: &str| {
            settings.iter().find(|s| s.variable == variable).map(ToString::to_string).unwrap_or_default()
        };
        assert_eq!(line("JWT_SECRET"), "JWT_SECRET=<redacted> (set)");
        assert_eq!(line("PORT"), "PORT=9000 (set)");
        assert_eq!(line("REST_TIMEOUT"), "REST_TIMEOUT=2s (set)");
        assert_eq!(line("DRAIN_TIMEOUT"), "DRAIN_TIMEOUT=10s (default)");
        assert_eq!(line("KAFKA_BROKERS"), "KAFKA_BROKERS=localhost:9092 (default)");
        assert_eq!(line("RESUME_BUFFER_BYTES"), "RESUME_BUFFER_BYTES=67108864 (default)");
        assert_eq!(
            line("WS_MAX_CONNECTIONS"),
            format!("WS_MAX_CONNECTIONS={} (default)", 20_000 - 1024 - 2 * 256 - 256)
        );
        assert_eq!(line("JWT_ISSUER"), "JWT_ISSUER unset (default)");
        let mut names: Vec<_> = settings.iter().map(|s| s.variable).collect();
        names.dedup();
        assert_eq!(names.len(), settings.len(), "one line per variable");

        let (failed, read) = Config::read(|name: &str| (name == "JWT_SECRET").then(|| "k".to_string()), 100);
        assert_eq!(failed.unwrap_err().variable, "WS_MAX_CONNECTIONS");
        assert!(read.iter().any(|s| s.variable == "WS_MAX_CONNECTIONS"), "read up to the problem");
    }

    #[test]
    fn go_service_names_are_accepted() {
        let config = config(&[
            ("JWT_PUBLIC_KEY", "\"-----BEGIN PUBLIC KEY-----\\nabc\\n-----END PUBLIC KEY-----\""),
            ("KAFKA_BROKER", "a:1,b:2"),
        ])
        .unwrap();
        assert_eq!(config.kafka.brokers, "a:1,b:2");
        assert_eq!(config.jwt.public_key_pem.unwrap(), "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----");
    }

    #[test]
    fn each_bad_value_names_its_variable() {
        let key = ("JWT_SECRET", "k");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "JWT_SECRET"),
            (&[key, ("PORT", "eighty")], "PORT"),
            (&[key, ("HOST", "::nope")], "HOST"),
            (&[key, ("SHARDS", "0")], "SHARDS"),
            (&[key, ("REST_TIMEOUT", "soon")], "REST_TIMEOUT"),
            (&[key, ("REST_BASE_URL", "localhost:3000")], "REST_BASE_URL"),
            (&[key, ("REST_BASE_URL", "http://api:3000/v1?tenant=a")], "REST_BASE_URL"),
            (&[key, ("SECTION_SNAPSHOT_PATH", "/api/sections")], "SECTION_SNAPSHOT_PATH"),
            (&[key, ("KAFKA_TOPICS", "^mesa-ya.(")], "KAFKA_TOPICS"),
            (&[key, ("LOG_FORMAT", "xml")], "LOG_FORMAT"),
            (&[key, ("LOG_LEVEL", "info,=[")], "LOG_LEVEL"),
            (&[key, ("WS_QUEUE_MAX_FRAMES", "-1")], "WS_QUEUE_MAX_FRAMES"),
            // Values that would overflow an instant or a counter later.
            (&[key, ("WS_PING_INTERVAL", "1000000000years")], "WS_PING_INTERVAL"),
            (&[key, ("DRAIN_TIMEOUT", "25h")], "DRAIN_TIMEOUT"),
            (&[key, ("WS_CLIENT_RATE", "4294967296")], "WS_CLIENT_RATE"),
            (&[key, ("WS_CLIENT_RATE", "0")], "WS_CLIENT_RATE"),
            (&[key, ("WS_MAX_CONNECTIONS", "0")], "WS_MAX_CONNECTIONS"),
            (&[key, ("WS_MAX_CONNECTIONS_PER_USER", "-3")], "WS_MAX_CONNECTIONS_PER_USER"),
            (&[key, ("SNAPSHOT_CONCURRENCY", "0")], "SNAPSHOT_CONCURRENCY"),
            (&[key, ("TRUSTED_PROXIES", "10.0.0.0/33")], "TRUSTED_PROXIES"),
            (&[key, ("WS_WRITE_TIMEOUT", "never")], "WS_WRITE_TIMEOUT"),
            (&[key, ("WS_REFRESH_NOTICE", "soonish")], "WS_REFRESH_NOTICE"),
            (&[key, ("WS_COMPRESSION", "yes")], "WS_COMPRESSION"),
            (&[key, ("WS_COMPRESSION_MIN_BYTES", "small")], "WS_COMPRESSION_MIN_BYTES"),
            (&[key, ("WS_COMPRESSION", "off"), ("WS_COMPRESSION_MIN_BYTES", "-1")], "WS_COMPRESSION_MIN_BYTES"),
            (&[key, ("RESUME_WINDOW", "25h")], "RESUME_WINDOW"),
            (&[key, ("RESUME_BUFFER", "lots")], "RESUME_BUFFER"),
            (&[key, ("RESUME_BUFFER_BYTES", "64 parsecs")], "RESUME_BUFFER_BYTES"),
            (&[key, ("WS_PUBLIC_RESERVATION_FIELDS", "id,user name")], "WS_PUBLIC_RESERVATION_FIELDS"),
            (&[key, ("RESUME_SECRET", "0123456789abcdef0123456789abcde")], "RESUME_SECRET"),
            (&[key, ("RESUME_SECRET", RESUME_KEY), ("RESUME_REAUTH_AFTER", "later")], "RESUME_REAUTH_AFTER"),
            (&[key, ("RESUME_BUFFER_BYTES", "99999999999999999999GiB")], "RESUME_BUFFER_BYTES"),
            (&[key, ("HTTP_MAX_PENDING", "0")], "HTTP_MAX_PENDING"),
            (&[key, ("HTTP_MAX_PENDING_PER_IP", "a few")], "HTTP_MAX_PENDING_PER_IP"),
            (&[key, ("HTTP_MAX_PENDING", "100000")], "WS_MAX_CONNECTIONS"),
            (&[key, ("WS_MAX_CONNECTIONS", "20000")], "WS_MAX_CONNECTIONS"),
            (&[key, ("ADMIN_PORT", "admin")], "ADMIN_PORT"),
            (&[key, ("ADMIN_PORT", "9090"), ("ADMIN_HOST", "localhost")], "ADMIN_HOST"),
        ];
        for (vars, variable) in cases {
            let error = config(vars).unwrap_err();
            assert_eq!(error.variable, *variable, "{vars:?} gave {error}");
            assert!(error.to_string().contains(variable));
            assert_eq!(error.to_string().lines().count(), 1, "one line: {error}");
        }
    }
}
