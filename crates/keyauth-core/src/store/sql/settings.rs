//! Settings: values the first start stores and every instance shares (the page-token key).

use super::rows::Value;
use crate::error::Error;

const SETTING_INSERT: &str =
    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
const SETTING_GET: &str = "SELECT value FROM settings WHERE name = $1";

sql_impl! { impl {
    pub(super) async fn setting_or_insert(&self, name: &str, fresh: &str) -> Result<String, Error> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query(SETTING_INSERT)
            .bind(name)
            .bind(fresh)
            .execute(&mut *conn)
            .await?;
        let row: Value<String> = sqlx::query_as(SETTING_GET)
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
        Ok(row.value)
    }
}}
