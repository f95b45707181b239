//! The event streams of open runs on this replica: one poll of the ledger
//! per followed run, shared by every stream of it, and caps on how many
//! streams are open per session and in all.
//!
//! The first stream of a run starts a poller, which reads the run at once
//! and then every interval into a `watch` channel; every stream of the run
//! receives what the channel holds. A stream that falls behind skips to the
//! latest reading (nothing is queued for it). The poller stops, and its
//! entry goes, when the run finishes or is missing, when its last stream
//! leaves, or when the daemon shuts down (its streams then end).
//!
//! A stream is admitted with a [`Ticket`], refused beyond the limits of
//! [`StreamLimits`]; the ticket gives its place back when it is dropped,
//! that is when the stream ends or its client goes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use crate::http::Health;

/// How many event streams may be open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// On this replica, over every session.
    pub total: usize,
    /// Of one console session (one sign-in).
    pub per_session: usize,
}

/// Why a stream was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The session has as many streams open as it may.
    #[error("this session has {0} event streams open, as many as one session may")]
    Session(usize),
    /// The replica has as many streams open as it may.
    #[error("this replica serves {0} event streams, as many as it may")]
    Replica(usize),
}

impl Refused {
    /// The limit that refused, as the refusal counter's label.
    pub fn limit(&self) -> &'static str {
        match self {
            Refused::Session(_) => "session",
            Refused::Replica(_) => "replica",
        }
    }
}

/// What the last poll of a run found, as every stream of it sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Not read yet.
    Pending,
    /// The run is open: its progress, as an event's data.
    Open(Arc<str>),
    /// The run has finished: its last progress, as an event's data.
    Finished(Arc<str>),
    /// There is no such run.
    Missing,
    /// The ledger could not be read; it is read again at the next interval.
    Unavailable,
}

impl Reading {
    /// After this reading the run is not polled again.
    fn is_last(&self) -> bool {
        matches!(self, Reading::Finished(_) | Reading::Missing)
    }
}

/// Reads a run's progress (from the ledger, in the daemon).
pub type ReadRun = Arc<dyn Fn(Uuid) -> BoxFuture<'static, Reading> + Send + Sync>;

/// The event streams of this replica: their pollers and their counts.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

struct Inner {
    read: ReadRun,
    every: Duration,
    limits: StreamLimits,
    health: Arc<Health>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The channel of every followed run; its poller holds it too.
    runs: HashMap<Uuid, Arc<watch::Sender<Reading>>>,
    /// Open streams by session id (sessions with none are removed).
    sessions: HashMap<String, usize>,
    /// Open streams in all.
    open: usize,
}

impl EventHub {
    /// A hub that reads runs with `read` every `every` while they are
    /// followed, admits streams up to `limits`, and stops its pollers once
    /// `health` says the daemon is shutting down.
    pub fn new(read: ReadRun, every: Duration, limits: StreamLimits, health: Arc<Health>) -> Self {
        Self {
            inner: Arc::new(Inner {
                read,
                every,
                limits,
                health,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// A place for one more stream of the session `session`, unless it or
    /// the replica has as many as it may.
    pub fn admit(&self, session: &str) -> Result<Ticket, Refused> {
        let limits = self.inner.limits;
        let mut state = self.inner.lock();
        let refused = if state.open >= limits.total {
            Some(Refused::Replica(state.open))
        } else {
            match state.sessions.get(session) {
                Some(&n) if n >= limits.per_session => Some(Refused::Session(n)),
                _ => None,
            }
        };
        if let Some(refused) = refused {
            drop(state);
            metrics::counter!("fanfare_console_event_streams_refused_total", "limit" => refused.limit())
                .increment(1);
            return Err(refused);
        }
        *state.sessions.entry(session.to_string()).or_default() += 1;
        state.open += 1;
        metrics::gauge!("fanfare_console_event_streams").set(state.open as f64);
        Ok(Ticket {
            inner: self.inner.clone(),
            session: session.to_string(),
        })
    }

    /// The readings of run `id`: a receiver of its poller's channel,
    /// started if the run is not followed yet. Its current value is the
    /// latest reading ([`Reading::Pending`] before the first); the channel
    /// closes after the last one.
    pub fn follow(&self, id: Uuid) -> watch::Receiver<Reading> {
        let mut state = self.inner.lock();
        if let Some(tx) = state.runs.get(&id) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Reading::Pending);
        let tx = Arc::new(tx);
        state.runs.insert(id, tx.clone());
        drop(state);
        tokio::spawn(poll(self.inner.clone(), id, tx));
        rx
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.inner.lock().open
    }

    /// Runs polled now.
    pub fn followed(&self) -> usize {
        self.inner.lock().runs.len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under every step that could panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets run `id`'s channel `tx` (when it is still the one kept):
    /// after the last reading or on shutdown, or, when `if_unwatched`, only
    /// if no stream holds a receiver of it. Returns whether it was forgotten.
    fn forget(&self, id: Uuid, tx: &Arc<watch::Sender<Reading>>, if_unwatched: bool) -> bool {
        // Receivers are handed out under this lock, so the count cannot
        // grow between the check and the removal.
        let mut state = self.lock();
        if if_unwatched && tx.receiver_count() > 0 {
            return false;
        }
        if state
            .runs
            .get(&id)
            .is_some_and(|kept| Arc::ptr_eq(kept, tx))
        {
            state.runs.remove(&id);
        }
        true
    }
}

/// Reads run `id` at once and then every interval into `tx`, until the
/// run finishes or is missing, no stream follows it any more, or the daemon
/// shuts down.
async fn poll(inner: Arc<Inner>, id: Uuid, tx: Arc<watch::Sender<Reading>>) {
    let mut tick = tokio::time::interval(inner.every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tx.closed() => {
                if inner.forget(id, &tx, true) {
                    return;
                }
                // A stream came between the last leaving and the lock; the
                // next tick polls for it.
                continue;
            }
        }
        if inner.health.shutting_down.load(Ordering::SeqCst) {
            inner.forget(id, &tx, false);
            return;
        }
        let reading = (inner.read)(id).await;
        let last = reading.is_last();
        tx.send_replace(reading);
        if last {
            inner.forget(id, &tx, false);
            return;
        }
    }
}

/// One admitted stream's place, given back when dropped.
pub struct Ticket {
    inner: Arc<Inner>,
    session: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        if let Some(n) = state.sessions.get_mut(&self.session) {
            *n -= 1;
            if *n == 0 {
                state.sessions.remove(&self.session);
            }
        }
        state.open = state.open.saturating_sub(1);
        metrics::gauge!("fanfare_console_event_streams").set(state.open as f64);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A hub over a run that is open until `finish_after` reads (if given),
    /// counting its reads.
    fn hub(limits: StreamLimits, finish_after: Option<usize>) -> (EventHub, Arc<AtomicUsize>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let counter = reads.clone();
        let read: ReadRun = Arc::new(move |_id| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                match finish_after {
                    Some(last) if n >= last => Reading::Finished(format!("{n}").into()),
                    _ => Reading::Open(format!("{n}").into()),
                }
            })
        });
        let hub = EventHub::new(
            read,
            Duration::from_secs(1),
            limits,
            Arc::new(Health::default()),
        );
        (hub, reads)
    }

