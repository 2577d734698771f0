//! What the load generator's connections count while a measurement window is open, and
//! the summaries (percentiles, rates) printed from it.
//!
//! All connections run on one thread, so they share one [`Stats`] through
//! `Rc<RefCell<_>>`. Counters named `total_*` run for the whole life of the run (they
//! decide when everything sent has arrived); the others count only while `recording`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::{json, Value};

/// Microseconds since the first call: the clock that send times in bodies are read on.
/// Senders and receivers are in the same process, so no clock skew enters a latency.
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// Latency samples of connections in one group (for example the node the receivers are
/// on, in the cluster scenario).
pub const GROUPS: usize = 2;

#[derive(Default)]
pub struct Stats {
    pub recording: bool,
    // Whole run.
    pub total_sent: u64,
    pub total_expected: u64,
    pub total_received: u64,
    pub total_acks: u64,
    // While recording.
    pub sent: u64,
    pub deliveries: u64,
    pub acks: u64,
    pub latency_us: [Vec<u32>; GROUPS],
    pub ack_us: Vec<u32>,
    // Correctness: must stay zero.
    pub leaks: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub closed: u64,
    pub close_codes: BTreeMap<u16, u64>,
    pub connect_failures: u64,
    pub first_connect_failure: Option<String>,
}

pub type Shared = Rc<RefCell<Stats>>;

impl Stats {
    pub fn shared() -> Shared {
        Rc::new(RefCell::new(Stats::default()))
    }

    /// Starts a measurement window: clears the windowed counters.
    pub fn start_window(&mut self) {
        self.recording = true;
        self.sent = 0;
        self.deliveries = 0;
        self.acks = 0;
        for group in &mut self.latency_us {
            group.clear();
        }
        self.ack_us.clear();
    }

    pub fn stop_window(&mut self) {
        self.recording = false;
    }

    pub fn error(&mut self, message: &str) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message.chars().take(300).collect());
        }
    }

    pub fn connect_failure(&mut self, message: String) {
        self.connect_failures += 1;
        if self.first_connect_failure.is_none() {
            self.first_connect_failure = Some(message);
        }
    }

    /// The correctness counters, which must all be zero.
    pub fn correctness(&self) -> Value {
        json!({
            "leaks": self.leaks,
            "seq_gaps": self.gaps,
            "seq_duplicates": self.duplicates,
            "errors": self.errors,
            "first_error": self.first_error,
            "unexpected_closes": self.closed,
            "close_codes": self.close_codes,
            "connect_failures": self.connect_failures,
            "first_connect_failure": self.first_connect_failure,
        })
    }
}

/// p50, p90, p99 and max of a set of microsecond samples, in milliseconds.
pub fn percentiles_ms(samples: &mut [u32]) -> Value {
    if samples.is_empty() {
        return json!({ "samples": 0 });
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        ms(samples[i] as u64)
    };
    json!({
        "samples": samples.len(),
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": ms(*samples.last().unwrap_or(&0) as u64),
    })
}

/// The p99 of samples already sorted by [`percentiles_ms`], in milliseconds.
pub fn p99_ms(summary: &Value) -> f64 {
    summary["p99_ms"].as_f64().unwrap_or(f64::INFINITY)
}

/// Microseconds to milliseconds, rounded to the microsecond.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Rounds to `digits` decimals for printing.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}
