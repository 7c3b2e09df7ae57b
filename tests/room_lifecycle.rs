//! Room lifecycle against real pulse binaries: knocking (local, and over federation in
//! both roles: make_knock/send_knock, `rooms.knock` with `knock_state`, rescinding by
//! leave, accepting by invite), restricted joins that fail over to a resident that can
//! authorise them, and room upgrades (tombstone, predecessor, copied state, moved alias,
//! MSC4289 creators, push rules carried over).
mod common;

use common::enc;
use common::federating::{Server, User, eventually, join};
use serde_json::{Value, json};

async fn knock(
    server: &Server,
    user: &User,
    room: &str,
    via: &Server,
    reason: &str,
) -> (u16, Value) {
    server
        .req(
            "POST",
            &format!(
                "/_matrix/client/v3/knock/{}?server_name={}",
                enc(room),
                enc(&via.name())
            ),
            &user.token,
            Some(json!({ "reason": reason })),
        )
        .await
}

async fn sync(server: &Server, user: &User) -> Value {
    server
        .req(
            "GET",
            "/_matrix/client/v3/sync?timeout=0",
            &user.token,
            None,
        )
        .await
        .1
}

async fn set_state(server: &Server, user: &User, room: &str, kind: &str, content: Value) -> u16 {
    let (status, body) = server
        .req(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
            &user.token,
            Some(content),
        )
        .await;
    assert!(status == 200 || status == 403, "{kind}: {status} {body}");
    status
}

async fn state_content(server: &Server, user: &User, room: &str, kind: &str) -> (u16, Value) {
    server
        .req(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", enc(room)),
            &user.token,
            None,
        )
        .await
}

/// The knock sections of a `/sync`: `room → knock_state events`.
fn knock_member<'a>(sync: &'a Value, room: &str, user: &str) -> Option<&'a Value> {
    sync["rooms"]["knock"][room]["knock_state"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == user)
}

#[tokio::test]
async fn knocking_locally_and_over_federation() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let carol = b.register("carol").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "private_chat", "room_version": "7", "name": "knock here"}),
        )
        .await;

    // Not a knock room yet: refused, locally and over federation.
    assert_eq!(knock(&a, &bob, &room, &a, "hi").await.0, 403);
    assert_eq!(knock(&b, &carol, &room, &a, "hi").await.0, 403);
    assert_eq!(
        set_state(
            &a,
            &alice,
            &room,
            "m.room.join_rules",
            json!({"join_rule": "knock"})
        )
        .await,
        200
    );

    // A local knock, with its reason, shown to the knocker under rooms.knock.
    let (status, body) = knock(&a, &bob, &room, &a, "let me in").await;
    assert_eq!(
        (status, body["room_id"].as_str()),
        (200, Some(room.as_str())),
        "{body}"
    );
    let s = sync(&a, &bob).await;
    let ev = knock_member(&s, &room, &bob.id).expect("local knock in rooms.knock");
    assert_eq!(ev["content"]["membership"], "knock");
    assert!(
        s["rooms"]["knock"][&room]["knock_state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "knock here")
    );
    assert_eq!(
        a.membership_of(&alice, &room, &bob.id).await.as_deref(),
        Some("knock")
    );
    // Knocking again is allowed; rescinding is a leave.
    assert_eq!(knock(&a, &bob, &room, &a, "again").await.0, 200);
    let (status, _) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            &bob.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        a.membership_of(&alice, &room, &bob.id).await.as_deref(),
        Some("leave")
    );

    // A remote knock: make_knock/send_knock at A, recorded on B with A's stripped state.
    let (status, body) = knock(&b, &carol, &room, &a, "from afar").await;
    assert_eq!(status, 200, "remote knock: {body}");
    let s = sync(&b, &carol).await;
    let ev = knock_member(&s, &room, &carol.id).expect("remote knock in rooms.knock");
    assert_eq!(ev["content"]["reason"], "from afar");
    assert!(
        s["rooms"]["knock"][&room]["knock_state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.join_rules" && e["content"]["join_rule"] == "knock"),
        "{s}"
    );
    eventually("the resident sees the remote knock", || async {
        a.membership_of(&alice, &room, &carol.id).await.as_deref() == Some("knock")
    })
    .await;

    // Accepting the knock is an invite; the knocker then joins.
    let (status, body) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            &alice.token,
            Some(json!({"user_id": carol.id})),
        )
        .await;
    assert_eq!(status, 200, "invite: {body}");
    eventually("carol is invited on B", || async {
        b.invited_rooms(&carol).await.contains(&room)
    })
    .await;
    // Invited: a knock is refused by the resident.
    assert_eq!(knock(&b, &carol, &room, &a, "again").await.0, 403);
    let (status, body) = join(&b, &carol, &room, &a).await;
    assert_eq!(status, 200, "join after the accepted knock: {body}");
    // Joined: a knock is refused locally now.
    assert_eq!(knock(&b, &carol, &room, &a, "again").await.0, 403);
}

