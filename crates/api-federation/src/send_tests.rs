//! `/send` with a fake origin `a.test` signing real PDUs into a room on `b.test`.
use ruma::signatures::Ed25519KeyPair;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};
use server_keys::ServerKeys;

use crate::tests::{FakeKeys, Fx, call, fixture_with, signed};

const FAR: u64 = u64::MAX;

pub(crate) fn uid(s: &str) -> OwnedUserId {
    s.try_into().unwrap()
}

pub(crate) fn fixture() -> (Fx, OwnedRoomId) {
    let origin = ServerKeys::generate_ephemeral("a.test".try_into().unwrap()).unwrap();
    fixture_and_room(FakeKeys {
        origin,
        valid_until: FAR,
        extra: Vec::new(),
    })
}

/// `@alice:b.test` made a public room, of version 10: the PDU helpers here build v10
/// events (create event listed in `auth_events`); other versions are the rooms crate's
/// tests and `tests/federation_rooms.rs`.
pub(crate) fn fixture_and_room(keys: FakeKeys) -> (Fx, OwnedRoomId) {
    let fx = fixture_with(keys);
    let req: rooms::CreateRoomRequest =
        serde_json::from_value(json!({"preset": "public_chat", "room_version": "10"})).unwrap();
    let room = fx
        .state
        .rooms
        .create_room(&uid("@alice:b.test"), req)
        .unwrap();
    (fx, room)
}

pub(crate) fn state_id(fx: &Fx, room: &OwnedRoomId, kind: &str, key: &str) -> Option<String> {
    fx.state
        .rooms
        .current_state_event_id(room, kind, key)
        .unwrap()
        .map(|e| e.to_string())
}

/// An unsigned PDU from `sender` on top of the room's latest event.
pub(crate) fn template(
    fx: &Fx,
    room: &OwnedRoomId,
    sender: &str,
    kind: &str,
    state_key: Option<&str>,
    content: Value,
) -> CanonicalJsonObject {
    let last = fx.state.rooms.room_last_pos(room).unwrap();
    let (latest, _) = fx.state.rooms.timeline(room, None, last, 1).unwrap();
    let prev = &latest[0];
    let mut auth: Vec<String> = ["m.room.create", "m.room.power_levels"]
        .iter()
        .filter_map(|k| state_id(fx, room, k, ""))
        .collect();
    if kind == "m.room.member" {
        auth.extend(state_id(fx, room, "m.room.join_rules", ""));
    }
    auth.extend(state_id(fx, room, "m.room.member", sender));
    let mut v = json!({
        "room_id": room,
        "sender": sender,
        "type": kind,
        "content": content,
        "origin_server_ts": federation_client::keys::now_ms(),
        "depth": prev.depth() + 1,
        "prev_events": [prev.event_id],
        "auth_events": auth,
    });
    if let Some(k) = state_key {
        v["state_key"] = json!(k);
    }
    serde_json::from_value(v).unwrap()
}

pub(crate) fn sign(
    mut pdu: CanonicalJsonObject,
    server: &str,
    key: &Ed25519KeyPair,
) -> CanonicalJsonObject {
    let rules = ruma::RoomVersionId::V10.rules().unwrap();
    ruma::signatures::hash_and_sign_event(server, key, &mut pdu, &rules.redaction).unwrap();
    pdu
}

pub(crate) fn event_id(pdu: &CanonicalJsonObject) -> OwnedEventId {
    rooms::event_id_for(&ruma::RoomVersionId::V10, pdu).unwrap()
}

pub(crate) fn join(fx: &Fx, room: &OwnedRoomId, user: &str) -> CanonicalJsonObject {
    let t = template(
        fx,
        room,
        user,
        "m.room.member",
        Some(user),
        json!({"membership": "join"}),
    );
    sign(t, "a.test", fx.origin.pair())
}

pub(crate) fn message(fx: &Fx, room: &OwnedRoomId, user: &str, body: &str) -> CanonicalJsonObject {
    let t = template(
        fx,
        room,
        user,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": body}),
    );
    sign(t, "a.test", fx.origin.pair())
}

pub(crate) async fn send(
    fx: &Fx,
    txn: &str,
    pdus: Vec<CanonicalJsonObject>,
    edus: Vec<Value>,
) -> (u16, Value) {
    let body = json!({ "origin": "a.test", "origin_server_ts": 1, "pdus": pdus, "edus": edus });
    call(
        &fx.app,
        signed(
            &fx.origin,
            "b.test",
            "PUT",
            &format!("/_matrix/federation/v1/send/{txn}"),
            body.to_string(),
        ),
    )
    .await
}

