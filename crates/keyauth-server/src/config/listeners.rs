//! How to serve: the HTTP listener beside the gRPC port, the operator and verifier tokens, the
//! ext_authz routes and the timings of the background tasks.

use std::sync::Arc;

use keyauth_contract::routes::RouteTable;
use keyauth_core::propagation::FollowOptions;

use super::args::ServeArgs;
use super::error::{SettingError, setting};
use super::secret::{Secret, SecretArg, SecretFlag};
use crate::ext_authz::ExtAuthzOptions;
use crate::http::{GithubKeys, HttpOptions};
use crate::principals::{LegacyTokens, PrincipalsCell, Reloader};
use crate::server::ServeOptions;
use crate::service::{Credentials, WatchOptions};
use crate::tls::Reloading;

impl ServeArgs {
    /// How to serve: TLS, tokens, limits and the timings of the background tasks; with
    /// --http-listen, the HTTP listener too (bound here, so a busy port stops the start).
    pub fn serve_options(&self) -> Result<ServeOptions, SettingError> {
        let tls = self.tls()?;
        let admin = token(&self.admin_token)?;
        let verifier = token(&self.verifier_token)?;
        let routes = match &self.ext_authz_routes {
            Some(path) => RouteTable::load(path)
                .map_err(setting("--ext-authz-routes (KEYAUTH_EXT_AUTHZ_ROUTES)"))?,
            None => RouteTable::default(),
        };
        Ok(ServeOptions {
            health_interval: self.health_interval,
            usage_flush_interval: self.usage_flush_interval,
            shutdown_grace: self.shutdown_grace,
            follow: FollowOptions {
                poll_interval: self.event_poll_interval,
                ..FollowOptions::default()
            },
            http: self.http_options(tls.as_ref())?,
            tls,
            tls_reload_interval: self.tls_reload_interval,
            credentials: Credentials::from_tokens(
                admin.as_ref().map(Secret::expose),
                verifier.as_ref().map(Secret::expose),
            )
            .map_err(|why| SettingError {
                setting: "--admin-token / --verifier-token (KEYAUTH_ADMIN_TOKEN, KEYAUTH_VERIFIER_TOKEN)",
                why,
            })?,
            limits: self.limits(),
            ext_authz: ExtAuthzOptions {
                routes,
                strip_authorization: self.ext_authz_strip_authorization,
            },
            watch: WatchOptions {
                heartbeat: self.watch_heartbeat,
                max_streams: self.max_watch_streams,
            },
        })
    }

    /// The HTTP listener of --http-listen: bound, with the gRPC port's TLS (`tls`) and GitHub's
    /// public keys read.
    fn http_options(
        &self,
        tls: Option<&Arc<Reloading>>,
    ) -> Result<Option<HttpOptions>, SettingError> {
        const LISTEN: &str = "--http-listen (KEYAUTH_HTTP_LISTEN)";
        const KEYS: &str = "--github-scanning-keys (KEYAUTH_GITHUB_SCANNING_KEYS)";
        let Some(addr) = self.http_listen else {
            return Ok(None);
        };
        let github_keys = self
            .github_scanning_keys
            .as_deref()
            .map(|keys| GithubKeys::load(keys).map(Arc::new))
            .transpose()
            .map_err(setting(KEYS))?;
        let listener = std::net::TcpListener::bind(addr).map_err(|e| SettingError {
            setting: LISTEN,
            why: format!("{addr}: {e}"),
        })?;
        Ok(Some(HttpOptions {
            listener: Arc::new(listener),
            tls: tls.cloned(),
            github_keys,
            console: self.console,
            console_oidc: self.console_oidc()?,
        }))
    }

    /// Every credential: the principals of --principals (KEYAUTH_PRINCIPALS_FILE) with the
    /// legacy tokens, and the file's JWT issuers (their keys fetched now; a JWKS that cannot be
    /// fetched is logged and its issuer starts with no keys), re-read every
    /// --principals-reload-interval by a task spawned here. A file that does not load stops the start, and so
    /// does a --console-oidc-issuer that is none of its issuers.
    pub async fn credentials(&self) -> Result<Credentials, SettingError> {
        const FILE: &str = "--principals (KEYAUTH_PRINCIPALS_FILE)";
        let legacy = LegacyTokens::new(
            token(&self.admin_token)?.as_ref().map(Secret::expose),
            token(&self.verifier_token)?.as_ref().map(Secret::expose),
        );
        let principals =
            crate::principals::load(self.principals.as_deref(), &legacy).map_err(setting(FILE))?;
        if let Some(oidc) = self.console_oidc()? {
            super::console::check_issuer(&oidc, principals.issuers())?;
        }
        let jwt = crate::principals::jwt_issuers(&principals)
            .await
            .map_err(setting(FILE))?;
        let cell = Arc::new(PrincipalsCell::with_jwt(principals, jwt));
        if let Some(path) = &self.principals {
            let reloader = Reloader::new(path.clone(), cell.clone(), legacy)
                .requiring_issuer(self.console_oidc()?.map(|o| o.issuer().to_owned()));
            crate::principals::spawn_reloader(reloader, self.principals_reload_interval);
        }
        Ok(Credentials::new(cell))
    }

