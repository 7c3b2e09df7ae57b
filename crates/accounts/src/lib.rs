//! # accounts — users, passwords, devices, access tokens, profiles, account data, filters
//!
//! (skeleton: being filled in)
use std::sync::Arc;

use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId};
use serde::{Deserialize, Serialize};
use storage::{Cf, Db, StorageError};

/// The device behind an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
}

/// A user's public profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

pub struct AccountService {
    db: Arc<Db>,
    server_name: OwnedServerName,
}

impl AccountService {
    pub fn new(db: Arc<Db>, server_name: OwnedServerName) -> Self {
        AccountService { db, server_name }
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// The session of an access token, if it is valid.
    pub fn authenticate(&self, access_token: &str) -> Result<Option<Session>, StorageError> {
        self.db.get_json(Cf::Tokens, access_token)
    }
}
