//! The user directory across two Pulse servers: users of the other server who share a room
//! with the searcher are found, listed with the display name and avatar of their
//! membership events, and the listing follows their later member events (a profile
//! change); users of the other server who share no room are not found.
mod common;

use common::enc;
use common::federating::{Server, User, eventually, join};
use serde_json::{Value, json};

async fn search(server: &Server, user: &User, term: &str) -> Vec<Value> {
    let (st, body) = server
        .req(
            "POST",
            "/_matrix/client/v3/user_directory/search",
            &user.token,
            Some(json!({"search_term": term, "limit": 10})),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    body["results"].as_array().cloned().unwrap_or_default()
}

async fn set_profile(server: &Server, user: &User, field: &str, value: &str) {
    let (st, body) = server
        .req(
            "PUT",
            &format!("/_matrix/client/v3/profile/{}/{field}", enc(&user.id)),
            &user.token,
            Some(json!({ field: value })),
        )
        .await;
    assert_eq!(st, 200, "{body}");
}

fn entry<'a>(results: &'a [Value], user: &User) -> Option<&'a Value> {
    results.iter().find(|r| r["user_id"] == user.id.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_users_sharing_a_room_are_found_with_their_member_profile() {
    let a = Server::start().await;
    let b = Server::start().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let loner = b.register("lonerbob").await;
    set_profile(&a, &alice, "displayname", "Alice Liddell").await;
    set_profile(&b, &bob, "displayname", "Bobby Tables").await;
    set_profile(&b, &bob, "avatar_url", "mxc://b/avatar").await;
    set_profile(&b, &loner, "displayname", "Bobby Loner").await;

    // A private room: only sharing it makes the users findable.
    let room = a
        .create_room(
            &alice,
            json!({"preset": "private_chat", "invite": [bob.id.clone()]}),
        )
        .await;
    eventually("bob is invited", || async {
        b.invited_rooms(&bob).await.contains(&room)
    })
    .await;
    let (st, body) = join(&b, &bob, &room, &a).await;
    assert_eq!(st, 200, "{body}");
    eventually("a sees bob joined", || async {
        a.membership_of(&alice, &room, &bob.id).await.as_deref() == Some("join")
    })
    .await;

    // On a: bob by his name, with his avatar; the loner shares no room.
    let found = search(&a, &alice, "bobby").await;
    let e = entry(&found, &bob).unwrap_or_else(|| panic!("bob found: {found:?}"));
    assert_eq!(e["display_name"], "Bobby Tables");
    assert_eq!(e["avatar_url"], "mxc://b/avatar");
    assert!(entry(&found, &loner).is_none(), "{found:?}");
    // On b: alice, whose member event came in the join's state.
    let found = search(&b, &bob, "liddell").await;
    let e = entry(&found, &alice).unwrap_or_else(|| panic!("alice found: {found:?}"));
    assert_eq!(e["display_name"], "Alice Liddell");

    // Profile changes travel as member events and update the listing.
    set_profile(&b, &bob, "displayname", "Robert Tables").await;
    eventually("a lists bob's new name", || async {
        let found = search(&a, &alice, "robert").await;
        entry(&found, &bob).is_some_and(|e| e["display_name"] == "Robert Tables")
    })
    .await;
    assert!(entry(&search(&a, &alice, "bobby").await, &bob).is_none());
    set_profile(&a, &alice, "displayname", "Alice Pleasance").await;
    eventually("b lists alice's new name", || async {
        let found = search(&b, &bob, "pleasance").await;
        entry(&found, &alice).is_some_and(|e| e["display_name"] == "Alice Pleasance")
    })
    .await;

    // Once bob leaves, alice can no longer find him.
    let (st, body) = b
        .req(
            "POST",
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            &bob.token,
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    eventually("a no longer lists bob", || async {
        entry(&search(&a, &alice, "robert").await, &bob).is_none()
    })
    .await;
}
