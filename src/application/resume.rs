//! Resuming after a reconnect: the alternative to the snapshot call for a
//! client that brings back a token, and the position frames that give
//! clients their tokens (docs/resume.md).
//!
//! A token is a section's Kafka positions, bound to the section and the
//! user, signed, with its issue time. It is served from the shard's
//! [`ResumeBuffer`] buffer when that buffer has everything after its positions;
//! otherwise the client gets the normal snapshot. Never an error close.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::domain::audience::Audience;
use crate::domain::frame::Frame;
use crate::domain::ids::{EntityId, SectionId};
use crate::domain::protocol::CloseCode;
use crate::telemetry::METRICS;

use super::outbox::Outbox;
use super::ports::{ResumeGrant, ResumeTokens};
use super::resume_buffer::ResumeBuffer;

/// What resuming needs, shared by the shards.
pub struct ResumeSettings {
    pub tokens: Arc<dyn ResumeTokens + Send + Sync>,
    /// How old a token may be.
    pub window: Duration,
    /// How old a chain of resumes may be, counted from the snapshot that
    /// began it: older ones get a snapshot, so the API is asked again.
    pub reauth_after: Duration,
}

/// Why a resume fell back to the snapshot. Each is a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeFallback {
    /// Not signed with this secret, or not a token at all.
    Invalid,
    /// Issued longer than the window ago.
    Expired,
    OtherSection,
    OtherUser,
    /// The buffer does not have everything after the token's positions.
    Gap,
    /// The buffer has it, but more than half of what the client's queue
    /// may hold: it would be closed as a slow consumer at once.
    Backlog,
    /// The chain of resumes began longer than `RESUME_REAUTH_AFTER` ago.
    Reauth,
}

impl ResumeFallback {
    pub fn label(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::OtherSection => "other_section",
            Self::OtherUser => "other_user",
            Self::Gap => "gap",
            Self::Backlog => "backlog",
            Self::Reauth => "reauth",
        }
    }
}

/// A client asking to continue where `token` left it.
#[derive(Clone, Copy, Debug)]
pub struct ResumeRequest<'a> {
    pub section: SectionId,
    /// The section's restaurant, as Kafka told it.
    pub restaurant: Option<&'a EntityId>,
    pub sub: &'a str,
    pub token: &'a str,
}

/// The time, twice: the monotonic clock for the buffer, the wall clock
/// (seconds since the Unix epoch) for tokens, which other instances issue.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub instant: Instant,
    pub unix_secs: u64,
}

impl Now {
    pub fn current() -> Self {
        let unix_secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Self { instant: Instant::now(), unix_secs }
    }
}

/// A served resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resumed {
    /// Frames replayed.
    pub replayed: usize,
    /// When the chain of resumes it continues began: its positions carry it on.
    pub chain_started: u64,
}

/// Serves a resume: on success the registered client's outbox is live
/// with `section.resumed` and the missed frames queued as `audience` sees
/// them. Must run in the turn that registered the client, so that no frame
/// arrives between the catch-up and the live queue.
pub fn resume(
    settings: &ResumeSettings,
    buffer: &mut ResumeBuffer,
    outbox: &Outbox,
    request: ResumeRequest<'_>,
    audience: Audience,
    now: Now,
) -> Result<Resumed, ResumeFallback> {
    let opened = settings.tokens.open(request.token, request.sub).map_err(|_| ResumeFallback::Invalid)?;
    if opened.section != request.section {
        return Err(ResumeFallback::OtherSection);
    }
    if !opened.same_sub {
        return Err(ResumeFallback::OtherUser);
    }
    // A second of slack for clocks, no more.
    if opened.issued_at > now.unix_secs + 1 {
        return Err(ResumeFallback::Invalid);
    }
    let age = Duration::from_secs(now.unix_secs.saturating_sub(opened.issued_at));
    if age > settings.window {
        return Err(ResumeFallback::Expired);
    }
    if now.unix_secs.saturating_sub(opened.chain_started) > settings.reauth_after.as_secs() {
        return Err(ResumeFallback::Reauth);
    }
    let missed = buffer
        .catch_up(request.section, request.restaurant, &opened.positions, age, now.instant)
        .map_err(|_| ResumeFallback::Gap)?;
    if !outbox.has_room_for(&missed) {
        return Err(ResumeFallback::Backlog);
    }
    outbox.go_live_resumed(&missed, opened.positions, audience);
    // The section (or its restaurant) was deleted while the client was away:
    // it has the delete frame now, and the close that follows one.
    if missed.iter().any(|delivery| delivery.ends_section) {
        outbox.close_after_queue(CloseCode::NORMAL);
    }
    Ok(Resumed { replayed: missed.len(), chain_started: opened.chain_started })
}

