//! Resuming after a reconnect: the alternative to the snapshot call for a
//! client that brings back a token, and the position frames that give
//! clients their tokens (README, "Resuming after a reconnect").
//!
//! A token is a section's Kafka positions, bound to the section and the
//! user, signed, with its issue time. It is served from the shard's
//! [`Replay`] buffer when that buffer has everything after its positions;
//! otherwise the client gets the normal snapshot. Never an error close.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::domain::frame::Frame;
use crate::domain::ids::SectionId;

use super::outbox::Outbox;
use super::ports::{ResumeGrant, ResumeTokens};
use super::replay::Replay;

/// What resuming needs, shared by the shards.
pub struct ResumeSettings {
    pub tokens: Arc<dyn ResumeTokens + Send + Sync>,
    /// How old a token may be.
    pub window: Duration,
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
}

impl ResumeFallback {
    pub fn label(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::OtherSection => "other_section",
            Self::OtherUser => "other_user",
            Self::Gap => "gap",
        }
    }
}

/// A client asking to continue where `token` left it.
#[derive(Clone, Copy, Debug)]
pub struct ResumeRequest<'a> {
    pub section: SectionId,
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

/// Serves a resume: on success the registered client's outbox is live
/// with `section.resumed` and the missed frames queued, and the count of
/// those frames is returned. Must run in the turn that registered the
/// client, so that no frame arrives between the replay and the live queue.
pub fn resume(
    settings: &ResumeSettings,
    replay: &mut Replay,
    outbox: &Outbox,
    request: ResumeRequest<'_>,
    now: Now,
) -> Result<usize, ResumeFallback> {
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
    if now.unix_secs.saturating_sub(opened.issued_at) > settings.window.as_secs() {
        return Err(ResumeFallback::Expired);
    }
    let missed = replay.replay(request.section, &opened.positions, now.instant).map_err(|_| ResumeFallback::Gap)?;
    outbox.go_live_resumed(&missed, opened.positions);
    Ok(missed.len())
}

