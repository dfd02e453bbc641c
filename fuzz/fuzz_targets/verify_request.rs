//! Verify and CheckPermission requests from raw bytes, as the server receives them: decoded,
//! the key parsed, the permissions checked against the catalog. Nothing panics, and no error
//! message echoes an unbounded caller string.
#![no_main]

use keyauth_core::catalog::{Catalog, CatalogCheck, RequestedPermission};
use keyauth_core::key::PresentedKey;
use keyauth_proto as pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// An error message stays small whatever the request: at most 10 violations of a few hundred
/// bytes (caller strings cut to 64 characters).
const MAX_MESSAGE: usize = 8 * 1024;

fuzz_target!(|data: &[u8]| {
    let catalog = Catalog::built_in();
    if let Ok(req) = pb::VerifyRequest::decode(data) {
        let _ = PresentedKey::parse(&req.key);
        let requested: Vec<RequestedPermission> = req
            .required_permissions
            .iter()
            .map(|p| RequestedPermission {
                resource: p.resource.clone(),
                actions: p.actions.clone(),
            })
            .collect();
        if let Err(e) = catalog.permissions(&requested, "required_permissions") {
            assert!(e.to_string().len() < MAX_MESSAGE, "{}", e.to_string().len());
        }
    }
    if let Ok(req) = pb::CheckPermissionRequest::decode(data) {
        let _ = PresentedKey::parse(&req.key);
        if let Err(e) = catalog.check(&req.resource, &req.action, "") {
            assert!(e.to_string().len() < 1024, "{}", e.to_string().len());
        }
    }
});
