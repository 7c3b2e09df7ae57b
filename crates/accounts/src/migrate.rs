//! `accounts`' parts of the schema migrations (run by `storage` at open, see
//! [`storage::Migration`]); the program opening the database passes [`MIGRATIONS`].
//!
//! Version 2: access tokens are stored only as their SHA-256. Version 1 keyed `Tokens` by
//! the token itself and listed the tokens in clear in each device record (`tokens`); both
//! are rewritten, in the one batch of the step, so every existing session stays valid.
use serde_json::Value;
use storage::{Batch, Cf, Db, Migration, StorageError};

use crate::keys::TokenHash;

/// Every migration `accounts` owns, for [`storage::Db::open_migrating`].
pub const MIGRATIONS: &[Migration] = &[Migration {
    to: 2,
    name: "accounts: hash access tokens",
    run: hash_tokens,
}];

fn corrupt(cf: Cf, reason: impl ToString) -> StorageError {
    StorageError::Corrupt {
        cf: cf.name(),
        reason: reason.to_string(),
    }
}

fn hash_tokens(db: &Db, batch: &mut Batch) -> Result<(), StorageError> {
    for (token, session) in db.scan_prefix(Cf::Tokens, [])? {
        let token = std::str::from_utf8(&token).map_err(|e| corrupt(Cf::Tokens, e))?;
        batch.put(Cf::Tokens, TokenHash::of(token).as_key(), session);
        batch.delete(Cf::Tokens, token);
    }
    for (key, record) in db.scan_prefix(Cf::Devices, [])? {
        let mut record: Value =
            serde_json::from_slice(&record).map_err(|e| corrupt(Cf::Devices, e))?;
        let Some(obj) = record.as_object_mut() else {
            return Err(corrupt(Cf::Devices, "device record is not an object"));
        };
        let hashes: Vec<Value> = match obj.remove("tokens") {
            None => Vec::new(),
            Some(Value::Array(tokens)) => tokens
                .iter()
                .map(|t| {
                    t.as_str()
                        .map(|t| Value::String(TokenHash::of(t).to_hex()))
                        .ok_or_else(|| corrupt(Cf::Devices, "token is not a string"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(corrupt(Cf::Devices, "tokens is not a list")),
        };
        obj.insert("token_hashes".into(), Value::Array(hashes));
        batch.put_json(Cf::Devices, key, &record);
    }
    Ok(())
}
