//! `WatchKeyChanges`: a stream per watcher, fed by the authority's change hub.
//!
//! A stream starts from now (`started`, no `after_revision`) or resumes after a revision (the changes since are
//! replayed from `key_events`, at most [`MAX_REPLAY`] of them; more, or a revision the store
//! never reached, is a `reset`). Then it forwards each change the hub publishes, and a
//! heartbeat when nothing happened for a while. Every message carries the revision to resume
//! from: the hub's watermark, below which every change has been published.
//!
//! Bounded whatever the watchers do: at most `max_streams` streams (more are refused
//! `RESOURCE_EXHAUSTED`), a small buffer per stream, and a watcher that falls behind the hub's
//! shared ring is sent a `reset` and closed; one that stops reading altogether is closed after
//! [`SEND_TIMEOUT`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyauth_core::Error;
use keyauth_core::changes::Change;
use keyauth_proto as pb;
use keyauth_proto::watch_key_changes_response::Event;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::KeyAuthorityApi;
use crate::{status, wire};

/// Changes replayed on a resume at most; further behind is a reset.
pub const MAX_REPLAY: u32 = 10_000;
/// Messages buffered per stream.
const STREAM_BUFFER: usize = 64;
/// How long a message may wait for a watcher that does not read before the stream is closed.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchOptions {
    /// A heartbeat is sent after this long without a message.
    pub heartbeat: Duration,
    /// Streams open at once at most.
    pub max_streams: usize,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            heartbeat: Duration::from_secs(2),
            max_streams: 1024,
        }
    }
}

pub(super) struct Watchers {
    heartbeat: Duration,
    permits: Arc<Semaphore>,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Watchers {
    pub(super) fn new(
        options: WatchOptions,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Self {
        Watchers {
            heartbeat: options.heartbeat.max(Duration::from_millis(10)),
            permits: Arc::new(Semaphore::new(options.max_streams)),
            stop,
        }
    }
}

pub type ChangeStream = ReceiverStream<Result<pb::WatchKeyChangesResponse, Status>>;

fn message(revision: i64, event: Event) -> pb::WatchKeyChangesResponse {
    pb::WatchKeyChangesResponse {
        revision,
        event: Some(event),
    }
}

fn change_out(change: &Change) -> Event {
    Event::Change(pb::KeyChange {
        sequence: change.seq,
        key_id: change.key_id.to_string(),
        r#type: wire::event_type_out(change.kind).into(),
        related_key_id: change
            .related_key_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        expire_time: change.expire_time.map(wire::timestamp_out),
    })
}

fn reset(reason: &str) -> Event {
    Event::Reset(pb::WatchReset {
        reason: reason.to_owned(),
    })
}

impl KeyAuthorityApi {
    pub(super) async fn watch_changes(
        &self,
        request: Request<pb::WatchKeyChangesRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        let started = Instant::now();
        let outcome = self.open_stream(request).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(status) => keyauth_proto::code_name(status.code()),
        };
        crate::metrics::call("WatchKeyChanges", label, started.elapsed());
        outcome.map(Response::new)
    }

    async fn open_stream(
        &self,
        mut request: Request<pb::WatchKeyChangesRequest>,
    ) -> Result<ChangeStream, Status> {
        let principal = self
            .admitted("WatchKeyChanges", &mut request)
            .await
            .map_err(|refused| status::from_error(refused.into()))?;
        // The stream names every key id of every application: open to every caller only on
        // loopback (the security review's F4), else a credential with keys.verify.
        let loopback =
            crate::connections::remote_addr(&request).is_some_and(|a| a.ip().is_loopback());
        if principal.is_none() && !loopback {
            return Err(status::from_error(Error::VerifierUnauthenticated(
                "WatchKeyChanges names every key id: it needs a credential with keys.verify \
                 (a verifier token) unless the caller is on loopback",
            )));
        }
        let resume = request.into_inner().after_revision;
        let after = resume.unwrap_or(0);
        if after < 0 {
            return Err(status::from_error(Error::invalid(
                "after_revision",
                "must not be negative",
            )));
        }
        let permit = self
            .watch
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                status::detailed(
                    tonic::Code::ResourceExhausted,
                    "TOO_MANY_WATCHERS",
                    "this server has as many WatchKeyChanges streams as it accepts; retry later or on another instance",
                    Vec::new(),
                    Some(Duration::from_secs(5)),
                )
            })?;
        let hub = self.authority.changes();
        // Subscribe before reading the watermark: nothing published in between is missed.
        let mut live = hub.subscribe();
        let start = hub.watermark();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let first: Vec<pb::WatchKeyChangesResponse> = if resume.is_none() {
            vec![message(start, Event::Started(pb::WatchStarted {}))]
        } else {
            self.replay(after, start)
                .await
                .map_err(status::from_error)?
        };
        let authority = self.authority.clone();
        let heartbeat = self.watch.heartbeat;
        let mut stop = self.watch.stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut revision = start.max(after);
            for m in first {
                let ends = matches!(m.event, Some(Event::Reset(_)));
                if !send(&tx, m).await || ends {
                    return;
                }
            }
            let stopped = async {
                match stop.as_mut() {
                    Some(stop) => {
                        let _ = stop.wait_for(|s| *s).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(stopped);
            loop {
                let event = tokio::select! {
                    _ = &mut stopped => return,
                    _ = tx.closed() => return,
                    received = live.recv() => match received {
                        Ok(change) => change_out(&change),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::info!(missed, "a watcher fell behind; sending a reset");
                            let _ = send(&tx, message(revision, reset("consumer_too_slow"))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep(heartbeat) => Event::Heartbeat(pb::WatchHeartbeat {}),
                };
                revision = revision.max(authority.changes().watermark());
                if !send(&tx, message(revision, event)).await {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// The messages that bring a watcher from `after` to `upto`: the changes in between, or a
    /// reset when they cannot all be replayed.
    async fn replay(
        &self,
        after: i64,
        upto: i64,
    ) -> Result<Vec<pb::WatchKeyChangesResponse>, Error> {
        let store = self.authority.store();
        if after > store.latest_event().await? {
            return Ok(vec![message(upto, reset("revision_not_kept"))]);
        }
        if after >= upto {
            // Ahead of this instance (another one told the watcher more): nothing to replay.
            return Ok(vec![message(
                after,
                Event::Heartbeat(pb::WatchHeartbeat {}),
            )]);
        }
        let events = store.events_after(after, MAX_REPLAY + 1).await?;
        if events.len() > MAX_REPLAY as usize {
            return Ok(vec![message(upto, reset("revision_not_kept"))]);
        }
        let mut out: Vec<_> = events
            .into_iter()
            .filter(|e| e.seq <= upto)
            .filter_map(|e| {
                let kind = e.kind.filter(|k| k.changes_key())?;
                let change = Change {
                    seq: e.seq,
                    kind,
                    key_id: e.key_id?,
                    related_key_id: None,
                    expire_time: None,
                };
                Some(message(e.seq.max(after), change_out(&change)))
            })
            .collect();
        // The last replayed message says the watcher is now at `upto`.
        match out.last_mut() {
            Some(last) => last.revision = upto,
            None => out.push(message(upto, Event::Heartbeat(pb::WatchHeartbeat {}))),
        }
        Ok(out)
    }
}

/// Sends one message; false when the watcher is gone or did not read for [`SEND_TIMEOUT`].
async fn send(
    tx: &mpsc::Sender<Result<pb::WatchKeyChangesResponse, Status>>,
    message: pb::WatchKeyChangesResponse,
) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(message))).await,
        Ok(Ok(()))
    )
}
