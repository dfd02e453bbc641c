//! Key changes as the change follower reads them: `key_events` rows, and PostgreSQL's live
//! notifications of them.

use super::records::EventKind;
use crate::error::Error;
use crate::model::KeyId;

/// One row of `key_events`, as far as cache invalidation needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEvent {
    pub seq: i64,
    pub kind: Option<EventKind>,
    /// `None` for events that concern no key (failed operator authentication).
    pub key_id: Option<KeyId>,
    /// The new key of a roll.
    pub related_key_id: Option<KeyId>,
}

/// PostgreSQL notifications of key changes (see migrations/postgres/0002).
pub struct ChangeFeed {
    listener: sqlx::postgres::PgListener,
}

pub const CHANGE_CHANNEL: &str = "keyauth_key_events";

impl ChangeFeed {
    /// Listens on [`CHANGE_CHANNEL`] through `listener`.
    pub(crate) async fn listen(
        mut listener: sqlx::postgres::PgListener,
    ) -> Result<ChangeFeed, Error> {
        listener.listen(CHANGE_CHANNEL).await?;
        Ok(ChangeFeed { listener })
    }

    /// The next change; `Ok(None)` when the connection was lost (notifications sent meanwhile
    /// are gone: catch up from `key_events`). The next call reconnects.
    pub async fn next(&mut self) -> Result<Option<KeyEvent>, Error> {
        let Some(notification) = self.listener.try_recv().await? else {
            return Ok(None);
        };
        // "<seq> <event> <key_id>[ <related_key_id>]" (migrations/postgres/0004).
        let mut parts = notification.payload().split(' ');
        let parsed = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(seq), Some(kind), Some(id), related) => (|| {
                Some(KeyEvent {
                    seq: seq.parse().ok()?,
                    kind: Some(EventKind::from_store(kind)?),
                    key_id: Some(KeyId::parse(id, "payload").ok()?),
                    related_key_id: match related {
                        Some(r) => Some(KeyId::parse(r, "payload").ok()?),
                        None => None,
                    },
                })
            })(),
            _ => None,
        };
        parsed.map(Some).ok_or_else(|| {
            Error::internal(format!(
                "malformed key event notification {}",
                crate::error::echo(notification.payload())
            ))
        })
    }
}
