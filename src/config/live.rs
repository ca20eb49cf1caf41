//! The configuration in force, behind one `ArcSwap`: requests take a snapshot at their start
//! (one atomic load) and keep it to the end, and a reload swaps the whole tree at once.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::ValidatedConfig;

#[derive(Clone)]
pub struct LiveConfig(Arc<ArcSwap<ValidatedConfig>>);

impl LiveConfig {
    pub fn new(cfg: ValidatedConfig) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(cfg)))
    }

    /// The current configuration; hold it for the whole request.
    pub fn load(&self) -> Arc<ValidatedConfig> {
        self.0.load_full()
    }

    /// Put a new, already validated configuration in force.
    pub fn replace(&self, cfg: ValidatedConfig) {
        self.0.store(Arc::new(cfg));
    }
}