    /// The operator token, from --admin-token (KEYAUTH_ADMIN_TOKEN) or --admin-token-file.
    pub fn admin_token(&self) -> Result<Option<Secret>, String> {
        self.admin_token.secret()
    }

    /// The verifier token, from --verifier-token (KEYAUTH_VERIFIER_TOKEN) or
    /// --verifier-token-file.
    pub fn verifier_token(&self) -> Result<Option<Secret>, String> {
        self.verifier_token.secret()
    }
}

/// A token from its flags; a file that cannot be read is named as the setting at fault.
fn token<N: SecretFlag>(arg: &SecretArg<N>) -> Result<Option<Secret>, SettingError> {
    arg.secret().map_err(setting(N::FILE.setting))
}

#[cfg(test)]
mod tests {
    use super::super::args::testing::{Serve, parse};
    use clap::Parser;

    #[test]
    fn ext_authz_settings_are_read() {
        let args = parse(&[]);
        let options = args.serve_options().unwrap();
        assert!(options.ext_authz.routes.is_empty());
        assert!(!options.ext_authz.strip_authorization);

        let dir = tempfile::tempdir().unwrap();
        let routes = dir.path().join("routes.toml");
        std::fs::write(
            &routes,
            "[[route]]\nmethod = \"GET\"\npath = \"/api/v1/reports/*\"\n\
             resource = \"patients\"\naction = \"read\"\n",
        )
        .unwrap();
        let args = parse(&[
            "--ext-authz-routes",
            routes.to_str().unwrap(),
            "--ext-authz-strip-authorization",
        ]);
        let options = args.serve_options().unwrap();
        assert_eq!(options.ext_authz.routes.len(), 1);
        assert!(options.ext_authz.strip_authorization);

        std::fs::write(&routes, "[[route]]\npath = \"no-slash\"\n").unwrap();
        let args = parse(&["--ext-authz-routes", routes.to_str().unwrap()]);
        let err = args.serve_options().unwrap_err();
        assert_eq!(err.setting, "--ext-authz-routes (KEYAUTH_EXT_AUTHZ_ROUTES)");
        assert!(err.why.contains("routes.toml"), "{err}");
    }

    #[test]
    fn the_http_listener_serves_the_console_and_the_webhook_when_given_keys() {
        assert!(parse(&[]).serve_options().unwrap().http.is_none());
        let lone = ["serve", "--github-scanning-keys", "keys.json"];
        assert!(Serve::try_parse_from(lone).is_err(), "keys need a listener");
        let console = parse(&["--http-listen", "127.0.0.1:0"])
            .serve_options()
            .unwrap()
            .http
            .expect("an HTTP listener");
        assert!(console.console && console.github_keys.is_none());
        let webhook_only = parse(&["--http-listen", "127.0.0.1:0", "--console", "false"])
            .serve_options()
            .unwrap()
            .http
            .expect("an HTTP listener");
        assert!(!webhook_only.console);
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.json");
        std::fs::write(&keys, r#"{"public_keys":[]}"#).unwrap();
        let args = parse(&[
            "--http-listen",
            "127.0.0.1:0",
            "--github-scanning-keys",
            keys.to_str().unwrap(),
        ]);
        let err = args.serve_options().unwrap_err();
        assert_eq!(
            err.setting,
            "--github-scanning-keys (KEYAUTH_GITHUB_SCANNING_KEYS)"
        );
        assert!(err.why.contains("no public key"), "{err}");
        std::fs::write(
            &keys,
            r#"{"public_keys":[{"key_identifier":"k1","key":"not a PEM"}]}"#,
        )
        .unwrap();
        let err = args.serve_options().unwrap_err();
        assert!(
            err.why.contains("\"k1\" is not a PEM P-256 public key"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_read_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin-token");
        std::fs::write(&token, "from-a-file\n").unwrap();
        let args = parse(&["--admin-token-file", token.to_str().unwrap()]);
        assert_eq!(args.admin_token().unwrap().unwrap().expose(), "from-a-file");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let args = parse(&["--verifier-token-file", empty.to_str().unwrap()]);
        assert!(args.verifier_token().unwrap_err().contains("empty"));
        let missing = dir.path().join("missing");
        let args = parse(&["--admin-token-file", missing.to_str().unwrap()]);
        assert!(args.admin_token().is_err());
        // Both forms at once is a usage error.
        assert!(
            Serve::try_parse_from([
                "serve",
                "--admin-token",
                "x",
                "--admin-token-file",
                token.to_str().unwrap()
            ])
            .is_err()
        );
    }
}
