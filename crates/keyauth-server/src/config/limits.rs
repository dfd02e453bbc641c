//! The per-call and per-connection limits of the gRPC port.

use super::args::ServeArgs;
use crate::limits::Limits;

impl ServeArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_request_bytes: self.max_request_bytes as usize,
            max_header_list_bytes: self.max_header_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            request_timeout: self.request_timeout,
            max_connections: self.max_connections,
            max_in_flight: self.max_in_flight,
            first_request_timeout: self.first_request_timeout,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            max_connection_age: self.max_connection_age,
            max_connection_age_grace: self.max_connection_age_grace,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::args::testing::{Serve, attack_settings, parse};
    use clap::Parser;

    #[test]
    fn the_attack_limits_are_set_by_flag() {
        let args = parse(&[
            "--operator-failure-limit",
            "5",
            "--auth-failure-retention",
            "7d",
            "--max-cold-lookups",
            "16",
            "--max-connections",
            "100",
            "--max-in-flight",
            "50",
            "--first-request-timeout",
            "2s",
            "--max-connection-age",
            "0s",
        ]);
        let limits = args.limits();
        assert_eq!(limits.max_connections, 100);
        assert_eq!(limits.max_in_flight, 50);
        assert_eq!(limits.first_request_timeout, Duration::from_secs(2));
        assert_eq!(limits.max_connection_age, Duration::ZERO);
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(attack_settings(&args), (5, week, 16));
        for bad in [
            ["--operator-failure-limit", "0"],
            ["--max-cold-lookups", "0"],
            ["--auth-failure-retention", "0s"],
            ["--max-connections", "0"],
            ["--max-in-flight", "0"],
            ["--first-request-timeout", "0s"],
        ] {
            assert!(
                Serve::try_parse_from(std::iter::once("serve").chain(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