pub(crate) fn stored(fx: &Fx, id: &OwnedEventId) -> bool {
    fx.state.rooms.event(id).unwrap().is_some()
}

fn error_of<'a>(answer: &'a Value, id: &OwnedEventId) -> Option<&'a str> {
    answer["pdus"][id.as_str()]["error"].as_str()
}

#[tokio::test]
async fn signed_join_and_message_are_accepted_and_retries_are_idempotent() {
    let (fx, room) = fixture();
    let j = join(&fx, &room, "@bob:a.test");
    let jid = event_id(&j);
    let (status, answer) = send(&fx, "t1", vec![j], vec![]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][jid.as_str()], json!({}), "{answer}");
    assert!(
        fx.state
            .rooms
            .is_joined(&room, &uid("@bob:a.test"))
            .unwrap()
    );
    assert_eq!(fx.contacted.0.lock().unwrap().as_slice(), ["a.test"]);

    let m = message(&fx, &room, "@bob:a.test", "hello");
    let mid = event_id(&m);
    let (status, answer) = send(&fx, "t2", vec![m], vec![]).await;
    assert_eq!(
        (status, &answer["pdus"][mid.as_str()]),
        (200, &json!({})),
        "{answer}"
    );
    let ev = fx.state.rooms.event(&mid).unwrap().unwrap();
    assert_eq!(ev.content()["body"], "hello");

    // The same transaction ID again, with other contents: the stored answer, nothing run.
    let other = message(&fx, &room, "@bob:a.test", "not processed");
    let other_id = event_id(&other);
    let (status, again) = send(&fx, "t2", vec![other], vec![]).await;
    assert_eq!((status, &again), (200, &answer));
    assert!(!stored(&fx, &other_id));
}

#[tokio::test]
async fn oversized_transaction_is_refused_and_nothing_stored() {
    let (fx, room) = fixture();
    let j = join(&fx, &room, "@bob:a.test");
    let jid = event_id(&j);
    let pdus = vec![j; crate::MAX_PDUS_PER_TXN + 1];
    let (status, body) = send(&fx, "big", pdus, vec![]).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_TOO_LARGE")),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("at most 50 PDUs"));
    assert!(!stored(&fx, &jid));
    let edus = vec![json!({"edu_type": "m.typing", "content": {}}); crate::MAX_EDUS_PER_TXN + 1];
    let (status, _) = send(&fx, "big2", vec![], edus).await;
    assert_eq!(status, 400);

    // One oversized PDU: refused in the result map, the transaction still answered 200.
    // (Too big for ruma to sign; the size check comes before any signature check.)
    let huge = template(
        &fx,
        &room,
        "@bob:a.test",
        "m.room.member",
        Some("@bob:a.test"),
        json!({"membership": "join", "pad": "x".repeat(70_000)}),
    );
    let hid = event_id(&huge);
    let (status, answer) = send(&fx, "huge", vec![huge], vec![]).await;
    assert_eq!(status, 200);
    assert!(
        error_of(&answer, &hid).unwrap().contains("limit"),
        "{answer}"
    );
    assert!(!stored(&fx, &hid));
}

