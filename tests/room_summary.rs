//! Room summaries through the real binary: `GET /_matrix/client/v1/room_summary/…` (who may
//! see which room, restricted rooms' `allowed_room_ids`, aliases), the `summary` of joined
//! rooms in `/sync` (member counts, heroes), and invites from ignored users left out of sync.
mod common;

use common::{TestServer, enc};
use serde_json::{Value, json};

async fn sync(s: &TestServer, token: &str, since: Option<&str>) -> Value {
    let path = match since {
        Some(t) => format!("/_matrix/client/v3/sync?timeout=0&since={t}"),
        None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
    };
    let (st, body) = s.get(&path, Some(token)).await;
    assert_eq!(st, 200, "{body}");
    body
}

#[tokio::test]
async fn room_summary_endpoint() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let space = s
        .create_room(
            &alice,
            json!({"preset": "public_chat", "creation_content": {"type": "m.space"},
                   "name": "Space", "room_alias_name": "space"}),
        )
        .await;
    let restricted = s
        .create_room(
            &alice,
            json!({"preset": "public_chat", "room_version": "8", "initial_state": [{
                "type": "m.room.join_rules", "state_key": "",
                "content": {"join_rule": "restricted",
                            "allow": [{"type": "m.room_membership", "room_id": space}]}}]}),
        )
        .await;
    let private = s
        .create_room(&alice, json!({"preset": "private_chat", "topic": "secret"}))
        .await;
    let path = |r: &str| format!("/_matrix/client/v1/room_summary/{}", enc(r));

    // A member sees everything, with their membership.
    let (st, v) = s.get(&path(&private), Some(&alice.token)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["room_id"], private.as_str());
    assert_eq!(
        (v["join_rule"].as_str(), v["membership"].as_str()),
        (Some("invite"), Some("join"))
    );
    assert_eq!(v["topic"], "secret");
    assert_eq!(v["num_joined_members"], 1);
    assert!(
        v["room_version"].is_string() && v.get("allowed_room_ids").is_none(),
        "{v}"
    );

    // A stranger: the private room does not exist for them; the space does (public), also
    // by alias and without a token.
    let (st, v) = s.get(&path(&private), Some(&bob.token)).await;
    assert_eq!((st, v["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (st, v) = s.get(&path("#space:localhost"), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["room_id"].as_str(), v["room_type"].as_str()),
        (Some(space.as_str()), Some("m.space"))
    );
    assert_eq!(v["membership"], "leave");
    let (st, _) = s.get(&path("#nope:localhost"), None).await;
    assert_eq!(st, 404);
    let (st, v) = s.get(&path("not a room"), None).await;
    assert_eq!((st, v["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));

    // The restricted room names the rooms it allows; bob sees it once he is in the space.
    let (st, _) = s.get(&path(&restricted), Some(&bob.token)).await;
    assert_eq!(st, 404, "not in an allowed room yet");
    let (st, v) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&space)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = s.get(&path(&restricted), Some(&bob.token)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["join_rule"], "restricted");
    assert_eq!(v["allowed_room_ids"], json!([space]));
}

#[tokio::test]
async fn sync_summary_and_ignored_invites() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let chris = s.register("chris").await;
    let first = sync(&s, &alice.token, None).await;
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    let room = s
        .create_room(
            &alice,
            json!({"preset": "public_chat", "invite": [bob.user_id]}),
        )
        .await;
    let v = sync(&s, &alice.token, Some(&since)).await;
    let summary = &v["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.joined_member_count"], 1, "{summary}");
    assert_eq!(summary["m.invited_member_count"], 1, "{summary}");
    assert_eq!(
        summary["m.heroes"],
        json!([bob.user_id]),
        "unnamed room: heroes"
    );
    let since = v["next_batch"].as_str().expect("next_batch").to_owned();

    // A message alone changes no counts: the summary stays empty.
    let (st, _) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
                enc(&room)
            ),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await;
    assert_eq!(st, 200);
    let v = sync(&s, &alice.token, Some(&since)).await;
    assert_eq!(v["rooms"]["join"][&room]["summary"], json!({}));
    let since = v["next_batch"].as_str().expect("next_batch").to_owned();

    // Bob joins and the room gets a name: two joined, none invited, no heroes needed.
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            Some(&alice.token),
            json!({"name": "Named"}),
        )
        .await;
    assert_eq!(st, 200);
    let v = sync(&s, &alice.token, Some(&since)).await;
    let summary = &v["rooms"]["join"][&room]["summary"];
    assert_eq!(
        (
            summary["m.joined_member_count"].as_u64(),
            summary["m.invited_member_count"].as_u64()
        ),
        (Some(2), Some(0)),
        "{summary}"
    );
    assert!(summary.get("m.heroes").is_none(), "{summary}");

    // Alice ignores bob: bob's invite never shows; chris's does.
    let (st, _) = s
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&alice.user_id)
            ),
            Some(&alice.token),
            json!({"ignored_users": {bob.user_id.clone(): {}}}),
        )
        .await;
    assert_eq!(st, 200);
    let since = sync(&s, &alice.token, None).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let from_bob = s
        .create_room(
            &bob,
            json!({"preset": "private_chat", "invite": [alice.user_id]}),
        )
        .await;
    let from_chris = s
        .create_room(
            &chris,
            json!({"preset": "private_chat", "invite": [alice.user_id]}),
        )
        .await;
    for since in [Some(since.as_str()), None] {
        let v = sync(&s, &alice.token, since).await;
        let invites = &v["rooms"]["invite"];
        assert!(invites.get(&from_bob).is_none(), "{invites}");
        assert!(invites.get(&from_chris).is_some(), "{invites}");
    }
}
