//! Unit tests of the service against a real (temporary) RocksDB.
use std::sync::Arc;

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use crate::backup::SessionData;
use crate::verify::test_keys::TestKey;
use crate::{E2eeError, E2eeService};

fn svc() -> (tempfile::TempDir, E2eeService) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = storage::Db::open(dir.path(), false).expect("open");
    (dir, E2eeService::new(Arc::new(db)))
}

fn user(s: &str) -> OwnedUserId {
    s.try_into().expect("user id")
}

/// Device keys signed by the device's (fresh) ed25519 key, and that key.
fn device_keys_and_key(u: &UserId, d: &DeviceId) -> (Value, TestKey) {
    let k = TestKey::new();
    let mut v = json!({
        "user_id": u, "device_id": d,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{d}"): "c", format!("ed25519:{d}"): k.public },
    });
    k.sign(&mut v, u.as_str(), &format!("ed25519:{d}"));
    (v, k)
}

fn device_keys(u: &UserId, d: &DeviceId) -> Value {
    device_keys_and_key(u, d).0
}

fn otks(ids: &[&str]) -> Map<String, Value> {
    ids.iter()
        .map(|i| {
            (
                format!("signed_curve25519:{i}"),
                json!({ "key": format!("k{i}"), "signatures": {} }),
            )
        })
        .collect()
}

#[test]
fn upload_counts_and_idempotency() {
    let (_d, s) = svc();
    let (u, d) = (user("@a:x"), OwnedDeviceId::from("D"));
    let dk = device_keys(&u, &d);
    let out = s
        .upload_keys(&u, &d, Some(&dk), &otks(&["1", "2", "3"]), &Map::new())
        .expect("upload");
    assert_eq!(out.one_time_key_counts["signed_curve25519"], 3);
    assert!(out.device_list_pos.is_some());
    // The same keys again: nothing new, no device-list change.
    let out = s
        .upload_keys(&u, &d, Some(&dk), &otks(&["2", "3", "4"]), &Map::new())
        .expect("again");
    assert_eq!(out.one_time_key_counts["signed_curve25519"], 4);
    assert_eq!(out.device_list_pos, None);
    // Same ID, different key: refused, and nothing of that upload is stored.
    let mut bad = otks(&["5"]);
    bad.insert("signed_curve25519:1".into(), json!({ "key": "other" }));
    assert!(matches!(
        s.upload_keys(&u, &d, None, &bad, &Map::new()),
        Err(E2eeError::InvalidParam(_))
    ));
    assert_eq!(
        s.one_time_key_counts(&u, &d).expect("counts")["signed_curve25519"],
        4
    );
}

#[test]
fn device_keys_must_be_the_requesters_and_well_formed() {
    let (_d, s) = svc();
    let (u, d) = (user("@a:x"), OwnedDeviceId::from("D"));
    let other = device_keys(&user("@b:x"), &d);
    assert!(matches!(
        s.upload_keys(&u, &d, Some(&other), &Map::new(), &Map::new()),
        Err(E2eeError::InvalidParam(_))
    ));
    let missing = json!({ "user_id": u, "device_id": d });
    assert!(matches!(
        s.upload_keys(&u, &d, Some(&missing), &Map::new(), &Map::new()),
        Err(E2eeError::BadJson(_))
    ));
    // A signature that does not verify, or none by the device's own key: refused.
    let mut tampered = device_keys(&u, &d);
    tampered["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    assert!(matches!(
        s.upload_keys(&u, &d, Some(&tampered), &Map::new(), &Map::new()),
        Err(E2eeError::InvalidSignature(_))
    ));
    let (mut foreign, _) = device_keys_and_key(&u, &d);
    let stranger = TestKey::new();
    foreign["signatures"] = json!({});
    stranger.sign(&mut foreign, u.as_str(), "ed25519:D");
    assert!(matches!(
        s.upload_keys(&u, &d, Some(&foreign), &Map::new(), &Map::new()),
        Err(E2eeError::InvalidSignature(_))
    ));
    // Keys without a self-signature are accepted (clients ignore them; Synapse takes them).
    let mut unsigned = device_keys(&u, &d);
    unsigned["signatures"] = json!({});
    assert!(
        s.upload_keys(&u, &d, Some(&unsigned), &Map::new(), &Map::new())
            .is_ok()
    );
    let bad_otk: Map<String, Value> = [("nocolon".to_owned(), json!("k"))].into_iter().collect();
    assert!(matches!(
        s.upload_keys(&u, &d, None, &bad_otk, &Map::new()),
        Err(E2eeError::BadJson(_))
    ));
    assert_eq!(s.device_keys(&u, &d).expect("read"), Some(unsigned));
}

