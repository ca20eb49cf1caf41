//! Per-request stream actors and their sharded supervisors.
//!
//! A [`StreamActor`] owns one streaming response: it starts the pump task (upstream body →
//! transformed SSE frames → bounded channel → client) and receives control events from it.
//! Response bytes never pass through the mailbox. The actor's state holds a cancel-on-drop
//! guard, so if the actor dies for any reason (panic included) the pump is told at once and
//! ends its stream with an SSE error event instead of hanging.
//!
//! Stream actors are temporary: their supervisor never restarts them.

use std::sync::atomic::{AtomicUsize, Ordering};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::warn;

use crate::ports::BoxFuture;
use crate::slot::Slot;

/// What a pump reports to its actor. Timings, usage and the way the stream ended go into
/// the request's outcome record, not through the mailbox.
#[derive(Debug)]
pub enum PumpEvent {
    /// The stream ended.
    Finished,
}

pub enum StreamMsg {
    Pump(PumpEvent),
    /// End the stream early (shutdown, admin); the client gets an SSE error event.
    Cancel(String),
    /// Fault injection for supervision tests and the chaos suite.
    #[cfg(feature = "fault-injection")]
    Crash,
}

/// Given to the pump: cancellation and the way back to its actor.
pub struct PumpCtx {
    pub cancel: CancellationToken,
    pub events: ActorRef<StreamMsg>,
}

pub type PumpFn = Box<dyn FnOnce(PumpCtx) -> BoxFuture<'static, ()> + Send>;

pub struct StreamJob {
    pub request_id: String,
    pub pump: PumpFn,
}

pub struct StreamActor;

pub struct StreamState {
    request_id: String,
    cancel: CancellationToken,
    _cancel_on_drop: DropGuard,
}

impl Actor for StreamActor {
    type Msg = StreamMsg;
    type State = StreamState;
    type Arguments = StreamJob;

    async fn pre_start(
        &self,
        myself: ActorRef<StreamMsg>,
        job: StreamJob,
    ) -> Result<StreamState, ActorProcessingErr> {
        let cancel = CancellationToken::new();
        let ctx = PumpCtx {
            cancel: cancel.clone(),
            events: myself,
        };
        tokio::spawn((job.pump)(ctx));
        Ok(StreamState {
            request_id: job.request_id,
            _cancel_on_drop: cancel.clone().drop_guard(),
            cancel,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<StreamMsg>,
        msg: StreamMsg,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StreamMsg::Pump(PumpEvent::Finished) => myself.stop(None),
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

    /// Start the actor for one stream. Falls back to an unsupervised actor if every shard
    /// supervisor is restarting, so no request fails for that reason.
    pub async fn spawn(&self, job: StreamJob) -> Result<ActorRef<StreamMsg>, SpawnErr> {
        let n = self.shards.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let supervisor =
            (0..n).find_map(|i| self.shards.get((start + i) % n).and_then(|s| s.get()));
        let (actor, _) = match supervisor {
            Some(sup) => Actor::spawn_linked(None, StreamActor, job, sup.get_cell()).await?,
            None => Actor::spawn(None, StreamActor, job).await?,
        };
        Ok(actor)
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
