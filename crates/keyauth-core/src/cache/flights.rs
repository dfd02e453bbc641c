//! Single flight: one cold proof or refresh per key id at a time; concurrent callers of the
//! same id wait for it and then read what it cached.

use std::sync::{Arc, Mutex};

use crate::model::KeyId;

/// One cold proof or refresh per key id at a time.
#[derive(Default)]
pub struct Flights {
    running: Mutex<std::collections::HashMap<KeyId, Arc<tokio::sync::Mutex<()>>>>,
}

/// A place in the flight of one key id; held while waiting and while running.
struct Ticket<'a> {
    flights: &'a Flights,
    id: KeyId,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut running = self
            .flights
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        drop(self.lock.take());
        // The map's own reference is the last one: nobody runs or waits for this id.
        if running
            .get(&self.id)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            running.remove(&self.id);
        }
    }
}

/// The flight of one key id: while it is held, no other caller proves or refreshes that id.
pub struct Flight<'a> {
    // Declared first: the lock is released before the ticket cleans up.
    _guard: tokio::sync::OwnedMutexGuard<()>,
    _ticket: Ticket<'a>,
}

impl Flights {
    /// Waits for the running flight of `id`, if any, and starts the next one.
    pub async fn join(&self, id: &KeyId) -> Flight<'_> {
        let lock = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_default()
            .clone();
        let ticket = Ticket {
            flights: self,
            id: id.clone(),
            lock: Some(lock.clone()),
        };
        let guard = lock.lock_owned().await;
        Flight {
            _guard: guard,
            _ticket: ticket,
        }
    }

    /// Key ids with a flight running or waited for.
    pub fn len(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_flight_per_key_id_at_a_time() {
        let flights = Arc::new(Flights::default());
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (flights, running, most) = (flights.clone(), running.clone(), most.clone());
            tasks.spawn(async move {
                let _flight = flights.join(&KeyId::from_store("key_a".into())).await;
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                running.fetch_sub(1, Ordering::SeqCst);
            });
        }
        // Another id is not held up by them.
        let other = flights.join(&KeyId::from_store("key_b".into())).await;
        drop(other);
        tasks.join_all().await;
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty(), "finished flights leave nothing behind");
        // A waiter that gives up leaves nothing behind either.
        let held = flights.join(&KeyId::from_store("key_c".into())).await;
        let gave_up = tokio::time::timeout(
            Duration::from_millis(5),
            flights.join(&KeyId::from_store("key_c".into())),
        )
        .await;
        assert!(gave_up.is_err());
        drop(held);
        assert!(flights.is_empty());
    }
}