#[test]
fn claims_go_in_upload_order_then_fallback() {
    let (_d, s) = svc();
    let (u, d) = (user("@a:x"), OwnedDeviceId::from("D"));
    // Upload "9" before "1": "9" must be claimed first.
    s.upload_keys(&u, &d, None, &otks(&["9"]), &Map::new())
        .expect("up");
    let fb: Map<String, Value> = [(
        "signed_curve25519:F".to_owned(),
        json!({ "key": "f", "fallback": true }),
    )]
    .into_iter()
    .collect();
    s.upload_keys(&u, &d, None, &otks(&["1"]), &fb).expect("up");
    assert_eq!(
        s.unused_fallback_key_types(&u, &d).expect("fb"),
        vec!["signed_curve25519"]
    );
    let ids: Vec<(String, bool)> = (0..4)
        .map(|_| {
            let c = s
                .claim_key(&u, &d, "signed_curve25519")
                .expect("claim")
                .expect("some");
            (c.id, c.fallback)
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            ("signed_curve25519:9".into(), false),
            ("signed_curve25519:1".into(), false),
            ("signed_curve25519:F".into(), true),
            ("signed_curve25519:F".into(), true),
        ]
    );
    assert!(s.unused_fallback_key_types(&u, &d).expect("fb").is_empty());
    assert_eq!(
        s.one_time_key_counts(&u, &d).expect("c")["signed_curve25519"],
        0
    );
    assert_eq!(s.claim_key(&u, &d, "curve25519").expect("claim"), None);
    // A claimed key uploaded again (an old upload retried) is not handed out twice.
    s.upload_keys(&u, &d, None, &otks(&["9"]), &Map::new())
        .expect("retry");
    assert_eq!(
        s.one_time_key_counts(&u, &d).expect("c")["signed_curve25519"],
        0
    );
}

#[test]
fn concurrent_claims_never_share_a_key() {
    let (_d, s) = svc();
    let s = Arc::new(s);
    let (u, d) = (user("@a:x"), OwnedDeviceId::from("D"));
    let ids: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    s.upload_keys(&u, &d, None, &otks(&refs), &Map::new())
        .expect("up");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (s, u, d) = (s.clone(), u.clone(), d.clone());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while let Some(c) = s.claim_key(&u, &d, "signed_curve25519").expect("claim") {
                    got.push(c.id);
                }
                got
            })
        })
        .collect();
    let mut all: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("join"))
        .collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(n, 50, "every key claimed once");
    assert_eq!(all.len(), 50, "no key claimed twice");
}

#[test]
fn device_list_changes_are_on_the_stream() {
    let (_d, s) = svc();
    let (a, b) = (user("@a:x"), user("@b:x"));
    let before = s.current_position();
    let p1 = s.mark_device_list_changed(&a).expect("mark");
    let p2 = s.mark_device_list_changed(&b).expect("mark");
    let all = s.device_list_changes(before, p2).expect("changes");
    assert_eq!(
        all.into_iter().collect::<Vec<_>>(),
        vec![a.clone(), b.clone()]
    );
    let later = s.device_list_changes(p1, p2).expect("changes");
    assert_eq!(later.into_iter().collect::<Vec<_>>(), vec![b.clone()]);
    assert_eq!(s.device_list_version(&b).expect("v"), p2);
    // Deleting a device with keys is a change; its keys are gone.
    let d = OwnedDeviceId::from("D");
    s.upload_keys(
        &a,
        &d,
        Some(&device_keys(&a, &d)),
        &otks(&["1"]),
        &Map::new(),
    )
    .expect("up");
    let p3 = s.delete_device(&a, &d).expect("delete").expect("had keys");
    assert!(s.device_list_changes(p2, p3).expect("c").contains(&a));
    assert!(s.all_device_keys(&a).expect("keys").is_empty());
    assert_eq!(
        s.claim_key(&a, &d, "signed_curve25519").expect("claim"),
        None
    );
}

