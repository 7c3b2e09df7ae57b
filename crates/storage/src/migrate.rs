//! Schema migrations: bringing a database written by an older Pulse up to
//! [`SCHEMA_VERSION`] at open.
//!
//! Each version step has storage's own part (families dropped or added) and the parts of
//! the crates whose data changed layout, handed in by the program that opens the database
//! as [`Migration`]s (storage knows no other crate's records). The parts of one step put
//! their changes into **one** [`Batch`], written together with the new schema version, so
//! a crash leaves the database wholly at the old version or wholly at the new one (storage's
//! own parts are idempotent and run again in that case). After the last step every family
//! is flushed and fully compacted, so rewritten keys and values leave the SST files.
use rocksdb::{BottommostLevelCompaction, CompactOptions};

use crate::{Batch, Cf, Db, META_SCHEMA, Result, SCHEMA_VERSION, StorageError};

/// One crate's part of a schema step.
#[derive(Clone, Copy)]
pub struct Migration {
    /// The version this step reaches (the database is at `to - 1` when it runs).
    pub to: u64,
    /// A name for errors and logs; matched against [`REQUIRED`].
    pub name: &'static str,
    /// Reads the database as it is and adds the rewrite to the batch.
    pub run: fn(&Db, &mut Batch) -> Result<()>,
}

/// The parts other crates must supply, per version: opening an older database without
/// them is refused rather than half-migrated.
const REQUIRED: &[(u64, &str)] = &[(2, "accounts: hash access tokens")];

/// Families of older layouts that are dropped (by the step that retired them).
const OBSOLETE: &[(u64, &str)] = &[(2, "presence_stream")];

impl Db {
    pub(crate) fn migrate(&mut self, found: u64, migrations: &[Migration]) -> Result<()> {
        for &(to, name) in REQUIRED {
            if to > found && !migrations.iter().any(|m| m.to == to && m.name == name) {
                return Err(StorageError::MigrationMissing { found, to, name });
            }
        }
        for to in found + 1..=SCHEMA_VERSION {
            tracing::info!(
                "migrating the database from schema version {} to {to}",
                to - 1
            );
            for &(_, cf) in OBSOLETE.iter().filter(|(v, _)| *v == to) {
                let rocks = self.rocks.get_mut().unwrap_or_else(|p| p.into_inner());
                if rocks.cf_handle(cf).is_some() {
                    rocks.drop_cf(cf)?;
                }
            }
            let mut batch = Batch::new();
            for m in migrations.iter().filter(|m| m.to == to) {
                (m.run)(self, &mut batch)?;
            }
            batch.put(Cf::Meta, META_SCHEMA, to.to_be_bytes().to_vec());
            self.write(batch)?;
        }
        self.flush()?;
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        let rocks = self.rocks();
        for cf in Cf::ALL {
            rocks.compact_range_cf_opt(
                crate::handle(&rocks, cf)?,
                None::<&[u8]>,
                None::<&[u8]>,
                &opts,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::{ColumnFamilyDescriptor, DB, Options};

    /// A database as schema version 1 left it: version 1, a `presence_stream` family.
    fn write_v1(path: &std::path::Path) {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = ["meta", "tokens", "presence_stream"]
            .into_iter()
            .map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).expect("open v1");
        let meta = db.cf_handle("meta").expect("meta");
        db.put_cf(meta, META_SCHEMA, 1u64.to_be_bytes())
            .expect("put version");
        let tokens = db.cf_handle("tokens").expect("tokens");
        db.put_cf(tokens, b"plain-token", b"{}").expect("put token");
    }

    fn rehash(db: &Db, b: &mut Batch) -> Result<()> {
        for (k, v) in db.scan_prefix(Cf::Tokens, [])? {
            let mut new_key = b"h:".to_vec();
            new_key.extend_from_slice(&k);
            b.put(Cf::Tokens, new_key, v);
            b.delete(Cf::Tokens, k);
        }
        Ok(())
    }

    const HASH: Migration = Migration {
        to: 2,
        name: "accounts: hash access tokens",
        run: rehash,
    };

    #[test]
    fn old_database_without_the_required_migration_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_v1(dir.path());
        assert!(matches!(
            Db::open(dir.path(), false),
            Err(StorageError::MigrationMissing {
                found: 1,
                to: 2,
                ..
            })
        ));
        // Still version 1, still its family: the migrating open works afterwards.
        let db = Db::open_migrating(dir.path(), false, &[HASH]).expect("migrate");
        assert_eq!(db.schema_version().expect("version"), SCHEMA_VERSION);
        assert_eq!(db.get(Cf::Tokens, b"plain-token").expect("get"), None);
        assert_eq!(
            db.get(Cf::Tokens, b"h:plain-token").expect("get"),
            Some(b"{}".to_vec())
        );
    }

    #[test]
    fn migration_drops_presence_stream_and_reopens_plainly() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_v1(dir.path());
        drop(Db::open_migrating(dir.path(), false, &[HASH]).expect("migrate"));
        let families = DB::list_cf(&Options::default(), dir.path()).expect("list");
        assert!(!families.iter().any(|f| f == "presence_stream"));
        // A migrated database is current: the plain open needs no migration.
        let db = Db::open(dir.path(), false).expect("reopen");
        assert_eq!(db.schema_version().expect("version"), SCHEMA_VERSION);
    }

    #[test]
    fn migrated_keys_leave_no_trace_in_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_v1(dir.path());
        drop(Db::open_migrating(dir.path(), false, &[HASH]).expect("migrate"));
        for entry in std::fs::read_dir(dir.path()).expect("read dir") {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read file");
            // `h:plain-token` contains it: look for the old key not preceded by `h:`.
            let found = bytes
                .windows(b"plain-token".len())
                .enumerate()
                .any(|(i, w)| w == b"plain-token" && (i < 2 || &bytes[i - 2..i] != b"h:"));
            assert!(!found, "old key still in {}", path.display());
        }
    }
}
