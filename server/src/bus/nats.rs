//! The NATS bridge: a thread of its own running a small current-thread
//! tokio runtime with async-nats, between the loop (which never waits for
//! it) and the NATS server.
//!
//! Out: the loop encodes an event and hands it over an unbounded channel
//! whose bytes are counted ([`BUS_OUTBOUND_BYTES_MAX`]: past it the event is
//! dropped and counted); the bridge publishes it. In: the bridge subscribes
//! to `<prefix>.>` (see `bus/mod.rs` for why a wildcard), decodes what other
//! servers publish and sends it into the loop through the completion
//! channel and its mio Waker, as the storage thread does, counting its
//! bytes until the loop has handled it ([`BUS_INBOUND_BYTES_MAX`]: past it
//! the bridge drops what arrives). async-nats's own buffers are bounded by
//! [`BUS_SUBSCRIPTION_MESSAGES_MAX`] and [`BUS_CLIENT_COMMANDS_MAX`]
//! events of at most [`BUS_EVENT_BYTES_MAX`]. A NATS server that goes away
//! is reconnected to by async-nats; meanwhile events are dropped as above,
//! and the database has everything (ARCHITECTURE.md, "Cluster mode").
//!
//! The thread is owned: dropping the [`Bridge`] closes the outbound queue,
//! the bridge flushes what it published and ends, and the drop joins it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use futures_util::StreamExt;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::{BusEvent, BusState, Envelope, Inbound};
use crate::completion::{Completion, CompletionSender};
use crate::config::{
    Cluster, BUS_CLIENT_COMMANDS_MAX, BUS_EVENT_BYTES_MAX, BUS_INBOUND_BYTES_MAX,
    BUS_OUTBOUND_BYTES_MAX, BUS_SUBSCRIPTION_MESSAGES_MAX, NATS_CONNECT_TIMEOUT,
};

/// One encoded event on its way out: its subject and payload.
type Outgoing = (String, Vec<u8>);

/// What the loop and the bridge thread share: the bytes in each queue, the
/// events dropped, and whether NATS is connected.
#[derive(Debug, Default)]
struct Gauges {
    outbound_bytes: AtomicUsize,
    inbound_bytes: AtomicUsize,
    dropped: AtomicU64,
    /// An [`Inbound::Gap`] is on its way to the loop (one at a time).
    gap_pending: AtomicBool,
    link: Link,
}

/// Whether the connection to NATS is up: 0 while it is, else when it went
/// down (milliseconds since `started`, plus one).
#[derive(Debug)]
struct Link {
    started: std::time::Instant,
    down_since_ms: AtomicU64,
}

impl Default for Link {
    fn default() -> Link {
        Link {
            started: std::time::Instant::now(),
            down_since_ms: AtomicU64::new(0),
        }
    }
}

impl Link {
    fn up(&self) {
        self.down_since_ms.store(0, Ordering::Release);
    }

    fn down(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        // Only the first moment of an outage counts.
        let _ =
            self.down_since_ms
                .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Acquire);
    }

    fn state(&self) -> BusState {
        match self.down_since_ms.load(Ordering::Acquire) {
            0 => BusState::Connected,
            since => {
                let down_at = std::time::Duration::from_millis(since - 1);
                BusState::Reconnecting(self.started.elapsed().saturating_sub(down_at))
            }
        }
    }
}

impl Gauges {
    /// Tells the loop events may have been missed, unless it is told
    /// already.
    fn gap(&self, done: &CompletionSender) {
        if !self.gap_pending.swap(true, Ordering::AcqRel) {
            done.send(Completion::Bus(Inbound::Gap));
        }
    }

    fn drop_one(&self, why: &str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        // The first of a run, then one line per thousand: a stalled NATS
        // must not flood the log.
        if dropped == 1 || dropped.is_multiple_of(1000) {
            log::warn!("bus: event dropped ({why}); {dropped} so far");
        }
    }
}

/// The loop's handle on the bridge thread.
pub struct Bridge {
    node: String,
    prefix: String,
    outbound: Option<UnboundedSender<Outgoing>>,
    gauges: Arc<Gauges>,
    thread: Option<JoinHandle<()>>,
}

