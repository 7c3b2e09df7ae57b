//! Consistent copies of the live database for online backups (`pulse backup`).
//!
//! A RocksDB checkpoint is a point-in-time copy of every column family taken while writes
//! go on: SST files are hard-linked where the target is on the same filesystem (copied
//! otherwise), and the memtables are flushed first, so the copy opens like the original
//! after a clean shutdown. Write batches stay atomic in it, as they are in the WAL.
use std::path::Path;

use crate::{Db, Result};

impl Db {
    /// Write a consistent copy of the whole database to `dir`, which must not exist yet
    /// (its parent must). Every write acknowledged before this call is in the copy; the
    /// returned stream position is one the copy holds everything up to (it may hold more).
    pub fn checkpoint(&self, dir: &Path) -> Result<u64> {
        let position = self.current_position();
        let rocks = self.rocks();
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&*rocks)?;
        checkpoint.create_checkpoint(dir)?;
        Ok(position)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Batch, Cf, Db};

    #[test]
    fn a_checkpoint_holds_every_write_before_it_and_none_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("live"), false).expect("open");
        let mut positions = Vec::new();
        for i in 0..100u64 {
            let (pos, ()) = db
                .write_with_position(|pos, b: &mut Batch| {
                    b.put(Cf::Misc, format!("k{i}"), pos.to_be_bytes().to_vec());
                    b.put(Cf::Users, format!("u{i}"), b"x".to_vec());
                    Ok::<_, crate::StorageError>(())
                })
                .expect("write");
            positions.push(pos);
        }
        let copy = dir.path().join("copy");
        let upto = db.checkpoint(&copy).expect("checkpoint");
        assert_eq!(upto, *positions.last().expect("written"));
        let mut b = Batch::new();
        b.put(Cf::Misc, "after", b"y".to_vec());
        db.write(b).expect("write after");
        // A checkpoint's directory must be new: no second copy over the first.
        assert!(db.checkpoint(&copy).is_err());
        drop(db);
        let restored = Db::open(&copy, false).expect("open the copy");
        for i in 0..100u64 {
            assert!(
                restored
                    .get(Cf::Misc, format!("k{i}"))
                    .expect("read")
                    .is_some()
            );
            assert!(
                restored
                    .get(Cf::Users, format!("u{i}"))
                    .expect("read")
                    .is_some()
            );
        }
        assert!(restored.get(Cf::Misc, "after").expect("read").is_none());
        assert_eq!(restored.current_position(), upto);
    }
}
