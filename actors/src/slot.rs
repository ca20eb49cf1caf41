//! A `Slot` holds the current `ActorRef` of a supervised child. Supervisors replace it on
//! restart, so handles never keep a reference to a dead actor.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use ractor::{ActorRef, Message};

/// Current address of a restartable actor; empty while it is down.
pub struct Slot<M: Message>(Arc<ArcSwapOption<ActorRef<M>>>);

impl<M: Message> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M: Message> Default for Slot<M> {
    fn default() -> Self {
        Self(Arc::new(ArcSwapOption::empty()))
    }
}

impl<M: Message> Slot<M> {
    pub fn set(&self, actor: ActorRef<M>) {
        self.0.store(Some(Arc::new(actor)));
    }

    pub fn clear(&self) {
        self.0.store(None);
    }

    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0.load_full().map(|a| (*a).clone())
    }

    /// Fire-and-forget; false when the slot is empty or the send failed. A message sent to
    /// an actor that is dying may still be lost, so callers must not depend on delivery
    /// (health reports and discovery results are level-triggered for that reason).
    pub fn cast(&self, msg: M) -> bool {
        match self.0.load().as_ref() {
            Some(actor) => actor.cast(msg).is_ok(),
            None => false,
        }
    }
}
