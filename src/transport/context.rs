//! What the tasks of the server share: [`ServerContext`] across every shard
//! thread (read-only or atomic), [`ShardState`] among the tasks of one shard.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::application::authorize::Authorizer;
use crate::application::hub::SectionHub;
use crate::application::readiness::Readiness;
use crate::application::router::LearnedTables;
use crate::config::SessionSettings;
use crate::shutdown::Shutdown;

use super::mailbox::Shards;

pub struct ServerContext {
    pub authorizer: Authorizer,
    pub readiness: Arc<Readiness>,
    pub shutdown: Shutdown,
    pub shards: Shards,
    pub session: SessionSettings,
    /// How long sessions get, once shutdown is triggered, to write what is
    /// queued and their 1001.
    pub drain_timeout: Duration,
    /// Where snapshots report their tables (the ingest thread reads them).
    pub table_reports: Sender<LearnedTables>,
}

/// A shard's own state, shared by its tasks on its one thread.
pub struct ShardState<S> {
    pub index: usize,
    pub hub: RefCell<SectionHub>,
    pub snapshots: S,
    pub ctx: Arc<ServerContext>,
}
