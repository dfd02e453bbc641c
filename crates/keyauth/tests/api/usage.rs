//! Usage per key (DESIGN §7 "Usage, hygiene, events"): GetKeyUsage's counts, exact after a
//! flush, by UTC hour and day, for a key and an application; hourly counts folded into daily
//! ones and purged past retention; bad ranges refused.

use std::collections::BTreeMap;
use std::time::Duration;

use keyauth_core::key::PresentedKey;
use keyauth_core::model::Environment;
use keyauth_proto as pb;
use tonic::Code;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    counts_are_exact_after_a_flush_by_hour_and_day,
    old_hours_fold_into_days_and_expire,
    bad_ranges_are_refused,
);

const HOUR: u64 = 3600;

/// A wire time `secs` from `at` (µs).
fn wire(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// The start of the test clock's current UTC hour (µs).
fn this_hour(app: &TestApp) -> i64 {
    let now = app.authority.now().as_micros();
    now - now.rem_euclid(3_600_000_000)
}

type Bucket = (i64, i64, BTreeMap<String, i64>);

async fn usage(
    app: &TestApp,
    of: (&str, &str),
    from: i64,
    to: i64,
    granularity: pb::UsageGranularity,
) -> Result<Vec<Bucket>, tonic::Status> {
    let response = app
        .client
        .clone()
        .get_key_usage(op(pb::GetKeyUsageRequest {
            key_id: of.0.into(),
            application_id: of.1.into(),
            start_time: Some(wire(from)),
            end_time: Some(wire(to)),
            granularity: granularity.into(),
        }))
        .await?
        .into_inner();
    Ok(response
        .buckets
        .into_iter()
        .map(|b| {
            let t = b.start_time.unwrap();
            (t.seconds * 1_000_000, b.valid, b.denied)
        })
        .collect())
}

fn denied(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Valid answers and each denial, counted per key and UTC hour; a wrong secret for a real key
/// id counts as its `authentication_error`; an id no key has counts nowhere. A day sums its
/// hours; an application sums its keys.
async fn counts_are_exact_after_a_flush_by_hour_and_day(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let hour = this_hour(&app);
    let (open, open_secret) = app
        .issue(standard("app_usage", pb::Environment::Test))
        .await
        .unwrap();
    let (narrow, narrow_secret) = app
        .issue(pb::IssueKeyRequest {
            permissions: vec![permission("patients", &["read"])],
            ..standard("app_usage", pb::Environment::Test)
        })
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(app.verify(&open_secret).await.valid);
    }
    // The restricted key: one valid, two refused a permission.
    assert!(
        app.verify_with(&narrow_secret, vec![permission("patients", &["read"])])
            .await
            .unwrap()
            .valid
    );
    for _ in 0..2 {
        let r = app
            .verify_with(&narrow_secret, vec![permission("patients", &["write"])])
            .await
            .unwrap();
        assert!(!r.valid);
    }
    // Wrong secrets for `open`'s id (after its proof: from memory; the store's path is the
    // same count) and an unknown key.
    let real = PresentedKey::parse(&open_secret).unwrap();
    let wrong =
        PresentedKey::from_parts(Environment::Test, real.lookup(), &"W".repeat(32)).unwrap();
    assert!(!app.verify(wrong.expose()).await.valid);
    let unknown = PresentedKey::generate(Environment::Test).unwrap();
    assert!(!app.verify(unknown.expose()).await.valid);

    // Nothing is read before the flush; after it, exactly what was answered.
    let day = 24 * 3_600_000_000;
    let range = (hour - day, hour + day);
    assert!(
        usage(
            &app,
            (&open.id, ""),
            range.0,
            range.1,
            pb::UsageGranularity::Hour
        )
        .await
        .unwrap()
        .is_empty()
    );
    assert_eq!(app.authority.write_usage_counts().await.unwrap(), 7);
    assert_eq!(
        usage(
            &app,
            (&open.id, ""),
            range.0,
            range.1,
            pb::UsageGranularity::Hour
        )
        .await
        .unwrap(),
        [(hour, 3, denied(&[("authentication_error", 1)]))]
    );
    assert_eq!(
        usage(
            &app,
            (&narrow.id, ""),
            range.0,
            range.1,
            pb::UsageGranularity::Hour
        )
        .await
        .unwrap(),
        [(hour, 1, denied(&[("insufficient_permissions", 2)]))]
    );

    // The next hour: its own bucket. The key revoked, then expired ones' denials.
    app.clock.advance(Duration::from_secs(HOUR));
    assert!(app.verify(&open_secret).await.valid);
    app.revoke(&narrow.id).await.unwrap();
    assert!(!app.verify(&narrow_secret).await.valid);
    assert_eq!(app.authority.write_usage_counts().await.unwrap(), 2);
    let next = hour + 3_600_000_000;
    assert_eq!(
        usage(
            &app,
            (&open.id, ""),
            range.0,
            range.1,
            pb::UsageGranularity::Hour
        )
        .await
        .unwrap(),
        [
            (hour, 3, denied(&[("authentication_error", 1)])),
            (next, 1, denied(&[])),
        ]
    );
    // The application: both keys summed, by hour; by day, the hours of each UTC day summed.
    assert_eq!(
        usage(
            &app,
            ("", "app_usage"),
            range.0,
            range.1,
            pb::UsageGranularity::Hour
        )
        .await
        .unwrap(),
        [
            (
                hour,
                4,
                denied(&[("authentication_error", 1), ("insufficient_permissions", 2)])
            ),
            (next, 1, denied(&[("api_key_revoked", 1)])),
        ]
    );
    let days = usage(
        &app,
        ("", "app_usage"),
        range.0,
        range.1,
        pb::UsageGranularity::Day,
    )
    .await
    .unwrap();
    let total: i64 = days.iter().map(|(_, valid, _)| valid).sum();
    assert_eq!(total, 5);
    for (start, _, _) in &days {
        assert_eq!(start.rem_euclid(day), 0, "a day starts at 00:00 UTC");
    }
    // The range is [start, end): the first hour alone.
    assert_eq!(
        usage(&app, (&open.id, ""), hour, next, pb::UsageGranularity::Hour)
            .await
            .unwrap()
            .len(),
        1
    );
    app.stop().await;
}

/// Past `--usage-hourly-retention` a key's hours are kept as one daily bucket; past
/// `--usage-retention`, not at all.
async fn old_hours_fold_into_days_and_expire(backend: Backend) {
    let Some(app) = spawn_with(
        backend,
        Options {
            usage_retention: keyauth_core::authority::UsageRetention {
                hourly: Duration::from_secs(2 * 24 * HOUR),
                total: Duration::from_secs(10 * 24 * HOUR),
            },
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let (key, secret) = app.issue_test_key().await;
    let hour = this_hour(&app);
    let day = 24 * 3_600_000_000i64;
    let midnight = hour - hour.rem_euclid(day);
    assert!(app.verify(&secret).await.valid);
    app.clock.advance(Duration::from_secs(HOUR));
    assert!(app.verify(&secret).await.valid);
    app.authority.write_usage_counts().await.unwrap();
    let all = (midnight - day, midnight + 20 * day);
    let hours = |app| usage(app, (&key.id, ""), all.0, all.1, pb::UsageGranularity::Hour);
    let days = |app| usage(app, (&key.id, ""), all.0, all.1, pb::UsageGranularity::Day);
    assert_eq!(hours(&app).await.unwrap().len(), 2);
    // Within the hourly retention: nothing folds.
    app.authority.compact_usage().await.unwrap();
    assert_eq!(hours(&app).await.unwrap().len(), 2);
    // Three days on: the hours are one day's bucket (the same total).
    app.clock.advance(Duration::from_secs(3 * 24 * HOUR));
    app.authority.compact_usage().await.unwrap();
    assert!(hours(&app).await.unwrap().is_empty());
    let folded = days(&app).await.unwrap();
    let total: i64 = folded.iter().map(|(_, valid, _)| valid).sum();
    assert_eq!(total, 2, "{folded:?}");
    // Counts made after the fold still add up by day.
    assert!(app.verify(&secret).await.valid);
    app.authority.write_usage_counts().await.unwrap();
    let total: i64 = days(&app).await.unwrap().iter().map(|(_, v, _)| v).sum();
    assert_eq!(total, 3);
    // Past the retention: gone.
    app.clock.advance(Duration::from_secs(20 * 24 * HOUR));
    app.authority.compact_usage().await.unwrap();
    assert!(days(&app).await.unwrap().is_empty());
    app.stop().await;
}

async fn bad_ranges_are_refused(backend: Backend) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    let (key, _) = app.issue_test_key().await;
    let hour = this_hour(&app);
    let h = 3_600_000_000i64;
    for (of, from, to, granularity, field) in [
        (
            (key.id.as_str(), ""),
            hour,
            hour - h,
            pb::UsageGranularity::Hour,
            "end_time",
        ),
        (
            (key.id.as_str(), ""),
            hour,
            hour,
            pb::UsageGranularity::Hour,
            "end_time",
        ),
        (
            (key.id.as_str(), ""),
            hour - 367 * 24 * h,
            hour,
            pb::UsageGranularity::Day,
            "end_time",
        ),
        (
            (key.id.as_str(), ""),
            hour,
            hour + h,
            pb::UsageGranularity::Unspecified,
            "granularity",
        ),
        (
            (key.id.as_str(), "app_1"),
            hour,
            hour + h,
            pb::UsageGranularity::Hour,
            "key_id",
        ),
        (
            ("", ""),
            hour,
            hour + h,
            pb::UsageGranularity::Hour,
            "key_id",
        ),
    ] {
        let status = assert_status(
            usage(&app, of, from, to, granularity).await,
            Code::InvalidArgument,
            None,
        );
        assert_eq!(violated_fields(&status), [field], "{status:?}");
    }
    // A key no one has: NOT_FOUND for an unlimited principal.
    let status = usage(
        &app,
        ("key_AAAAAAAAAAAA", ""),
        hour,
        hour + h,
        pb::UsageGranularity::Hour,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    app.stop().await;
}
