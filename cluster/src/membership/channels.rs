//! Custom gossip broadcasts: small items other subsystems spread through the membership gossip
//! (foca's custom broadcasts), multiplexed by a channel number.
//!
//! Role: a subsystem (the registry's eventual tier) registers a [`GossipChannel`] under a channel
//! number with [`crate::membership::Membership::register_channel`] and hands items to
//! [`crate::membership::Membership::broadcast`]. The membership actor adds them to foca's
//! dissemination backlog; foca piggybacks them on its probes, acks and periodic gossip within
//! the packet budget and sends them to a few random members at once. When a peer's item arrives,
//! foca asks [`Channels`] (its `BroadcastHandler`), which gives the payload to the channel: only
//! an item the channel reports as *new* keeps spreading, so the epidemic stops by itself
//! (loop-free).
//!
//! Item layout (after foca's own length prefix): `channel: u8`, `id: u64` BE, `version: u64` BE,
//! then the channel's payload. `(channel, id)` names what the item is about and `version` orders
//! its versions: a newer item invalidates an older one still waiting in the backlog.
//!
//! Fairness and bounds: foca's backlog sends the least-transmitted items first, so every channel
//! gets its share of each packet; the backlog is bounded by [`MAX_BROADCAST_BACKLOG`] (items
//! beyond it are refused and counted; the channel's own anti-entropy repairs what gossip could not
//! carry), the hand-off queue by [`MAX_PENDING_BROADCASTS`], an item by the packet budget.
//! Nothing a peer sends can make the handler fail: malformed items are counted and skipped, so
//! the rest of the packet is still read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use foca::{BroadcastHandler, Invalidates};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use thiserror::Error;

use super::identity::GossipIdentity;

/// Channel numbers are `0..MAX_CHANNELS`.
pub const MAX_CHANNELS: usize = 8;

/// The channel of the registry's eventual tier.
pub const CHANNEL_REGISTRY: u8 = 1;

/// The most items waiting in foca's dissemination backlog.
///
/// Why: foca scans the backlog on every add (to drop invalidated items), so it must stay small;
/// 512 items of ~60 bytes are a few hundred packets of piggyback, several seconds of gossip. A
/// burst beyond that is carried by the channel's anti-entropy instead.
pub const MAX_BROADCAST_BACKLOG: usize = 512;

/// The most items handed to the actor and not yet added to the backlog.
pub const MAX_PENDING_BROADCASTS: usize = 4096;

/// Bytes of the item header (`channel`, `id`, `version`).
pub const ITEM_HEADER_BYTES: usize = 17;

/// Why an item was not queued for gossip. The caller's own state is unaffected; it should rely on
/// its anti-entropy for this item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum BroadcastError {
    /// The channel number is not below [`MAX_CHANNELS`].
    #[error("gossip channel {0} does not exist")]
    NoSuchChannel(u8),
    /// The item does not fit the gossip packet budget.
    #[error("item of {len} bytes exceeds the gossip item budget of {max} bytes")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload accepted.
        max: usize,
    },
    /// The hand-off queue to the membership actor is full (`QueueSaturated`).
    #[error("QueueSaturated: the gossip broadcast queue is full")]
    QueueSaturated,
    /// Membership stopped.
    #[error("membership stopped")]
    Stopped,
}

/// A subsystem that receives the items of one gossip channel.
pub trait GossipChannel: Send + Sync + 'static {
    /// A peer's item arrived (the channel header removed). Return true when it was new
    /// information (so it keeps spreading), false when it was stale, a duplicate or invalid.
    /// Must be quick and must not block: it runs on the membership actor's task.
    fn receive(&self, payload: &[u8]) -> bool;
}

/// What identifies an item in foca's backlog; a newer version of the same `(channel, id)`
/// replaces an older one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BroadcastKey {
    channel: u8,
    id: u64,
    version: u64,
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.channel == other.channel && self.id == other.id && self.version >= other.version
    }
}

/// Encodes an item: header then payload.
pub(super) fn encode_item(channel: u8, id: u64, version: u64, payload: &[u8]) -> Vec<u8> {
    let mut item = Vec::with_capacity(ITEM_HEADER_BYTES + payload.len());
    item.push(channel);
    item.extend_from_slice(&id.to_be_bytes());
    item.extend_from_slice(&version.to_be_bytes());
    item.extend_from_slice(payload);
    item
}

