//! Reading and printing the figures: the gateway's Prometheus text, latency histograms, the
//! exactly-once check and the table cells.

use super::*;

// ---------------------------------------------------------------------------------------------
// Prometheus text

pub(crate) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `(upper bound, cumulative count)` of a histogram's buckets.
pub(crate) fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound.contains("Inf") { f64::INFINITY } else { bound.parse().ok()? };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect()
}

/// The q-quantile of cumulative buckets, interpolated linearly inside its bucket; with the bucket's
/// upper bound.
pub(crate) fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<(f64, f64)> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= target {
            if bound.is_infinite() {
                return Some((lower, bound));
            }
            let inside = if count > below { (target - below) / (count - below) } else { 1.0 };
            return Some((lower + inside * (bound - lower), bound));
        }
        (lower, below) = (bound, count);
    }
    None
}

pub(crate) fn delta_histogram(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(bound, count)| {
            let earlier = before.iter().find(|(b, _)| *b == bound).map_or(0.0, |(_, c)| *c);
            (bound, count - earlier)
        })
        .collect()
}

pub(crate) fn ms(seconds: f64) -> String {
    if seconds.is_infinite() { "∞".into() } else { format!("{:.2} ms", seconds * 1000.0) }
}

/// A server's own latency over the measured window, in seconds: the gateway's read from its
/// Prometheus histogram (`mesaya_delivery_seconds`: an estimate inside the bucket, and the
/// bucket's upper bound), the raw writer's from its own histogram (1/16-octave buckets).
#[derive(Clone, Copy)]
pub(crate) struct OwnLatency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    /// The gateway's: the upper bounds of the buckets that p50, p99 and p99.9 fall in.
    pub(crate) buckets: Option<[f64; 3]>,
}

impl OwnLatency {
    /// For the summary table: p50 and p99.
    pub(crate) fn short(&self) -> String {
        match self.buckets {
            Some([_, b99, _]) => format!("p50 ≈ {}, p99 ≈ {} (bucket ≤ {})", ms(self.p50), ms(self.p99), ms(b99)),
            None => format!("p50 {}, p99 {}", ms(self.p50), ms(self.p99)),
        }
    }
}

impl std::fmt::Display for OwnLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.buckets {
            Some([b50, b99, b999]) => write!(
                f,
                "p50 ≈ {} (bucket ≤ {}), p99 ≈ {} (bucket ≤ {}), p99.9 bucket ≤ {}",
                ms(self.p50),
                ms(b50),
                ms(self.p99),
                ms(b99),
                ms(b999)
            ),
            None => write!(f, "p50 {}, p99 {}, p99.9 {}", ms(self.p50), ms(self.p99), ms(self.p999)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A log-linear latency histogram (µs, 16 sub-buckets per power of two: ≤ 6 % error)

pub(crate) struct Latencies {
    pub(crate) buckets: Vec<AtomicU64>,
}

impl Latencies {
    pub(crate) fn new() -> Self {
        Self { buckets: (0..16 + 60 * 16).map(|_| AtomicU64::new(0)).collect() }
    }

    pub(crate) fn index(us: u64) -> usize {
        if us < 16 {
            return us as usize;
        }
        let msb = 63 - us.leading_zeros() as usize;
        16 + (msb - 4) * 16 + ((us >> (msb - 4)) & 15) as usize
    }

    pub(crate) fn upper(index: usize) -> u64 {
        if index < 16 {
            return index as u64;
        }
        let msb = (index - 16) / 16 + 4;
        let sub = ((index - 16) % 16) as u64;
        ((16 + sub + 1) << (msb - 4)) - 1
    }

    pub(crate) fn record(&self, us: u64) {
        self.buckets[Self::index(us).min(self.buckets.len() - 1)].fetch_add(1, Relaxed);
    }

    pub(crate) fn reset(&self) {
        self.buckets.iter().for_each(|bucket| bucket.store(0, Relaxed));
    }

    pub(crate) fn quantile_ms(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target.max(1) {
                return Some(Self::upper(i) as f64 / 1000.0);
            }
        }
        None
    }
}

pub(crate) struct Exactness {
    pub(crate) expected: u64,
    pub(crate) received: u64,
    /// Frames missing before a later one arrived, or never arrived on a connection that ended:
    /// lost for good.
    pub(crate) lost: u64,
    /// Frames not arrived on a live connection when the row ended (after its drain time): lost
    /// or still queued.
    pub(crate) undelivered: u64,
    pub(crate) dups: u64,
    pub(crate) unexpected: u64,
    pub(crate) others: u64,
    pub(crate) ended_early: usize,
}

impl std::fmt::Display for Exactness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected {} frames, received {}: lost {}, not arrived on a live connection by the end {}, duplicates {}, \
             beyond the last published {}, other frames {}, connections ended by the server {}",
            self.expected,
            self.received,
            self.lost,
            self.undelivered,
            self.dups,
            self.unexpected,
            self.others,
            self.ended_early
        )
    }
}

pub(crate) fn own_latency_cell(result: Option<&StreamResult>) -> String {
    result.map_or("—".into(), |r| r.own_latency.map_or("no deliveries".into(), |own| own.short()))
}

pub(crate) fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("—".into(), f)
}
