//! Room endpoints over HTTP: createRoom options and errors, membership, sending and
//! state, history (`messages`, `event`, `context`, `members`), redactions, aliases and
//! the public room directory, plus the Matrix errors for bad input.
mod common;

use common::{TestServer, User, enc};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

fn rooms_path(room: &str, rest: &str) -> String {
    format!("{V3}/rooms/{}/{rest}", enc(room))
}

async fn send(s: &TestServer, u: &User, room: &str, txn: &str, body: &str) -> String {
    let (st, resp) = s
        .put(
            &rooms_path(room, &format!("send/m.room.message/{txn}")),
            Some(&u.token),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await;
    assert_eq!(st, 200, "send: {resp}");
    resp["event_id"].as_str().expect("event_id").to_owned()
}

async fn post_ok(s: &TestServer, u: &User, path: &str, body: Value) -> Value {
    let (st, resp) = s.post(path, Some(&u.token), body).await;
    assert_eq!(st, 200, "POST {path}: {resp}");
    resp
}

fn errcode(body: &Value) -> &str {
    body["errcode"].as_str().unwrap_or_default()
}

fn chunk_bodies(resp: &Value) -> Vec<String> {
    resp["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn create_room_state_and_errors() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(
            &alice,
            json!({"preset": "public_chat", "name": "Lobby", "topic": "Chat", "room_alias_name": "lobby",
                   "creation_content": {"m.federate": false}, "invite": [bob.user_id]}),
        )
        .await;
    // Whole state.
    let (st, state) = s.get(&rooms_path(&room, "state"), Some(&alice.token)).await;
    assert_eq!(st, 200, "{state}");
    let types: Vec<&str> = state
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    for t in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.name",
        "m.room.topic",
        "m.room.canonical_alias",
    ] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
    // Single state events, both path forms, and format=event.
    let (st, name) = s
        .get(&rooms_path(&room, "state/m.room.name"), Some(&alice.token))
        .await;
    assert_eq!((st, name["name"].as_str()), (200, Some("Lobby")));
    let (st, name) = s
        .get(&rooms_path(&room, "state/m.room.name/"), Some(&alice.token))
        .await;
    assert_eq!((st, name["name"].as_str()), (200, Some("Lobby")));
    let (_, create) = s
        .get(
            &rooms_path(&room, "state/m.room.create"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(create["m.federate"], json!(false));
    assert_eq!(
        create["room_version"],
        json!("12"),
        "the default room version"
    );
    let (_, me) = s
        .get(
            &rooms_path(
                &room,
                &format!("state/m.room.member/{}?format=event", enc(&alice.user_id)),
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(me["content"]["membership"], json!("join"));
    assert_eq!(me["room_id"], json!(room));
    assert!(me["event_id"].as_str().is_some_and(|e| e.starts_with('$')));
    let (st, missing) = s
        .get(
            &rooms_path(&room, "state/m.room.avatar"),
            Some(&alice.token),
        )
        .await;
    assert_eq!((st, errcode(&missing)), (404, "M_NOT_FOUND"));
    // Joined rooms / members.
    let (_, jr) = s
        .get(&format!("{V3}/joined_rooms"), Some(&alice.token))
        .await;
    assert_eq!(jr["joined_rooms"], json!([room]));
    let (_, jm) = s
        .get(&rooms_path(&room, "joined_members"), Some(&alice.token))
        .await;
    assert!(jm["joined"][&alice.user_id].is_object(), "{jm}");
    assert!(jm["joined"][&alice.user_id].get("display_name").is_some());
    assert!(jm["joined"].get(&bob.user_id).is_none());
    let (_, members) = s
        .get(
            &rooms_path(&room, "members?membership=invite"),
            Some(&alice.token),
        )
        .await;
    let keys: Vec<&str> = members["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(keys, vec![bob.user_id.as_str()]);

    // createRoom errors.
    let (st, e) = s
        .post(
            &format!("{V3}/createRoom"),
            Some(&alice.token),
            json!({"room_alias_name": "lobby"}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_ROOM_IN_USE"));
    let (st, e) = s
        .post(
            &format!("{V3}/createRoom"),
            Some(&alice.token),
            json!({"room_version": 1}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_BAD_JSON"));
    let (st, e) = s
        .post(
            &format!("{V3}/createRoom"),
            Some(&alice.token),
            json!({"room_version": "nope"}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_UNSUPPORTED_ROOM_VERSION"));
    let (st, e) = s
        .post(
            &format!("{V3}/createRoom"),
            Some(&alice.token),
            json!({"preset": "bogus"}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_BAD_JSON"));
    let (st, e) = s
        .post(
            &format!("{V3}/createRoom"),
            Some(&alice.token),
            json!({"invite": ["not a user"]}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_INVALID_PARAM"));
    let (st, e) = s.post(&format!("{V3}/createRoom"), None, json!({})).await;
    assert_eq!((st, errcode(&e)), (401, "M_MISSING_TOKEN"));
    // Version 11 works.
    let v11 = s.create_room(&alice, json!({"room_version": "11"})).await;
    let (_, create) = s
        .get(&rooms_path(&v11, "state/m.room.create"), Some(&alice.token))
        .await;
    assert_eq!(create["room_version"], json!("11"));
}

/// A private room of alice's that bob was invited to and joined.
async fn private_room_with(s: &TestServer, alice: &User, bob: &User) -> String {
    let room = s
        .create_room(alice, json!({"preset": "private_chat"}))
        .await;
    post_ok(
        s,
        alice,
        &rooms_path(&room, "invite"),
        json!({"user_id": bob.user_id}),
    )
    .await;
    post_ok(s, bob, &rooms_path(&room, "join"), json!({})).await;
    room
}

#[tokio::test]
async fn invites_and_joins() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;

    // Invite-only: Bob cannot join uninvited.
    let (st, e) = s
        .post(&rooms_path(&room, "join"), Some(&bob.token), json!({}))
        .await;
    assert_eq!((st, errcode(&e)), (403, "M_FORBIDDEN"));
    post_ok(
        &s,
        &alice,
        &rooms_path(&room, "invite"),
        json!({"user_id": bob.user_id}),
    )
    .await;
    // Inviting someone already invited or oneself.
    let (st, _) = s
        .post(
            &rooms_path(&room, "invite"),
            Some(&alice.token),
            json!({"user_id": alice.user_id}),
        )
        .await;
    assert_eq!(st, 403);
    let (st, e) = s
        .post(
            &rooms_path(&room, "invite"),
            Some(&alice.token),
            json!({"user_id": "bad"}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_INVALID_PARAM"));
    let (st, e) = s
        .post(&rooms_path(&room, "invite"), Some(&alice.token), json!({}))
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_MISSING_PARAM"));
    // Join with custom content, via /join/{roomId}.
    let resp = post_ok(
        &s,
        &bob,
        &format!("{V3}/join/{}", enc(&room)),
        json!({"foo": "bar"}),
    )
    .await;
    assert_eq!(resp["room_id"], json!(room));
    let (_, m) = s
        .get(
            &rooms_path(&room, &format!("state/m.room.member/{}", enc(&bob.user_id))),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        (m["membership"].as_str(), m["foo"].as_str()),
        (Some("join"), Some("bar"))
    );
}

#[tokio::test]
async fn kick_ban_unban_and_what_non_members_may_read() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let room = private_room_with(&s, &alice, &bob).await;

    // Bob (power 0) cannot kick, ban or set the name.
    let (st, _) = s
        .post(
            &rooms_path(&room, "kick"),
            Some(&bob.token),
            json!({"user_id": alice.user_id}),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = s
        .put(
            &rooms_path(&room, "state/m.room.name"),
            Some(&bob.token),
            json!({"name": "x"}),
        )
        .await;
    assert_eq!(st, 403);
    // Kicking someone not in the room is refused.
    let (st, _) = s
        .post(
            &rooms_path(&room, "kick"),
            Some(&alice.token),
            json!({"user_id": carol.user_id}),
        )
        .await;
    assert_eq!(st, 403);
    // Kick, ban, unban.
    post_ok(
        &s,
        &alice,
        &rooms_path(&room, "kick"),
        json!({"user_id": bob.user_id, "reason": "r"}),
    )
    .await;
    let (_, m) = s
        .get(
            &rooms_path(&room, &format!("state/m.room.member/{}", enc(&bob.user_id))),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        (m["membership"].as_str(), m["reason"].as_str()),
        (Some("leave"), Some("r"))
    );
    post_ok(
        &s,
        &alice,
        &rooms_path(&room, "ban"),
        json!({"user_id": bob.user_id}),
    )
    .await;
    let (st, _) = s
        .post(
            &rooms_path(&room, "invite"),
            Some(&alice.token),
            json!({"user_id": bob.user_id}),
        )
        .await;
    assert_eq!(st, 403);
    post_ok(
        &s,
        &alice,
        &rooms_path(&room, "unban"),
        json!({"user_id": bob.user_id}),
    )
    .await;
    // Bob, kicked, may still read state up to his departure but not joined_members.
    let (st, _) = s.get(&rooms_path(&room, "state"), Some(&bob.token)).await;
    assert_eq!(st, 200);
    let (st, e) = s
        .get(&rooms_path(&room, "joined_members"), Some(&bob.token))
        .await;
    assert_eq!((st, errcode(&e)), (403, "M_FORBIDDEN"));
    // Carol, never a member, may not read anything; events are simply not found.
    let msg = send(&s, &alice, &room, "c1", "hello").await;
    let (st, e) = s
        .get(
            &rooms_path(&room, &format!("event/{}", enc(&msg))),
            Some(&carol.token),
        )
        .await;
    assert_eq!((st, errcode(&e)), (404, "M_NOT_FOUND"));
    for path in ["state", "members", "messages", "joined_members", "aliases"] {
        let (st, e) = s.get(&rooms_path(&room, path), Some(&carol.token)).await;
        assert_eq!((st, errcode(&e)), (403, "M_FORBIDDEN"), "{path}");
    }
}

#[tokio::test]
async fn forget_and_leave() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = private_room_with(&s, &alice, &bob).await;
    post_ok(&s, &bob, &rooms_path(&room, "leave"), json!({})).await;

    // Forget: not while joined; then the room is gone for the user.
    let (st, e) = s
        .post(&rooms_path(&room, "forget"), Some(&alice.token), json!({}))
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_UNKNOWN"));
    post_ok(&s, &bob, &rooms_path(&room, "forget"), json!({})).await;
    let (st, _) = s
        .get(&rooms_path(&room, "messages"), Some(&bob.token))
        .await;
    assert_eq!(st, 403);
    // Leave, and leaving again is harmless.
    post_ok(&s, &alice, &rooms_path(&room, "leave"), json!({})).await;
    post_ok(&s, &alice, &rooms_path(&room, "leave"), json!({})).await;
    let (_, jr) = s
        .get(&format!("{V3}/joined_rooms"), Some(&alice.token))
        .await;
    assert_eq!(jr["joined_rooms"], json!([]));
}

#[tokio::test]
async fn unknown_and_malformed_rooms() {
    let s = TestServer::start().await;
    let bob = s.register("bob").await;

    // Unknown and malformed rooms.
    let (st, e) = s
        .post(
            &format!("{V3}/join/{}", enc("!nope:localhost")),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (404, "M_NOT_FOUND"));
    let (st, e) = s
        .post(
            &format!("{V3}/join/{}", enc("#nope:localhost")),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (404, "M_NOT_FOUND"));
    let (st, e) = s
        .post(
            &format!("{V3}/rooms/not-a-room/join"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_INVALID_PARAM"));
    let (st, e) = s
        .get(
            &rooms_path("!nope:localhost", "messages?dir=b"),
            Some(&bob.token),
        )
        .await;
    assert_eq!((st, errcode(&e)), (403, "M_FORBIDDEN"));
    let (st, e) = s
        .put(
            &rooms_path("!nope:localhost", "send/m.room.message/1"),
            Some(&bob.token),
            json!({"body": "x"}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (403, "M_FORBIDDEN"));
}

#[tokio::test]
async fn send_txn_and_bad_content() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({})).await;
    let a = send(&s, &alice, &room, "t1", "one").await;
    let b = send(&s, &alice, &room, "t1", "different body, same txn").await;
    assert_eq!(a, b);
    let c = send(&s, &alice, &room, "t2", "two").await;
    assert_ne!(a, c);
    // Same txn id in another room is a new event.
    let other = s.create_room(&alice, json!({})).await;
    assert_ne!(send(&s, &alice, &other, "t1", "one").await, a);
    // The event, with transaction_id for the sender's device.
    let (st, ev) = s
        .get(
            &rooms_path(&room, &format!("event/{}", enc(&a))),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{ev}");
    assert_eq!(ev["content"]["body"], json!("one"));
    assert_eq!(ev["unsigned"]["transaction_id"], json!("t1"));
    assert_eq!(ev["unsigned"]["membership"], json!("join"));
    assert_eq!(ev["sender"], json!(alice.user_id));
    // Not canonical JSON / not JSON / not an object.
    for body in [r#"{"body": 1.5}"#, r#"{"body": 9007199254740992}"#, "[1]"] {
        let (st, e) = s
            .raw(
                "PUT",
                &rooms_path(&room, &format!("send/m.test/{}", enc(body))),
                Some(&alice.token),
                body.as_bytes().to_vec(),
            )
            .await;
        assert_eq!((st, errcode(&e)), (400, "M_BAD_JSON"), "{body}");
    }
    let (st, e) = s
        .raw(
            "PUT",
            &rooms_path(&room, "send/m.test/nj"),
            Some(&alice.token),
            b"{nope".to_vec(),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_NOT_JSON"));
    // Too large.
    let big = "x".repeat(70_000);
    let (st, e) = s
        .put(
            &rooms_path(&room, "send/m.room.message/big"),
            Some(&alice.token),
            json!({"body": big}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (413, "M_TOO_LARGE"));
    let (st, e) = s
        .put(
            &rooms_path(&room, "state/m.big"),
            Some(&alice.token),
            json!({"body": big}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (413, "M_TOO_LARGE"));
    // Setting the same state twice returns the same event.
    let (_, s1) = s
        .put(
            &rooms_path(&room, "state/a.test/k"),
            Some(&alice.token),
            json!({"a": 1}),
        )
        .await;
    let (_, s2) = s
        .put(
            &rooms_path(&room, "state/a.test/k"),
            Some(&alice.token),
            json!({"a": 1}),
        )
        .await;
    assert_eq!(s1["event_id"], s2["event_id"]);
    // Unknown event ids.
    let (st, e) = s
        .get(&rooms_path(&room, "event/$nope"), Some(&alice.token))
        .await;
    assert_eq!((st, errcode(&e)), (404, "M_NOT_FOUND"));
}

/// A public room with `joined` history visibility: alice sends "before 0".."before 4", bob
/// joins, alice sends "after 0".."after 2". Returns the "before" event IDs.
async fn history_room(s: &TestServer, alice: &User, bob: &User) -> (String, Vec<String>) {
    let room = s
        .create_room(
            alice,
            json!({"preset": "public_chat",
                   "initial_state": [{"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}]}),
        )
        .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(send(s, alice, &room, &format!("m{i}"), &format!("before {i}")).await);
    }
    post_ok(s, bob, &rooms_path(&room, "join"), json!({})).await;
    for i in 0..3 {
        send(s, alice, &room, &format!("a{i}"), &format!("after {i}")).await;
    }
    (room, ids)
}

#[tokio::test]
async fn messages_pagination_filters_and_tokens() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (room, _) = history_room(&s, &alice, &bob).await;
    // Backwards from now, 2 at a time.
    let (st, page1) = s
        .get(
            &rooms_path(&room, "messages?dir=b&limit=2"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{page1}");
    assert_eq!(chunk_bodies(&page1), vec!["after 2", "after 1"]);
    let end = page1["end"].as_str().expect("end");
    let (_, page2) = s
        .get(
            &rooms_path(&room, &format!("messages?dir=b&limit=2&from={end}")),
            Some(&alice.token),
        )
        .await;
    assert_eq!(chunk_bodies(&page2), vec!["after 0"]);
    // Forwards from the start of page 2 with a filter.
    let start = page2["end"].as_str().expect("end");
    let filter = enc(r#"{"types": ["m.room.message"]}"#);
    let (_, fwd) = s
        .get(
            &rooms_path(
                &room,
                &format!("messages?dir=f&limit=10&from={start}&filter={filter}"),
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(chunk_bodies(&fwd), vec!["after 0", "after 1", "after 2"]);
    assert!(fwd.get("end").is_none(), "no more events: {fwd}");
    // Lazy-loaded members come with the chunk.
    let lazy = enc(r#"{"lazy_load_members": true}"#);
    let (_, ll) = s
        .get(
            &rooms_path(&room, &format!("messages?dir=b&limit=1&filter={lazy}")),
            Some(&alice.token),
        )
        .await;
    assert_eq!(ll["state"].as_array().map(Vec::len), Some(1), "{ll}");
    // Sync tokens are accepted.
    let (_, sync) = s
        .get(&format!("{V3}/sync?timeout=0"), Some(&alice.token))
        .await;
    let next = sync["next_batch"].as_str().expect("next_batch");
    let (st, from_sync) = s
        .get(
            &rooms_path(&room, &format!("messages?dir=b&limit=1&from={next}")),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(chunk_bodies(&from_sync), vec!["after 2"]);
    let (st, e) = s
        .get(&rooms_path(&room, "messages?dir=x"), Some(&alice.token))
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_INVALID_PARAM"));
    let (st, e) = s
        .get(
            &rooms_path(&room, "messages?from=garbage"),
            Some(&alice.token),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_INVALID_PARAM"));
}

#[tokio::test]
async fn messages_hide_history_from_before_a_join() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (room, ids) = history_room(&s, &alice, &bob).await;
    // Bob only sees history from his join (history_visibility: joined).
    let (_, bob_view) = s
        .get(
            &rooms_path(&room, "messages?dir=b&limit=50"),
            Some(&bob.token),
        )
        .await;
    let bodies = chunk_bodies(&bob_view);
    assert_eq!(bodies, vec!["after 2", "after 1", "after 0"], "{bob_view}");
    let (st, _) = s
        .get(
            &rooms_path(&room, &format!("event/{}", enc(&ids[0]))),
            Some(&bob.token),
        )
        .await;
    assert_eq!(st, 404);
}

#[tokio::test]
async fn context_around_an_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (room, ids) = history_room(&s, &alice, &bob).await;
    // Context around "before 2".
    let (st, ctx) = s
        .get(
            &rooms_path(&room, &format!("context/{}?limit=4", enc(&ids[2]))),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{ctx}");
    assert_eq!(ctx["event"]["content"]["body"], json!("before 2"));
    let before: Vec<&str> = ctx["events_before"]
        .as_array()
        .expect("before")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    let after: Vec<&str> = ctx["events_after"]
        .as_array()
        .expect("after")
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(before, vec!["before 1", "before 0"]);
    assert_eq!(after, vec!["before 3", "before 4"]);
    assert!(ctx["start"].is_string() && ctx["end"].is_string());
    assert!(
        ctx["state"]
            .as_array()
            .is_some_and(|s| s.iter().any(|e| e["type"] == "m.room.create"))
    );
}

#[tokio::test]
async fn members_at_a_point_in_history() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (room, ids) = history_room(&s, &alice, &bob).await;
    // A token from the context of "before 2": before bob joined.
    // Context around "before 2".
    let (st, ctx) = s
        .get(
            &rooms_path(&room, &format!("context/{}?limit=4", enc(&ids[2]))),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{ctx}");
    // members?at= a sync prev_batch token from before Bob joined.
    let (_, sync) = s
        .get(
            &format!(
                "{V3}/sync?timeout=0&filter={}",
                enc(r#"{"room":{"timeline":{"limit":1}}}"#)
            ),
            Some(&bob.token),
        )
        .await;
    assert!(sync["rooms"]["join"][&room].is_object(), "{sync}");
    let (_, sync) = s
        .get(
            &format!(
                "{V3}/sync?timeout=0&filter={}",
                enc(r#"{"room":{"timeline":{"limit":9}}}"#)
            ),
            Some(&alice.token),
        )
        .await;
    let prev = sync["rooms"]["join"][&room]["timeline"]["prev_batch"]
        .as_str()
        .expect("prev_batch");
    let (st, m) = s
        .get(
            &rooms_path(&room, &format!("members?at={prev}")),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{m}");
    let keys: Vec<&str> = m["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(keys, vec![alice.user_id.as_str()], "at {prev}");
    assert!(
        m["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .all(|e| e["room_id"] == json!(room))
    );
    // members?at= a point before Bob joined.
    let at = ctx["end"].as_str().expect("end");
    let (_, m) = s
        .get(
            &rooms_path(&room, &format!("members?at={at}")),
            Some(&alice.token),
        )
        .await;
    let keys: Vec<&str> = m["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(keys, vec![alice.user_id.as_str()]);
    let (_, m) = s
        .get(
            &rooms_path(&room, "members?not_membership=leave"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(m["chunk"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn redaction() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    post_ok(&s, &bob, &rooms_path(&room, "join"), json!({})).await;
    let id = send(&s, &alice, &room, "1", "secret").await;
    let (st, e) = s
        .put(
            &rooms_path(&room, &format!("redact/{}/r1", enc(&id))),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (403, "M_FORBIDDEN"));
    let (st, r1) = s
        .put(
            &rooms_path(&room, &format!("redact/{}/r1", enc(&id))),
            Some(&alice.token),
            json!({"reason": "oops"}),
        )
        .await;
    assert_eq!(st, 200, "{r1}");
    let (_, r2) = s
        .put(
            &rooms_path(&room, &format!("redact/{}/r1", enc(&id))),
            Some(&alice.token),
            json!({"reason": "oops"}),
        )
        .await;
    assert_eq!(r1["event_id"], r2["event_id"]);
    let (_, ev) = s
        .get(
            &rooms_path(&room, &format!("event/{}", enc(&id))),
            Some(&bob.token),
        )
        .await;
    assert_eq!(ev["content"], json!({}));
    assert_eq!(
        ev["unsigned"]["redacted_because"]["event_id"],
        r1["event_id"]
    );
    let (_, red) = s
        .get(
            &rooms_path(
                &room,
                &format!("event/{}", enc(r1["event_id"].as_str().expect("id"))),
            ),
            Some(&bob.token),
        )
        .await;
    assert_eq!(red["redacts"], json!(id));
    assert_eq!(red["content"]["reason"], json!("oops"));
}

#[tokio::test]
async fn aliases_and_directory() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(
            &alice,
            json!({"preset": "public_chat", "visibility": "public", "name": "Wombles"}),
        )
        .await;
    let alias = "#wombles:localhost";
    let dir = format!("{V3}/directory/room/{}", enc(alias));
    let (st, _) = s
        .put(&dir, Some(&alice.token), json!({"room_id": room}))
        .await;
    assert_eq!(st, 200);
    let (st, e) = s
        .put(&dir, Some(&alice.token), json!({"room_id": room}))
        .await;
    assert_eq!((st, errcode(&e)), (409, "M_UNKNOWN"));
    let (st, got) = s.get(&dir, None).await;
    assert_eq!((st, got["room_id"].as_str()), (200, Some(room.as_str())));
    assert_eq!(got["servers"], json!(["localhost"]));
    let (st, e) = s
        .get(
            &format!("{V3}/directory/room/{}", enc("#missing:localhost")),
            None,
        )
        .await;
    assert_eq!((st, errcode(&e)), (404, "M_NOT_FOUND"));
    let (st, e) = s
        .put(
            &format!("{V3}/directory/room/{}", enc("#x:elsewhere")),
            Some(&alice.token),
            json!({"room_id": room}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_INVALID_PARAM"));
    let (st, e) = s
        .put(
            &format!("{V3}/directory/room/{}", enc("no-hash")),
            Some(&alice.token),
            json!({"room_id": room}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_INVALID_PARAM"));
    // Unicode aliases.
    let uni = "#老虎Â£я🤨👉ඞ:localhost";
    let (st, _) = s
        .put(
            &format!("{V3}/directory/room/{}", enc(uni)),
            Some(&alice.token),
            json!({"room_id": room}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, got) = s
        .get(&format!("{V3}/directory/room/{}", enc(uni)), None)
        .await;
    assert_eq!(got["room_id"], json!(room));
    let (_, list) = s
        .get(&rooms_path(&room, "aliases"), Some(&alice.token))
        .await;
    assert_eq!(list["aliases"].as_array().map(Vec::len), Some(2), "{list}");
    // Canonical alias validation.
    let (st, e) = s
        .put(
            &rooms_path(&room, "state/m.room.canonical_alias"),
            Some(&alice.token),
            json!({"alias": "#nothere:localhost"}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_BAD_ALIAS"));
    let (st, e) = s
        .put(
            &rooms_path(&room, "state/m.room.canonical_alias"),
            Some(&alice.token),
            json!({"alias": "%bad:localhost"}),
        )
        .await;
    assert_eq!((st, errcode(&e)), (400, "M_INVALID_PARAM"));
    let (st, _) = s
        .put(
            &rooms_path(&room, "state/m.room.canonical_alias"),
            Some(&alice.token),
            json!({"alias": alias}),
        )
        .await;
    assert_eq!(st, 200);
    // Bob cannot delete Alice's alias; Alice can, which also clears the canonical alias.
    post_ok(&s, &bob, &rooms_path(&room, "join"), json!({})).await;
    let (st, e) = s.req("DELETE", &dir, Some(&bob.token), None).await;
    assert_eq!((st, errcode(&e)), (403, "M_FORBIDDEN"));
    let (st, _) = s.req("DELETE", &dir, Some(&alice.token), None).await;
    assert_eq!(st, 200);
    let (st, e) = s.req("DELETE", &dir, Some(&alice.token), None).await;
    assert_eq!((st, errcode(&e)), (404, "M_NOT_FOUND"));
    let (_, canonical) = s
        .get(
            &rooms_path(&room, "state/m.room.canonical_alias"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(canonical, json!({}));

    // Public room directory.
    let (st, pr) = s.get(&format!("{V3}/publicRooms"), None).await;
    assert_eq!(st, 200, "{pr}");
    let entry = pr["chunk"]
        .as_array()
        .and_then(|c| c.iter().find(|e| e["room_id"] == json!(room)).cloned())
        .expect("listed");
    assert_eq!(entry["name"], json!("Wombles"));
    assert_eq!(entry["num_joined_members"], json!(2));
    let (_, found) = s
        .post(
            &format!("{V3}/publicRooms"),
            Some(&bob.token),
            json!({"filter": {"generic_search_term": "womb"}}),
        )
        .await;
    assert_eq!(found["chunk"].as_array().map(Vec::len), Some(1));
    let (_, none) = s
        .post(
            &format!("{V3}/publicRooms"),
            Some(&bob.token),
            json!({"filter": {"generic_search_term": "zzz"}}),
        )
        .await;
    assert_eq!(none["chunk"].as_array().map(Vec::len), Some(0));
    let vis = format!("{V3}/directory/list/room/{}", enc(&room));
    let (_, v) = s.get(&vis, None).await;
    assert_eq!(v["visibility"], json!("public"));
    let (st, _) = s
        .put(&vis, Some(&bob.token), json!({"visibility": "private"}))
        .await;
    assert_eq!(st, 403);
    let (st, _) = s
        .put(&vis, Some(&alice.token), json!({"visibility": "private"}))
        .await;
    assert_eq!(st, 200);
    let (_, pr) = s.get(&format!("{V3}/publicRooms"), None).await;
    assert!(
        pr["chunk"]
            .as_array()
            .is_some_and(|c| c.iter().all(|e| e["room_id"] != json!(room)))
    );
}

#[tokio::test]
async fn rooms_survive_a_restart() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s.create_room(&alice, json!({"name": "durable"})).await;
    let id = send(&s, &alice, &room, "1", "kept").await;
    s.kill9_and_restart().await;
    let (st, ev) = s
        .get(
            &rooms_path(&room, &format!("event/{}", enc(&id))),
            Some(&alice.token),
        )
        .await;
    assert_eq!((st, ev["content"]["body"].as_str()), (200, Some("kept")));
    // Same txn after restart: still idempotent; a new message chains on.
    assert_eq!(send(&s, &alice, &room, "1", "kept").await, id);
    send(&s, &alice, &room, "2", "after restart").await;
    let (_, msgs) = s
        .get(
            &rooms_path(&room, "messages?dir=b&limit=2"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(chunk_bodies(&msgs), vec!["after restart", "kept"]);
}

/// Every stable room version over HTTP: advertised in `/capabilities`, creatable, joinable,
/// and its events served (v12: a room ID without server name, creators not in the power
/// levels); an unknown version is `M_UNSUPPORTED_ROOM_VERSION`.
#[tokio::test]
async fn rooms_of_every_room_version() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let (st, caps) = s
        .get(&format!("{V3}/capabilities"), Some(&alice.token))
        .await;
    assert_eq!(st, 200, "{caps}");
    let available = &caps["capabilities"]["m.room_versions"]["available"];
    for v in 1..=12 {
        let v = v.to_string();
        assert_eq!(available[&v], json!("stable"), "{caps}");
        let room = s
            .create_room(&alice, json!({"preset": "public_chat", "room_version": v}))
            .await;
        if v == "12" {
            assert!(!room.contains(':'), "v12 room ID {room}");
        } else {
            assert!(room.ends_with(&format!(":{}", s.server_name)), "{room}");
        }
        post_ok(&s, &bob, &format!("{V3}/join/{}", enc(&room)), json!({})).await;
        let event = send(&s, &bob, &room, &format!("t{v}"), "hi").await;
        if v == "1" || v == "2" {
            assert!(event.ends_with(&format!(":{}", s.server_name)), "{event}");
        } else {
            assert!(!event.contains(':'), "{event}");
        }
        let (st, create) = s
            .get(&rooms_path(&room, "state/m.room.create"), Some(&bob.token))
            .await;
        assert_eq!(
            (st, create["room_version"].as_str()),
            (200, Some(v.as_str()))
        );
        let (st, pl) = s
            .get(
                &rooms_path(&room, "state/m.room.power_levels"),
                Some(&bob.token),
            )
            .await;
        assert_eq!(st, 200, "{pl}");
        let listed = pl["users"].get(&alice.user_id).is_some();
        assert_eq!(listed, v != "12", "v{v}: {pl}");
        let (st, msgs) = s
            .get(
                &rooms_path(&room, "messages?dir=b&limit=50"),
                Some(&bob.token),
            )
            .await;
        assert_eq!(st, 200, "{msgs}");
        let ids: Vec<&str> = msgs["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .filter_map(|e| e["event_id"].as_str())
            .collect();
        assert!(ids.contains(&event.as_str()), "v{v}");
        let create_ev = msgs["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .find(|e| e["type"] == "m.room.create")
            .expect("create event");
        assert_eq!(create_ev["room_id"], json!(room), "v{v}");
    }
    let (st, resp) = s
        .post(
            &format!("{V3}/createRoom"),
            Some(&alice.token),
            json!({"room_version": "13"}),
        )
        .await;
    assert_eq!((st, errcode(&resp)), (400, "M_UNSUPPORTED_ROOM_VERSION"));
}

#[tokio::test]
async fn the_default_room_version_is_configurable() {
    let s = TestServer::start_with("[rooms]\ndefault_room_version = \"10\"\n").await;
    let alice = s.register("alice").await;
    let (st, caps) = s
        .get("/_matrix/client/v3/capabilities", Some(&alice.token))
        .await;
    assert_eq!(st, 200, "{caps}");
    assert_eq!(
        caps["capabilities"]["m.room_versions"]["default"],
        json!("10")
    );
    let room = s.create_room(&alice, json!({})).await;
    let (_, create) = s
        .get(
            &rooms_path(&room, "state/m.room.create"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(create["room_version"], json!("10"));
    // An explicit version still wins.
    let v12 = s.create_room(&alice, json!({"room_version": "12"})).await;
    let (_, create) = s
        .get(&rooms_path(&v12, "state/m.room.create"), Some(&alice.token))
        .await;
    assert_eq!(create["room_version"], json!("12"));
}

/// A sync timeline's `prev_batch` is a stream token just before its first event:
/// `/messages` backwards from it gives the events before that one, newest first, and its
/// `end` continues from there (TestNetworkPartitionOrdering pins the same after a fork).
#[tokio::test]
async fn messages_backwards_from_a_sync_prev_batch() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    for (i, b) in ["one", "two", "three", "four"].iter().enumerate() {
        send(&s, &alice, &room, &format!("pb{i}"), b).await;
    }
    let (_, sync) = s
        .get(
            &format!(
                "{V3}/sync?timeout=0&filter={}",
                enc(r#"{"room":{"timeline":{"limit":1}}}"#)
            ),
            Some(&alice.token),
        )
        .await;
    let tl = &sync["rooms"]["join"][&room]["timeline"];
    assert_eq!(tl["events"][0]["content"]["body"], "four", "{tl}");
    let prev = tl["prev_batch"].as_str().expect("prev_batch");
    assert!(prev.starts_with('s'), "{prev}");
    let (st, page) = s
        .get(
            &rooms_path(&room, &format!("messages?dir=b&limit=2&from={prev}")),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(chunk_bodies(&page), ["three", "two"]);
    assert_eq!(page["start"], prev);
    let end = page["end"].as_str().expect("end");
    let (st, page) = s
        .get(
            &rooms_path(&room, &format!("messages?dir=b&limit=1&from={end}")),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{page}");
    assert_eq!(chunk_bodies(&page), ["one"]);
}
