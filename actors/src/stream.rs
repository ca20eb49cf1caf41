//! Per-request stream actors and their sharded supervisors.
//!
//! A [`StreamActor`] owns the control of one streaming response: its cancellation and its
//! mailbox (cancel, fault injection). The pump itself (upstream body → transformed SSE
//! frames → client) runs inside the client's response body, polled by the client
//! connection's own task, so a streamed event wakes no task of its own; response bytes
//! never pass through the mailbox. The actor's state cancels the pump when dropped, so if the
//! actor dies for any reason (panic included) the pump is told at once and ends its stream
//! with an SSE error event instead of hanging. The pump's [`PumpCtx`] tells the actor when
//! the stream ended, however it ended (dropping it is enough: a client that leaves drops
//! the body, and the pump with it).
//!
//! Stream actors are temporary: their supervisor never restarts them.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures_util::task::AtomicWaker;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use tracing::warn;

use crate::slot::Slot;

pub enum StreamMsg {
    /// The stream ended (its pump's context was dropped).
    Finished,
    /// End the stream early (shutdown, admin); the client gets an SSE error event.
    Cancel(String),
    /// Fault injection for supervision tests and the chaos suite.
    #[cfg(feature = "fault-injection")]
    Crash,
}

/// One stream's cancellation: a flag and the pump's waker. The pump checks it on each of
/// its waits, several times per streamed event, so a check is an atomic load and a waker
/// registration; a `CancellationToken` takes two locks per poll and a waiter list insertion
/// per wait.
#[derive(Default)]
struct Cancel {
    set: AtomicBool,
    pump: AtomicWaker,
}

impl Cancel {
    fn cancel(&self) {
        self.set.store(true, Ordering::Release);
        self.pump.wake();
    }
}

/// Held by the pump: its cancellation, and the way back to its actor. Dropping it tells the
/// actor the stream ended.
pub struct PumpCtx {
    cancel: Arc<Cancel>,
    actor: ActorRef<StreamMsg>,
}

impl PumpCtx {
    fn is_cancelled(&self) -> bool {
        self.cancel.set.load(Ordering::Acquire)
    }

