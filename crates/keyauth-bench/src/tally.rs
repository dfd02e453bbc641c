//! What the load tasks record: how each call went, and the latencies of answered calls in
//! mergeable, fixed-size histograms (each load task keeps its own, merged at the end, so
//! recording costs no lock).

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::workloads::{CLASSES, Class};

/// How a call went: the answer expected, another answer (with what it was), or an RPC error.
pub enum Outcome {
    Expected,
    Unexpected(String),
    Failed(tonic::Status),
}

/// Latencies in nanoseconds, 1 µs to 60 s, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// What one workload did: latencies per class, problems, and the time it ran.
#[derive(Default)]
pub struct Tally {
    latencies: [Option<Histogram<u64>>; CLASSES],
    pub unexpected: [u64; CLASSES],
    pub failed: [u64; CLASSES],
    pub first_problem: Option<String>,
    pub elapsed: Duration,
}

impl Tally {
    pub fn record(&mut self, class: Class, latency: Duration, outcome: Outcome) {
        let c = class.index();
        match outcome {
            Outcome::Expected => {}
            Outcome::Unexpected(what) => {
                self.unexpected[c] += 1;
                self.first_problem.get_or_insert(what);
            }
            Outcome::Failed(status) => {
                // A failed call has no answer to time.
                self.failed[c] += 1;
                self.first_problem
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
                return;
            }
        }
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latencies[c]
            .get_or_insert_with(new_histogram)
            .saturating_record(nanos);
    }

    pub fn merge(&mut self, other: Tally) {
        for c in 0..CLASSES {
            if let Some(h) = &other.latencies[c] {
                self.latencies[c]
                    .get_or_insert_with(new_histogram)
                    .add(h)
                    .expect("histograms share their bounds");
            }
            self.unexpected[c] += other.unexpected[c];
            self.failed[c] += other.failed[c];
        }
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
        self.elapsed += other.elapsed;
    }

    /// Latencies of the given classes, merged.
    pub fn histogram(&self, classes: &[Class]) -> Histogram<u64> {
        let mut merged = new_histogram();
        for c in classes {
            if let Some(h) = &self.latencies[c.index()] {
                merged.add(h).expect("histograms share their bounds");
            }
        }
        merged
    }

    pub fn total_calls(&self) -> u64 {
        self.latencies.iter().flatten().map(Histogram::len).sum()
    }

    pub fn problems_note(&self) -> String {
        let unexpected: u64 = self.unexpected.iter().sum();
        let failed: u64 = self.failed.iter().sum();
        match &self.first_problem {
            None => String::new(),
            Some(first) => format!("  ({failed} failed, {unexpected} unexpected; first: {first})"),
        }
    }
}