#[test]
fn to_device_is_idempotent_and_deleted_after_ack() {
    let (_d, s) = svc();
    let (a, b) = (user("@a:x"), user("@b:x"));
    let d = OwnedDeviceId::from("BD");
    let msgs = vec![(b.clone(), d.clone(), json!({ "n": 1 }))];
    let p = s
        .send_to_device(&a, "AD", Some("t1"), "m.test", &msgs)
        .expect("send")
        .expect("new");
    assert_eq!(
        s.send_to_device(&a, "AD", Some("t1"), "m.test", &msgs)
            .expect("send"),
        None
    );
    // Delivered in the response at token `p`.
    let got = s.to_device_for_sync(&b, &d, Some(0), p).expect("sync");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sender, "@a:x");
    // A retry with the old token gets it again; the next token acknowledges it.
    let again = s.to_device_for_sync(&b, &d, Some(0), p).expect("sync");
    assert_eq!(again.len(), 1);
    let p2 = s
        .send_to_device(
            &a,
            "AD",
            Some("t2"),
            "m.test",
            &[(b.clone(), d.clone(), json!({ "n": 2 }))],
        )
        .expect("send")
        .expect("new");
    let next = s.to_device_for_sync(&b, &d, Some(p), p2).expect("sync");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].content, json!({ "n": 2 }));
    assert_eq!(s.to_device_waiting(&b, &d).expect("waiting"), 1);
    let none = s.to_device_for_sync(&b, &d, Some(p2), p2).expect("sync");
    assert!(none.is_empty());
    assert_eq!(s.to_device_waiting(&b, &d).expect("waiting"), 0);
}

#[test]
fn to_device_beyond_one_response_is_not_lost() {
    let (_d, s) = svc();
    let (a, b) = (user("@a:x"), user("@b:x"));
    let d = OwnedDeviceId::from("BD");
    let msgs: Vec<_> = (0..250)
        .map(|i| (b.clone(), d.clone(), json!({ "n": i })))
        .collect();
    let p = s
        .send_to_device(&a, "AD", Some("t"), "m.test", &msgs)
        .expect("send")
        .expect("new");
    let mut seen = Vec::new();
    let mut since = Some(0);
    for _ in 0..5 {
        let got = s.to_device_for_sync(&b, &d, since, p).expect("sync");
        seen.extend(got.into_iter().map(|m| m.content["n"].as_u64().expect("n")));
        since = Some(p);
    }
    assert_eq!(seen, (0..250).collect::<Vec<u64>>());
}

/// A cross-signing key object of `kind` for `u` with `k`'s public key.
fn cs_key(u: &UserId, kind: &str, k: &TestKey) -> Value {
    json!({ "user_id": u, "usage": [kind], "keys": { k.own_id(): k.public } })
}

fn one(user: &str, id: &str, obj: Value) -> Map<String, Value> {
    [(user.to_owned(), json!({ id: obj }))]
        .into_iter()
        .collect()
}