#[tokio::test]
async fn bad_signature_foreign_sender_and_expired_key_are_refused() {
    let old = ServerKeys::generate_ephemeral("a.test".try_into().unwrap()).unwrap();
    let origin = ServerKeys::generate_ephemeral("a.test".try_into().unwrap()).unwrap();
    // `old` stopped being valid at t = 1000 ms: long before any event here.
    let (fx, room) = fixture_and_room(FakeKeys {
        origin,
        valid_until: FAR,
        extra: vec![(old.clone(), 1_000)],
    });

    // Bad signature: signed, then a signed field changed.
    let mut bad = join(&fx, &room, "@bob:a.test");
    bad.insert("depth".into(), CanonicalJsonValue::Integer(99u32.into()));
    let bad_id = event_id(&bad);

    // Sender on another server, signed by the origin (a message: not a forwarded join).
    let t = template(
        &fx,
        &room,
        "@mallory:c.test",
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "forged"}),
    );
    let foreign = sign(t, "a.test", fx.origin.pair());
    let foreign_id = event_id(&foreign);

    // Signed with a key that had expired when the event was sent.
    let t = template(
        &fx,
        &room,
        "@carol:a.test",
        "m.room.member",
        Some("@carol:a.test"),
        json!({"membership": "join"}),
    );
    let expired = sign(t, "a.test", old.pair());
    let expired_id = event_id(&expired);

    // Not signed by the sender's server at all.
    let t = template(
        &fx,
        &room,
        "@dave:a.test",
        "m.room.member",
        Some("@dave:a.test"),
        json!({"membership": "join"}),
    );
    let stranger = ServerKeys::generate_ephemeral("c.test".try_into().unwrap()).unwrap();
    let unsigned_by_origin = sign(t, "c.test", stranger.pair());
    let unsigned_id = event_id(&unsigned_by_origin);

    let (status, answer) = send(
        &fx,
        "neg",
        vec![bad, foreign, expired, unsigned_by_origin],
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        error_of(&answer, &bad_id).unwrap().contains("signature"),
        "{answer}"
    );
    assert!(
        error_of(&answer, &foreign_id)
            .unwrap()
            .contains("does not belong"),
        "{answer}"
    );
    assert!(
        error_of(&answer, &expired_id).unwrap().contains("valid at"),
        "{answer}"
    );
    assert!(
        error_of(&answer, &unsigned_id)
            .unwrap()
            .contains("not signed by a.test"),
        "{answer}"
    );
    for id in [&bad_id, &foreign_id, &expired_id, &unsigned_id] {
        assert!(!stored(&fx, id), "{id} stored");
    }
    for u in [
        "@bob:a.test",
        "@mallory:c.test",
        "@carol:a.test",
        "@dave:a.test",
    ] {
        assert!(
            !fx.state.rooms.is_joined(&room, &uid(u)).unwrap(),
            "{u} joined"
        );
    }
}

