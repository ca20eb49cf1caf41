//! AuditWriter: moves audit records from the request path to durable storage, off the hot
//! path and without losing what was accepted.
//!
//! The request path pushes into an [`AuditQueue`] (a bounded queue that lives outside the
//! actor, so a crashed writer's replacement finds every record still queued) and never
//! waits on storage. Every `flush_interval` (and as soon as a batch is full) the writer
//! takes a batch and writes it to the store; the batch stays in the queue's in-flight slot
//! until it is written, so a panic mid-write costs nothing (the store ignores a record it
//! already has). A store that fails or is slow sends batches to the spool instead; while the
//! spool holds records, new ones are appended behind them and the spool is replayed, oldest
//! first, when the store answers again.
//!
//! Writing and syncing are separate: what is written survives the process (SIGKILL, a
//! panic), what is synced survives the machine. The writer syncs at most once per
//! `sync_interval` (after every write when it is zero) and keeps each written batch until
//! its sync succeeds; a sync that fails sends those batches again, to the spool. A sync
//! takes a fraction of a millisecond on a small VM; one per flush under light load showed
//! in the requests' tail latency.
//!
//! A full spool either drops (counted) or, in `reject` mode, keeps the batch and
//! raises [`AuditStats::rejecting`] so the gateway refuses new requests until room returns.
//!
//! The I/O lives behind [`AuditPort`], implemented by the gateway (PostgreSQL or a local
//! journal, and a spool directory).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::ports::BoxFuture;
use crate::slot::Slot;

/// Why a spool append failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full")]
    Full,
    #[error("spool I/O failed: {0}")]
    Io(String),
}

/// A batch as the writer holds it: shared, so a port that writes on another thread takes
/// it along without copying the records.
pub type Batch<R> = Arc<Vec<R>>;

/// Storage behind the writer.
pub trait AuditPort: Send + Sync + 'static {
    type Record: Send + Sync + 'static;

    /// Write a batch to the store. Must be idempotent per record (a batch may be written
    /// again after a crash, a timeout that hid a success, or a failed sync).
    fn store(&self, batch: Batch<Self::Record>) -> BoxFuture<'_, Result<(), String>>;

    /// Append a batch to the spool (written, not yet synced).
    fn spool(&self, batch: Batch<Self::Record>) -> BoxFuture<'_, Result<(), SpoolError>>;

    /// Make everything written so far durable (a store that commits durably has nothing
    /// to do).
    fn sync(&self) -> BoxFuture<'_, Result<(), String>>;

    /// Move up to `max` of the oldest spooled records to the store. `Ok(true)` once the
    /// spool is empty.
    fn replay(&self, max: usize) -> BoxFuture<'_, Result<bool, String>>;

    /// Whether the spool holds records (one left by an earlier process, say).
    fn spooled(&self) -> bool;

    /// Bytes in the spool.
    fn spool_bytes(&self) -> u64;

    /// Periodic upkeep (partitions ahead, retention).
    fn maintain(&self) -> BoxFuture<'_, ()>;
}

/// What to do when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Drop the batch, count it, log it.
    Drop,
    /// Keep the batch and refuse new requests until it is written.
    Reject,
}

/// Counters read by metrics and the request path.
#[derive(Debug, Default)]
pub struct AuditStats {
    pub accepted: AtomicU64,
    pub written: AtomicU64,
    pub spooled: AtomicU64,
    pub dropped: AtomicU64,
    pub store_failures: AtomicU64,
    pub spool_bytes: AtomicU64,
    /// Set while the spool is full in `reject` mode.
    pub rejecting: AtomicBool,
}

struct Inner<R> {
    pending: VecDeque<R>,
    /// The batch being written; cleared only once it is written.
    inflight: Option<Arc<Vec<R>>>,
    /// Written, waiting for the next sync.
    unsynced: Vec<Arc<Vec<R>>>,
    /// Written but lost to a failed sync: written again before anything newer.
    again: VecDeque<Arc<Vec<R>>>,
}