    const ROOMY: StreamLimits = StreamLimits {
        total: 1000,
        per_session: 1000,
    };

    #[tokio::test(start_paused = true)]
    async fn many_followers_of_one_run_share_one_read_per_interval() {
        let (hub, reads) = hub(ROOMY, None);
        let run = Uuid::now_v7();
        let mut followers: Vec<_> = (0..100).map(|_| hub.follow(run)).collect();
        for rx in &mut followers {
            rx.wait_for(|r| *r != Reading::Pending).await.unwrap();
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read at the start");
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 11, "then one a second");
        for rx in &mut followers {
            assert_eq!(*rx.borrow_and_update(), Reading::Open("11".into()));
        }
        assert_eq!(hub.followed(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_stops_being_polled_when_its_last_follower_leaves() {
        let (hub, reads) = hub(ROOMY, None);
        let run = Uuid::now_v7();
        let (a, b) = (hub.follow(run), hub.follow(run));
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        drop(a);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(hub.followed(), 1, "one follower is left");
        drop(b);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(hub.followed(), 0);
        let read = reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(reads.load(Ordering::SeqCst), read, "no reads after");
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_run_gives_its_last_reading_and_closes_the_channel() {
        let (hub, reads) = hub(ROOMY, Some(3));
        let run = Uuid::now_v7();
        let mut rx = hub.follow(run);
        // A slow follower skips straight to the latest reading.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(*rx.borrow_and_update(), Reading::Finished("3".into()));
        assert!(rx.changed().await.is_err(), "the channel is closed");
        assert_eq!(reads.load(Ordering::SeqCst), 3);
        assert_eq!(hub.followed(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn pollers_stop_when_the_daemon_shuts_down() {
        let (hub, reads) = hub(ROOMY, None);
        let mut rx = hub.follow(Uuid::now_v7());
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        hub.inner.health.shutting_down.store(true, Ordering::SeqCst);
        while rx.changed().await.is_ok() {}
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        assert_eq!(hub.followed(), 0);
    }

    #[tokio::test]
    async fn streams_are_admitted_up_to_the_session_and_replica_limits() {
        let (hub, _) = hub(
            StreamLimits {
                total: 5,
                per_session: 2,
            },
            None,
        );
        let a: Vec<_> = (0..2).map(|_| hub.admit("a").unwrap()).collect();
        assert_eq!(hub.admit("a").err(), Some(Refused::Session(2)));
        let b: Vec<_> = (0..2).map(|_| hub.admit("b").unwrap()).collect();
        let c = hub.admit("c").unwrap();
        assert_eq!(hub.admit("d").err(), Some(Refused::Replica(5)));
        assert_eq!(hub.open(), 5);
        drop(a);
        assert_eq!(hub.open(), 3);
        let again: Vec<_> = (0..2).map(|_| hub.admit("a").unwrap()).collect();
        assert_eq!(hub.admit("a").err(), Some(Refused::Replica(5)));
        drop((b, c, again));
        assert_eq!(hub.open(), 0);
        assert!(hub.inner.lock().sessions.is_empty(), "no session is kept");
    }
}
