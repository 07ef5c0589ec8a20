//! The bounds the configuration sets on what waits for a client: plain
//! values, read by the configuration and kept by the use cases.

/// One client's outbound queue (`WS_QUEUE_MAX_FRAMES`, `WS_QUEUE_MAX_BYTES`).
#[derive(Clone, Copy, Debug)]
pub struct QueueLimits {
    pub max_frames: usize,
    pub max_bytes: usize,
}

/// How many connections may wait before their upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingLimits {
    /// For the instance; at least 1.
    pub max_pending: usize,
    /// For one client address; `0`: no cap.
    pub max_per_client: usize,
}
