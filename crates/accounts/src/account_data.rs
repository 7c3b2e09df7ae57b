//! Account data (global and per room) and its change log; bounded per user.
use super::*;

impl AccountService {
    /// Store account data (global when `room` is `None`) at a new stream position, which
    /// is returned (wake the user's syncs with it). `content` must be a JSON object.
    pub fn set_account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        event_type: &str,
        content: &Value,
    ) -> Result<u64> {
        if !content.is_object() {
            return Err(AccountError::BadJson(
                "account data content must be a JSON object".into(),
            ));
        }
        if event_type.is_empty() || event_type.len() > MAX_ACCOUNT_DATA_TYPE_LEN {
            return Err(AccountError::InvalidParam(format!(
                "the account data type must be 1 to {MAX_ACCOUNT_DATA_TYPE_LEN} bytes long"
            )));
        }
        let key = keys::account_data(user, room, event_type);
        // One writer per user at a time, held across the quota count, the read of the previous
        // entry and the positioned write that replaces it: two writers of one entry cannot
        // both drop the same old log row (leaving two behind), nor two new types both pass a
        // quota with one slot left. The storage write no longer serialises closures.
        let _user = self.account_data_locks.lock(user.as_str());
        if !self.db.exists(Cf::AccountData, &key)?
            && count_user_entries(&self.db, Cf::AccountData, user, MAX_ACCOUNT_DATA_PER_USER)?
                >= MAX_ACCOUNT_DATA_PER_USER
        {
            return Err(AccountError::QuotaExceeded(format!(
                "at most {MAX_ACCOUNT_DATA_PER_USER} account data entries per user; \
                 overwrite an existing type instead"
            )));
        }
        let (pos, ()) = self
            .db
            .write_with_position::<_, AccountError>(|pos, batch| {
                // Keep one log entry per (room, type): drop the previous write's entry.
                if let Some(prev) = self
                    .db
                    .get_json::<AccountDataRecord>(Cf::AccountData, &key)?
                {
                    batch.delete(Cf::AccountDataLog, keys::account_data_log(user, prev.pos));
                }
                batch.put_json(
                    Cf::AccountData,
                    &key,
                    &AccountDataRecord {
                        pos,
                        content: content.clone(),
                    },
                );
                batch.put_json(
                    Cf::AccountDataLog,
                    keys::account_data_log(user, pos),
                    &AccountDataLogRecord {
                        room_id: room.map(ToOwned::to_owned),
                        event_type: event_type.to_owned(),
                        content: content.clone(),
                    },
                );
                Ok(())
            })?;
        Ok(pos)
    }

    /// One piece of account data, if set.
    pub fn account_data(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        event_type: &str,
    ) -> Result<Option<Value>, StorageError> {
        Ok(self
            .db
            .get_json::<AccountDataRecord>(
                Cf::AccountData,
                keys::account_data(user, room, event_type),
            )?
            .map(|r| r.content))
    }

    /// Account data whose latest write has a stream position in `(since_pos, up_to]`,
    /// with that write's content, in position order. A (room, type) written again after
    /// `up_to` is left out here and reported by the next call that covers its position.
    pub fn account_data_since(
        &self,
        user: &UserId,
        since_pos: u64,
        up_to: u64,
    ) -> Result<Vec<AccountDataChange>> {
        let up_to = up_to.min(u64::MAX - 1);
        if since_pos >= up_to {
            return Ok(Vec::new());
        }
        let start = keys::account_data_log(user, since_pos + 1);
        let end = keys::account_data_log(user, up_to + 1);
        let mut latest: BTreeMap<(Option<OwnedRoomId>, String), (u64, Value)> = BTreeMap::new();
        for (k, v) in self
            .db
            .scan_range(Cf::AccountDataLog, start, end, false, usize::MAX)?
        {
            let pos = keys::parse_account_data_log(&k).unwrap_or(0);
            let rec: AccountDataLogRecord =
                serde_json::from_slice(&v).map_err(|e| StorageError::Corrupt {
                    cf: Cf::AccountDataLog.name(),
                    reason: e.to_string(),
                })?;
            latest.insert((rec.room_id, rec.event_type), (pos, rec.content));
        }
        let mut out: Vec<(u64, AccountDataChange)> = latest
            .into_iter()
            .map(|((room_id, event_type), (pos, content))| {
                (
                    pos,
                    AccountDataChange {
                        room_id,
                        event_type,
                        content,
                    },
                )
            })
            .collect();
        out.sort_by_key(|(pos, _)| *pos);
        Ok(out.into_iter().map(|(_, c)| c).collect())
    }

    /// All of a user's account data, global and per room (for an initial sync).
    pub fn all_account_data(&self, user: &UserId) -> Result<Vec<AccountDataChange>> {
        let mut out = Vec::new();
        for (k, v) in self
            .db
            .scan_prefix(Cf::AccountData, keys::user_prefix(user))?
        {
            let (room_id, event_type) =
                keys::parse_account_data(&k).map_err(|()| StorageError::Corrupt {
                    cf: Cf::AccountData.name(),
                    reason: "bad key".into(),
                })?;
            let event_type = event_type.to_owned();
            let rec: AccountDataRecord =
                serde_json::from_slice(&v).map_err(|e| StorageError::Corrupt {
                    cf: Cf::AccountData.name(),
                    reason: e.to_string(),
                })?;
            out.push(AccountDataChange {
                room_id,
                event_type,
                content: rec.content,
            });
        }
        Ok(out)
    }

    /// Global account data of `event_type` of every user who has it (start-up loading of
    /// settings other services cache, such as the presence sharing config).
    pub fn global_account_data_of_type(
        &self,
        event_type: &str,
    ) -> Result<Vec<(OwnedUserId, Value)>, StorageError> {
        let mut out = Vec::new();
        for (k, _) in self.db.scan_prefix(Cf::Users, [])? {
            let Some(user) = keys::parse_user(&k).and_then(|s| OwnedUserId::try_from(s).ok())
            else {
                continue;
            };
            if let Some(content) = self.account_data(&user, None, event_type)? {
                out.push((user, content));
            }
        }
        Ok(out)
    }
}