impl Bridge {
    /// Connects to the NATS server of `cluster` (waiting up to
    /// [`NATS_CONNECT_TIMEOUT`]) and starts the bridge thread, which sends
    /// what it receives to `done`; or says why it could not.
    pub fn start(cluster: &Cluster, done: CompletionSender) -> Result<Bridge, String> {
        let gauges = Arc::new(Gauges::default());
        let (outbound, queue) = unbounded_channel();
        let (started, start_result) = mpsc::sync_channel(1);
        let thread_gauges = Arc::clone(&gauges);
        let thread_cluster = cluster.clone();
        let thread = std::thread::Builder::new()
            .name("bus".into())
            .spawn(move || run(thread_cluster, queue, done, thread_gauges, started))
            .map_err(|error| format!("cannot start the bus thread: {error}"))?;
        match start_result.recv() {
            Ok(Ok(())) => Ok(Bridge {
                node: cluster.node_id.clone(),
                prefix: cluster.subject_prefix.clone(),
                outbound: Some(outbound),
                gauges,
                thread: Some(thread),
            }),
            Ok(Err(why)) => {
                let _ = thread.join();
                Err(why)
            }
            Err(_) => {
                let _ = thread.join();
                Err("the bus thread ended while connecting".into())
            }
        }
    }

    /// Encodes `event` and queues it for publishing, unless the queue is
    /// past [`BUS_OUTBOUND_BYTES_MAX`] or the event past
    /// [`BUS_EVENT_BYTES_MAX`] (then it is dropped and counted).
    pub fn publish(&self, event: BusEvent) {
        let subject = event.subject(&self.prefix);
        let envelope = Envelope {
            node: self.node.clone(),
            event,
        };
        let payload = match serde_json::to_vec(&envelope) {
            Ok(payload) => payload,
            Err(error) => return self.gauges.drop_one(&format!("not encodable: {error}")),
        };
        if payload.len() > BUS_EVENT_BYTES_MAX {
            return self.gauges.drop_one("larger than BUS_EVENT_BYTES_MAX");
        }
        let queued = self.gauges.outbound_bytes.load(Ordering::Acquire);
        if queued + payload.len() > BUS_OUTBOUND_BYTES_MAX {
            return self.gauges.drop_one("outbound queue full");
        }
        let Some(outbound) = &self.outbound else {
            return;
        };
        let bytes = payload.len();
        self.gauges
            .outbound_bytes
            .fetch_add(bytes, Ordering::AcqRel);
        if outbound.send((subject, payload)).is_err() {
            self.gauges
                .outbound_bytes
                .fetch_sub(bytes, Ordering::AcqRel);
            self.gauges.drop_one("the bus thread is gone");
        }
    }

    /// The loop has handled `inbound`.
    pub fn handled(&self, inbound: &Inbound) {
        match inbound {
            Inbound::Event { bytes, .. } => {
                self.gauges
                    .inbound_bytes
                    .fetch_sub(*bytes, Ordering::AcqRel);
            }
            Inbound::Gap => self.gauges.gap_pending.store(false, Ordering::Release),
        }
    }

    /// Events dropped so far, either way.
    pub fn dropped(&self) -> u64 {
        self.gauges.dropped.load(Ordering::Relaxed)
    }

    /// Whether NATS is connected, or since when it is not.
    pub fn state(&self) -> BusState {
        self.gauges.link.state()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has published the rest.
        self.outbound = None;
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the bus thread panicked");
            }
        }
    }
}

/// The bridge thread: a current-thread runtime for async-nats.
fn run(
    cluster: Cluster,
    queue: UnboundedReceiver<Outgoing>,
    done: CompletionSender,
    gauges: Arc<Gauges>,
    started: mpsc::SyncSender<Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = started.send(Err(format!("cannot start the bus runtime: {error}")));
            return;
        }
    };
    runtime.block_on(bridge(cluster, queue, done, gauges, started));
}

