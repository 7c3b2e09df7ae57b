//! What RocksDB reports about itself, for the server's `/metrics` and status page: the
//! only place outside this crate sees RocksDB numbers. Read on demand (a few property
//! lookups and one directory listing), never on a request path.
use super::{Cf, Db};

/// One reading of the database's size and compaction state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbStats {
    /// Every file in the database directory (SST files, WAL, MANIFEST, options), in bytes.
    pub disk_bytes: u64,
    /// Live SST files of all column families.
    pub sst_bytes: u64,
    /// Memtables of all column families (not yet flushed to SST files).
    pub memtable_bytes: u64,
    /// Estimated keys, all column families.
    pub estimated_keys: u64,
    /// Compactions running now.
    pub running_compactions: u64,
    /// Bytes RocksDB estimates compaction still has to rewrite.
    pub pending_compaction_bytes: u64,
    /// Per column family: `(name, live SST bytes)`.
    pub per_cf_sst_bytes: Vec<(&'static str, u64)>,
}

impl Db {
    /// Size on disk and compaction state. Properties RocksDB cannot answer count as 0.
    pub fn stats(&self) -> DbStats {
        let mut s = DbStats::default();
        let rocks = self.rocks();
        for cf in Cf::ALL {
            let Ok(handle) = crate::handle(&rocks, cf) else {
                continue;
            };
            let prop = |name: &str| {
                rocks
                    .property_int_value_cf(handle, name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            let sst = prop("rocksdb.live-sst-files-size");
            s.sst_bytes += sst;
            s.memtable_bytes += prop("rocksdb.cur-size-all-mem-tables");
            s.estimated_keys += prop("rocksdb.estimate-num-keys");
            s.pending_compaction_bytes += prop("rocksdb.estimate-pending-compaction-bytes");
            s.per_cf_sst_bytes.push((cf.name(), sst));
        }
        s.running_compactions = rocks
            .property_int_value("rocksdb.num-running-compactions")
            .ok()
            .flatten()
            .unwrap_or(0);
        s.disk_bytes = std::fs::read_dir(rocks.path())
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_see_written_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), false).expect("open");
        let mut b = crate::Batch::new();
        for i in 0..100u64 {
            b.put(Cf::Misc, i.to_be_bytes(), vec![7u8; 1000]);
        }
        db.write(b).expect("write");
        let before = db.stats();
        assert!(before.disk_bytes > 0, "{before:?}");
        assert!(before.memtable_bytes > 0, "{before:?}");
        db.flush().expect("flush");
        let after = db.stats();
        assert!(after.sst_bytes > 0, "{after:?}");
        assert!(after.estimated_keys >= 100, "{after:?}");
        assert!(
            after
                .per_cf_sst_bytes
                .iter()
                .any(|(n, b)| *n == "misc" && *b > 0)
        );
    }
}