#[test]
fn cross_signing_and_signatures() {
    let (_d, s) = svc();
    let (a, b) = (user("@a:x"), user("@b:x"));
    let (amk, assk) = (TestKey::new(), TestKey::new());
    let am = cs_key(&a, "master", &amk);
    assert!(
        !s.signing_upload_needs_auth(&a, &[("master", &am)])
            .expect("auth")
    );
    // Self-signing without a master key is refused.
    let mut ass = cs_key(&a, "self_signing", &assk);
    amk.sign(&mut ass, "@a:x", &amk.own_id());
    assert!(
        s.upload_signing_keys(&a, &[("self_signing", &ass)])
            .is_err()
    );
    // A self-signing key not signed by the master key, or signed by another key: refused.
    let unsigned = cs_key(&a, "self_signing", &assk);
    assert!(matches!(
        s.upload_signing_keys(&a, &[("master", &am), ("self_signing", &unsigned)]),
        Err(E2eeError::InvalidSignature(_))
    ));
    let mut by_other = cs_key(&a, "self_signing", &assk);
    TestKey::new().sign(&mut by_other, "@a:x", &amk.own_id());
    assert!(matches!(
        s.upload_signing_keys(&a, &[("master", &am), ("self_signing", &by_other)]),
        Err(E2eeError::InvalidSignature(_))
    ));
    assert!(s.cross_signing_key(&a, "master").expect("read").is_none());
    s.upload_signing_keys(&a, &[("master", &am), ("self_signing", &ass)])
        .expect("upload");
    assert!(
        !s.signing_upload_needs_auth(&a, &[("master", &am)])
            .expect("same keys")
    );
    let other = cs_key(&a, "master", &TestKey::new());
    assert!(
        s.signing_upload_needs_auth(&a, &[("master", &other)])
            .expect("replace")
    );
    // b signs a's master key with b's user-signing key: only b sees that signature.
    let (bmk, busk) = (TestKey::new(), TestKey::new());
    let bm = cs_key(&b, "master", &bmk);
    let mut bus = cs_key(&b, "user_signing", &busk);
    bmk.sign(&mut bus, "@b:x", &bmk.own_id());
    s.upload_signing_keys(&b, &[("master", &bm), ("user_signing", &bus)])
        .expect("upload");
    let mut signed = am.clone();
    busk.sign(&mut signed, "@b:x", &busk.own_id());
    let (pos, changed, failures) = s
        .add_signatures(&b, &one("@a:x", &amk.public, signed.clone()))
        .expect("sign");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(pos.is_some());
    assert!(changed.contains("@a:x"));
    let seen_by_b = s.master_key_for(&a, &b).expect("read").expect("key");
    assert_eq!(
        seen_by_b["signatures"]["@b:x"][busk.own_id()],
        signed["signatures"]["@b:x"][busk.own_id()]
    );
    let seen_by_a = s.master_key_for(&a, &a).expect("read").expect("key");
    assert!(seen_by_a.get("signatures").is_none());
    // The same with a key that is not b's user-signing key, or a broken signature: failures.
    let mut wrong_key = am.clone();
    let stranger = TestKey::new();
    stranger.sign(&mut wrong_key, "@b:x", &stranger.own_id());
    let mut broken = am.clone();
    broken["signatures"] = json!({ "@b:x": { busk.own_id(): "AAAA" } });
    for bad in [wrong_key, broken] {
        let (_, _, failures) = s
            .add_signatures(&b, &one("@a:x", &amk.public, bad))
            .expect("sign");
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].2, "M_INVALID_SIGNATURE");
    }
    // Signing something that is not the stored key fails per item.
    let mut forged = am.clone();
    forged["extra"] = json!(1);
    busk.sign(&mut forged, "@b:x", &busk.own_id());
    let (_, _, failures) = s
        .add_signatures(&b, &one("@a:x", &amk.public, forged))
        .expect("sign");
    assert_eq!(failures.len(), 1);
    // a signs its own device with the self-signing key: merged into the device keys.
    let d = OwnedDeviceId::from("D");
    let (dk, dkey) = device_keys_and_key(&a, &d);
    s.upload_keys(&a, &d, Some(&dk), &Map::new(), &Map::new())
        .expect("up");
    let mut signed_dk = dk.clone();
    assk.sign(&mut signed_dk, "@a:x", &assk.own_id());
    let mut by_master = dk.clone();
    amk.sign(&mut by_master, "@a:x", &amk.own_id());
    let (_, _, failures) = s
        .add_signatures(&a, &one("@a:x", "D", by_master))
        .expect("sign");
    assert_eq!(
        failures.len(),
        1,
        "a device is signed by the self-signing key"
    );
    let (_, _, failures) = s
        .add_signatures(&a, &one("@a:x", "D", signed_dk.clone()))
        .expect("sign");
    assert!(failures.is_empty(), "{failures:?}");
    let stored = s.device_keys(&a, &d).expect("read").expect("keys");
    assert_eq!(
        stored["signatures"]["@a:x"][assk.own_id()],
        signed_dk["signatures"]["@a:x"][assk.own_id()]
    );
    assert_eq!(
        stored["signatures"]["@a:x"]["ed25519:D"],
        dk["signatures"]["@a:x"]["ed25519:D"]
    );
    // ... and its master key with the device's key (not with a stranger's).
    let mut master_by_device = am.clone();
    dkey.sign(&mut master_by_device, "@a:x", "ed25519:D");
    let mut master_by_stranger = am.clone();
    stranger.sign(&mut master_by_stranger, "@a:x", "ed25519:D");
    let (_, _, failures) = s
        .add_signatures(&a, &one("@a:x", &amk.public, master_by_stranger))
        .expect("sign");
    assert_eq!(failures.len(), 1);
    let (_, _, failures) = s
        .add_signatures(&a, &one("@a:x", &amk.public, master_by_device))
        .expect("sign");
    assert!(failures.is_empty(), "{failures:?}");
    let m = s
        .cross_signing_key(&a, "master")
        .expect("read")
        .expect("key");
    assert!(m["signatures"]["@a:x"]["ed25519:D"].is_string());
    // A master key re-uploaded with that device signature verifies; a forged one does not.
    assert!(s.upload_signing_keys(&a, &[("master", &m)]).is_ok());
    let mut forged_master = m.clone();
    forged_master["signatures"]["@a:x"]["ed25519:D"] = json!("AAAA");
    assert!(matches!(
        s.upload_signing_keys(&a, &[("master", &forged_master)]),
        Err(E2eeError::InvalidSignature(_))
    ));
}

