//! Spaces across two Pulse servers: the client `/hierarchy` of a space whose rooms live
//! partly on the other server asks it over federation (`/_matrix/federation/v1/hierarchy`)
//! and merges the answers, pages through the merged walk with `from`, honours
//! `suggested_only`, leaves out the other server's private rooms, and shows a restricted
//! room of the other server only to members of its allowed room, once that server can see
//! that our users are in it.
mod common;

use common::enc;
use common::federating::{Server, User, eventually, join};
use serde_json::{Value, json};

fn space() -> Value {
    json!({
        "preset": "public_chat",
        "creation_content": {"type": "m.space"},
        "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                           "content": {"history_visibility": "world_readable"}}],
    })
}

fn readable_room() -> Value {
    json!({
        "preset": "public_chat",
        "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                           "content": {"history_visibility": "world_readable"}}],
    })
}

async fn link(server: &Server, user: &User, parent: &str, child: &str, content: Value) {
    let (st, body) = server
        .req(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(parent),
                enc(child)
            ),
            &user.token,
            Some(content),
        )
        .await;
    assert_eq!(st, 200, "link {parent} -> {child}: {body}");
}

async fn hierarchy(server: &Server, user: &User, root: &str, query: &str) -> (u16, Value) {
    server
        .req(
            "GET",
            &format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", enc(root)),
            &user.token,
            None,
        )
        .await
}