#[tokio::test]
async fn remote_knock_can_be_rescinded_and_old_versions_refuse_knocks() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let carol = b.register("carol").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "private_chat", "room_version": "10"}),
        )
        .await;
    set_state(
        &a,
        &alice,
        &room,
        "m.room.join_rules",
        json!({"join_rule": "knock"}),
    )
    .await;
    assert_eq!(knock(&b, &carol, &room, &a, "hello").await.0, 200);
    eventually("the resident sees the knock", || async {
        a.membership_of(&alice, &room, &carol.id).await.as_deref() == Some("knock")
    })
    .await;
    // Rescind: B has no state of the room, so the leave goes through make_leave/send_leave.
    let (status, body) = b
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            &carol.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "rescind: {body}");
    assert!(knock_member(&sync(&b, &carol).await, &room, &carol.id).is_none());
    eventually("the resident sees the rescinded knock", || async {
        a.membership_of(&alice, &room, &carol.id).await.as_deref() == Some("leave")
    })
    .await;

    // Room version 6 has no knocking: the version is refused before any event is built.
    let old = a
        .create_room(
            &alice,
            json!({"preset": "private_chat", "room_version": "6"}),
        )
        .await;
    let (status, body) = knock(&b, &carol, &old, &a, "x").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errcode"], "M_INCOMPATIBLE_ROOM_VERSION");
    let dave = a.register("dave").await;
    assert_eq!(knock(&a, &dave, &old, &a, "x").await.0, 403);
}

#[tokio::test]
async fn restricted_join_fails_over_to_a_resident_that_can_authorise_it() {
    let a = Server::start().await;
    let b = Server::start().await;
    let c = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;
    let space = a
        .create_room(&alice, json!({"preset": "public_chat", "name": "space"}))
        .await;
    let room = a
        .create_room(
            &alice,
            json!({
                "preset": "public_chat",
                "room_version": "8",
                "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space}]
                }}],
                "power_level_content_override": {"invite": 100, "users": {alice.id.clone(): 100}},
            }),
        )
        .await;
    assert_eq!(join(&b, &bob, &space, &a).await.0, 200);
    let (status, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 200, "bob's restricted join via A: {body}");
    assert_eq!(join(&c, &carol, &space, &a).await.0, 200);
    eventually("B sees carol in the space", || async {
        b.membership_of(&bob, &space, &carol.id).await.as_deref() == Some("join")
    })
    .await;

    // B has nobody who may invite: it answers M_UNABLE_TO_GRANT_JOIN and the join fails.
    let (status, body) = join(&c, &carol, &room, &b).await;
    assert_ne!(status, 200, "{body}");
    assert_eq!(body["errcode"], "M_UNABLE_TO_GRANT_JOIN", "{body}");
    // With A after B, the joining server fails over to A, which vouches for the join.
    let (status, body) = c
        .req(
            "POST",
            &format!(
                "/_matrix/client/v3/join/{}?server_name={}&server_name={}",
                enc(&room),
                enc(&b.name()),
                enc(&a.name())
            ),
            &carol.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "failover join: {body}");
    let (_, member) = c
        .req(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&carol.id)
            ),
            &carol.token,
            None,
        )
        .await;
    assert_eq!(
        member["join_authorised_via_users_server"],
        alice.id.as_str()
    );
}

#[tokio::test]
async fn local_restricted_join_goes_remote_when_no_local_member_may_invite() {
    let a = Server::start().await;
    let b = Server::start().await;
    let carol = b.register("carol").await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    // The room and its allowed space live on B; alice (A) joins by invite, without power.
    let space = b
        .create_room(&carol, json!({"preset": "public_chat"}))
        .await;
    let room = b
        .create_room(
            &carol,
            json!({
                "preset": "public_chat",
                "room_version": "8",
                "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {
                    "join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space}]
                }}],
            }),
        )
        .await;
    let (status, _) = b
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            &carol.token,
            Some(json!({"user_id": alice.id})),
        )
        .await;
    assert_eq!(status, 200);
    eventually("alice's invite reaches A", || async {
        a.invited_rooms(&alice).await.contains(&room)
    })
    .await;
    assert_eq!(join(&a, &alice, &room, &b).await.0, 200);
    // bob is in no allowed room: refused (by B, which can check).
    assert_ne!(join(&a, &bob, &room, &a).await.0, 200);
    assert_eq!(join(&a, &bob, &space, &b).await.0, 200);
    // A has alice in the room but she may not invite: the join goes to B, which vouches.
    let (status, body) = join(&a, &bob, &room, &a).await;
    assert_eq!(status, 200, "local restricted join through B: {body}");
    eventually("B sees bob joined", || async {
        b.membership_of(&carol, &room, &bob.id).await.as_deref() == Some("join")
    })
    .await;
    assert_eq!(
        a.membership_of(&alice, &room, &bob.id).await.as_deref(),
        Some("join")
    );
}