#[test]
fn key_backup_versions_and_better_keys() {
    let (_d, s) = svc();
    let a = user("@a:x");
    assert!(s.backup(&a, None).expect("read").is_none());
    let v1 = s
        .create_backup(
            &a,
            "m.megolm_backup.v1.curve25519-aes-sha2",
            &json!({ "public_key": "p" }),
        )
        .expect("create");
    let data = |idx: u64, verified: bool| SessionData {
        first_message_index: idx,
        forwarded_count: 0,
        is_verified: verified,
        session_data: json!({ "idx": idx }),
    };
    let (count, etag1) = s
        .put_room_keys(&a, v1, &[("!r:x".into(), "S".into(), data(5, false))])
        .expect("put");
    assert_eq!(count, 1);
    // A worse copy is ignored (etag unchanged); a better one replaces it.
    let (_, etag2) = s
        .put_room_keys(&a, v1, &[("!r:x".into(), "S".into(), data(9, false))])
        .expect("put");
    assert_eq!(etag1, etag2);
    let (_, etag3) = s
        .put_room_keys(&a, v1, &[("!r:x".into(), "S".into(), data(2, false))])
        .expect("put");
    assert!(etag3 > etag2);
    let keys = s.room_keys(&a, v1, Some("!r:x"), Some("S")).expect("get");
    assert_eq!(keys[0].2.first_message_index, 2);
    // A new version becomes current; writes to the old one are refused.
    let v2 = s
        .create_backup(&a, "m.megolm_backup.v1.curve25519-aes-sha2", &json!({}))
        .expect("create");
    assert!(matches!(
        s.put_room_keys(&a, v1, &[("!r:x".into(), "S".into(), data(1, true))]),
        Err(E2eeError::WrongBackupVersion { current: Some(c) }) if c == v2.to_string()
    ));
    s.delete_backup(&a, v2).expect("delete");
    assert_eq!(s.backup(&a, None).expect("read"), None);
    let v3 = s
        .create_backup(&a, "m.megolm_backup.v1.curve25519-aes-sha2", &json!({}))
        .expect("create");
    assert!(v3 > v2, "version numbers are never reused");
}

