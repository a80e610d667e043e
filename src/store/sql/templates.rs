//! The `templates`, `template_mappings`, `template_send_limits` and `settings` tables.

use async_trait::async_trait;

use super::super::param::Param;
use super::super::rows::{
    texts, Select, MAPPINGS, MAPPING_INSERT, TEMPLATES, TEMPLATE_INSERT, TEMPLATE_SEND_LIMITS,
    TEMPLATE_UPDATE,
};
use super::super::{
    Mapping, Record, Refusal, SendLimits, StoreError, StoreResult, Template, Templates,
};
use super::errors::{missing_parent, write_error, SqlxResult};
use super::statement;
use super::SqlStore;
use crate::clock::UnixTime;

/// The row of `settings` that names the default template.
const DEFAULT_TEMPLATE: &str = "default_template";

const SETTING: Select<String> = texts("SELECT value FROM settings WHERE name = ?", "settings");

impl SqlStore {
    /// Replaces a row without upsert syntax, which differs per dialect: deletes what
    /// `delete` matches and, given `insert`, writes the new row, in one transaction.
    /// `insert_error` turns a failed insert into what the caller should hear.
    async fn replace_row(
        &self,
        delete: (&str, &[Param<'_>]),
        insert: Option<(&str, &[Param<'_>])>,
        what: &str,
        insert_error: impl FnOnce(sqlx::Error) -> StoreError + Send,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.context(what)?;
        let (sql, params) = delete;
        statement::execute(&mut *tx, self.dialect, sql, params)
            .await
            .context(what)?;
        if let Some((sql, params)) = insert {
            statement::execute(&mut *tx, self.dialect, sql, params)
                .await
                .map_err(insert_error)?;
        }
        tx.commit().await.context(what)
    }
}

#[async_trait]
impl Templates for SqlStore {
    async fn create_template(&self, t: &Template) -> StoreResult<()> {
        let record = Record::Template(t.name.clone());
        let sql = TEMPLATE_INSERT.sql;
        self.write(sql, &TEMPLATE_INSERT.values(t), &record)
            .await
            .map(drop)
    }

    async fn update_template(&self, t: &Template) -> StoreResult<()> {
        let record = Record::Template(t.name.clone());
        self.change(TEMPLATE_UPDATE.sql, &TEMPLATE_UPDATE.values(t), record)
            .await
    }

    async fn get_template(&self, name: &str) -> StoreResult<Option<Template>> {
        self.fetch_optional(&TEMPLATES.with("WHERE name = ?"), &[name.into()])
            .await
    }

    async fn list_templates(&self) -> StoreResult<Vec<Template>> {
        self.fetch_all(&TEMPLATES.with("ORDER BY name"), &[]).await
    }

    async fn delete_template(&self, name: &str) -> StoreResult<()> {
        if self.default_template().await?.as_deref() == Some(name) {
            return Err(StoreError::Refused(Refusal::DefaultTemplate(
                name.to_string(),
            )));
        }
        let sql = "DELETE FROM templates WHERE name = ?";
        match self
            .change(sql, &[name.into()], Record::Template(name.to_string()))
            .await
        {
            Err(StoreError::Refused(Refusal::Dangling(_))) => Err(StoreError::Refused(
                Refusal::TemplateMapped(name.to_string()),
            )),
            other => other,
        }
    }

    async fn list_mappings(&self) -> StoreResult<Vec<Mapping>> {
        let select = MAPPINGS.with("ORDER BY position, claim_value");
        self.fetch_all(&select, &[]).await
    }

    async fn put_mapping(&self, m: &Mapping) -> StoreResult<()> {
        let delete = "DELETE FROM template_mappings WHERE claim_value = ?";
        let template = Record::Template(m.template.clone());
        self.replace_row(
            (delete, &[(&m.claim_value).into()]),
            Some((MAPPING_INSERT.sql, &MAPPING_INSERT.values(m))),
            "mapping",
            |e| missing_parent(e, "mapping", template),
        )
        .await
    }

    async fn delete_mapping(&self, claim_value: &str) -> StoreResult<()> {
        let sql = "DELETE FROM template_mappings WHERE claim_value = ?";
        let record = Record::Mapping(claim_value.to_string());
        self.change(sql, &[claim_value.into()], record).await
    }

    async fn default_template(&self) -> StoreResult<Option<String>> {
        self.fetch_optional(&SETTING, &[DEFAULT_TEMPLATE.into()])
            .await
    }

    async fn set_default_template(&self, name: Option<&str>) -> StoreResult<()> {
        if let Some(name) = name {
            if self.get_template(name).await?.is_none() {
                return Err(StoreError::NotFound(Record::Template(name.to_string())));
            }
        }
        let insert = "INSERT INTO settings (name, value) VALUES (?, ?)";
        let values = name.map(|name| [DEFAULT_TEMPLATE.into(), name.into()]);
        self.replace_row(
            (
                "DELETE FROM settings WHERE name = ?",
                &[DEFAULT_TEMPLATE.into()],
            ),
            values.as_ref().map(|v| (insert, &v[..])),
            "settings",
            |e| write_error(e, Record::Setting(DEFAULT_TEMPLATE)),
        )
        .await
    }

    async fn template_send_limits(&self, template: &str) -> StoreResult<Option<SendLimits>> {
        self.fetch_optional(&TEMPLATE_SEND_LIMITS, &[template.into()])
            .await
    }

    async fn set_template_send_limits(
        &self,
        template: &str,
        limits: Option<&SendLimits>,
        now: UnixTime,
    ) -> StoreResult<()> {
        let what = "template send limits";
        let insert = "INSERT INTO template_send_limits (template, limits, updated_at) \
                      VALUES (?, ?, ?)";
        let values = limits.map(|l| [template.into(), l.to_string().into(), now.into()]);
        let parent = Record::Template(template.to_string());
        self.replace_row(
            (
                "DELETE FROM template_send_limits WHERE template = ?",
                &[template.into()],
            ),
            values.as_ref().map(|v| (insert, &v[..])),
            what,
            |e| missing_parent(e, what, parent),
        )
        .await
    }
}
