//! What the tasks of the server share: [`ServerContext`] across every shard
//! thread (read-only or atomic), [`ShardState`] among the tasks of one shard.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::application::admission::Admission;
use crate::application::authorize::Authorizer;
use crate::application::compression::SnapshotDeflater;
use crate::application::floor::SharedFloor;
use crate::application::hub::SectionHub;
use crate::application::readiness::Readiness;
use crate::application::restaurants::SharedRestaurants;
use crate::application::resume::ResumeSettings;
use crate::application::resume_buffer::ResumeBuffer;
use crate::config::SessionSettings;
use crate::domain::audience::StaffRoles;
use crate::shutdown::Shutdown;

use super::front::Pending;
use super::mailbox::Shards;
use super::section_reports::ShardSectionReports;

/// How often a drain looks whether every shard's sessions are done.
const DRAIN_POLL: Duration = Duration::from_millis(20);

pub struct ServerContext {
    pub authorizer: Authorizer,
    pub admission: Arc<Admission>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The public port's connections that have not upgraded.
    pub pending: Arc<Pending>,
    /// The operations endpoints are served on the public port: there is no
    /// admin listener.
    pub public_ops: bool,
    pub readiness: Arc<Readiness>,
    pub shutdown: Shutdown,
    pub shards: Shards,
    pub session: SessionSettings,
    /// How long sessions get, once shutdown is triggered, to write what is
    /// queued and their 1001.
    pub drain_timeout: Duration,
    /// Every section's objects as Kafka told them, for snapshots.
    pub floor: SharedFloor,
    /// Restaurants' owners as Kafka told them, and `WS_STAFF_ROLES`: who is
    /// staff of a section (SPEC §2.7).
    pub restaurants: SharedRestaurants,
    pub staff_roles: StaffRoles,
    /// Set when `RESUME_SECRET` is.
    pub resume: Option<ResumeSettings>,
}

impl ServerContext {
    /// Resolves once no session is left on any shard.
    pub async fn sessions_ended(&self) {
        while self.admission.held() > 0 {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

/// A shard's own state, shared by its tasks on its one thread.
pub struct ShardState<S> {
    pub index: usize,
    pub hub: Rc<RefCell<SectionHub>>,
    pub snapshots: S,
    pub section_reports: ShardSectionReports,
    /// The shard's resume buffer, and how far the ingest has come.
    pub resume_buffer: RefCell<ResumeBuffer>,
    /// Snapshot frames compressed once per body; `None` with compression off.
    pub snapshot_deflater: Option<RefCell<SnapshotDeflater>>,
    pub ctx: Arc<ServerContext>,
}