/// The connection a position is for.
#[derive(Clone, Copy, Debug)]
pub struct PositionFor<'a> {
    pub section: SectionId,
    pub sub: &'a str,
    /// When its chain of resumes began (its snapshot, or the one before the
    /// resumes it continues).
    pub chain_started: u64,
}

/// Why no position frame could be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoPosition {
    /// The ingest has not told the shard where it stands yet.
    NotYet,
    /// More partitions than a token can name: the client resumes never.
    TooManyPartitions,
}

/// A `section.position` frame for a client of `section`, to queue behind
/// everything queued for it: the shard's positions cover only frames it has
/// routed, all of which are ahead of it. A resumed client's own token counts
/// too, where this instance has not caught up with it yet. [`NoPosition::NotYet`] before the
/// ingest has told the shard where it stands.
pub fn position_frame(
    settings: &ResumeSettings,
    buffer: &ResumeBuffer,
    outbox: &Outbox,
    holder: PositionFor<'_>,
    now: Now,
) -> Result<Frame, NoPosition> {
    if buffer.positions().is_empty() {
        return Err(NoPosition::NotYet);
    }
    let mut positions = buffer.positions().clone();
    outbox.with_already_sent(|sent| positions.advance_all(sent));
    let PositionFor { section, sub, chain_started } = holder;
    let grant = ResumeGrant { section, sub, issued_at: now.unix_secs, chain_started, positions: &positions };
    let token = settings.tokens.issue(&grant).map_err(|_| NoPosition::TooManyPartitions)?;
    Ok(Frame::position(&token))
}

/// Positions are coalesced: at most one per client per this.
pub const POSITION_EVERY: Duration = Duration::from_secs(1);

/// When a client that opted in gets its next `section.position`: at the
/// latest a second after the first event it has no position for; while
/// events keep coming, riding along with an event write once a second has
/// passed since the last one (so a busy client pays no write for it); and,
/// in a quiet section, every half window, so that the token it holds never
/// expires.
#[derive(Debug)]
pub struct PositionSchedule {
    refresh: Duration,
    last: Option<Instant>,
    /// When the first event written since the last position was written.
    uncovered_since: Option<Instant>,
}

impl PositionSchedule {
    /// For a client just gone live: its first position follows the snapshot
    /// (or the catch-up) at once.
    pub fn new(window: Duration, now: Instant) -> Self {
        Self { refresh: (window / 2).max(POSITION_EVERY), last: None, uncovered_since: Some(now) }
    }

    /// Whether a position may go out behind the frames about to be written.
    pub fn rides_along(&self, now: Instant) -> bool {
        self.uncovered_since.is_some() && self.last.is_none_or(|last| last + POSITION_EVERY <= now)
    }

    pub fn events_written(&mut self, now: Instant) {
        self.uncovered_since.get_or_insert(now);
    }

    pub fn queued(&mut self, now: Instant) {
        self.last = Some(now);
        self.uncovered_since = None;
    }

    /// When the next position is due at the latest.
    pub fn due(&self) -> Option<Instant> {
        let after_events = self.uncovered_since.map(|since| {
            let due = since + POSITION_EVERY;
            self.last.map_or(due, |last| due.max(last + POSITION_EVERY))
        });
        let refresh = self.last.map(|last| last + self.refresh);
        after_events.into_iter().chain(refresh).min()
    }
}

/// A client brought a resume token: served from the resume buffer (this
/// many frames), or given a snapshot, for this reason.
pub struct ResumeAttempted {
    pub section: SectionId,
    pub outcome: Result<Resumed, ResumeFallback>,
}