    /// Resolves once the stream is cancelled (by its actor, or because the actor died). The
    /// pump is its one waiter.
    pub fn cancelled(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.is_cancelled() {
                return Poll::Ready(());
            }
            self.cancel.pump.register(cx.waker());
            if self.is_cancelled() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

impl Drop for PumpCtx {
    fn drop(&mut self) {
        let _ = self.actor.cast(StreamMsg::Finished);
    }
}

pub struct StreamJob {
    request_id: String,
    cancel: Arc<Cancel>,
}

pub struct StreamActor;

pub struct StreamState {
    request_id: String,
    cancel: Arc<Cancel>,
}

/// However the actor ends (a panic included), its pump is cancelled at once.
impl Drop for StreamState {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Actor for StreamActor {
    type Msg = StreamMsg;
    type State = StreamState;
    type Arguments = StreamJob;

    async fn pre_start(
        &self,
        _myself: ActorRef<StreamMsg>,
        job: StreamJob,
    ) -> Result<StreamState, ActorProcessingErr> {
        Ok(StreamState {
            request_id: job.request_id,
            cancel: job.cancel,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<StreamMsg>,
        msg: StreamMsg,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StreamMsg::Finished => myself.stop(None),
            StreamMsg::Cancel(reason) => {
                warn!(request_id = %state.request_id, %reason, "stream cancelled");
                state.cancel.cancel();
            }
            #[cfg(feature = "fault-injection")]
            StreamMsg::Crash => panic!("fault injection: stream actor crash"),
        }
        Ok(())
    }
}

pub enum StreamSupervisorMsg {
    Live(RpcReplyPort<usize>),
    CancelAll(String),
    /// Fault injection: crash one live stream actor; replies whether there was one.
    #[cfg(feature = "fault-injection")]
    CrashOne(RpcReplyPort<bool>),
}

/// Parent of the stream actors of one shard. Never restarts them; logs their failures.
///
/// It keeps no state and its handlers cannot fail: ractor stops every child of an actor that
/// dies, so a shard supervisor crash would end (with error events) all streams of its shard.
pub struct StreamSupervisor;

impl Actor for StreamSupervisor {
    type Msg = StreamSupervisorMsg;
    type State = usize;
    type Arguments = usize;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        shard: usize,
    ) -> Result<usize, ActorProcessingErr> {
        Ok(shard)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _shard: &mut usize,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StreamSupervisorMsg::Live(reply) => {
                let _ = reply.send(myself.get_children().len());
            }
            StreamSupervisorMsg::CancelAll(reason) => {
                for child in myself.get_children() {
                    let _ = child.send_message(StreamMsg::Cancel(reason.clone()));
                }
            }
            #[cfg(feature = "fault-injection")]
            StreamSupervisorMsg::CrashOne(reply) => {
                let child = myself.get_children().into_iter().next();
                let found = child.is_some_and(|c| c.send_message(StreamMsg::Crash).is_ok());
                let _ = reply.send(found);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        shard: &mut usize,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            warn!(shard = *shard, actor = %cell.get_id(), error = %err, "stream actor failed; its stream ends with an error event");
        }
        Ok(())
    }
}

/// Spawns stream actors under the shard supervisors, round robin.
#[derive(Clone)]
pub struct StreamSpawner {
    pub shards: std::sync::Arc<Vec<Slot<StreamSupervisorMsg>>>,
    next: std::sync::Arc<AtomicUsize>,
}

impl StreamSpawner {
    pub fn new(shards: Vec<Slot<StreamSupervisorMsg>>) -> Self {
        Self {
            shards: std::sync::Arc::new(shards),
            next: std::sync::Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Start the actor for one stream; the context is for its pump. Falls back to an
    /// unsupervised actor if every shard supervisor is restarting, so no request fails for
    /// that reason.
    pub async fn spawn(&self, request_id: String) -> Result<PumpCtx, SpawnErr> {
        let n = self.shards.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let supervisor =
            (0..n).find_map(|i| self.shards.get((start + i) % n).and_then(|s| s.get()));
        let cancel = Arc::new(Cancel::default());
        let job = StreamJob {
            request_id,
            cancel: cancel.clone(),
        };
        let (actor, _) = match supervisor {
            Some(sup) => Actor::spawn_linked(None, StreamActor, job, sup.get_cell()).await?,
            None => Actor::spawn(None, StreamActor, job).await?,
        };
        Ok(PumpCtx { cancel, actor })
    }

    /// Live stream actors across shards (supervised ones only).
    pub async fn live(&self) -> usize {
        let mut total = 0;
        for slot in self.shards.iter() {
            if let Some(sup) = slot.get() {
                if let Ok(ractor::rpc::CallResult::Success(n)) = sup
                    .call(
                        StreamSupervisorMsg::Live,
                        Some(std::time::Duration::from_secs(1)),
                    )
                    .await
                {
                    total += n;
                }
            }
        }
        total
    }

    pub fn cancel_all(&self, reason: &str) {
        for slot in self.shards.iter() {
            slot.cast(StreamSupervisorMsg::CancelAll(reason.to_owned()));
        }
    }

    /// Fault injection: crash one live stream actor in any shard.
    #[cfg(feature = "fault-injection")]
    pub async fn crash_one(&self) -> bool {
        for slot in self.shards.iter() {
            if let Some(sup) = slot.get() {
                if let Ok(ractor::rpc::CallResult::Success(true)) = sup
                    .call(
                        StreamSupervisorMsg::CrashOne,
                        Some(std::time::Duration::from_secs(1)),
                    )
                    .await
                {
                    return true;
                }
            }
        }
        false
    }
}
