//! # rooms — rooms as signed PDUs
//!
//! (skeleton: being filled in)
use std::sync::Arc;

use ruma::OwnedServerName;
use storage::Db;

pub struct RoomService {
    db: Arc<Db>,
    server_name: OwnedServerName,
}

impl RoomService {
    pub fn new(db: Arc<Db>, server_name: OwnedServerName) -> Self {
        RoomService { db, server_name }
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    pub fn db(&self) -> &Db {
        &self.db
    }
}