/// Connects, subscribes, then moves events both ways until the loop closes
/// the outbound queue.
async fn bridge(
    cluster: Cluster,
    mut queue: UnboundedReceiver<Outgoing>,
    done: CompletionSender,
    gauges: Arc<Gauges>,
    started: mpsc::SyncSender<Result<(), String>>,
) {
    let (client, mut subscription) = match connect(&cluster, &done, &gauges).await {
        Ok(connected) => connected,
        Err(why) => {
            let _ = started.send(Err(why));
            return;
        }
    };
    let _ = started.send(Ok(()));
    loop {
        tokio::select! {
            outgoing = queue.recv() => {
                let Some((subject, payload)) = outgoing else { break };
                let bytes = payload.len();
                if let Err(error) = client.publish(subject, payload.into()).await {
                    gauges.drop_one(&format!("publish failed: {error}"));
                }
                gauges.outbound_bytes.fetch_sub(bytes, Ordering::AcqRel);
            }
            incoming = subscription.next() => {
                let Some(message) = incoming else {
                    log::error!("bus: the NATS subscription ended");
                    break;
                };
                receive(&message.payload, &done, &gauges);
            }
        }
    }
    let _ = client.flush().await;
}

/// Connects to NATS (within [`NATS_CONNECT_TIMEOUT`]) and subscribes to
/// every subject under the cluster's prefix; or says why not.
async fn connect(
    cluster: &Cluster,
    done: &CompletionSender,
    gauges: &Arc<Gauges>,
) -> Result<(async_nats::Client, async_nats::Subscriber), String> {
    let (event_done, event_gauges) = (done.clone(), Arc::clone(gauges));
    let connected = async_nats::ConnectOptions::new()
        .name(&cluster.node_id)
        .event_callback(move |event| {
            let (done, gauges) = (event_done.clone(), Arc::clone(&event_gauges));
            async move {
                match event {
                    // Back after a disconnection, or NATS dropped messages
                    // for us: what went by meanwhile is in the database.
                    async_nats::Event::Connected => {
                        log::warn!("bus: {event}; receipts devices read from storage");
                        gauges.link.up();
                        gauges.gap(&done);
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        log::warn!("bus: {event}; receipts devices read from storage");
                        gauges.gap(&done);
                    }
                    async_nats::Event::Disconnected => {
                        log::warn!("bus: NATS disconnected");
                        gauges.link.down();
                    }
                    _ => log::info!("bus: {event}"),
                }
            }
        })
        // Our own events are handled locally already.
        .no_echo()
        .subscription_capacity(BUS_SUBSCRIPTION_MESSAGES_MAX)
        .client_capacity(BUS_CLIENT_COMMANDS_MAX)
        .connection_timeout(NATS_CONNECT_TIMEOUT)
        .connect(&cluster.nats_url);
    let url = &cluster.nats_url;
    let client = match tokio::time::timeout(NATS_CONNECT_TIMEOUT, connected).await {
        Ok(Ok(client)) => client,
        Ok(Err(error)) => return Err(format!("cannot connect to NATS at {url}: {error}")),
        Err(_) => {
            let secs = NATS_CONNECT_TIMEOUT.as_secs();
            return Err(format!("cannot connect to NATS at {url} within {secs} s"));
        }
    };
    let everything = format!("{}.>", cluster.subject_prefix);
    let subscription = client
        .subscribe(everything.clone())
        .await
        .map_err(|error| format!("cannot subscribe to {everything}: {error}"))?;
    // The subscription is known to the NATS server once a flush returns:
    // nothing published after the start is missed.
    client
        .flush()
        .await
        .map_err(|error| format!("NATS did not answer: {error}"))?;
    log::info!(
        "cluster: node {} on NATS {url} (subjects {everything})",
        cluster.node_id
    );
    Ok((client, subscription))
}

/// Decodes one event from another server and hands it to the loop, unless
/// the loop's inbound queue is past [`BUS_INBOUND_BYTES_MAX`].
fn receive(payload: &[u8], done: &CompletionSender, gauges: &Gauges) {
    let bytes = payload.len();
    if gauges.inbound_bytes.load(Ordering::Acquire) + bytes > BUS_INBOUND_BYTES_MAX {
        gauges.drop_one("inbound queue full");
        return gauges.gap(done);
    }
    let envelope: Envelope = match serde_json::from_slice(payload) {
        Ok(envelope) => envelope,
        Err(error) => return gauges.drop_one(&format!("undecodable: {error}")),
    };
    gauges.inbound_bytes.fetch_add(bytes, Ordering::AcqRel);
    done.send(Completion::Bus(Inbound::Event {
        node: envelope.node,
        event: envelope.event,
        bytes,
    }));
}