fn decode_item(item: &[u8]) -> Option<(BroadcastKey, &[u8])> {
    if item.len() <= ITEM_HEADER_BYTES {
        return None;
    }
    let (header, payload) = item.split_at(ITEM_HEADER_BYTES);
    let id = u64::from_be_bytes(header[1..9].try_into().ok()?);
    let version = u64::from_be_bytes(header[9..17].try_into().ok()?);
    Some((BroadcastKey { channel: header[0], id, version }, payload))
}

/// Counters of custom broadcasts.
#[derive(Clone)]
pub(super) struct BroadcastMetrics {
    items: IntCounterVec,
    backlog: IntGauge,
}

impl BroadcastMetrics {
    const OUTCOMES: [&'static str; 8] = [
        "queued",
        "received_new",
        "received_stale",
        "malformed",
        "unknown_channel",
        "backlog_full",
        "too_large",
        "queue_full",
    ];

    pub(super) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let items = IntCounterVec::new(
            Opts::new(
                "cohort_gossip_custom_broadcasts_total",
                "Custom gossip broadcast items (registry deltas) by outcome: queued locally, received new or stale, or refused (malformed, unknown_channel, backlog_full, too_large, queue_full).",
            ),
            &["outcome"],
        )?;
        let backlog = IntGauge::new(
            "cohort_gossip_custom_backlog",
            "Custom broadcast items waiting in the gossip dissemination backlog.",
        )?;
        registry.register(Box::new(items.clone()))?;
        registry.register(Box::new(backlog.clone()))?;
        for outcome in Self::OUTCOMES {
            items.with_label_values(&[outcome]).inc_by(0);
        }
        Ok(Self { items, backlog })
    }

    pub(super) fn count(&self, outcome: &str) {
        self.items.with_label_values(&[outcome]).inc();
    }
}

/// The registered channels, shared by the membership handle (which registers) and foca's
/// broadcast handler (which dispatches).
pub(super) struct ChannelTable {
    slots: Mutex<[Option<Arc<dyn GossipChannel>>; MAX_CHANNELS]>,
    /// foca's backlog length as of the driver's last input.
    backlog: AtomicUsize,
    pub(super) metrics: BroadcastMetrics,
}

impl ChannelTable {
    pub(super) fn new(metrics: BroadcastMetrics) -> Self {
        Self { slots: Mutex::new(Default::default()), backlog: AtomicUsize::new(0), metrics }
    }

    /// Registers (or replaces) the handler of `channel`.
    pub(super) fn register(&self, channel: u8, handler: Arc<dyn GossipChannel>) -> Result<(), BroadcastError> {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let slot = slots.get_mut(usize::from(channel)).ok_or(BroadcastError::NoSuchChannel(channel))?;
        *slot = Some(handler);
        Ok(())
    }

    fn handler(&self, channel: u8) -> Option<Arc<dyn GossipChannel>> {
        let slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        slots.get(usize::from(channel)).and_then(Clone::clone)
    }

    /// Records foca's backlog length (the driver calls this after each input).
    pub(super) fn set_backlog(&self, len: usize) {
        self.backlog.store(len, Ordering::Relaxed);
        self.metrics.backlog.set(i64::try_from(len).unwrap_or(i64::MAX));
    }

    pub(super) fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }
}

/// foca's broadcast handler: dispatches peers' items to their channel.
pub(super) struct Channels(pub(super) Arc<ChannelTable>);

