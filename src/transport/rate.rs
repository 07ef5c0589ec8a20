//! A token bucket for client frames: browsers only ever send the occasional
//! `{"event":"ping"}`, so a flood is a bug or an attack.

use tokio::time::Instant;

pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// `per_second` sustained, bursts of twice that.
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        Self { capacity: per_second * 2.0, per_second, tokens: per_second * 2.0, refilled_at: Instant::now() }
    }

    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn allows_a_burst_then_the_sustained_rate() {
        let mut bucket = TokenBucket::new(5);
        assert_eq!((0..20).filter(|_| bucket.allow()).count(), 10);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..20).filter(|_| bucket.allow()).count(), 5);
    }
}
