//! Process lifecycle flags read by readiness, the accept loop and the request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use llmmux_actors::root::SupervisionReport;

pub struct Lifecycle {
    draining: AtomicBool,
    escalated: AtomicBool,
    pub started: Instant,
    /// Restart counts of the supervised children.
    pub supervision: SupervisionReport,
}

impl Lifecycle {
    pub fn new(supervision: SupervisionReport) -> Self {
        Self {
            draining: AtomicBool::new(false),
            escalated: AtomicBool::new(false),
            started: Instant::now(),
            supervision,
        }
    }

    /// Shutting down: readiness fails and new proxied requests get 503.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The actor tree exceeded its restart budget: the process is going down.
    pub fn is_escalated(&self) -> bool {
        self.escalated.load(Ordering::Acquire)
    }

    pub fn escalate(&self) {
        self.escalated.store(true, Ordering::Release);
    }
}