/// A resident server forwards the joins it accepted through send_join: a join of another
/// server's user is taken from the origin when that user's server signed it, and only then.
#[tokio::test]
async fn forwarded_joins_need_their_senders_signature() {
    let origin = ServerKeys::generate_ephemeral("a.test".try_into().unwrap()).unwrap();
    let third = ServerKeys::generate_ephemeral("c.test".try_into().unwrap()).unwrap();
    let (fx, room) = fixture_and_room(FakeKeys {
        origin,
        valid_until: FAR,
        extra: vec![(third.clone(), FAR)],
    });
    // c.test's user's join, signed by c.test (as send_join at a.test received it).
    let t = template(
        &fx,
        &room,
        "@carol:c.test",
        "m.room.member",
        Some("@carol:c.test"),
        json!({"membership": "join"}),
    );
    let forwarded = sign(t, "c.test", third.pair());
    let forwarded_id = event_id(&forwarded);
    // The same kind of join, but signed by the origin only: a forgery.
    let t = template(
        &fx,
        &room,
        "@erin:c.test",
        "m.room.member",
        Some("@erin:c.test"),
        json!({"membership": "join"}),
    );
    let forged = sign(t, "a.test", fx.origin.pair());
    let forged_id = event_id(&forged);
    let (status, answer) = send(&fx, "fwd", vec![forwarded, forged], vec![]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pdus"][forwarded_id.as_str()], json!({}), "{answer}");
    assert!(error_of(&answer, &forged_id).is_some(), "{answer}");
    assert!(
        fx.state
            .rooms
            .is_joined(&room, &uid("@carol:c.test"))
            .unwrap()
    );
    assert!(
        !fx.state
            .rooms
            .is_joined(&room, &uid("@erin:c.test"))
            .unwrap()
    );
    assert!(!stored(&fx, &forged_id));
}

#[tokio::test]
async fn content_hash_mismatch_is_stored_redacted() {
    let (fx, room) = fixture();
    let (status, _) = send(&fx, "j", vec![join(&fx, &room, "@bob:a.test")], vec![]).await;
    assert_eq!(status, 200);
    // The content changed after hashing and signing: signatures (over the redacted form)
    // still verify, the content hash does not.
    let mut m = message(&fx, &room, "@bob:a.test", "original");
    m.insert(
        "content".into(),
        serde_json::from_value(json!({"msgtype": "m.text", "body": "tampered"})).unwrap(),
    );
    let id = event_id(&m);
    let (status, answer) = send(&fx, "m", vec![m], vec![]).await;
    assert_eq!(
        (status, &answer["pdus"][id.as_str()]),
        (200, &json!({})),
        "{answer}"
    );
    let ev = fx.state.rooms.event(&id).unwrap().unwrap();
    assert_eq!(ev.content(), json!({}), "tampered content is not stored");
}

#[tokio::test]
async fn server_acl_refuses_pdus_and_edus_of_denied_origins() {
    let (fx, room) = fixture();
    let (_, answer) = send(&fx, "j", vec![join(&fx, &room, "@bob:a.test")], vec![]).await;
    assert!(
        answer["pdus"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v == &json!({}))
    );
    fx.state
        .rooms
        .send_state_event(
            &uid("@alice:b.test"),
            &room,
            "m.room.server_acl",
            "",
            json!({"allow": ["*"], "deny": ["a.test"]}),
        )
        .unwrap();
    let m = message(&fx, &room, "@bob:a.test", "after the ACL");
    let id = event_id(&m);
    let typing = json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": "@bob:a.test", "typing": true}});
    let (status, answer) = send(&fx, "m", vec![m], vec![typing]).await;
    assert_eq!(status, 200);
    assert!(
        error_of(&answer, &id).unwrap().contains("server_acl"),
        "{answer}"
    );
    assert!(!stored(&fx, &id));
    assert!(fx.state.ephemeral.typing_users(&room).is_empty());
}

#[tokio::test]
async fn typing_receipt_and_presence_edus_only_for_the_origins_joined_users() {
    let (fx, room) = fixture();
    let j = join(&fx, &room, "@bob:a.test");
    let jid = event_id(&j);
    send(&fx, "j", vec![j], vec![]).await;
    let edus = vec![
        json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": "@bob:a.test", "typing": true}}),
        // Not the origin's user; not joined.
        json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": "@eve:c.test", "typing": true}}),
        json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": "@zed:a.test", "typing": true}}),
        json!({"edu_type": "m.receipt", "content": {room.as_str(): {"m.read": {
            "@bob:a.test": {"event_ids": [jid], "data": {"ts": 5}},
            "@eve:c.test": {"event_ids": [jid], "data": {"ts": 5}},
        }}}}),
        json!({"edu_type": "m.presence", "content": {"push": [
            {"user_id": "@bob:a.test", "presence": "online", "status_msg": "hi", "last_active_ago": 1, "currently_active": true},
            {"user_id": "@eve:c.test", "presence": "online", "last_active_ago": 1},
        ]}}),
        json!({"edu_type": "m.unknown", "content": {}}),
    ];
    let (status, _) = send(&fx, "e", vec![], edus).await;
    assert_eq!(status, 200);
    assert_eq!(
        fx.state.ephemeral.typing_users(&room),
        vec![uid("@bob:a.test")]
    );
    let receipts = fx
        .state
        .ephemeral
        .receipt_event(&uid("@alice:b.test"), &room, None, u64::MAX)
        .unwrap()
        .unwrap();
    let readers = &receipts["content"][jid.as_str()]["m.read"];
    assert!(readers["@bob:a.test"].is_object(), "{receipts}");
    assert!(readers["@eve:c.test"].is_null(), "{receipts}");
    let alice = uid("@alice:b.test");
    let p = fx
        .state
        .presence
        .event_for_viewer(&alice, &uid("@bob:a.test"));
    assert_eq!(p["content"]["presence"], "online", "{p}");
    assert_eq!(p["content"]["status_msg"], "hi", "{p}");
}

#[tokio::test]
async fn missing_prev_events_drop_the_event_when_the_origin_cannot_supply_them() {
    let (fx, room) = fixture();
    let mut t = template(
        &fx,
        &room,
        "@bob:a.test",
        "m.room.member",
        Some("@bob:a.test"),
        json!({"membership": "join"}),
    );
    t.insert(
        "prev_events".into(),
        serde_json::from_value(json!(["$unknownunknownunknownunknownunknownunknown00"])).unwrap(),
    );
    let pdu = sign(t, "a.test", fx.origin.pair());
    let id = event_id(&pdu);
    // a.test does not resolve here, so get_missing_events fails: the event is dropped
    // without a per-PDU error (as Synapse; TestCorruptedAuthChain expects no error) and
    // nothing is stored.
    let (status, answer) = send(&fx, "gap", vec![pdu], vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(error_of(&answer, &id), None, "{answer}");
    assert!(!stored(&fx, &id));
}
