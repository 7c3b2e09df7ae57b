//! Two real pulse binaries federating on loopback (server names `127.0.0.1:PORT`, TLS
//! listeners with self-signed certificates, `verify_tls = false`, loopback allowed): joins
//! in both directions, invites (accept and reject), leaves, kicks and bans, and messages
//! both ways once the events flow over `/send`.
mod common;

use common::enc;
use common::federating::{Server, eventually, join};
use serde_json::json;

#[tokio::test]
async fn remote_user_joins_and_leaves_a_room_and_state_matches() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a
        .create_room(
            &alice,
            json!({"preset": "public_chat", "name": "federated"}),
        )
        .await;

    let (status, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 200, "remote join: {body}");
    assert_eq!(body["room_id"], room.as_str());
    // Both servers agree bob is joined; B knows the room's state from send_join.
    assert!(b.joined_rooms(&bob).await.contains(&room));
    assert_eq!(
        a.membership_of(&alice, &room, &bob.id).await.as_deref(),
        Some("join")
    );
    assert_eq!(
        b.membership_of(&bob, &room, &alice.id).await.as_deref(),
        Some("join")
    );
    let (status, name) = b
        .req(
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            &bob.token,
            None,
        )
        .await;
    assert_eq!((status, name["name"].as_str()), (200, Some("federated")));

    // Joining again is idempotent.
    let (status, _) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 200);

    // B restarts and still has the room.
    let mut b = b;
    b.restart().await;
    assert!(b.joined_rooms(&bob).await.contains(&room));

    // bob leaves: a local event on B (B has the room's state), which reaches A over /send.
    let (status, body) = b
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            &bob.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "leave: {body}");
    assert!(!b.joined_rooms(&bob).await.contains(&room));
    eventually("bob's leave on A", || async {
        a.membership_of(&alice, &room, &bob.id).await.as_deref() == Some("leave")
    })
    .await;

    // A restarts; bob joins again through it.
    let mut a = a;
    a.restart().await;
    let (status, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 200, "rejoin after A's restart: {body}");
    assert_eq!(
        a.membership_of(&alice, &room, &bob.id).await.as_deref(),
        Some("join")
    );
}

#[tokio::test]
async fn join_of_a_private_room_is_refused_by_the_resident() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    let (status, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 403, "join of an invite-only room: {body}");
    assert!(!b.joined_rooms(&bob).await.contains(&room));
    assert_eq!(a.membership_of(&alice, &room, &bob.id).await, None);

    // A room nobody can tell us about: 404, nothing stored.
    let (status, body) = b
        .req(
            "POST",
            "/_matrix/client/v3/join/%21nothing%3Aunknown.invalid",
            &bob.token,
            Some(json!({})),
        )
        .await;
    assert!(
        status == 404 || status == 502,
        "unknown room: {status} {body}"
    );
}

#[tokio::test]
async fn invites_across_servers_can_be_accepted_and_rejected() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;

    // alice@A invites bob@B: B countersigns, bob sees the invite in /sync.
    let (status, body) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            &alice.token,
            Some(json!({"user_id": bob.id})),
        )
        .await;
    assert_eq!(status, 200, "remote invite: {body}");
    assert_eq!(
        a.membership_of(&alice, &room, &bob.id).await.as_deref(),
        Some("invite")
    );
    assert!(b.invited_rooms(&bob).await.contains(&room));

    // bob accepts: a remote join through the inviter's server (no server_name needed).
    let (status, body) = b
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
            &bob.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "accepting the invite: {body}");
    assert_eq!(
        a.membership_of(&alice, &room, &bob.id).await.as_deref(),
        Some("join")
    );

    // A second room: bob rejects the invite through make_leave/send_leave.
    let room2 = a
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    let (status, _) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room2)),
            &alice.token,
            Some(json!({"user_id": bob.id})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(b.invited_rooms(&bob).await.contains(&room2));
    let (status, body) = b
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room2)),
            &bob.token,
            Some(json!({"reason": "no thanks"})),
        )
        .await;
    assert_eq!(status, 200, "rejecting the invite: {body}");
    assert!(!b.invited_rooms(&bob).await.contains(&room2));
    assert_eq!(
        a.membership_of(&alice, &room2, &bob.id).await.as_deref(),
        Some("leave")
    );
}

#[tokio::test]
async fn messages_kicks_and_bans_flow_both_ways() {
    // The default room version: 12, whose room IDs name no server.
    let room = messages_kicks_and_bans(None).await;
    assert!(!room.contains(':'), "a v12 room ID: {room}");
}

#[tokio::test]
async fn messages_kicks_and_bans_in_a_v10_room() {
    let room = messages_kicks_and_bans(Some("10")).await;
    assert!(room.contains(':'), "a v10 room ID: {room}");
}

#[tokio::test]
async fn messages_kicks_and_bans_in_a_v1_room() {
    // Server-generated event IDs, `[id, hash]` references, the v1 redaction rule.
    messages_kicks_and_bans(Some("1")).await;
}

/// Joins, messages, a kick and a ban across two servers in a room of `version` (`None`: the
/// default) made on A; returns the room ID.
async fn messages_kicks_and_bans(version: Option<&str>) -> String {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let mut body = json!({"preset": "public_chat"});
    if let Some(v) = version {
        body["room_version"] = json!(v);
    }
    let room = a.create_room(&alice, body).await;
    let (status, create) = a
        .req(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.create/",
                enc(&room)
            ),
            &alice.token,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(create["room_version"], json!(version.unwrap_or("12")));
    let (status, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 200, "remote join: {body}");
    // B imported the room's state: the same create event.
    let (status, on_b) = b
        .req(
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.create/",
                enc(&room)
            ),
            &bob.token,
            None,
        )
        .await;
    assert_eq!((status, &on_b), (200, &create));

    a.send_text(&alice, &room, "t1", "hello from A").await;
    b.send_text(&bob, &room, "t1", "hello from B").await;
    eventually("A's message on B", || {
        b.has_message(&bob, &room, "hello from A")
    })
    .await;
    eventually("B's message on A", || {
        a.has_message(&alice, &room, "hello from B")
    })
    .await;

    // alice kicks bob: B learns it over /send.
    let (status, body) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            &alice.token,
            Some(json!({"user_id": bob.id, "reason": "test"})),
        )
        .await;
    assert_eq!(status, 200, "kick: {body}");
    eventually("the kick on B", || async {
        !b.joined_rooms(&bob).await.contains(&room)
    })
    .await;

    // bob rejoins, then is banned; a banned user's join is refused by the resident.
    let (status, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 200, "rejoin after a kick: {body}");
    let (status, body) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)),
            &alice.token,
            Some(json!({"user_id": bob.id})),
        )
        .await;
    assert_eq!(status, 200, "ban: {body}");
    eventually("the ban on B", || async {
        !b.joined_rooms(&bob).await.contains(&room)
    })
    .await;
    let (status, _) = join(&b, &bob, &room, &a).await;
    assert_eq!(status, 403, "a banned user's join");
    room
}

#[tokio::test]
async fn user_on_a_joins_a_room_on_b_by_alias() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = b
        .create_room(
            &bob,
            json!({"preset": "public_chat", "room_alias_name": "lobby"}),
        )
        .await;
    let alias = format!("#lobby:{}", b.name());
    let (status, body) = a
        .req(
            "POST",
            &format!("/_matrix/client/v3/join/{}", enc(&alias)),
            &alice.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "join by remote alias: {body}");
    assert_eq!(body["room_id"], room.as_str());
    assert_eq!(
        b.membership_of(&bob, &room, &alice.id).await.as_deref(),
        Some("join")
    );
}