impl BroadcastHandler<GossipIdentity> for Channels {
    type Key = BroadcastKey;
    type Error = std::convert::Infallible;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&GossipIdentity>,
    ) -> Result<Option<BroadcastKey>, Self::Error> {
        let table = &self.0;
        let Some((key, payload)) = decode_item(data) else {
            table.metrics.count("malformed");
            return Ok(None);
        };
        if sender.is_none() {
            // Our own item, added by the driver: the channel applied it already.
            return Ok(Some(key));
        }
        let Some(handler) = table.handler(key.channel) else {
            table.metrics.count("unknown_channel");
            return Ok(None);
        };
        if !handler.receive(payload) {
            table.metrics.count("received_stale");
            return Ok(None);
        }
        table.metrics.count("received_new");
        if table.backlog() >= MAX_BROADCAST_BACKLOG {
            // Applied here, but not re-spread: anti-entropy carries it to whoever missed it.
            table.metrics.count("backlog_full");
            return Ok(None);
        }
        Ok(Some(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct Recorder {
        seen: AtomicU64,
        new: bool,
    }

    impl GossipChannel for Recorder {
        fn receive(&self, payload: &[u8]) -> bool {
            self.seen.fetch_add(payload.len() as u64, Ordering::Relaxed);
            self.new
        }
    }

    fn table() -> Arc<ChannelTable> {
        Arc::new(ChannelTable::new(BroadcastMetrics::register(&Registry::new()).unwrap()))
    }

    fn peer() -> GossipIdentity {
        let addr = "127.0.0.1:1".parse().unwrap();
        GossipIdentity::new(crate::MemberInfo {
            id: crate::NodeId::new("peer", 1),
            addrs: crate::MemberAddrs { gossip: addr, internode: addr, http: addr },
            raft_eligible: false,
            failure_domain: String::new(),
        })
    }

    #[test]
    fn new_items_keep_spreading_and_stale_ones_stop() {
        let table = table();
        let fresh = Arc::new(Recorder { seen: AtomicU64::new(0), new: true });
        table.register(1, fresh.clone()).unwrap();
        let stale = Arc::new(Recorder { seen: AtomicU64::new(0), new: false });
        table.register(2, stale.clone()).unwrap();
        let mut handler = Channels(table);
        let peer = peer();
        let key = handler.receive_item(&encode_item(1, 7, 3, b"abc"), Some(&peer)).unwrap();
        assert_eq!(key, Some(BroadcastKey { channel: 1, id: 7, version: 3 }));
        assert_eq!(fresh.seen.load(Ordering::Relaxed), 3);
        assert_eq!(handler.receive_item(&encode_item(2, 7, 3, b"abcd"), Some(&peer)).unwrap(), None);
        assert_eq!(stale.seen.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn malformed_and_unknown_items_are_skipped_not_errors() {
        let mut handler = Channels(table());
        let peer = peer();
        assert_eq!(handler.receive_item(&[1, 2, 3], Some(&peer)).unwrap(), None);
        assert_eq!(handler.receive_item(&encode_item(1, 1, 1, b""), Some(&peer)).unwrap(), None);
        assert_eq!(handler.receive_item(&encode_item(5, 1, 1, b"x"), Some(&peer)).unwrap(), None);
        assert_eq!(handler.receive_item(&encode_item(200, 1, 1, b"x"), Some(&peer)).unwrap(), None);
    }

    #[test]
    fn local_items_are_kept_without_asking_the_channel() {
        let table = table();
        let channel = Arc::new(Recorder { seen: AtomicU64::new(0), new: false });
        table.register(1, channel.clone()).unwrap();
        let mut handler = Channels(table);
        assert!(handler.receive_item(&encode_item(1, 9, 1, b"xy"), None).unwrap().is_some());
        assert_eq!(channel.seen.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_backlog_stops_re_spreading_but_still_delivers() {
        let table = table();
        let channel = Arc::new(Recorder { seen: AtomicU64::new(0), new: true });
        table.register(1, channel.clone()).unwrap();
        table.set_backlog(MAX_BROADCAST_BACKLOG);
        let mut handler = Channels(table);
        assert_eq!(handler.receive_item(&encode_item(1, 1, 1, b"z"), Some(&peer())).unwrap(), None);
        assert_eq!(channel.seen.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn newer_versions_invalidate_older_ones_of_the_same_id_only() {
        let old = BroadcastKey { channel: 1, id: 1, version: 1 };
        let new = BroadcastKey { channel: 1, id: 1, version: 2 };
        let other = BroadcastKey { channel: 1, id: 2, version: 9 };
        assert!(new.invalidates(&old));
        assert!(!old.invalidates(&new));
        assert!(!other.invalidates(&old));
        assert!(!BroadcastKey { channel: 2, ..new }.invalidates(&old));
    }

    #[test]
    fn registering_beyond_the_channel_range_is_refused() {
        let table = table();
        let channel = Arc::new(Recorder { seen: AtomicU64::new(0), new: true });
        assert_eq!(table.register(MAX_CHANNELS as u8, channel).unwrap_err(), BroadcastError::NoSuchChannel(8));
    }
}
