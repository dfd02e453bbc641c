//! The key format (crate `keyauth-key`), and the key id it gives in the domain's type.

pub use keyauth_contract::*;

use crate::model::KeyId;

/// The domain's id of a key: `key_<lookup>`.
pub trait KeyIdOf {
    fn id(&self) -> KeyId;
}

impl KeyIdOf for PresentedKey {
    fn id(&self) -> KeyId {
        KeyId::from_lookup(self.lookup())
    }
}