fn ids(body: &Value) -> Vec<String> {
    body["rooms"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["room_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_spread_over_two_servers_is_walked_whole_and_pages_stay_valid() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let via_a = json!({"via": [a.name()]});
    let via_b = json!({"via": [b.name()]});

    //      root (a)
    //   /    |      \       \
    // r1(a) ss1(a)  r2(b)  private(b)
    //        |   \
    //      ss2(b) r3(b, suggested)
    //        |
    //      r4(a)
    let root = a.create_room(&alice, space()).await;
    let r1 = a.create_room(&alice, readable_room()).await;
    let ss1 = a.create_room(&alice, space()).await;
    let r4 = a.create_room(&alice, readable_room()).await;
    let r2 = b
        .create_room(
            &bob,
            json!({"preset": "public_chat", "name": "Room two", "topic": "on b"}),
        )
        .await;
    let ss2 = b.create_room(&bob, space()).await;
    let r3 = b.create_room(&bob, readable_room()).await;
    let private = b.create_room(&bob, json!({"preset": "private_chat"})).await;
    link(&a, &alice, &root, &r1, via_a.clone()).await;
    link(&a, &alice, &root, &ss1, via_a.clone()).await;
    link(&a, &alice, &root, &r2, via_b.clone()).await;
    link(&a, &alice, &root, &private, via_b.clone()).await;
    link(&a, &alice, &ss1, &ss2, via_b.clone()).await;
    link(
        &a,
        &alice,
        &ss1,
        &r3,
        json!({"via": [b.name()], "suggested": true}),
    )
    .await;
    link(&b, &bob, &ss2, &r4, via_a.clone()).await;

    let (st, whole) = hierarchy(&a, &alice, &root, "").await;
    assert_eq!(st, 200, "{whole}");
    let all = ids(&whole);
    assert_eq!(
        sorted(all.clone()),
        sorted(vec![
            root.clone(),
            r1.clone(),
            r2.clone(),
            r3.clone(),
            r4.clone(),
            ss1.clone(),
            ss2.clone()
        ]),
        "the whole space, the other server's private room left out: {whole}"
    );
    let rooms = whole["rooms"].as_array().unwrap();
    let r2_entry = rooms.iter().find(|r| r["room_id"] == r2.as_str()).unwrap();
    assert_eq!(r2_entry["name"], "Room two", "{r2_entry}");
    assert_eq!(r2_entry["topic"], "on b");
    assert_eq!(r2_entry["num_joined_members"], 1);
    assert_eq!(r2_entry["join_rule"], "public");
    assert!(r2_entry.get("allowed_room_ids").is_none());
    // The remote space's own links come along, so a client can draw the tree.
    let ss2_entry = rooms.iter().find(|r| r["room_id"] == ss2.as_str()).unwrap();
    assert_eq!(ss2_entry["room_type"], "m.space");
    let ss2_children: Vec<&str> = ss2_entry["children_state"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(ss2_children, [r4.as_str()], "{ss2_entry}");

    // Pages of two give the same walk in the same order.
    let mut paged = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..10 {
        let q = match &from {
            Some(t) => format!("?limit=2&from={}", enc(t)),
            None => "?limit=2".to_owned(),
        };
        let (st, page) = hierarchy(&a, &alice, &root, &q).await;
        assert_eq!(st, 200, "{page}");
        paged.extend(ids(&page));
        match page["next_batch"].as_str() {
            Some(t) => from = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, all);

    // `max_depth=1`: root and its direct children only.
    let (_, shallow) = hierarchy(&a, &alice, &root, "?max_depth=1").await;
    assert_eq!(
        sorted(ids(&shallow)),
        sorted(vec![root.clone(), r1.clone(), r2.clone(), ss1.clone()])
    );

    // `suggested_only`: only r3 is suggested below ss1, and nothing below root is.
    let (_, suggested) = hierarchy(&a, &alice, &ss1, "?suggested_only=true").await;
    assert_eq!(
        sorted(ids(&suggested)),
        sorted(vec![ss1.clone(), r3.clone()])
    );

    // The other direction: b walks a's space ss2 -> r4 through a.
    let (st, from_b) = hierarchy(&b, &bob, &ss2, "").await;
    assert_eq!(st, 200, "{from_b}");
    assert_eq!(sorted(ids(&from_b)), sorted(vec![ss2.clone(), r4.clone()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_restricted_room_shows_to_members_of_its_allowed_room() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let amy = a.register("amy").await;
    let charlie = b.register("charlie").await;

    let space_id = a
        .create_room(
            &alice,
            json!({
                "preset": "public_chat",
                "name": "Space",
                "creation_content": {"type": "m.space"},
                "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                                   "content": {"history_visibility": "world_readable"}}],
            }),
        )
        .await;
    let room = b
        .create_room(
            &charlie,
            json!({
                "preset": "public_chat",
                "name": "Room",
                "room_version": "8",
                "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                    "content": {"join_rule": "restricted", "allow": [
                        {"type": "m.room_membership", "room_id": space_id, "via": [a.name()]}
                    ]}}],
            }),
        )
        .await;
    link(&a, &alice, &space_id, &room, json!({"via": [b.name()]})).await;

    // b is not in the space yet: it cannot tell that alice is, so the room stays hidden.
    for user in [&alice, &amy] {
        let (st, body) = hierarchy(&a, user, &space_id, "").await;
        assert_eq!(st, 200, "{body}");
        assert_eq!(ids(&body), vec![space_id.clone()], "{body}");
    }

    let (st, body) = join(&b, &charlie, &space_id, &a).await;
    assert_eq!(st, 200, "{body}");
    eventually("b sees alice in the space", || async {
        b.membership_of(&charlie, &space_id, &alice.id)
            .await
            .as_deref()
            == Some("join")
    })
    .await;

    // Now b answers with `allowed_room_ids`; alice (in the space) sees the room, amy
    // (who only may read the world-readable space) does not.
    let (_, body) = hierarchy(&a, &alice, &space_id, "").await;
    assert_eq!(
        sorted(ids(&body)),
        sorted(vec![space_id.clone(), room.clone()]),
        "{body}"
    );
    let entry = body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room.as_str())
        .unwrap();
    assert_eq!(entry["join_rule"], "restricted");
    assert!(entry.get("allowed_room_ids").is_none(), "{entry}");
    let (_, body) = hierarchy(&a, &amy, &space_id, "").await;
    assert_eq!(ids(&body), vec![space_id.clone()], "{body}");
}
