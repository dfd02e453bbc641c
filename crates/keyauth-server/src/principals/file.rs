//! The principals file (DESIGN §7): `[[principal]]` tables (a static token's SHA-256 or a
//! client certificate) and `[[issuer]]` tables (whose JWTs are accepted), parsed and checked
//! in full before anything is used. A mistake is a [`FileError`]: the 1-based line and the
//! reason, never the value of a credential (someone may have pasted a token where its hash
//! belongs).

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use keyauth_contract::principal::{Principal, Role, Roles, Scope};
use serde::Deserialize;
use toml::Spanned;

use super::issuer::{Algorithm, IssuerConfig, Jwks, SubjectConfig, check_jwks_url};

/// A mistake in the principals file. Shown as `line 7: unknown role "keys.write" (…)`; the
/// caller prefixes the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    /// 1-based; `None` only when the parser could not tell.
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for FileError {}

/// How a static principal proves who it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Credential {
    /// `token_sha256`: the SHA-256 of a bearer token.
    TokenSha256([u8; 32]),
    /// `certificate_uri`: a URI SAN of the client certificate (a SPIFFE id, say).
    CertificateUri(String),
    /// `certificate_subject`: the client certificate's subject, e.g. `CN=…`.
    CertificateSubject(String),
}

/// A `[[principal]]`: its credential and who it is once that is proven.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticPrincipal {
    pub credential: Credential,
    pub principal: Principal,
}

/// What a principals file holds, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrincipalsFile {
    pub principals: Vec<StaticPrincipal>,
    pub issuers: Vec<IssuerConfig>,
}

type Text = Spanned<String>;
type List = Option<Spanned<Vec<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    principal: Vec<Spanned<RawPrincipal>>,
    #[serde(default)]
    issuer: Vec<Spanned<RawIssuer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: Text,
    token_sha256: Option<Text>,
    certificate_uri: Option<Text>,
    certificate_subject: Option<Text>,
    roles: Spanned<Vec<Text>>,
    applications: List,
    environments: List,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: Text,
    audience: Text,
    jwks_url: Option<Text>,
    jwks_file: Option<Text>,
    name_claim: Option<Text>,
    roles_claim: Option<Text>,
    applications_claim: Option<Text>,
    environments_claim: Option<Text>,
    #[serde(default)]
    roles: Vec<Text>,
    algorithms: Option<Spanned<Vec<Text>>>,
    #[serde(default)]
    subject: Vec<Spanned<RawSubject>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubject {
    subject: Text,
    #[serde(default)]
    roles: Vec<Text>,
    applications: List,
    environments: List,
}

/// Parses and checks a principals file.
pub fn parse(text: &str) -> Result<PrincipalsFile, FileError> {
    let src = Source(text);
    let raw: RawFile = toml::from_str(text).map_err(|e| FileError {
        line: e.span().map(|s| src.line(&s)),
        reason: redact(e.message()),
    })?;
    let mut names = HashMap::new();
    let mut credentials = HashMap::new();
    let mut principals = Vec::new();
    for p in raw.principal {
        let table = p.span();
        let p = p.into_inner();
        let name = src.non_empty(&p.name, "name")?;
        src.unique(&mut names, &p.name, "principal name")?;
        let given = [
            ("token_sha256", &p.token_sha256),
            ("certificate_uri", &p.certificate_uri),
            ("certificate_subject", &p.certificate_subject),
        ];
        let mut given = given
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_ref()?)));
        let Some((kind, value)) = given.next() else {
            return Err(src.err(
                &table,
                format!(
                    "principal {name:?} has no credential: give one of token_sha256, \
                     certificate_uri, certificate_subject"
                ),
            ));
        };
        if let Some((second, value)) = given.next() {
            return Err(src.err(
                &value.span(),
                format!("principal {name:?} has two credentials ({kind} and {second}): give one"),
            ));
        }
        let (credential, subject) = match kind {
            "token_sha256" => (Credential::TokenSha256(src.digest(value)?), String::new()),
            "certificate_uri" => {
                let uri = src.non_empty(value, kind)?.to_owned();
                (Credential::CertificateUri(uri.clone()), uri)
            }
            _ => {
                let subject = src.non_empty(value, kind)?.to_owned();
                (Credential::CertificateSubject(subject.clone()), subject)
            }
        };
        if let Some(first) = credentials.insert(
            credential.clone(),
            (name.to_owned(), src.line(&value.span())),
        ) {
            return Err(src.err(
                &value.span(),
                format!(
                    "principal {name:?} has the same {kind} as principal {:?} (line {})",
                    first.0, first.1
                ),
            ));
        }
        if p.roles.get_ref().is_empty() {
            return Err(src.err(&p.roles.span(), no_roles(name)));
        }
        principals.push(StaticPrincipal {
            credential,
            principal: Principal {
                name: name.to_owned(),
                subject,
                issuer: String::new(),
                roles: src.roles(p.roles.get_ref())?,
                scope: src.scope(p.applications, p.environments)?,
            },
        });
    }
    let mut issuers = Vec::new();
    let mut seen = HashMap::new();
    for i in raw.issuer {
        src.unique(&mut seen, &i.get_ref().issuer, "issuer")?;
        issuers.push(src.issuer(i)?);
    }
    Ok(PrincipalsFile {
        principals,
        issuers,
    })
}

