//! Prometheus counters, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    pub jobs_started: AtomicU64,
    pub rounds_finished: AtomicU64,
    pub rounds_aborted: AtomicU64,
    pub dropouts: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub requests: AtomicU64,
    /// Refused requests by the error code they were answered with.
    refusals: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn refused(&self, code: &'static str) {
        *self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        counter(
            "shroud_jobs_started_total",
            "Jobs started.",
            &self.jobs_started,
        );
        counter(
            "shroud_rounds_finished_total",
            "Secure-aggregation rounds (tasks) that produced a sum.",
            &self.rounds_finished,
        );
        counter(
            "shroud_rounds_aborted_total",
            "Rounds (tasks) aborted; their privacy charge stays.",
            &self.rounds_aborted,
        );
        counter(
            "shroud_dropouts_total",
            "Parties of a round's cohort whose input is not in its sum.",
            &self.dropouts,
        );
        counter(
            "shroud_bytes_received_total",
            "Request body bytes received.",
            &self.bytes_received,
        );
        counter(
            "shroud_bytes_sent_total",
            "Protocol message and model bytes sent to parties.",
            &self.bytes_sent,
        );
        counter(
            "shroud_requests_total",
            "Requests answered.",
            &self.requests,
        );
        let _ = writeln!(
            out,
            "# HELP shroud_requests_refused_total Requests refused, by error code.\n# TYPE shroud_requests_refused_total counter"
        );
        for (code, n) in self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "shroud_requests_refused_total{{code=\"{code}\"}} {n}");
        }
        out
    }
}