/// The bounded queue between the request path and the writer.
pub struct AuditQueue<R> {
    inner: Mutex<Inner<R>>,
    capacity: usize,
    batch: usize,
    pub stats: AuditStats,
    writer: Slot<AuditMsg>,
}

impl<R: Send + Sync + 'static> AuditQueue<R> {
    pub fn new(capacity: usize, batch: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                pending: VecDeque::new(),
                inflight: None,
                unsynced: Vec::new(),
                again: VecDeque::new(),
            }),
            capacity: capacity.max(1),
            batch: batch.max(1),
            stats: AuditStats::default(),
            writer: Slot::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<R>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hand a record to the writer; never waits. False when the queue is full (counted as
    /// dropped).
    pub fn push(&self, rec: R) -> bool {
        let len = {
            let mut q = self.lock();
            if q.pending.len() >= self.capacity {
                drop(q);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            q.pending.push_back(rec);
            q.pending.len()
        };
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        if len == self.batch {
            self.writer.cast(AuditMsg::Drain);
        }
        true
    }

    /// Records waiting to be written, the in-flight batch included (not those written and
    /// waiting for a sync).
    pub fn depth(&self) -> usize {
        let q = self.lock();
        let batches = |b: &Arc<Vec<R>>| b.len();
        q.pending.len()
            + q.inflight.as_ref().map_or(0, batches)
            + q.again.iter().map(batches).sum::<usize>()
    }

    /// The batch to write: the one left in flight (by a crashed writer, or a write that
    /// failed), else one a failed sync lost, else a new one from the queue.
    fn next_batch(&self) -> Option<Arc<Vec<R>>> {
        let mut q = self.lock();
        if let Some(b) = &q.inflight {
            return Some(b.clone());
        }
        let b = match q.again.pop_front() {
            Some(b) => b,
            None if q.pending.is_empty() => return None,
            None => {
                let n = q.pending.len().min(self.batch);
                Arc::new(q.pending.drain(..n).collect::<Vec<_>>())
            }
        };
        q.inflight = Some(b.clone());
        Some(b)
    }

    /// The in-flight batch is written: keep it until it is synced.
    fn written(&self) {
        let mut q = self.lock();
        if let Some(b) = q.inflight.take() {
            q.unsynced.push(b);
        }
    }

    /// The in-flight batch is given up (dropped, counted).
    fn discard(&self) {
        self.lock().inflight = None;
    }

    fn has_unsynced(&self) -> bool {
        !self.lock().unsynced.is_empty()
    }

    /// Everything written is durable.
    fn synced(&self) {
        self.lock().unsynced.clear();
    }

    /// The sync failed: what was written may be lost; write it again, oldest first.
    fn sync_failed(&self) {
        let mut q = self.lock();
        let lost = std::mem::take(&mut q.unsynced);
        for b in lost.into_iter().rev() {
            q.again.push_front(b);
        }
    }

    /// A full batch is waiting: the writer fell behind.
    fn backlog(&self) -> bool {
        let q = self.lock();
        !q.again.is_empty() || q.pending.len() >= self.batch
    }
}

pub enum AuditMsg {
    /// The flush timer: write what is queued, replay, upkeep; the only message that re-arms
    /// the timer, so exactly one timer runs.
    Tick,
    /// A full batch is waiting: write what is queued now (never re-arms the timer).
    Drain,
    /// Write everything queued now, to the store or else the spool; reply when done.
    Flush(RpcReplyPort<()>),
    /// Panic (fault injection).
    Crash,
}

/// Timing of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Longest time a record waits in memory before it is written.
    pub flush_interval: Duration,
    /// Least time between two syncs; zero syncs after every write.
    pub sync_interval: Duration,
    /// Longest wait for one store write before the batch goes to the spool.
    pub store_timeout: Duration,
    pub on_full: OnFull,
    /// Between replay attempts while the store is failing: first, and at most.
    pub replay_backoff: (Duration, Duration),
    pub maintain_every: Duration,
}

pub struct AuditArgs<P: AuditPort> {
    pub port: Arc<P>,
    pub queue: Arc<AuditQueue<P::Record>>,
    pub cfg: WriterConfig,
}

pub struct AuditWriter<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Default for AuditWriter<P> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

