//! A principal's scope on the RPCs that name a key or an application (DESIGN §7): a key or an
//! application outside it is PERMISSION_DENIED `OUTSIDE_PRINCIPAL_SCOPE`, whether or not the key
//! exists (a limited principal learns nothing of keys it may not see); `NOT_FOUND` is only for
//! principals whose scope is everything. Listings without a filter are narrowed to the scope by
//! the store.

use keyauth_contract::principal::{Principal, Scope};
use keyauth_core::Error;
use keyauth_core::model::{Environment, KeyId};

use super::KeyAuthorityApi;
use super::call::Call;

/// The refusal of a key or an application outside `principal`'s scope.
fn outside(principal: &Principal) -> Error {
    Error::PermissionDenied {
        reason: "OUTSIDE_PRINCIPAL_SCOPE",
        message: format!(
            "principal {:?} may not act on this key or application: it is outside its scope",
            principal.name
        ),
        role: None,
    }
}

/// The scope of the call's principal (everything for a call without one).
pub(crate) fn of(call: &Call) -> Scope {
    call.principal
        .as_ref()
        .map_or_else(Scope::everything, |p| p.scope.clone())
}

/// Refuses `application` (in `environment`, or in every environment the call may see when
/// `None`) unless it is in the call's scope.
pub(crate) fn check(
    call: &Call,
    application: &str,
    environment: Option<Environment>,
) -> Result<(), Error> {
    let Some(principal) = call.principal.as_deref() else {
        return Ok(());
    };
    let scope = &principal.scope;
    let in_scope = scope.has_application(application)
        && environment.is_none_or(|e| scope.has_environment(e.as_str()));
    if in_scope {
        Ok(())
    } else {
        Err(outside(principal))
    }
}

/// The environment a listing of both environments may show: the one the scope allows when it
/// allows only one (`None`: both).
pub(crate) fn narrow(call: &Call, environment: Option<Environment>) -> Option<Environment> {
    let allowed = call.principal.as_ref().map(|p| p.scope.environments());
    match (environment, allowed) {
        (None, Some([only])) => Environment::from_store(only),
        (environment, _) => environment,
    }
}

impl KeyAuthorityApi {
    /// Refuses the key `id` unless it is in the call's scope; a key that does not exist is
    /// outside every limited scope.
    pub(crate) async fn check_key_scope(&self, call: &Call, id: &KeyId) -> Result<(), Error> {
        let Some(principal) = call.principal.as_deref() else {
            return Ok(());
        };
        if principal.scope.is_everything() {
            return Ok(());
        }
        match self.authority.get(id).await {
            Ok(key) => check(call, key.application_id.as_str(), Some(key.environment)),
            Err(Error::KeyNotFound(_)) => Err(outside(principal)),
            Err(other) => Err(other),
        }
    }
}