async fn upgrade(server: &Server, room: &str, who: &User, version: &str) -> (u16, Value) {
    server
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(room)),
            &who.token,
            Some(json!({ "new_version": version })),
        )
        .await
}

#[tokio::test]
async fn upgrading_a_room() {
    let a = Server::start().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "private_chat", "room_version": "10", "name": "old name",
                   "topic": "a topic", "room_alias_name": "upgrademe"}),
        )
        .await;
    let (status, _) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            &alice.token,
            Some(json!({"user_id": bob.id})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(join(&a, &bob, &room, &a).await.0, 200);
    let alias = format!("#upgrademe:{}", a.name());
    // A room push rule of bob's, to be carried over when he joins the new room.
    let (status, body) = a
        .req(
            "PUT",
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)),
            &bob.token,
            Some(json!({"actions": ["dont_notify"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // bob has no power to upgrade; unknown versions are refused.
    assert_eq!(upgrade(&a, &room, &bob, "11").await.0, 403);
    let (status, body) = upgrade(&a, &room, &alice, "999").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_UNSUPPORTED_ROOM_VERSION"))
    );
    let (status, body) = upgrade(&a, &room, &alice, "11").await;
    assert_eq!(status, 200, "upgrade: {body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();

    let (_, tomb) = state_content(&a, &alice, &room, "m.room.tombstone").await;
    assert_eq!(tomb["replacement_room"], new.as_str());
    let (_, create) = state_content(&a, &alice, &new, "m.room.create").await;
    assert_eq!(create["room_version"], "11");
    assert_eq!(create["predecessor"]["room_id"], room.as_str());
    assert_eq!(
        state_content(&a, &alice, &new, "m.room.name").await.1["name"],
        "old name"
    );
    assert_eq!(
        state_content(&a, &alice, &new, "m.room.topic").await.1["topic"],
        "a topic"
    );
    assert_eq!(
        state_content(&a, &alice, &new, "m.room.join_rules").await.1["join_rule"],
        "invite"
    );
    // The alias moved, with the canonical alias.
    let (_, dir) = a
        .req(
            "GET",
            &format!("/_matrix/client/v3/directory/room/{}", enc(&alias)),
            &alice.token,
            None,
        )
        .await;
    assert_eq!(dir["room_id"], new.as_str());
    assert_eq!(
        state_content(&a, &alice, &new, "m.room.canonical_alias")
            .await
            .1["alias"],
        alias.as_str()
    );
    // The old room is quieted: ordinary members may no longer speak.
    let (_, pl) = state_content(&a, &alice, &room, "m.room.power_levels").await;
    assert!(pl["events_default"].as_i64().unwrap() >= 50, "{pl}");
    let (status, _) = a
        .req(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&room)
            ),
            &bob.token,
            Some(json!({"msgtype": "m.text", "body": "still here?"})),
        )
        .await;
    assert_eq!(status, 403);
    // bob (a local member of an invite-only room) was invited, joins, keeps his push rule.
    assert!(a.invited_rooms(&bob).await.contains(&new));
    assert_eq!(join(&a, &bob, &new, &a).await.0, 200);
    let (_, rules) = a
        .req("GET", "/_matrix/client/v3/pushrules/", &bob.token, None)
        .await;
    let room_rules = rules["global"]["room"].as_array().unwrap();
    assert!(
        room_rules
            .iter()
            .any(|r| r["rule_id"] == new.as_str() && r["actions"] == json!(["dont_notify"])),
        "{rules}"
    );
}

#[tokio::test]
async fn upgrading_to_v12_makes_creators_of_the_upgrader_and_additional_creators() {
    let a = Server::start().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let carol = a.register("carol").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "11"}),
        )
        .await;
    for u in [&bob, &carol] {
        assert_eq!(join(&a, u, &room, &a).await.0, 200);
    }
    let users = json!({ alice.id.clone(): 100, bob.id.clone(): 100, carol.id.clone(): 50 });
    set_state(
        &a,
        &alice,
        &room,
        "m.room.power_levels",
        json!({ "users": users }),
    )
    .await;
    let (status, body) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/upgrade", enc(&room)),
            &alice.token,
            Some(json!({"new_version": "12", "additional_creators": [bob.id]})),
        )
        .await;
    assert_eq!(status, 200, "upgrade: {body}");
    let new = body["replacement_room"].as_str().unwrap().to_owned();
    let (_, create) = state_content(&a, &alice, &new, "m.room.create").await;
    assert_eq!(create["room_version"], "12");
    assert_eq!(create["additional_creators"], json!([bob.id]));
    assert!(create["predecessor"].get("event_id").is_none(), "{create}");
    let (_, pl) = state_content(&a, &alice, &new, "m.room.power_levels").await;
    // Creators are not listed (they have unlimited power); carol keeps her level.
    assert_eq!(pl["users"], json!({ carol.id.clone(): 50 }), "{pl}");
}

