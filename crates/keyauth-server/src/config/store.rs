//! What the `Authority` is made of: the store, the catalog, hashing, the cache, the seal keys
//! and the operator-failure limits.

use keyauth_core::auth_failures::AuthFailureSettings;
use keyauth_core::authority::UsageRetention;
use keyauth_core::cache::CacheSettings;
use keyauth_core::catalog::Catalog;
use keyauth_core::hashing::HashParams;
use keyauth_core::lifetime::LifetimeBounds;
use keyauth_core::sealing::SealKey;
use keyauth_core::store::StoreOptions;

use super::args::ServeArgs;
use super::error::{SettingError, setting};
use super::secret::{SecretArg, SecretFlag};
use crate::server::AuthoritySettings;

/// The seal key of `arg`'s flags, parsed (or read from its file); none when neither is given.
fn seal_key_of<N: SecretFlag>(arg: &SecretArg<N>) -> Result<Option<SealKey>, SettingError> {
    match (&arg.value, &arg.file) {
        (Some(text), _) => SealKey::parse(text.expose())
            .map(Some)
            .map_err(setting(N::VALUE.setting)),
        (None, Some(path)) => SealKey::load(path)
            .map(Some)
            .map_err(setting(N::FILE.setting)),
        (None, None) => Ok(None),
    }
}

impl ServeArgs {
    /// Everything the `Authority` is made of, each file read and each value checked.
    pub fn authority_settings(&self) -> Result<AuthoritySettings, SettingError> {
        let catalog = match &self.catalog {
            Some(path) => Catalog::load(path).map_err(setting("--catalog (KEYAUTH_CATALOG)"))?,
            None => Catalog::built_in(),
        };
        self.hash_params()
            .validate()
            .map_err(setting("--argon2-m-cost/--argon2-t-cost/--argon2-p-cost"))?;
        let seal_key = seal_key_of(&self.seal_key)?;
        let seal_key_previous = seal_key_of(&self.seal_key_previous)?;
        if seal_key_previous.is_some() && seal_key.is_none() {
            return Err(setting("--seal-key-previous (KEYAUTH_SEAL_KEY_PREVIOUS)")(
                "needs a current seal key (--seal-key or --seal-key-file) to seal with".into(),
            ));
        }
        Ok(AuthoritySettings {
            catalog,
            hash: self.hash_params(),
            hash_workers: self.hash_workers(),
            hash_queue: self.hash_queue,
            cache: self.cache(),
            seal_key: seal_key.map(std::sync::Arc::new),
            seal_key_previous: seal_key_previous.map(std::sync::Arc::new),
            idempotency_ttl: self.idempotency_ttl,
            auth_failures: AuthFailureSettings {
                limit: self.operator_failure_limit,
                retention: self.auth_failure_retention,
                ..AuthFailureSettings::default()
            },
            watch_backlog: self.watch_backlog,
            lifetimes: LifetimeBounds {
                live: self.max_live_key_lifetime,
                test: self.max_test_key_lifetime,
            },
            expiry_warning: self.expiry_warning,
            usage_retention: UsageRetention {
                hourly: self.usage_hourly_retention,
                total: self.usage_retention,
            },
        })
    }

    pub fn hash_params(&self) -> HashParams {
        HashParams {
            m_cost: self.argon2_m_cost,
            t_cost: self.argon2_t_cost,
            p_cost: self.argon2_p_cost,
        }
    }

    pub fn hash_workers(&self) -> usize {
        match self.hash_workers {
            0 => default_hash_workers(std::thread::available_parallelism().map_or(1, |n| n.get())),
            n => n,
        }
    }

    pub fn cache(&self) -> CacheSettings {
        CacheSettings {
            max_bytes: self.cache_max_bytes,
            ttl: self.cache_ttl,
            negative_ttl: self.negative_cache_ttl,
            failure_limit: self.failure_limit,
            max_cold_lookups: self.max_cold_lookups,
            staleness_limit: self.store_staleness_limit,
            ..CacheSettings::default()
        }
    }

    pub fn store(&self) -> StoreOptions {
        StoreOptions {
            max_connections: self.database_max_connections,
            ..StoreOptions::default()
        }
    }
}

/// The argon2 pool of `--hash-workers 0` on `cores` cores: all but one, at least one. A pool
/// as wide as the machine lets a burst of cold Verify calls take every core from the runtime,
/// so warm calls (answered from memory in microseconds) would wait behind argon2.
pub fn default_hash_workers(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

#[cfg(test)]
mod tests {
    use super::super::args::testing::parse;
    use super::*;

    #[test]
    fn the_hash_pool_leaves_a_core_to_the_runtime() {
        assert_eq!(default_hash_workers(1), 1);
        assert_eq!(default_hash_workers(2), 1);
        assert_eq!(default_hash_workers(8), 7);
        assert_eq!(parse(&["--hash-workers", "3"]).hash_workers(), 3);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(parse(&[]).hash_workers(), default_hash_workers(cores));
    }

    #[test]
    fn a_previous_seal_key_opens_only_beside_a_current_one() {
        let old = keyauth_core::sealing::SealKey::generate_hex().unwrap();
        let new = keyauth_core::sealing::SealKey::generate_hex().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("previous.key");
        std::fs::write(&file, format!("{old}\n")).unwrap();
        let args = parse(&[
            "--seal-key",
            &new,
            "--seal-key-previous-file",
            file.to_str().unwrap(),
        ]);
        let settings = args.authority_settings().unwrap();
        assert!(settings.seal_key.is_some() && settings.seal_key_previous.is_some());
        let args = parse(&["--seal-key", &new, "--seal-key-previous", &old]);
        assert!(
            args.authority_settings()
                .unwrap()
                .seal_key_previous
                .is_some()
        );
        let alone = parse(&["--seal-key-previous", &old]);
        let err = alone.authority_settings().unwrap_err();
        assert!(err.setting.contains("KEYAUTH_SEAL_KEY_PREVIOUS"), "{err}");
        let bad = parse(&["--seal-key", &new, "--seal-key-previous", "abcd"]);
        assert!(bad.authority_settings().is_err());
    }
}
