//! The console's sign-in with OIDC: `--console-oidc-issuer` and `--console-oidc-client-id`, both
//! or neither, and an issuer whose tokens keyauth accepts (an `[[issuer]]` of the principals
//! file), since the console calls keyauth with the ID token it gets.

use super::args::ServeArgs;
use super::error::SettingError;
use crate::http::{ConsoleOidc, ConsoleOidcError};
use crate::principals::IssuerConfig;

const ISSUER: &str = "--console-oidc-issuer (KEYAUTH_CONSOLE_OIDC_ISSUER)";
const CLIENT_ID: &str = "--console-oidc-client-id (KEYAUTH_CONSOLE_OIDC_CLIENT_ID)";
const BOTH: &str = "--console-oidc-issuer / --console-oidc-client-id \
                    (KEYAUTH_CONSOLE_OIDC_ISSUER, KEYAUTH_CONSOLE_OIDC_CLIENT_ID)";

impl ServeArgs {
    /// The console's OpenID provider and client id, checked; `None` when neither is set.
    pub(super) fn console_oidc(&self) -> Result<Option<ConsoleOidc>, SettingError> {
        match (&self.console_oidc_issuer, &self.console_oidc_client_id) {
            (None, None) => Ok(None),
            (Some(issuer), Some(client_id)) => match ConsoleOidc::new(issuer, client_id) {
                Ok(oidc) => Ok(Some(oidc)),
                Err(ConsoleOidcError::Issuer(why)) => Err(SettingError {
                    setting: ISSUER,
                    why,
                }),
                Err(ConsoleOidcError::ClientId(why)) => Err(SettingError {
                    setting: CLIENT_ID,
                    why,
                }),
            },
            _ => Err(SettingError {
                setting: BOTH,
                why: "give both or neither: the console signs in with an OpenID provider \
                      knowing its issuer and the console's client id there"
                    .to_owned(),
            }),
        }
    }
}

/// The console's issuer must be one of `issuers` (the principals file's): keyauth refuses the
/// tokens of any other. An `audience` other than the client id is only warned about: the
/// provider may put both in `aud`, though an ID token's `aud` is the client id.
pub(super) fn check_issuer(
    oidc: &ConsoleOidc,
    issuers: &[IssuerConfig],
) -> Result<(), SettingError> {
    let Some(entry) = issuers.iter().find(|i| i.issuer == oidc.issuer()) else {
        return Err(SettingError {
            setting: ISSUER,
            why: format!(
                "{:?} is not an [[issuer]] of the principals file (--principals): the console \
                 calls keyauth with the ID token it gets there, so add an [[issuer]] with \
                 issuer = {:?} and audience = {:?} (the client id) and its jwks_url",
                oidc.issuer(),
                oidc.issuer(),
                oidc.client_id()
            ),
        });
    };
    if entry.audience != oidc.client_id() {
        tracing::warn!(
            issuer = oidc.issuer(),
            audience = %entry.audience,
            client_id = oidc.client_id(),
            "the principals file's [[issuer]] of the console's provider requires an audience \
             other than the console's client id: console sign-ins are refused unless the \
             provider puts that audience in the ID token's aud too"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::args::testing::parse;
    use super::*;
    use crate::principals::Principals;

    const ISSUER_URL: &str = "https://idp.example.com";

    #[test]
    fn both_flags_or_neither() {
        assert_eq!(parse(&[]).console_oidc().unwrap(), None);
        let both = parse(&[
            "--console-oidc-issuer",
            ISSUER_URL,
            "--console-oidc-client-id",
            "keyauth-console",
        ]);
        let oidc = both.console_oidc().unwrap().unwrap();
        assert_eq!(
            (oidc.issuer(), oidc.client_id()),
            (ISSUER_URL, "keyauth-console")
        );
        for lone in [
            ["--console-oidc-issuer", ISSUER_URL],
            ["--console-oidc-client-id", "keyauth-console"],
        ] {
            let err = parse(&lone).console_oidc().unwrap_err();
            assert_eq!(err.setting, BOTH);
            assert!(err.why.contains("both or neither"), "{err}");
        }
        let http = parse(&[
            "--console-oidc-issuer",
            "http://idp.example.com",
            "--console-oidc-client-id",
            "c",
        ]);
        let err = http.console_oidc().unwrap_err();
        assert_eq!(err.setting, ISSUER);
        assert!(err.why.contains("must be https"), "{err}");
        let blank = parse(&[
            "--console-oidc-issuer",
            ISSUER_URL,
            "--console-oidc-client-id",
            " ",
        ]);
        assert_eq!(blank.console_oidc().unwrap_err().setting, CLIENT_ID);
        // The listener serves the settings.
        let served = parse(&[
            "--http-listen",
            "127.0.0.1:0",
            "--console-oidc-issuer",
            ISSUER_URL,
            "--console-oidc-client-id",
            "keyauth-console",
        ]);
        let http = served.serve_options().unwrap().http.unwrap();
        assert_eq!(http.console_oidc, Some(oidc));
    }

    #[test]
    fn the_issuer_must_be_one_keyauth_accepts() {
        let oidc = ConsoleOidc::new(ISSUER_URL, "keyauth-console").unwrap();
        let file = |issuer: &str, audience: &str| {
            Principals::parse(&format!(
                "[[issuer]]\nissuer = {issuer:?}\naudience = {audience:?}\n\
                 jwks_url = \"https://idp.example.com/jwks\"\nroles_claim = \"keyauth_roles\"\n"
            ))
            .unwrap()
        };
        check_issuer(&oidc, file(ISSUER_URL, "keyauth-console").issuers()).unwrap();
        // Another audience: allowed, with a warning.
        check_issuer(&oidc, file(ISSUER_URL, "keyauth").issuers()).unwrap();
        for issuers in [
            file("https://other.example.com", "keyauth-console"),
            file("https://idp.example.com/", "keyauth-console"),
            Principals::empty(),
        ] {
            let err = check_issuer(&oidc, issuers.issuers()).unwrap_err();
            assert_eq!(err.setting, ISSUER);
            assert!(
                err.why.contains("not an [[issuer]] of the principals file")
                    && err.why.contains(r#"audience = "keyauth-console""#),
                "{err}"
            );
        }
    }
}
