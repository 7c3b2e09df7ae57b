//! What everyday clients look up beyond the timeline: full-text search of room events
//! ([`fulltext`], tantivy), event relations and threads ([`relations`], an index in
//! `Cf::Misc`), the user directory ([`directory`], in memory) and content reports
//! ([`reports`]).
//!
//! Every index here follows the room timeline through
//! [`rooms::RoomService::timeline_events_between`] (all senders, local and remote) from a
//! cursor of its own, so it sees events from every source (client sends, federation,
//! imports) without a hook in the room engine's write path; each read first catches its
//! index up to the current stream position, so an answer never misses an event that was
//! committed before the request. The user directory also listens to
//! [`rooms::MembershipObserver`] for the memberships a remote join imports as state.
pub mod directory;
pub mod fulltext;
pub mod relations;
pub mod reports;

pub use directory::Directory;
pub use fulltext::FullText;
pub use relations::Relations;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("search index: {0}")]
    Index(String),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Rooms(#[from] rooms::RoomError),
}

impl Error {
    fn index(e: impl std::fmt::Display) -> Error {
        Error::Index(e.to_string())
    }
    fn poisoned() -> Error {
        Error::Index("lock poisoned".into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use ruma::OwnedUserId;
    use rooms::RoomService;
    use storage::Db;

    pub const SERVER: &str = "example.org";

    pub fn setup() -> (tempfile::TempDir, RoomService) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(&dir.path().join("db"), false).expect("open"));
        let svc = RoomService::new(db, SERVER.try_into().expect("server")).expect("service");
        (dir, svc)
    }

    pub fn user(local: &str) -> OwnedUserId {
        OwnedUserId::try_from(format!("@{local}:{SERVER}")).expect("user id")
    }
}
