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

/// The three indexes, built once by the binary and shared by the client API.
pub struct Indexes {
    pub rooms: std::sync::Arc<rooms::RoomService>,
    pub fulltext: FullText,
    pub relations: Relations,
    pub directory: std::sync::Arc<Directory>,
}

impl Indexes {
    /// Open the full-text index under `search_dir`, and build the user directory. Register
    /// [`Indexes::directory`] as a membership observer of the room engine.
    pub fn open(
        rooms: std::sync::Arc<rooms::RoomService>,
        search_dir: &std::path::Path,
        profiles: std::sync::Arc<directory::ProfileSource>,
    ) -> Result<Indexes> {
        Ok(Indexes {
            fulltext: FullText::open(search_dir)?,
            relations: Relations::new(),
            directory: std::sync::Arc::new(Directory::build(rooms.clone(), profiles)?),
            rooms,
        })
    }

    /// Bring every index up to the current stream position.
    pub fn catch_up(&self) -> Result<()> {
        self.relations.catch_up(&self.rooms)?;
        self.fulltext.catch_up(&self.rooms)?;
        self.directory.catch_up()
    }

    /// Follow the timeline in the background: every `interval`, if the stream position
    /// moved, catch every index up (so reads, which catch up too, find little to do).
    /// The thread ends when the last other reference to `self` is dropped.
    pub fn follow(self: &std::sync::Arc<Self>, interval: std::time::Duration) {
        let weak = std::sync::Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("index-follower".into())
            .spawn(move || {
                let mut seen = 0;
                loop {
                    std::thread::sleep(interval);
                    let Some(ix) = weak.upgrade() else { return };
                    let now = ix.rooms.current_position();
                    if now != seen {
                        match ix.catch_up() {
                            Ok(()) => seen = now,
                            Err(e) => tracing::warn!(error = %e, "index catch-up failed"),
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the index follower");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use rooms::RoomService;
    use ruma::OwnedUserId;
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