/// The text being parsed, to turn byte offsets into lines.
struct Source<'a>(&'a str);

impl Source<'_> {
    /// The 1-based line of a span's start.
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.0.len());
        self.0.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn err(&self, span: &Range<usize>, reason: impl Into<String>) -> FileError {
        FileError {
            line: Some(self.line(span)),
            reason: reason.into(),
        }
    }

    fn non_empty<'t>(&self, text: &'t Text, what: &str) -> Result<&'t str, FileError> {
        match text.get_ref().trim() {
            "" => Err(self.err(&text.span(), format!("{what} is empty"))),
            _ => Ok(text.get_ref()),
        }
    }

    /// Records `key`'s line in `seen`; an error naming the first line if it was there.
    fn unique(
        &self,
        seen: &mut HashMap<String, usize>,
        key: &Text,
        what: &str,
    ) -> Result<(), FileError> {
        let line = self.line(&key.span());
        match seen.insert(key.get_ref().clone(), line) {
            Some(first) => Err(self.err(
                &key.span(),
                format!(
                    "duplicate {what} {:?} (first on line {first})",
                    key.get_ref()
                ),
            )),
            None => Ok(()),
        }
    }

    /// A `token_sha256`: 64 hex digits. The value is never repeated: it may be the token.
    fn digest(&self, text: &Text) -> Result<[u8; 32], FileError> {
        let mut digest = [0u8; 32];
        let hex = text.get_ref();
        hex::decode_to_slice(hex, &mut digest).map_err(|_| {
            let found = match hex.len() {
                64 => "characters that are not hex digits".to_owned(),
                n => format!("{n} characters"),
            };
            self.err(
                &text.span(),
                format!(
                    "malformed token_sha256: expected 64 hex digits (the SHA-256 of the \
                     token, never the token itself), found {found}"
                ),
            )
        })?;
        Ok(digest)
    }

    fn roles(&self, names: &[Text]) -> Result<Roles, FileError> {
        names.iter().try_fold(Roles::NONE, |set, name| {
            match Role::from_name(name.get_ref()) {
                Some(role) => Ok(set.with(role)),
                None => Err(self.err(
                    &name.span(),
                    format!(
                        "unknown role {:?} (known: {})",
                        name.get_ref(),
                        known_roles()
                    ),
                )),
            }
        })
    }

    /// A scope from optional lists, each checked on its own line.
    fn scope(&self, applications: List, environments: List) -> Result<Scope, FileError> {
        let none = Vec::new;
        let apps = self.list(applications, "applications", |l| Scope::new(l, none()))?;
        let envs = self.list(environments, "environments", |l| Scope::new(none(), l))?;
        Scope::new(apps, envs).map_err(|reason| FileError { line: None, reason })
    }

    /// An optional list, checked by `check`. An explicit empty list is refused: it would read
    /// as "none" but mean "every one".
    fn list(
        &self,
        list: List,
        what: &str,
        check: impl Fn(Vec<String>) -> Result<Scope, String>,
    ) -> Result<Vec<String>, FileError> {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        if list.get_ref().is_empty() {
            let why = format!("{what} is empty: leave it out for every one");
            return Err(self.err(&list.span(), why));
        }
        check(list.get_ref().clone()).map_err(|why| self.err(&list.span(), why))?;
        Ok(list.into_inner())
    }

    fn issuer(&self, table: Spanned<RawIssuer>) -> Result<IssuerConfig, FileError> {
        let span = table.span();
        let i = table.into_inner();
        let issuer = self.non_empty(&i.issuer, "issuer")?.to_owned();
        let jwks = match (i.jwks_url, i.jwks_file) {
            (Some(url), None) => {
                check_jwks_url(url.get_ref()).map_err(|why| self.err(&url.span(), why))?;
                Jwks::Url(url.into_inner())
            }
            (None, Some(file)) => Jwks::File(self.non_empty(&file, "jwks_file")?.into()),
            (Some(_), Some(file)) => {
                return Err(self.err(
                    &file.span(),
                    format!("issuer {issuer:?} has both jwks_url and jwks_file: give one"),
                ));
            }
            (None, None) => {
                return Err(self.err(
                    &span,
                    format!("issuer {issuer:?} has no jwks_url or jwks_file: give one"),
                ));
            }
        };
        let claim = |c: Option<Text>, what| -> Result<Option<String>, FileError> {
            c.map(|c| self.non_empty(&c, what).map(str::to_owned))
                .transpose()
        };
        let algorithms = match i.algorithms {
            None => Algorithm::DEFAULT.to_vec(),
            Some(list) if list.get_ref().is_empty() => {
                return Err(self.err(
                    &list.span(),
                    "algorithms is empty: leave it out for RS256, ES256, EdDSA",
                ));
            }
            Some(list) => list
                .into_inner()
                .iter()
                .map(|a| {
                    Algorithm::from_name(a.get_ref()).ok_or_else(|| {
                        self.err(
                            &a.span(),
                            format!(
                                "algorithm {:?} refused (allowed: {})",
                                a.get_ref(),
                                Algorithm::ALL.map(Algorithm::name).join(", ")
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let mut subjects = Vec::new();
        let mut seen = HashMap::new();
        for s in i.subject {
            let s = s.into_inner();
            self.non_empty(&s.subject, "subject")?;
            self.unique(&mut seen, &s.subject, "subject")?;
            subjects.push(SubjectConfig {
                subject: s.subject.into_inner(),
                roles: self.roles(&s.roles)?,
                scope: self.scope(s.applications, s.environments)?,
            });
        }
        Ok(IssuerConfig {
            audience: self.non_empty(&i.audience, "audience")?.to_owned(),
            issuer,
            jwks,
            name_claim: claim(i.name_claim, "name_claim")?.unwrap_or_else(|| "sub".into()),
            roles_claim: claim(i.roles_claim, "roles_claim")?,
            applications_claim: claim(i.applications_claim, "applications_claim")?,
            environments_claim: claim(i.environments_claim, "environments_claim")?,
            roles: self.roles(&i.roles)?,
            algorithms,
            subjects,
        })
    }
}

fn known_roles() -> String {
    Role::ALL.map(Role::name).join(", ")
}

fn no_roles(name: &str) -> String {
    format!(
        "principal {name:?} has no roles: give at least one of {}",
        known_roles()
    )
}

/// The parser's message without a string value it quotes (`invalid type: string "…"`): a
/// token pasted in the wrong place must not reach the log.
fn redact(message: &str) -> String {
    const QUOTED: &str = "invalid type: string \"";
    match message.strip_prefix(QUOTED) {
        Some(rest) => match rest.rfind("\", expected") {
            Some(end) => format!("invalid type: string{}", &rest[end + 1..]),
            None => "invalid type: string".to_owned(),
        },
        None => message.to_owned(),
    }
}

#[cfg(test)]
#[path = "file_tests.rs"]
pub(super) mod tests;
