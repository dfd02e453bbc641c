//! Key changes as watchers see them (`WatchKeyChanges`): one in-process hub that the change
//! follower (`propagation`) publishes to as it applies `key_events` rows — changes made here
//! and on every other instance alike — and that each watch stream subscribes to.
//!
//! Memory stays bounded whatever the watchers do: the hub is one broadcast ring of
//! [`HUB_CAPACITY`] changes shared by every subscriber; a subscriber that falls further behind
//! than that is told it lagged (the stream then sends a reset and ends) instead of growing a
//! queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::{Notify, broadcast};

use crate::clock::Timestamp;
use crate::model::KeyId;
use crate::store::EventKind;

/// Changes kept for subscribers that have not read them yet, by default.
pub const HUB_CAPACITY: usize = 1024;

/// One change of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Its `key_events` sequence.
    pub seq: i64,
    pub kind: EventKind,
    pub key_id: KeyId,
    /// Rolled: the new key.
    pub related_key_id: Option<KeyId>,
    /// Rolled: the old key's new expiry, when it was read.
    pub expire_time: Option<Timestamp>,
}

pub struct ChangeHub {
    sender: broadcast::Sender<Arc<Change>>,
    /// Every sequence at or below it has been published (or was a gap given up on).
    watermark: AtomicI64,
    /// Wakes the follower when this instance committed a change, so that its watchers hear of
    /// it at once rather than at the next poll.
    committed_here: Notify,
}

impl Default for ChangeHub {
    fn default() -> Self {
        ChangeHub::new(HUB_CAPACITY)
    }
}

impl ChangeHub {
    /// A hub keeping `capacity` changes for subscribers that have not read them yet.
    pub fn new(capacity: usize) -> Self {
        ChangeHub {
            sender: broadcast::channel(capacity.max(1)).0,
            watermark: AtomicI64::new(0),
            committed_here: Notify::new(),
        }
    }

    /// Changes published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.sender.subscribe()
    }

    /// Whether anyone listens (the follower skips enriching changes nobody reads).
    pub fn has_watchers(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    pub fn publish(&self, change: Change) {
        // No receiver is not an error: nobody watches right now.
        let _ = self.sender.send(Arc::new(change));
    }

    /// Every change up to this sequence has been published.
    pub fn watermark(&self) -> i64 {
        self.watermark.load(Ordering::SeqCst)
    }

    pub fn set_watermark(&self, seq: i64) {
        self.watermark.fetch_max(seq, Ordering::SeqCst);
    }

    /// Called after a change committed on this instance.
    pub fn note_commit(&self) {
        self.committed_here.notify_one();
    }

    /// Completes after the next [`ChangeHub::note_commit`] (or at once if one is pending).
    pub async fn committed(&self) {
        self.committed_here.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: i64) -> Change {
        Change {
            seq,
            kind: EventKind::Revoked,
            key_id: KeyId::from_store("key_a".into()),
            related_key_id: None,
            expire_time: None,
        }
    }

    #[tokio::test]
    async fn subscribers_get_changes_and_a_slow_one_is_told_it_lagged() {
        let hub = ChangeHub::default();
        assert!(!hub.has_watchers());
        let mut fast = hub.subscribe();
        let mut slow = hub.subscribe();
        hub.publish(change(1));
        assert_eq!(fast.recv().await.unwrap().seq, 1);
        for seq in 2..(HUB_CAPACITY as i64 + 10) {
            hub.publish(change(seq));
        }
        assert!(matches!(
            slow.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
        hub.set_watermark(5);
        hub.set_watermark(3);
        assert_eq!(hub.watermark(), 5, "the watermark never moves back");
    }

    #[tokio::test]
    async fn a_commit_wakes_the_follower_even_if_it_was_not_waiting_yet() {
        let hub = ChangeHub::default();
        hub.note_commit();
        tokio::time::timeout(std::time::Duration::from_secs(1), hub.committed())
            .await
            .expect("the pending commit is seen");
    }
}
