//! Under load and under attack: what an anonymous caller sends can make keyauth neither write,
//! stall, lock an owner out, nor spend more than a bare RPC.

use tonic::Code;
use tonic_types::StatusExt;

use crate::both_stores;
use crate::helpers::*;

both_stores!(caller_strings_are_echoed_cut);

async fn caller_strings_are_echoed_cut(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (_, secret) = app.issue_test_key().await;
    let huge = "r".repeat(200 * 1024);
    for (resource, action) in [(huge.as_str(), "read"), ("patients", huge.as_str())] {
        let status = assert_status(
            app.check(&secret, resource, action).await,
            Code::InvalidArgument,
            Some("INVALID_ARGUMENT"),
        );
        assert!(status.message().len() < 1024, "{}", status.message().len());
        assert!(status.message().contains("…(cut"), "{}", status.message());
        assert!(status.details().len() < 1024, "{}", status.details().len());
        assert!(!violated_fields(&status).is_empty());
    }
    // Many bad permissions in one Verify: the answer lists a bounded number of them.
    let many: Vec<_> = (0..500)
        .map(|i| permission(&format!("nope{i}-{}", "x".repeat(300)), &["read"]))
        .collect();
    let status = assert_status(
        app.verify_with(&secret, many).await,
        Code::InvalidArgument,
        None,
    );
    assert!(
        status.message().len() < 8 * 1024,
        "{}",
        status.message().len()
    );
    let details = status.get_error_details();
    assert!(details.bad_request().unwrap().field_violations.len() <= 10);
    app.stop().await;
}