impl ResumeAttempted {
    pub fn emit(self) {
        let label = self.outcome.map_or_else(ResumeFallback::label, |_| "resumed");
        METRICS.resumes.with_label_values(&[label]).inc();
        match self.outcome {
            Ok(Resumed { replayed, .. }) => {
                METRICS.frames_replayed.inc_by(replayed as u64);
                tracing::info!(section = %self.section, replayed, "session resumed");
            }
            Err(fallback) => {
                tracing::info!(section = %self.section, reason = fallback.label(), "resume refused; snapshot instead")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::application::outbox::Next;
    use crate::application::ports::{InvalidResumeToken, OpenedToken, TooManyPartitions};
    use crate::application::resume_buffer::tests::{ROOMY, S1, S2, frame_at, section, started_at, tables};
    use crate::domain::audience::UserId;
    use crate::domain::limits::QueueLimits;
    use crate::domain::position::{Position, Positions};

    /// Tokens in the clear: `section|sub|issued_at|chain_started|next offset`.
    struct PlainTokens;

    impl ResumeTokens for PlainTokens {
        fn issue(&self, grant: &ResumeGrant<'_>) -> Result<String, TooManyPartitions> {
            let next = grant.positions.get(tables()).ok_or(TooManyPartitions)?;
            Ok(format!("{}|{}|{}|{}|{next}", grant.section, grant.sub, grant.issued_at, grant.chain_started))
        }

        fn open(&self, token: &str, sub: &str) -> Result<OpenedToken, InvalidResumeToken> {
            let parts: Vec<&str> = token.split('|').collect();
            let [section, issued_to, issued_at, chain_started, next] = parts[..] else {
                return Err(InvalidResumeToken);
            };
            let number = |text: &str| text.parse().map_err(|_| InvalidResumeToken);
            Ok(OpenedToken {
                section: SectionId::parse(section).ok_or(InvalidResumeToken)?,
                same_sub: issued_to == sub,
                issued_at: number(issued_at)?,
                chain_started: number(chain_started)?,
                positions: [(tables(), number(next)? as i64)].into_iter().collect(),
            })
        }
    }

    /// The connection of user u1 on S1, whose chain began at 900.
    fn holder() -> PositionFor<'static> {
        PositionFor { section: section(S1), sub: "u1", chain_started: 900 }
    }

    fn resumed(replayed: usize) -> Result<Resumed, ResumeFallback> {
        Ok(Resumed { replayed, chain_started: 900 })
    }

    fn settings() -> ResumeSettings {
        ResumeSettings {
            tokens: Arc::new(PlainTokens),
            window: Duration::from_secs(120),
            reauth_after: Duration::from_secs(900),
        }
    }

    /// A shard that began reading at offset 0 and has routed frames 0..n to S1.
    fn buffer_with(n: i64) -> ResumeBuffer {
        let mut buffer = started_at(0, ROOMY);
        for offset in 0..n {
            buffer.keep(section(S1), &frame_at(offset), Instant::now());
            buffer.record_done(Position { partition: tables(), offset: offset + 1 });
        }
        buffer
    }

    fn now(unix_secs: u64) -> Now {
        Now { instant: Instant::now(), unix_secs }
    }

    fn written(outbox: &Outbox) -> Vec<String> {
        let mut batch: Vec<Next> = Vec::new();
        outbox.fill_batch(100, |next| batch.push(next));
        batch.iter().map(|next| String::from_utf8(next.frame.utf8_bytes().to_vec()).unwrap()).collect()
    }

    fn outbox() -> Outbox {
        Outbox::new(QueueLimits { max_frames: 100, max_bytes: 1 << 20 }, UserId::new("u1"))
    }

    #[test]
    fn a_token_from_a_position_frame_resumes_with_exactly_what_came_after_it() {
        let settings = settings();
        let mut buffer = buffer_with(2);
        let frame = position_frame(&settings, &buffer, &outbox(), holder(), now(1000)).unwrap();
        let frame: serde_json::Value = serde_json::from_slice(frame.utf8_bytes()).unwrap();
        let token = frame["payload"]["token"].as_str().unwrap().to_string();
        assert_eq!(
            token,
            format!("{S1}|u1|1000|900|2"),
            "the shard's positions, for this section and user, issued now"
        );
        for offset in 2..4 {
            buffer.keep(section(S1), &frame_at(offset), Instant::now());
        }
        let outbox = outbox();
        let request = ResumeRequest { section: section(S1), restaurant: None, sub: "u1", token: &token };
        assert_eq!(resume(&settings, &mut buffer, &outbox, request, Audience::Staff, now(1010)), resumed(2));
        let frames = written(&outbox);
        assert_eq!(frames[0], r#"{"event":"section.resumed","payload":{"replayed":2}}"#);
        assert!(frames[1].contains(r#""offset":2"#) && frames[2].contains(r#""offset":3"#), "{frames:?}");
        assert_eq!(outbox.push_event(frame_at(1)), crate::application::outbox::PushOutcome::AlreadySent);
        assert_eq!(outbox.push_event(frame_at(4)), crate::application::outbox::PushOutcome::Queued);
    }

    #[test]
    fn a_resumed_client_on_an_instance_behind_its_token_keeps_the_token_positions() {
        let settings = settings();
        let mut buffer = buffer_with(2);
        let outbox = outbox();
        let ahead: Positions = [(tables(), 9)].into_iter().collect();
        let grant =
            ResumeGrant { section: section(S1), sub: "u1", issued_at: 1000, chain_started: 900, positions: &ahead };
        let token = settings.tokens.issue(&grant).unwrap();
        let request = ResumeRequest { section: section(S1), restaurant: None, sub: "u1", token: &token };
        assert_eq!(resume(&settings, &mut buffer, &outbox, request, Audience::Staff, now(1001)), resumed(0));
        let frame = position_frame(&settings, &buffer, &outbox, holder(), now(1002)).unwrap();
        let frame: serde_json::Value = serde_json::from_slice(frame.utf8_bytes()).unwrap();
        assert_eq!(
            frame["payload"]["token"],
            format!("{S1}|u1|1002|900|9"),
            "not the shard's 2: the client has up to 9"
        );
    }

    #[test]
    fn a_catch_up_ending_in_a_delete_closes_and_one_too_big_for_the_queue_falls_back() {
        let settings = settings();
        let token = issued_token(&settings);
        let request = ResumeRequest { section: section(S1), restaurant: None, sub: "u1", token: &token };
        let mut buffer = buffer_with(2);
        let mut deleted = frame_at(2);
        Arc::get_mut(&mut deleted).unwrap().ends_section = true;
        buffer.keep(section(S1), &deleted, Instant::now());
        let outbox = outbox();
        assert_eq!(resume(&settings, &mut buffer, &outbox, request, Audience::Staff, now(1000)), resumed(1));
        let close = outbox.close_request().expect("a close after the delete");
        assert_eq!((close.code, close.after_drain), (CloseCode::NORMAL, true));

        let mut buffer = buffer_with(2);
        buffer.keep(section(S1), &frame_at(2), Instant::now());
        let small = Outbox::new(QueueLimits { max_frames: 2, max_bytes: 1 << 20 }, UserId::new("u1"));
        assert_eq!(
            resume(&settings, &mut buffer, &small, request, Audience::Staff, now(1000)),
            Err(ResumeFallback::Backlog)
        );
    }

    #[test]
    fn positions_ride_along_with_busy_writes_and_come_within_a_second_or_half_a_window() {
        let start = Instant::now();
        let second = POSITION_EVERY;
        let mut schedule = PositionSchedule::new(Duration::from_secs(120), start);
        assert!(schedule.rides_along(start), "the first one goes out with the snapshot");
        schedule.queued(start);
        assert_eq!(schedule.due(), Some(start + Duration::from_secs(60)), "quiet: refreshed every half window");
        schedule.events_written(start + second / 10);
        assert!(!schedule.rides_along(start + second / 2), "at most one a second");
        assert_eq!(schedule.due(), Some(start + second + second / 10), "a second after the event");
        assert!(schedule.rides_along(start + second), "a busy client's next write carries it");
    }

    /// A token for S1 and u1, issued at 1000, after frames 0 and 1.
    fn issued_token(settings: &ResumeSettings) -> String {
        let grant_positions: Positions = [(tables(), 2)].into_iter().collect();
        let grant = ResumeGrant {
            section: section(S1),
            sub: "u1",
            issued_at: 1000,
            chain_started: 900,
            positions: &grant_positions,
        };
        settings.tokens.issue(&grant).unwrap()
    }

    #[test]
    fn every_other_case_falls_back_with_its_reason() {
        let settings = settings();
        let token = issued_token(&settings);
        let attempt = |section_id: &str, sub: &str, token: &str, unix_secs: u64, buffer: &mut ResumeBuffer| {
            let request = ResumeRequest { section: section(section_id), restaurant: None, sub, token };
            resume(&settings, buffer, &outbox(), request, Audience::Staff, now(unix_secs))
        };
        let mut buffer = buffer_with(2);
        assert_eq!(attempt(S1, "u1", "garbage", 1000, &mut buffer), Err(ResumeFallback::Invalid));
        assert_eq!(attempt(S2, "u1", &token, 1000, &mut buffer), Err(ResumeFallback::OtherSection));
        assert_eq!(attempt(S1, "u2", &token, 1000, &mut buffer), Err(ResumeFallback::OtherUser));
        assert_eq!(attempt(S1, "u1", &token, 1121, &mut buffer), Err(ResumeFallback::Expired));
        assert_eq!(attempt(S1, "u1", &token, 1120, &mut buffer), resumed(0), "within the window");
        assert_eq!(attempt(S1, "u1", &token, 998, &mut buffer), Err(ResumeFallback::Invalid), "issued in the future");
        let mut far_behind = buffer_with(6);
        assert_eq!(
            attempt(S1, "u1", &token, 1000, &mut far_behind),
            Err(ResumeFallback::Gap),
            "frames 2 and 3 dropped"
        );
        let mut settings = settings;
        settings.reauth_after = Duration::from_secs(150);
        let attempt = |unix_secs: u64, buffer: &mut ResumeBuffer| {
            let request = ResumeRequest { section: section(S1), restaurant: None, sub: "u1", token: &token };
            resume(&settings, buffer, &outbox(), request, Audience::Staff, now(unix_secs))
        };
        assert_eq!(attempt(1050, &mut buffer), resumed(0), "the chain began 150 s ago: still good");
        assert_eq!(attempt(1051, &mut buffer), Err(ResumeFallback::Reauth), "the API must be asked again");
    }
}