pub struct WriterState<P: AuditPort> {
    port: Arc<P>,
    queue: Arc<AuditQueue<P::Record>>,
    cfg: WriterConfig,
    /// While true, new batches go behind the spooled ones.
    spooling: bool,
    replay_at: Instant,
    replay_delay: Duration,
    maintain_at: Instant,
    synced_at: Instant,
    full_logged_at: Option<Instant>,
}

impl<P: AuditPort> Actor for AuditWriter<P> {
    type Msg = AuditMsg;
    type State = WriterState<P>;
    type Arguments = AuditArgs<P>;

    async fn pre_start(
        &self,
        myself: ActorRef<AuditMsg>,
        args: AuditArgs<P>,
    ) -> Result<WriterState<P>, ActorProcessingErr> {
        args.queue.writer.set(myself.clone());
        let spooling = args.port.spooled();
        if spooling {
            info!(
                bytes = args.port.spool_bytes(),
                "audit spool holds records; replaying"
            );
        }
        myself.send_after(args.cfg.flush_interval, || AuditMsg::Tick);
        let now = Instant::now();
        Ok(WriterState {
            port: args.port,
            queue: args.queue,
            cfg: args.cfg,
            spooling,
            replay_at: now,
            replay_delay: args.cfg.replay_backoff.0,
            maintain_at: now,
            synced_at: now,
            full_logged_at: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AuditMsg>,
        msg: AuditMsg,
        st: &mut WriterState<P>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AuditMsg::Tick => {
                st.drain().await;
                st.sync(false).await;
                st.replay().await;
                if Instant::now() >= st.maintain_at {
                    st.maintain_at = Instant::now() + st.cfg.maintain_every;
                    st.port.maintain().await;
                }
                st.publish();
                // Straight on only while a full batch waits. Records that arrived during
                // this round wait for the next tick: going again for them turned a steady
                // trickle into back-to-back transactions of a few rows each (at c=1, 76 µs
                // of PostgreSQL CPU per row instead of 10, and the writer busy).
                if st.queue.backlog() {
                    let _ = myself.cast(AuditMsg::Tick);
                } else {
                    myself.send_after(st.cfg.flush_interval, || AuditMsg::Tick);
                }
            }
            AuditMsg::Drain => {
                st.drain().await;
                st.sync(false).await;
                st.publish();
            }
            AuditMsg::Flush(reply) => {
                st.drain().await;
                st.sync(true).await;
                // A sync that failed queued its batches again, for the spool.
                if st.queue.depth() > 0 {
                    st.drain().await;
                    st.sync(true).await;
                }
                st.publish();
                let _ = reply.send(());
            }
            AuditMsg::Crash => panic!("audit writer crash (fault injection)"),
        }
        Ok(())
    }
}

impl<P: AuditPort> WriterState<P> {
    /// Write the batches queued now (not those that arrive meanwhile: under steady traffic
    /// the queue never empties, and the mailbox, with `Flush` and supervision, must still
    /// be served), stopping early if a batch cannot be placed anywhere.
    async fn drain(&mut self) {
        let rounds = self.queue.depth().div_ceil(self.queue.batch).max(1);
        for _ in 0..rounds {
            let Some(batch) = self.queue.next_batch() else {
                return;
            };
            if !self.spooling {
                let stored =
                    tokio::time::timeout(self.cfg.store_timeout, self.port.store(batch.clone()))
                        .await;
                match stored {
                    Ok(Ok(())) => {
                        self.queue.written();
                        self.queue
                            .stats
                            .written
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        continue;
                    }
                    Ok(Err(e)) => warn!(error = %e, "audit store failed; spooling"),
                    Err(_) => warn!("audit store timed out; spooling"),
                }
                self.queue
                    .stats
                    .store_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.spooling = true;
                self.replay_at = Instant::now() + self.replay_delay;
            }
            match self.port.spool(batch.clone()).await {
                Ok(()) => {
                    self.queue.written();
                    self.queue
                        .stats
                        .spooled
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    self.queue.stats.rejecting.store(false, Ordering::Release);
                }
                Err(e) => {
                    self.log_full(&e, batch.len());
                    match self.cfg.on_full {
                        OnFull::Drop => {
                            self.queue.discard();
                            self.queue
                                .stats
                                .dropped
                                .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        }
                        OnFull::Reject => {
                            // Kept in flight: retried next round, while new requests are
                            // refused so the queue stops growing.
                            self.queue.stats.rejecting.store(true, Ordering::Release);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Sync what is written, if the interval since the last sync has passed (or `now`).
    /// A failure sends the batches it covered to the spool, as a failed store write does.
    async fn sync(&mut self, now: bool) {
        if !self.queue.has_unsynced() || (!now && self.synced_at.elapsed() < self.cfg.sync_interval)
        {
            return;
        }
        let r = tokio::time::timeout(self.cfg.store_timeout, self.port.sync()).await;
        self.synced_at = Instant::now();
        match r {
            Ok(Ok(())) => return self.queue.synced(),
            Ok(Err(e)) => {
                warn!(error = %e, "audit sync failed; writing the batches again, to the spool")
            }
            Err(_) => warn!("audit sync timed out; writing the batches again, to the spool"),
        }
        self.queue.sync_failed();
        self.queue
            .stats
            .store_failures
            .fetch_add(1, Ordering::Relaxed);
        if !self.spooling {
            self.spooling = true;
            self.replay_at = Instant::now() + self.replay_delay;
        }
    }

    /// Replay the spool into the store while it answers; back off while it does not.
    async fn replay(&mut self) {
        if !self.spooling || Instant::now() < self.replay_at {
            return;
        }
        let batch = self.queue.batch;
        let started = Instant::now();
        loop {
            let r = tokio::time::timeout(self.cfg.store_timeout, self.port.replay(batch)).await;
            match r {
                Ok(Ok(true)) => {
                    info!("audit spool replayed; writing to the store again");
                    self.spooling = false;
                    self.replay_delay = self.cfg.replay_backoff.0;
                    self.queue.stats.rejecting.store(false, Ordering::Release);
                    return;
                }
                Ok(Ok(false)) => {
                    self.replay_delay = self.cfg.replay_backoff.0;
                    // Keep the queue moving: new records are spooled between rounds.
                    if started.elapsed() >= self.cfg.flush_interval {
                        return;
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    self.replay_at = Instant::now() + self.replay_delay;
                    self.replay_delay = (self.replay_delay * 2).min(self.cfg.replay_backoff.1);
                    return;
                }
            }
        }
    }

    fn publish(&self) {
        self.queue
            .stats
            .spool_bytes
            .store(self.port.spool_bytes(), Ordering::Relaxed);
    }

    fn log_full(&mut self, e: &SpoolError, n: usize) {
        let now = Instant::now();
        if self
            .full_logged_at
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.full_logged_at = Some(now);
            warn!(error = %e, records = n, on_full = ?self.cfg.on_full, "audit records cannot be spooled");
        }
    }
}

/// The request path's view of the writer.
pub struct AuditHandle<R> {
    pub queue: Arc<AuditQueue<R>>,
}

impl<R: Send + Sync + 'static> AuditHandle<R> {
    /// Write everything queued (shutdown), within `timeout`. False if it did not finish.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let Some(writer) = self.queue.writer.get() else {
            return false;
        };
        matches!(
            writer.call(AuditMsg::Flush, Some(timeout)).await,
            Ok(ractor::rpc::CallResult::Success(()))
        )
    }

    /// False while the spool is full in `reject` mode.
    pub fn accepting(&self) -> bool {
        !self.queue.stats.rejecting.load(Ordering::Acquire)
    }

    /// Panic the writer (fault injection); false if none runs.
    pub fn crash(&self) -> bool {
        self.queue.writer.cast(AuditMsg::Crash)
    }
}

impl<R> Clone for AuditHandle<R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A store that can be switched off, and a spool with a cap, both in memory.
    #[derive(Default)]
    struct Mem {
        down: AtomicBool,
        stored: Mutex<Vec<u64>>,
        spool: Mutex<VecDeque<u64>>,
        spool_cap: usize,
        panic_once: AtomicBool,
        /// How long a store write takes.
        store_delay: Duration,
        writes: AtomicU64,
        /// Records written (stored or spooled) since the last sync: lost if it fails.
        unsynced: Mutex<Vec<u64>>,
        syncs: AtomicU64,
        /// Syncs still to fail.
        failing_syncs: AtomicU64,
    }

    impl Mem {
        fn stored(&self) -> Vec<u64> {
            self.stored.lock().expect("lock").clone()
        }
        /// Everything stored and synced, the spool empty.
        fn durable(&self, n: usize) -> bool {
            self.unsynced.lock().expect("lock").is_empty()
                && self.spool.lock().expect("lock").is_empty()
                && self.stored.lock().expect("lock").len() == n
        }
    }

    impl AuditPort for Mem {
        type Record = u64;
        fn store(&self, batch: Batch<u64>) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async move {
                self.writes.fetch_add(1, Ordering::SeqCst);
                if !self.store_delay.is_zero() {
                    tokio::time::sleep(self.store_delay).await;
                }
                if self.down.load(Ordering::SeqCst) {
                    return Err("down".into());
                }
                let mut s = self.stored.lock().expect("lock");
                // Idempotent per record, like ON CONFLICT DO NOTHING.
                for r in batch.iter() {
                    if !s.contains(r) {
                        s.push(*r);
                    }
                }
                drop(s);
                self.unsynced.lock().expect("lock").extend(batch.iter());
                if self.panic_once.swap(false, Ordering::SeqCst) {
                    panic!("after writing, before acknowledging");
                }
                Ok(())
            })
        }
        fn spool(&self, batch: Batch<u64>) -> BoxFuture<'_, Result<(), SpoolError>> {
            Box::pin(async move {
                let mut s = self.spool.lock().expect("lock");
                if s.len() + batch.len() > self.spool_cap {
                    return Err(SpoolError::Full);
                }
                s.extend(batch.iter());
                self.unsynced.lock().expect("lock").extend(batch.iter());
                Ok(())
            })
        }
        fn sync(&self) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async move {
                self.syncs.fetch_add(1, Ordering::SeqCst);
                let lost = std::mem::take(&mut *self.unsynced.lock().expect("lock"));
                let failing = self.failing_syncs.load(Ordering::SeqCst);
                if failing == 0 {
                    return Ok(());
                }
                self.failing_syncs.store(failing - 1, Ordering::SeqCst);
                self.stored
                    .lock()
                    .expect("lock")
                    .retain(|r| !lost.contains(r));
                self.spool
                    .lock()
                    .expect("lock")
                    .retain(|r| !lost.contains(r));
                Err("EIO".into())
            })
        }
        fn replay(&self, max: usize) -> BoxFuture<'_, Result<bool, String>> {
            Box::pin(async move {
                if self.down.load(Ordering::SeqCst) {
                    return Err("down".into());
                }
                let mut s = self.spool.lock().expect("lock");
                let n = s.len().min(max);
                let batch: Vec<u64> = s.drain(..n).collect();
                self.stored.lock().expect("lock").extend(batch);
                Ok(s.is_empty())
            })
        }
        fn spooled(&self) -> bool {
            !self.spool.lock().expect("lock").is_empty()
        }
        fn spool_bytes(&self) -> u64 {
            self.spool.lock().expect("lock").len() as u64 * 8
        }
        fn maintain(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn cfg(on_full: OnFull) -> WriterConfig {
        WriterConfig {
            flush_interval: Duration::from_millis(5),
            sync_interval: Duration::ZERO,
            store_timeout: Duration::from_millis(500),
            on_full,
            replay_backoff: (Duration::from_millis(5), Duration::from_millis(20)),
            maintain_every: Duration::from_secs(3600),
        }
    }

    async fn start(port: Arc<Mem>, on_full: OnFull) -> (ActorRef<AuditMsg>, Arc<AuditQueue<u64>>) {
        start_with(port, cfg(on_full)).await
    }

    async fn start_with(
        port: Arc<Mem>,
        cfg: WriterConfig,
    ) -> (ActorRef<AuditMsg>, Arc<AuditQueue<u64>>) {
        let queue = AuditQueue::new(100_000, 50);
        let (a, _) = Actor::spawn(
            None,
            AuditWriter::<Mem>::default(),
            AuditArgs {
                port,
                queue: queue.clone(),
                cfg,
            },
        )
        .await
        .expect("spawn");
        (a, queue)
    }

    async fn until(mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "condition not met in 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A steady trickle is written once per flush interval, not in back-to-back writes of
    /// the few records that arrived during the previous one.
    #[tokio::test]
    async fn a_trickle_is_written_once_per_flush_interval() {
        let port = Arc::new(Mem {
            spool_cap: 1_000_000,
            store_delay: Duration::from_millis(5),
            ..Default::default()
        });
        let queue = AuditQueue::new(100_000, 1_000);
        let (_a, _) = Actor::spawn(
            None,
            AuditWriter::<Mem>::default(),
            AuditArgs {
                port: port.clone(),
                queue: queue.clone(),
                cfg: WriterConfig {
                    flush_interval: Duration::from_millis(100),
                    ..cfg(OnFull::Drop)
                },
            },
        )
        .await
        .expect("spawn");
        let started = Instant::now();
        for i in 0..400 {
            queue.push(i);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        until(|| port.stored.lock().expect("lock").len() == 400).await;
        let (writes, ticks) = (
            port.writes.load(Ordering::SeqCst),
            started.elapsed().as_millis() / 100 + 2,
        );
        assert!(
            writes <= ticks as u64,
            "{writes} writes for 400 records in {} ms",
            started.elapsed().as_millis()
        );
    }

    /// Under a trickle the writes follow the flush interval and the syncs the (longer) sync
    /// interval, and what is written last is synced without waiting for more traffic.
    #[tokio::test]
    async fn a_trickle_is_synced_at_most_once_per_sync_interval() {
        let port = Arc::new(Mem {
            spool_cap: 1_000_000,
            ..Default::default()
        });
        let (_a, q) = start_with(
            port.clone(),
            WriterConfig {
                sync_interval: Duration::from_millis(100),
                ..cfg(OnFull::Drop)
            },
        )
        .await;
        let started = Instant::now();
        for i in 0..400 {
            q.push(i);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        until(|| port.durable(400)).await;
        let (writes, syncs) = (
            port.writes.load(Ordering::SeqCst),
            port.syncs.load(Ordering::SeqCst),
        );
        let intervals = started.elapsed().as_millis() as u64 / 100 + 2;
        assert!(
            syncs <= intervals,
            "{syncs} syncs in {} ms",
            started.elapsed().as_millis()
        );
        assert!(writes > 2 * syncs, "{writes} writes, {syncs} syncs");
    }

    #[tokio::test]
    async fn with_no_sync_interval_every_write_is_synced() {
        let port = Arc::new(Mem {
            spool_cap: 1_000_000,
            ..Default::default()
        });
        let (_a, q) = start(port.clone(), OnFull::Drop).await;
        for i in 0..20 {
            q.push(i);
            until(|| port.durable(i as usize + 1)).await;
        }
        assert_eq!(
            port.syncs.load(Ordering::SeqCst),
            port.writes.load(Ordering::SeqCst)
        );
    }

    /// A sync that fails may have lost what it covered: those batches are written again (to
    /// the spool, then replayed), so every record ends up stored.
    #[tokio::test]
    async fn a_failed_sync_writes_its_batches_again() {
        let port = Arc::new(Mem {
            spool_cap: 1_000_000,
            ..Default::default()
        });
        port.failing_syncs.store(2, Ordering::SeqCst);
        let (_a, q) = start(port.clone(), OnFull::Drop).await;
        for i in 0..500 {
            q.push(i);
        }
        until(|| port.durable(500)).await;
        let set: BTreeSet<u64> = port.stored().into_iter().collect();
        assert_eq!(set, (0..500).collect());
        assert_eq!(q.stats.store_failures.load(Ordering::Relaxed), 2);
        assert_eq!(q.stats.dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_outage_spools_then_replays_everything_once_in_order() {
        let port = Arc::new(Mem {
            spool_cap: 1_000_000,
            ..Default::default()
        });
        let (_a, q) = start(port.clone(), OnFull::Drop).await;
        for i in 0..1_000 {
            q.push(i);
        }
        until(|| port.stored.lock().expect("lock").len() == 1_000).await;
        port.down.store(true, Ordering::SeqCst);
        for i in 1_000..3_000 {
            q.push(i);
        }
        until(|| port.spool.lock().expect("lock").len() == 2_000).await;
        port.down.store(false, Ordering::SeqCst);
        for i in 3_000..4_000 {
            q.push(i);
        }
        until(|| port.stored.lock().expect("lock").len() == 4_000).await;
        let stored = port.stored.lock().expect("lock").clone();
        assert_eq!(
            stored,
            (0..4_000).collect::<Vec<_>>(),
            "once each, in order"
        );
        assert_eq!(q.stats.dropped.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_writer_that_panics_mid_batch_loses_nothing() {
        let port = Arc::new(Mem {
            spool_cap: 1_000_000,
            ..Default::default()
        });
        port.panic_once.store(true, Ordering::SeqCst);
        let (a, q) = start(port.clone(), OnFull::Drop).await;
        for i in 0..500 {
            q.push(i);
        }
        // The writer died after its first batch; a new one finds the queue and the batch.
        until(|| a.get_status() == ractor::ActorStatus::Stopped).await;
        let (_b, _) = {
            let (b, h) = Actor::spawn(
                None,
                AuditWriter::<Mem>::default(),
                AuditArgs {
                    port: port.clone(),
                    queue: q.clone(),
                    cfg: cfg(OnFull::Drop),
                },
            )
            .await
            .expect("respawn");
            (b, h)
        };
        until(|| port.stored.lock().expect("lock").len() == 500).await;
        let set: BTreeSet<u64> = port.stored.lock().expect("lock").iter().copied().collect();
        assert_eq!(set.len(), 500);
    }

    #[tokio::test]
    async fn a_full_spool_rejects_until_room_returns_in_reject_mode() {
        let port = Arc::new(Mem {
            spool_cap: 100,
            ..Default::default()
        });
        port.down.store(true, Ordering::SeqCst);
        let (_a, q) = start(port.clone(), OnFull::Reject).await;
        let h = AuditHandle { queue: q.clone() };
        for i in 0..300 {
            q.push(i);
        }
        until(|| !h.accepting()).await;
        assert_eq!(
            q.stats.dropped.load(Ordering::Relaxed),
            0,
            "nothing dropped"
        );
        port.down.store(false, Ordering::SeqCst);
        until(|| h.accepting() && port.stored.lock().expect("lock").len() == 300).await;
        let set: BTreeSet<u64> = port.stored.lock().expect("lock").iter().copied().collect();
        assert_eq!(set, (0..300).collect());
    }

    #[tokio::test]
    async fn a_full_spool_drops_and_counts_in_drop_mode() {
        let port = Arc::new(Mem {
            spool_cap: 100,
            ..Default::default()
        });
        port.down.store(true, Ordering::SeqCst);
        let (_a, q) = start(port.clone(), OnFull::Drop).await;
        let h = AuditHandle { queue: q.clone() };
        for i in 0..300 {
            q.push(i);
        }
        until(|| q.depth() == 0).await;
        assert!(h.accepting());
        assert_eq!(q.stats.dropped.load(Ordering::Relaxed), 200);
        assert_eq!(port.spool.lock().expect("lock").len(), 100);
    }

    #[tokio::test]
    async fn flush_writes_everything_queued() {
        let port = Arc::new(Mem {
            spool_cap: 1_000_000,
            ..Default::default()
        });
        let (_a, q) = start_with(
            port.clone(),
            WriterConfig {
                sync_interval: Duration::from_secs(3600),
                ..cfg(OnFull::Drop)
            },
        )
        .await;
        for i in 0..10_000 {
            q.push(i);
        }
        let h = AuditHandle { queue: q.clone() };
        assert!(h.flush(Duration::from_secs(10)).await);
        assert!(port.durable(10_000), "written and synced");
    }
}