#[test]
fn remote_device_lists_follow_the_prev_id_chain() {
    use crate::remote::RemoteUpdate;
    let (_d, s) = svc();
    let u = user("@r:remote");
    let (d1, d2, d3) = (
        OwnedDeviceId::from("D1"),
        OwnedDeviceId::from("D2"),
        OwnedDeviceId::from("D3"),
    );
    let mut forged = device_keys(&u, &d2);
    forged["algorithms"] = json!(["x"]);
    // Not cached yet: the update is only recorded.
    let edu = |id: u64, prev: &[u64], d: &DeviceId, keys: Option<Value>, deleted: bool| {
        json!({ "user_id": u, "device_id": d, "stream_id": id, "prev_id": prev,
                "deleted": deleted, "keys": keys })
    };
    let (out, _) = s
        .apply_remote_device_update(&u, &edu(1, &[], &d1, Some(device_keys(&u, &d1)), false))
        .expect("edu");
    assert_eq!(out, RemoteUpdate::NotCached);
    assert!(s.remote_devices(&u).expect("read").is_none());
    // A join announcement about a user nobody tracks tells local viewers nothing.
    let mut announce = edu(2, &[], &d1, Some(device_keys(&u, &d1)), false);
    announce[crate::remote::JOIN_ANNOUNCEMENT] = json!(true);
    let (out, pos) = s.apply_remote_device_update(&u, &announce).expect("edu");
    assert_eq!((out, pos), (RemoteUpdate::NotCached, None));
    // A snapshot: the badly signed device is left out, a display name kept in unsigned.
    let snapshot = json!({ "user_id": u, "stream_id": 5, "devices": [
        { "device_id": "D1", "keys": device_keys(&u, &d1), "device_display_name": "phone" },
        { "device_id": "D2", "keys": forged },
        { "device_id": "D3", "keys": {} },
    ]});
    let (list, _) = s.store_remote_devices(&u, &snapshot).expect("store");
    assert_eq!(list.devices.keys().collect::<Vec<_>>(), ["D1"]);
    assert_eq!(
        list.devices["D1"]["unsigned"]["device_display_name"],
        "phone"
    );
    assert!(
        s.store_remote_devices(&user("@other:remote"), &snapshot)
            .is_err()
    );
    // Updates chained to what we saw apply; a repeat is a duplicate.
    let before = s.current_position();
    let (out, pos) = s
        .apply_remote_device_update(&u, &edu(7, &[5], &d2, Some(device_keys(&u, &d2)), false))
        .expect("edu");
    assert_eq!(out, RemoteUpdate::Applied);
    let pos = pos.expect("a change");
    assert!(pos > before);
    assert!(
        s.device_list_changes(before, pos)
            .expect("changes")
            .contains(&u)
    );
    let (out, pos) = s
        .apply_remote_device_update(&u, &edu(7, &[5], &d2, Some(device_keys(&u, &d2)), false))
        .expect("edu");
    assert_eq!((out, pos), (RemoteUpdate::Duplicate, None));
    let (out, _) = s
        .apply_remote_device_update(&u, &edu(8, &[7], &d1, None, true))
        .expect("edu");
    assert_eq!(out, RemoteUpdate::Applied);
    let list = s.remote_devices(&u).expect("read").expect("cached");
    assert_eq!(list.answer(&[]).0.keys().collect::<Vec<_>>(), ["D2"]);
    // A cross-signing update replaces the cached master key.
    let mk = TestKey::new();
    let master = json!({ "user_id": u, "usage": ["master"], "keys": { mk.own_id(): mk.public } });
    s.apply_remote_signing_update(&u, &json!({ "user_id": u, "master_key": master }))
        .expect("signing");
    assert_eq!(
        s.remote_devices(&u)
            .expect("read")
            .expect("cached")
            .master_key,
        Some(master)
    );
    // A prev_id we never saw: an update was lost, the entry is dropped for a resync.
    let (out, _) = s
        .apply_remote_device_update(&u, &edu(12, &[11], &d3, Some(device_keys(&u, &d3)), false))
        .expect("edu");
    assert_eq!(out, RemoteUpdate::Dropped);
    assert!(s.remote_devices(&u).expect("read").is_none());
}

