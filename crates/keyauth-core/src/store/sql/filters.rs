//! Statements whose conditions depend on the query (ListKeyEvents' filters, a principal's
//! scope): assembled from fixed pieces with numbered placeholders, every value bound in the
//! order of its placeholder, never formatted into the SQL.

use keyauth_contract::principal::Scope;

/// A value bound to a placeholder.
#[derive(Clone, Copy, Debug)]
pub(super) enum Param<'a> {
    Text(&'a str),
    Int(i64),
}

/// A statement being assembled, and the values its placeholders stand for (`$1` the first).
pub(super) struct Assembled<'a> {
    sql: String,
    params: Vec<Param<'a>>,
}

impl<'a> Assembled<'a> {
    pub(super) fn new(start: &str) -> Self {
        Assembled {
            sql: start.to_owned(),
            params: Vec::new(),
        }
    }

    /// Appends a fixed piece of SQL.
    pub(super) fn push(&mut self, piece: &str) {
        self.sql.push_str(piece);
    }

    /// The placeholder `value` is bound to (a fresh one each call).
    pub(super) fn param(&mut self, value: Param<'a>) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }

    pub(super) fn finish(self) -> (String, Vec<Param<'a>>) {
        (self.sql, self.params)
    }

    /// The condition (` AND (…)`; empty for every application) that a row's `application_id`
    /// is one of `scope`'s applications: a name exactly, a prefix (`app_lab_*`) by its first
    /// characters (`substr`, the same in both databases, and exact where SQLite's `LIKE`
    /// ignores case). The patterns are the principal's configuration, a handful: one
    /// placeholder each.
    pub(super) fn scope_applications(&mut self, scope: &'a Scope) -> String {
        if scope.applications().is_empty() {
            return String::new();
        }
        let alternatives: Vec<String> = scope
            .applications()
            .iter()
            .map(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => {
                    let p = self.param(Param::Text(prefix));
                    format!("substr(application_id, 1, length({p})) = {p}")
                }
                None => format!("application_id = {}", self.param(Param::Text(pattern))),
            })
            .collect();
        format!(" AND ({})", alternatives.join(" OR "))
    }

    /// The placeholder of `scope`'s environment, if it is limited to one (a scope of both
    /// environments has none: [`Scope::new`] keeps at most one).
    pub(super) fn scope_environment(&mut self, scope: &'a Scope) -> Option<String> {
        match scope.environments() {
            [one] => Some(self.param(Param::Text(one))),
            _ => None,
        }
    }
}

/// Binds `params` to `statement`'s placeholders, in order (written for each binding kind the
/// store uses, as `sql_impl!`'s bounds allow).
macro_rules! bind_all {
    ($statement:expr, $params:expr) => {{
        let mut statement = $statement;
        for param in $params {
            statement = match param {
                $crate::store::sql::filters::Param::Text(text) => statement.bind(text),
                $crate::store::sql::filters::Param::Int(int) => statement.bind(int),
            };
        }
        statement
    }};
}
pub(super) use bind_all;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::scope;

    #[test]
    fn a_scope_is_placeholders_only() {
        let everything = Scope::everything();
        let mut sql = Assembled::new("SELECT 1 WHERE x = $1");
        sql.param(Param::Int(7));
        assert_eq!(sql.scope_applications(&everything), "");
        assert_eq!(sql.scope_environment(&everything), None);

        let limited = scope(&["app_billing", "app_lab_*"], &["live"]);
        let apps = sql.scope_applications(&limited);
        assert_eq!(
            apps,
            " AND (application_id = $2 OR substr(application_id, 1, length($3)) = $3)"
        );
        assert_eq!(sql.scope_environment(&limited).as_deref(), Some("$4"));
        let (text, params) = sql.finish();
        assert!(!text.contains("app_"), "{text}");
        let shown: Vec<String> = params.iter().map(|p| format!("{p:?}")).collect();
        assert_eq!(
            shown,
            [
                "Int(7)",
                "Text(\"app_billing\")",
                "Text(\"app_lab_\")",
                "Text(\"live\")"
            ]
        );
    }
}