/// A `section.position` frame for a client of `section`, to queue behind
/// everything queued for it: the shard's positions cover exactly the frames
/// it has routed so far, all of which are ahead of it. None before the
/// ingest has told the shard where it stands.
pub fn position_frame(
    settings: &ResumeSettings,
    replay: &Replay,
    section: SectionId,
    sub: &str,
    now: Now,
) -> Option<Frame> {
    let positions = replay.positions();
    if positions.is_empty() {
        return None;
    }
    let grant = ResumeGrant { section, sub, issued_at: now.unix_secs, positions };
    Some(Frame::position(&settings.tokens.issue(&grant)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::application::delivery::Delivery;
    use crate::application::outbox::{Next, QueueLimits};
    use crate::application::ports::{InvalidResumeToken, OpenedToken};
    use crate::application::replay::ReplayLimits;
    use crate::domain::entity::{Action, EntityKey, EntityKind};
    use crate::domain::position::{PartitionId, Position, Positions, Progress};

    const S1: &str = "11111111-1111-4111-8111-111111111111";
    const S2: &str = "22222222-2222-4222-8222-222222222222";

    /// Tokens in the clear: `section|sub|issued_at|next offset`.
    struct PlainTokens;

    impl ResumeTokens for PlainTokens {
        fn issue(&self, grant: &ResumeGrant<'_>) -> String {
            let token = format!(
                "{}|{}|{}|{}",
                grant.section,
                grant.sub,
                grant.issued_at,
                grant.positions.get(tables()).unwrap()
            );
            token
        }

        fn open(&self, token: &str, sub: &str) -> Result<OpenedToken, InvalidResumeToken> {
            let parts: Vec<&str> = token.split('|').collect();
            let [section, issued_to, issued_at, next] = parts[..] else { return Err(InvalidResumeToken) };
            Ok(OpenedToken {
                section: SectionId::parse(section).ok_or(InvalidResumeToken)?,
                same_sub: issued_to == sub,
                issued_at: issued_at.parse().map_err(|_| InvalidResumeToken)?,
                positions: [(tables(), next.parse().map_err(|_| InvalidResumeToken)?)].into_iter().collect(),
            })
        }
    }

    fn tables() -> PartitionId {
        PartitionId::new("mesa-ya.tables.events", 0)
    }

    fn section(id: &str) -> SectionId {
        SectionId::parse(id).unwrap()
    }

    fn settings() -> ResumeSettings {
        ResumeSettings { tokens: Arc::new(PlainTokens), window: Duration::from_secs(120) }
    }

    fn frame_at(offset: i64) -> Arc<Delivery> {
        Arc::new(Delivery {
            frame: Frame::event(EntityKind::Table, Action::Updated, &format!(r#"{{"offset":{offset}}}"#)),
            key: EntityKey::new(EntityKind::Table, format!("t{offset}").as_str()),
            action: Action::Updated,
            updated_at: None,
            ends_section: false,
            routed_at: Instant::now(),
            position: Some(Position { partition: tables(), offset }),
        })
    }

    /// A shard that began reading at offset 0 and has routed frames 0..n to S1.
    fn replay_with(n: i64) -> Replay {
        let mut replay = Replay::new(ReplayLimits { window: Duration::from_secs(120), per_section: 3, bytes: 1 << 20 });
        let mut progress = Progress::default();
        progress.assigned(tables(), 0);
        replay.merge_progress(&progress);
        for offset in 0..n {
            replay.keep(section(S1), &frame_at(offset), Instant::now());
            replay.record_done(Position { partition: tables(), offset: offset + 1 });
        }
        replay
    }

    fn now(unix_secs: u64) -> Now {
        Now { instant: Instant::now(), unix_secs }
    }

    fn written(outbox: &Outbox) -> Vec<String> {
        let mut batch: Vec<Next> = Vec::new();
        outbox.fill_batch(&mut batch, 100);
        batch.iter().map(|next| String::from_utf8(next.frame.utf8_bytes().to_vec()).unwrap()).collect()
    }

    fn outbox() -> Outbox {
        Outbox::new(QueueLimits { max_frames: 100, max_bytes: 1 << 20 })
    }

    #[test]
    fn a_token_from_a_position_frame_resumes_with_exactly_what_came_after_it() {
        let settings = settings();
        let mut replay = replay_with(2);
        let frame = position_frame(&settings, &replay, section(S1), "u1", now(1000)).unwrap();
        let frame: serde_json::Value = serde_json::from_slice(frame.utf8_bytes()).unwrap();
        let token = frame["payload"]["token"].as_str().unwrap().to_string();
        assert_eq!(token, format!("{S1}|u1|1000|2"), "the shard's positions, for this section and user, issued now");
        for offset in 2..4 {
            replay.keep(section(S1), &frame_at(offset), Instant::now());
        }
        let outbox = outbox();
        let request = ResumeRequest { section: section(S1), sub: "u1", token: &token };
        assert_eq!(resume(&settings, &mut replay, &outbox, request, now(1010)), Ok(2));
        let frames = written(&outbox);
        assert_eq!(frames[0], r#"{"event":"section.resumed","payload":{"replayed":2}}"#);
        assert!(frames[1].contains(r#""offset":2"#) && frames[2].contains(r#""offset":3"#), "{frames:?}");
        assert_eq!(outbox.push_event(frame_at(1)), crate::application::outbox::PushOutcome::AlreadySent);
        assert_eq!(outbox.push_event(frame_at(4)), crate::application::outbox::PushOutcome::Queued);
    }

    /// A token for S1 and u1, issued at 1000, after frames 0 and 1.
    fn issued_token(settings: &ResumeSettings) -> String {
        let grant_positions: Positions = [(tables(), 2)].into_iter().collect();
        settings.tokens.issue(&ResumeGrant {
            section: section(S1),
            sub: "u1",
            issued_at: 1000,
            positions: &grant_positions,
        })
    }

    #[test]
    fn every_other_case_falls_back_with_its_reason() {
        let settings = settings();
        let token = issued_token(&settings);
        let attempt = |section_id: &str, sub: &str, token: &str, unix_secs: u64, replay: &mut Replay| {
            let request = ResumeRequest { section: section(section_id), sub, token };
            resume(&settings, replay, &outbox(), request, now(unix_secs))
        };
        let mut replay = replay_with(2);
        assert_eq!(attempt(S1, "u1", "garbage", 1000, &mut replay), Err(ResumeFallback::Invalid));
        assert_eq!(attempt(S2, "u1", &token, 1000, &mut replay), Err(ResumeFallback::OtherSection));
        assert_eq!(attempt(S1, "u2", &token, 1000, &mut replay), Err(ResumeFallback::OtherUser));
        assert_eq!(attempt(S1, "u1", &token, 1121, &mut replay), Err(ResumeFallback::Expired));
        assert_eq!(attempt(S1, "u1", &token, 1120, &mut replay), Ok(0), "within the window");
        assert_eq!(attempt(S1, "u1", &token, 998, &mut replay), Err(ResumeFallback::Invalid), "issued in the future");
        let mut far_behind = replay_with(6);
        assert_eq!(
            attempt(S1, "u1", &token, 1000, &mut far_behind),
            Err(ResumeFallback::Gap),
            "frames 2 and 3 dropped"
        );
    }
}
