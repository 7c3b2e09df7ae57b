//! Stored sync filters: validated on upload, bounded per user, read back as uploaded.
use super::*;

impl AccountService {
    /// Validate and store a filter; returns its new ID. `BadJson` if it is not a valid
    /// filter. The JSON is stored as given, so it reads back exactly.
    pub fn create_filter(&self, user: &UserId, filter: &Value) -> Result<String> {
        filter::parse_filter(filter.clone()).map_err(AccountError::BadJson)?;
        if count_user_entries(&self.db, Cf::Filters, user, MAX_FILTERS_PER_USER)?
            >= MAX_FILTERS_PER_USER
        {
            return Err(AccountError::QuotaExceeded(format!(
                "at most {MAX_FILTERS_PER_USER} filters per user"
            )));
        }
        let mut batch = Batch::new();
        let id = loop {
            // Never starts with `{` (sync tells inline filters by that).
            let id = random_string(10);
            if !self.db.exists(Cf::Filters, keys::filter(user, &id))? {
                break id;
            }
        };
        batch.put_json(Cf::Filters, keys::filter(user, &id), filter);
        self.db.write(batch)?;
        Ok(id)
    }

    /// A stored filter of this user, parsed.
    pub fn filter(&self, user: &UserId, filter_id: &str) -> Result<Option<Filter>> {
        match self.filter_json(user, filter_id)? {
            None => Ok(None),
            Some(v) => filter::parse_filter(v).map(Some).map_err(|e| {
                StorageError::Corrupt {
                    cf: Cf::Filters.name(),
                    reason: e,
                }
                .into()
            }),
        }
    }

    /// A stored filter of this user, as uploaded.
    pub fn filter_json(
        &self,
        user: &UserId,
        filter_id: &str,
    ) -> Result<Option<Value>, StorageError> {
        if filter_id.is_empty() {
            return Ok(None);
        }
        self.db.get_json(Cf::Filters, keys::filter(user, filter_id))
    }
}