#[test]
fn outgoing_device_list_updates_are_chained_with_unique_ids() {
    let (_d, s) = svc();
    let (u, d) = (user("@a:x"), OwnedDeviceId::from("D"));
    s.upload_keys(&u, &d, Some(&device_keys(&u, &d)), &Map::new(), &Map::new())
        .expect("upload");
    let v = s.device_list_version(&u).expect("version");
    let (id1, prev1) = s.next_device_list_update_ids(&u).expect("ids");
    assert_eq!((id1, prev1), (v, vec![]));
    // Two announcements of one change (two devices signed at once): distinct ids, chained.
    let (id2, prev2) = s.next_device_list_update_ids(&u).expect("ids");
    assert_eq!((id2, prev2), (v + 1, vec![v]));
    assert!(s.device_list_snapshot_id(&u).expect("snapshot") >= id2);
    let pos = s.mark_device_list_changed(&u).expect("change");
    let (id3, prev3) = s.next_device_list_update_ids(&u).expect("ids");
    assert_eq!((id3, prev3), (pos.max(id2 + 1), vec![id2]));
}

#[test]
fn user_signing_signatures_on_remote_master_keys_reach_only_the_signer() {
    let (_d, s) = svc();
    let (r, b, c) = (user("@r:remote"), user("@b:x"), user("@c:x"));
    // r's server gave us r's list (a snapshot with a master key).
    let rmk = TestKey::new();
    let rm = cs_key(&r, "master", &rmk);
    s.store_remote_devices(
        &r,
        &json!({ "user_id": r, "stream_id": 3, "devices": [], "master_key": rm }),
    )
    .expect("store");
    // b signs it with b's user-signing key.
    let (bmk, busk) = (TestKey::new(), TestKey::new());
    let bm = cs_key(&b, "master", &bmk);
    let mut bus = cs_key(&b, "user_signing", &busk);
    bmk.sign(&mut bus, "@b:x", &bmk.own_id());
    s.upload_signing_keys(&b, &[("master", &bm), ("user_signing", &bus)])
        .expect("upload");
    let mut signed = rm.clone();
    busk.sign(&mut signed, "@b:x", &busk.own_id());
    let (_, _, failures) = s
        .add_signatures(&b, &one("@r:remote", &rmk.public, signed.clone()))
        .expect("sign");
    assert!(failures.is_empty(), "{failures:?}");
    // Any copy of r's master key (cached, or fresh from r's server) shows b's signature to b…
    let mut for_b = rm.clone();
    s.add_viewer_signatures(&r, &mut for_b, &b).expect("merge");
    assert_eq!(
        for_b["signatures"]["@b:x"][busk.own_id()],
        signed["signatures"]["@b:x"][busk.own_id()]
    );
    // …and to nobody else, not even r.
    for viewer in [&c, &r] {
        let mut other = rm.clone();
        s.add_viewer_signatures(&r, &mut other, viewer)
            .expect("merge");
        assert_eq!(other, rm);
    }
    // A different master key (r reset cross-signing) does not carry the old signature.
    let mut new_key = cs_key(&r, "master", &TestKey::new());
    let before = new_key.clone();
    s.add_viewer_signatures(&r, &mut new_key, &b)
        .expect("merge");
    assert_eq!(new_key, before);
}
