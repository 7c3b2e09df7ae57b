use super::*;

struct Recorder(Mutex<Vec<EphemeralChange>>);

impl EphemeralObserver for Recorder {
    fn changed(&self, change: &EphemeralChange) {
        self.0.lock().expect("lock").push(change.clone());
    }
}

fn setup() -> (tempfile::TempDir, Arc<EphemeralService>, Arc<Recorder>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), false).expect("db"));
    let svc = EphemeralService::new(db);
    let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
    svc.add_observer(rec.clone());
    (dir, svc, rec)
}

fn room() -> OwnedRoomId {
    "!r:x".try_into().expect("room")
}
fn user(s: &str) -> OwnedUserId {
    s.try_into().expect("user")
}
fn event(s: &str) -> OwnedEventId {
    s.try_into().expect("event")
}

#[test]
fn typing_changes_reach_observers_with_their_origin() {
    let (_d, svc, rec) = setup();
    let (r, a) = (room(), user("@a:x"));
    let remote = Origin::Remote("other.example".try_into().expect("name"));
    let t = Duration::from_secs(10);
    let pos = svc
        .set_typing(&r, &a, true, t, remote.clone())
        .expect("ok")
        .expect("a change");
    assert_eq!(
        svc.typing_since(&r, Some(pos - 1), pos),
        Some(vec![a.clone()])
    );
    assert_eq!(
        svc.set_typing(&r, &a, true, t, Origin::Local).expect("ok"),
        None
    );
    let stop = svc
        .set_typing(&r, &a, false, t, Origin::Local)
        .expect("ok")
        .expect("a change");
    assert!(stop > pos);
    assert_eq!(svc.typing_since(&r, Some(pos), stop), Some(vec![]));
    let seen = rec.0.lock().expect("lock").clone();
    assert_eq!(
        seen,
        vec![
            EphemeralChange::Typing {
                room: r.clone(),
                user: a.clone(),
                typing: true,
                pos,
                origin: remote
            },
            EphemeralChange::Typing {
                room: r,
                user: a,
                typing: false,
                pos: stop,
                origin: Origin::Local
            },
        ]
    );
}

#[test]
fn expiry_removes_typers_and_tells_observers() {
    let (_d, svc, rec) = setup();
    let (r, a) = (room(), user("@a:x"));
    svc.set_typing(&r, &a, true, Duration::ZERO, Origin::Local)
        .expect("ok");
    svc.expire_typing(Instant::now() + Duration::from_millis(1))
        .expect("ok");
    assert!(svc.typing_users(&r).is_empty());
    let seen = rec.0.lock().expect("lock").clone();
    assert!(matches!(
        seen.last(),
        Some(EphemeralChange::Typing { typing: false, .. })
    ));
}

#[test]
fn timeout_is_capped() {
    let (_d, svc, _rec) = setup();
    let (r, a) = (room(), user("@a:x"));
    svc.set_typing(&r, &a, true, Duration::from_secs(3600), Origin::Local)
        .expect("ok");
    svc.expire_typing(Instant::now() + Duration::from_millis(MAX_TYPING_TIMEOUT_MS + 1))
        .expect("ok");
    assert!(svc.typing_users(&r).is_empty(), "expired at the cap");
}

#[test]
fn receipts_move_forwards_and_private_ones_stay_private() {
    let (_d, svc, rec) = setup();
    let (r, a, b) = (room(), user("@a:x"), user("@b:x"));
    let receipt = |u: &OwnedUserId, kind, ev: &str| Receipt {
        room_id: r.clone(),
        user_id: u.clone(),
        receipt_type: kind,
        event_id: event(ev),
        thread_id: None,
        ts: 5,
    };
    let p1 = svc
        .put_receipt(receipt(&a, ReceiptType::Read, "$e2"), 20, Origin::Local)
        .expect("ok")
        .expect("stored");
    // An earlier event: accepted and ignored.
    assert_eq!(
        svc.put_receipt(receipt(&a, ReceiptType::Read, "$e1"), 10, Origin::Local)
            .expect("ok"),
        None
    );
    svc.put_receipt(
        receipt(&a, ReceiptType::ReadPrivate, "$e2"),
        20,
        Origin::Local,
    )
    .expect("ok")
    .expect("stored");
    let for_b = svc
        .receipt_event(&b, &r, None, u64::MAX)
        .expect("ok")
        .expect("some");
    assert!(for_b["content"]["$e2"]["m.read"]["@a:x"].is_object());
    assert!(for_b["content"]["$e2"].get("m.read.private").is_none());
    let for_a = svc
        .receipt_event(&a, &r, None, u64::MAX)
        .expect("ok")
        .expect("some");
    assert!(for_a["content"]["$e2"]["m.read.private"]["@a:x"].is_object());
    // Incremental: only what was written after the token.
    let later = svc.receipt_event(&b, &r, Some(p1), u64::MAX).expect("ok");
    assert!(later.is_none(), "the private receipt is not b's to see");
    assert_eq!(rec.0.lock().expect("lock").len(), 2);
}

#[test]
fn typing_churn_over_many_rooms_keeps_memory_flat() {
    // Issue 19 item 6: rooms typed in once and left idle used to stay in memory forever.
    let (_d, svc, _rec) = setup();
    let a = user("@a:x");
    let t = Duration::from_secs(10);
    let mut sizes = Vec::new();
    for round in 0..4 {
        for i in 0..MAX_IDLE_ROOMS {
            let r: OwnedRoomId = format!("!r{round}_{i}:x").try_into().expect("room");
            svc.set_typing(&r, &a, true, t, Origin::Local)
                .expect("start");
            svc.set_typing(&r, &a, false, t, Origin::Local)
                .expect("stop");
        }
        sizes.push(svc.typing_room_count());
    }
    // 40,000 rooms churned; what is held stays at the bound, round after round.
    assert!(
        sizes.iter().all(|n| *n <= MAX_IDLE_ROOMS),
        "typing rooms held per round: {sizes:?}"
    );
    assert_eq!(sizes[1], sizes[3], "memory grew between rounds: {sizes:?}");
}
