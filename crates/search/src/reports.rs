//! Content reports (`POST /rooms/{roomId}/report/{eventId}`, `/rooms/{roomId}/report`),
//! stored for the server's admins in `Cf::Misc` under
//! `"report" 0xFF received_ms seq id 0xFF` → [`Report`] (oldest first when listed; `seq`
//! orders reports of the same millisecond in arrival order).
use std::sync::atomic::{AtomicU64, Ordering};

use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use storage::{Batch, Cf, Db, Key};

use crate::Result;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub id: String,
    pub received_ts: u64,
    pub reporter: String,
    pub room_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<i64>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn prefix() -> Key {
    Key::new().str("report")
}

/// Store a report; returns its ID.
pub fn store(db: &Db, mut report: Report) -> Result<String> {
    report.id = Alphanumeric.sample_string(&mut rand::rng(), 16);
    let mut b = Batch::new();
    b.put_json(
        Cf::Misc,
        prefix()
            .u64(report.received_ts)
            .u64(SEQ.fetch_add(1, Ordering::Relaxed))
            .str(&report.id),
        &report,
    );
    db.write(b)?;
    Ok(report.id)
}

/// Every stored report, oldest first.
pub fn list(db: &Db) -> Result<Vec<Report>> {
    Ok(db
        .scan_prefix(Cf::Misc, prefix().as_bytes())?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_stored_and_listed_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(dir.path(), false).expect("open");
        let r = |ts, reason: &str| Report {
            id: String::new(),
            received_ts: ts,
            reporter: "@a:x".into(),
            room_id: "!r:x".into(),
            event_id: Some("$e".into()),
            reason: Some(reason.into()),
            score: None,
        };
        let second = store(&db, r(20, "two")).expect("store");
        let first = store(&db, r(10, "one")).expect("store");
        let third = store(&db, r(20, "three")).expect("store");
        let all = list(&db).expect("list");
        assert_eq!(
            all.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            vec![first, second, third],
            "by time, then arrival"
        );
        assert_eq!(all[0].reason.as_deref(), Some("one"));
    }
}