#[tokio::test]
async fn space_hierarchy_walks_visible_rooms_depth_first() {
    let a = Server::start().await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let space = |name: &str| json!({"preset": "public_chat", "name": name, "creation_content": {"type": "m.space"}});
    let root = a.create_room(&alice, space("Root")).await;
    let r1 = a
        .create_room(&alice, json!({"preset": "public_chat", "name": "R1"}))
        .await;
    let ss1 = a.create_room(&alice, space("SS1")).await;
    let hidden = a
        .create_room(&alice, json!({"preset": "private_chat", "name": "hidden"}))
        .await;
    let r2 = a
        .create_room(&alice, json!({"preset": "public_chat", "name": "R2"}))
        .await;
    let link = |parent: &str, child: &str, suggested: bool| {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
            enc(parent),
            enc(child)
        );
        let body = json!({"via": [a.name()], "suggested": suggested});
        (path, body)
    };
    for (parent, child, suggested) in [
        (&root, &r1, true),
        (&root, &ss1, false),
        (&ss1, &hidden, false),
        (&ss1, &r2, false),
    ] {
        let (path, body) = link(parent, child, suggested);
        assert_eq!(a.req("PUT", &path, &alice.token, Some(body)).await.0, 200);
    }
    let get = |who: &User, query: &str| {
        let path = format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", enc(&root));
        let token = who.token.clone();
        let a = &a;
        async move { a.req("GET", &path, &token, None).await }
    };
    let ids = |body: &Value| -> Vec<String> {
        body["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["room_id"].as_str().unwrap().to_owned())
            .collect()
    };
    // alice sees everything, depth first, in link order.
    let (status, body) = get(&alice, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ids(&body),
        [
            root.as_str(),
            r1.as_str(),
            ss1.as_str(),
            hidden.as_str(),
            r2.as_str()
        ]
    );
    assert_eq!(body["rooms"][0]["room_type"], "m.space");
    assert_eq!(
        body["rooms"][0]["children_state"].as_array().unwrap().len(),
        2
    );
    // bob (in no room) sees the public ones only.
    let (_, body) = get(&bob, "").await;
    assert_eq!(
        ids(&body),
        [root.as_str(), r1.as_str(), ss1.as_str(), r2.as_str()]
    );
    // max_depth, suggested_only, pagination.
    assert_eq!(
        ids(&get(&alice, "?max_depth=1").await.1),
        [root.as_str(), r1.as_str(), ss1.as_str()]
    );
    assert_eq!(
        ids(&get(&alice, "?suggested_only=true").await.1),
        [root.as_str(), r1.as_str()]
    );
    let (_, page1) = get(&alice, "?limit=2").await;
    assert_eq!(ids(&page1), [root.as_str(), r1.as_str()]);
    let next = page1["next_batch"].as_str().unwrap().to_owned();
    let (_, page2) = get(&alice, &format!("?limit=2&from={}", enc(&next))).await;
    assert_eq!(ids(&page2), [ss1.as_str(), hidden.as_str()]);
    assert_eq!(
        get(&alice, &format!("?max_depth=1&from={}", enc(&next)))
            .await
            .0,
        400
    );
    // A private root is not shown to outsiders.
    let path = format!("/_matrix/client/v1/rooms/{}/hierarchy", enc(&hidden));
    assert_eq!(a.req("GET", &path, &bob.token, None).await.0, 403);
}
