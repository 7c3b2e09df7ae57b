//! MSC4325 presence privacy through the real binary: the sharing config in account data
//! (validation, stable vs unstable type), what `/sync` and `GET .../status` show for the
//! rule's cases, revocation (one final offline) and grant (current presence at once), leaves,
//! the `/versions` flag, restart, and the audience preview endpoint.
mod common;

use std::time::{Duration, Instant};

use common::{TestServer, User, enc};
use serde_json::{Value, json};

const STABLE: &str = "m.presence_sharing_config";
const UNSTABLE: &str = "events.matrix-community.presence_sharing_config";
const AUDIENCE: &str = "/_matrix/client/unstable/org.pulse.presence/audience";

fn status_path(u: &User) -> String {
    format!("/_matrix/client/v3/presence/{}/status", enc(&u.user_id))
}

fn config_path(u: &User, event_type: &str) -> String {
    format!(
        "/_matrix/client/v3/user/{}/account_data/{event_type}",
        enc(&u.user_id)
    )
}

async fn set_config(s: &TestServer, u: &User, event_type: &str, content: Value) {
    let (st, body) = s
        .put(&config_path(u, event_type), Some(&u.token), content)
        .await;
    assert_eq!(st, 200, "PUT {event_type}: {body}");
}

async fn set_status(s: &TestServer, u: &User, presence: &str, msg: Option<&str>) {
    let mut body = json!({ "presence": presence });
    if let Some(m) = msg {
        body["status_msg"] = json!(m);
    }
    let (st, r) = s.put(&status_path(u), Some(&u.token), body).await;
    assert_eq!(st, 200, "{r}");
}

async fn room_with(s: &TestServer, creator: &User, members: &[&User]) -> String {
    let room = s
        .create_room(creator, json!({"preset": "public_chat"}))
        .await;
    for m in members {
        join(s, m, &room).await;
    }
    room
}

async fn join(s: &TestServer, u: &User, room: &str) {
    let (st, body) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(room)),
            Some(&u.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
}

/// One sync of `viewer` (never changing the viewer's own presence); returns
/// (next_batch, presence events).
async fn sync(
    s: &TestServer,
    viewer: &User,
    since: Option<&str>,
    timeout: u64,
) -> (String, Vec<Value>) {
    let mut path = format!("/_matrix/client/v3/sync?timeout={timeout}&set_presence=offline");
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    let (st, r) = s.get(&path, Some(&viewer.token)).await;
    assert_eq!(st, 200, "{r}");
    let events = r["presence"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (
        r["next_batch"].as_str().expect("next_batch").to_owned(),
        events,
    )
}

fn presence_of<'a>(events: &'a [Value], user: &User) -> Option<&'a Value> {
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| e["sender"] == user.user_id.as_str())
        .collect();
    assert!(mine.len() <= 1, "at most one event per user: {events:?}");
    mine.first().map(|e| &e["content"])
}

/// Sync from `since` until an event of `user` arrives (5 s budget); returns its content and
/// the token after it.
async fn next_presence_of(
    s: &TestServer,
    viewer: &User,
    since: &str,
    user: &User,
) -> (Value, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut since = since.to_owned();
    while Instant::now() < deadline {
        let (next, events) = sync(s, viewer, Some(&since), 1000).await;
        since = next;
        if let Some(c) = presence_of(&events, user) {
            return (c.clone(), since);
        }
    }
    panic!("{} got no presence of {}", viewer.user_id, user.user_id);
}

/// Whether `viewer`'s initial sync carries `user`'s presence.
async fn initial_sees(s: &TestServer, viewer: &User, user: &User) -> bool {
    let (_, events) = sync(s, viewer, None, 0).await;
    presence_of(&events, user).is_some()
}

async fn get_status(s: &TestServer, viewer: &User, user: &User) -> (u16, Value) {
    s.get(&status_path(user), Some(&viewer.token)).await
}

/// Checks what `viewer` sees of `owner` (who is online with status "here") everywhere:
/// GET status, initial sync, and an incremental sync after a status change.
async fn assert_view(s: &TestServer, owner: &User, viewer: &User, get: bool, sync_carries: bool) {
    let (st, body) = get_status(s, viewer, owner).await;
    if get {
        assert_eq!(
            st, 200,
            "{} should GET {}: {body}",
            viewer.user_id, owner.user_id
        );
        assert_eq!(body["presence"], "online");
    } else {
        assert_eq!(
            st, 403,
            "{} must not GET {}: {body}",
            viewer.user_id, owner.user_id
        );
        assert_eq!(body["errcode"], "M_FORBIDDEN");
    }
    assert_eq!(
        initial_sees(s, viewer, owner).await,
        sync_carries,
        "initial sync of {} carrying {}",
        viewer.user_id,
        owner.user_id
    );
}

#[tokio::test]
async fn versions_advertise_the_unstable_flag() {
    let s = TestServer::start().await;
    let (st, v) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(st, 200);
    assert_eq!(v["unstable_features"][UNSTABLE], true);
}

#[tokio::test]
async fn bad_configs_are_rejected_naming_the_entry_and_nothing_is_stored() {
    let s = TestServer::start().await;
    let u = s.register("u").await;
    let long = format!("@{}:localhost", "a".repeat(260));
    let many: Vec<String> = (0..1001).map(|i| format!("@u{i}:localhost")).collect();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"allowed_users": "@a:localhost"}),
            "`allowed_users` must be an array",
        ),
        (
            json!({"denied_users": null}),
            "`denied_users` must be an array",
        ),
        (
            json!({"allowed_users": ["@a:localhost", 7]}),
            "`allowed_users[1]` must be a string",
        ),
        (
            json!({"denied_users": ["alice"]}),
            "`denied_users[0]` \"alice\" is neither",
        ),
        (
            json!({"allowed_users": ["@:"]}),
            "`allowed_users[0]` \"@:\" is not a valid user ID",
        ),
        (
            json!({"allowed_users": ["!"]}),
            "`allowed_users[0]` \"!\" is not a valid room ID",
        ),
        (
            json!({"denied_users": ["@a:localhost", "!room:"]}),
            "`denied_users[1]` \"!room:\" is not a valid room ID",
        ),
        (json!({"allowed_users": [long]}), "`allowed_users[0]`"),
        (
            json!({"denied_users": many}),
            "`denied_users` has 1001 entries",
        ),
        (json!([1, 2]), "must be a JSON object"),
    ];
    for event_type in [STABLE, UNSTABLE] {
        for (content, expected) in &cases {
            let (st, body) = s
                .put(
                    &config_path(&u, event_type),
                    Some(&u.token),
                    content.clone(),
                )
                .await;
            assert_eq!(st, 400, "{event_type} {content}: {body}");
            assert_eq!(body["errcode"], "M_BAD_JSON");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
        }
        if event_type == STABLE {
            // The long entry's error says how long it is.
            let (_, body) = s
                .put(
                    &config_path(&u, event_type),
                    Some(&u.token),
                    json!({"allowed_users": [format!("@{}:localhost", "a".repeat(260))]}),
                )
                .await;
            assert!(
                body["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("271 bytes"),
                "{body}"
            );
        }
        let (st, _) = s.get(&config_path(&u, event_type), Some(&u.token)).await;
        assert_eq!(st, 404, "nothing stored for {event_type}");
    }
    // A valid one is stored and reads back as written.
    let good = json!({"allowed_users": ["@a:localhost", "@b*:localhost", "!r:localhost"], "x": 1});
    set_config(&s, &u, STABLE, good.clone()).await;
    let (st, body) = s.get(&config_path(&u, STABLE), Some(&u.token)).await;
    assert_eq!((st, body), (200, good));
}

#[tokio::test]
async fn the_drafts_example() {
    // MSC4325's example, with example.org as this server:
    // allowed @alice, @b*, @*:matrix.org and a room; denied @bob.
    let s = TestServer::start().await;
    let u = s.register("u").await;
    let alice = s.register("alice").await; // named, no shared room
    let bea = s.register("bea").await; // glob, no shared room
    let bob = s.register("bob").await; // shares a room, denied by ID
    let carol = s.register("carol").await; // in the listed room
    let frank = s.register("frank").await; // shares an unlisted room
    let dave = s.register("dave").await; // nothing in common
    let listed = room_with(&s, &u, &[&carol]).await;
    room_with(&s, &u, &[&bob, &frank]).await;
    set_config(
        &s,
        &u,
        STABLE,
        json!({
            "allowed_users": ["@alice:localhost", "@b*:localhost", "@*:matrix.org", listed],
            "denied_users": ["@bob:localhost"],
        }),
    )
    .await;
    set_status(&s, &u, "online", Some("here")).await;
    assert_view(&s, &u, &alice, true, true).await;
    // A glob reaches bea for GET; her sync does not carry U (globs are not enumerated).
    assert_view(&s, &u, &bea, true, false).await;
    assert_view(&s, &u, &bob, false, false).await;
    assert_view(&s, &u, &carol, true, true).await;
    assert_view(&s, &u, &frank, true, true).await;
    assert_view(&s, &u, &dave, false, false).await;
    // Incrementally too: alice gets U's next change, bob does not.
    let (a_since, _) = sync(&s, &alice, None, 0).await;
    let (b_since, _) = sync(&s, &bob, None, 0).await;
    set_status(&s, &u, "unavailable", Some("away")).await;
    let (c, _) = next_presence_of(&s, &alice, &a_since, &u).await;
    assert_eq!(
        (c["presence"].as_str(), c["status_msg"].as_str()),
        (Some("unavailable"), Some("away"))
    );
    let (_, events) = sync(&s, &bob, Some(&b_since), 1000).await;
    assert!(presence_of(&events, &u).is_none(), "{events:?}");
}

#[tokio::test]
async fn default_deny_with_an_exception() {
    let s = TestServer::start().await;
    let u = s.register("u").await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    room_with(&s, &u, &[&bob]).await;
    set_config(
        &s,
        &u,
        STABLE,
        json!({"denied_users": ["@*:*"], "allowed_users": ["@alice:localhost"]}),
    )
    .await;
    set_status(&s, &u, "online", Some("here")).await;
    assert_view(&s, &u, &alice, true, true).await;
    assert_view(&s, &u, &bob, false, false).await;
    // U always sees themself.
    assert_eq!(get_status(&s, &u, &u).await.0, 200);
    assert!(initial_sees(&s, &u, &u).await);
}

#[tokio::test]
async fn server_exceptions() {
    let s = TestServer::start().await;
    let u = s.register("u").await;
    let bob = s.register("bob").await;
    let alice = s.register("alice").await;
    room_with(&s, &u, &[&bob, &alice]).await;
    set_status(&s, &u, "online", Some("here")).await;
    // A server glob allowed beats the catch-all deny (more literal characters).
    set_config(
        &s,
        &u,
        STABLE,
        json!({"denied_users": ["@*:*"], "allowed_users": ["@*:localhost"]}),
    )
    .await;
    assert_view(&s, &u, &bob, true, true).await;
    // A whole server denied, with one user excepted by ID.
    set_config(
        &s,
        &u,
        STABLE,
        json!({"denied_users": ["@*:localhost"], "allowed_users": ["@alice:localhost", "@*:*"]}),
    )
    .await;
    assert_view(&s, &u, &bob, false, false).await;
    assert_view(&s, &u, &alice, true, true).await;
}

#[tokio::test]
async fn a_denied_room_does_not_hide_someone_met_in_another_room() {
    let s = TestServer::start().await;
    let u = s.register("u").await;
    let carol = s.register("carol").await;
    let dave = s.register("dave").await;
    let big = room_with(&s, &u, &[&carol, &dave]).await;
    room_with(&s, &u, &[&carol]).await;
    set_config(&s, &u, STABLE, json!({"denied_users": [big]})).await;
    set_status(&s, &u, "online", Some("here")).await;
    assert_view(&s, &u, &carol, true, true).await;
    assert_view(&s, &u, &dave, false, false).await;
}

#[tokio::test]
async fn revocation_sends_one_final_offline_and_a_grant_the_current_state_at_once() {
    let s = TestServer::start().await;
    let u = s.register("u").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    room_with(&s, &u, &[&bob, &carol]).await;
    let (b0, _) = sync(&s, &bob, None, 0).await;
    set_status(&s, &u, "online", Some("hi")).await;
    let (c, b1) = next_presence_of(&s, &bob, &b0, &u).await;
    assert_eq!(c["presence"], "online");
    let (c1, _) = sync(&s, &carol, None, 0).await;

    // Revoke bob: a long-poll started before the change is woken with exactly one offline.
    let poll = {
        let s_url = s.url(&format!(
            "/_matrix/client/v3/sync?since={b1}&timeout=10000&set_presence=offline"
        ));
        let http = s.http.clone();
        let token = bob.token.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r: Value = http
                .get(s_url)
                .bearer_auth(token)
                .send()
                .await
                .expect("sync")
                .json()
                .await
                .expect("json");
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_config(&s, &u, STABLE, json!({"denied_users": ["@bob:localhost"]})).await;
    let (r, took) = poll.await.expect("join");
    assert!(
        took < Duration::from_secs(5),
        "woken, not timed out: {took:?}"
    );
    let events = r["presence"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        presence_of(&events, &u),
        Some(&json!({"presence": "offline"})),
        "exactly offline, no status_msg / last_active_ago: {events:?}"
    );
    let b2 = r["next_batch"].as_str().expect("next_batch").to_owned();
    // Carol's view did not change: nothing for her.
    let (_, events) = sync(&s, &carol, Some(&c1), 0).await;
    assert!(presence_of(&events, &u).is_none(), "{events:?}");
    // Afterwards bob sees nothing of U, however U changes.
    set_status(&s, &u, "unavailable", Some("away")).await;
    let (b3, events) = sync(&s, &bob, Some(&b2), 1000).await;
    assert!(presence_of(&events, &u).is_none(), "{events:?}");
    assert_eq!(get_status(&s, &bob, &u).await.0, 403);
    assert!(!initial_sees(&s, &bob, &u).await);

    // Grant again: bob gets the current state at once.
    set_config(&s, &u, STABLE, json!({})).await;
    let (c, _) = next_presence_of(&s, &bob, &b3, &u).await;
    assert_eq!(c["presence"], "unavailable");
    assert_eq!(c["status_msg"], "away");
    assert_eq!(get_status(&s, &bob, &u).await.0, 200);
}

#[tokio::test]
async fn the_stable_type_wins_over_the_unstable_one() {
    let s = TestServer::start().await;
    let u = s.register("u").await;
    let bob = s.register("bob").await;
    room_with(&s, &u, &[&bob]).await;
    set_status(&s, &u, "online", Some("here")).await;
    set_config(
        &s,
        &u,
        UNSTABLE,
        json!({"denied_users": ["@bob:localhost"]}),
    )
    .await;
    assert_view(&s, &u, &bob, false, false).await;
    set_config(&s, &u, STABLE, json!({"allowed_users": ["@bob:localhost"]})).await;
    assert_view(&s, &u, &bob, true, true).await;
    set_config(&s, &u, UNSTABLE, json!({"denied_users": ["@*:*"]})).await;
    assert_view(&s, &u, &bob, true, true).await;
}

#[tokio::test]
async fn leaving_the_last_shared_room_ends_with_a_final_offline() {
    let s = TestServer::start().await;
    let u = s.register("u").await;
    let bob = s.register("bob").await;
    let room = room_with(&s, &u, &[&bob]).await;
    set_status(&s, &u, "online", Some("hi")).await;
    let (since, events) = sync(&s, &bob, None, 0).await;
    assert_eq!(
        presence_of(&events, &u).expect("sees u")["presence"],
        "online"
    );
    let (st, body) = s
        .post(
            &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (c, since) = next_presence_of(&s, &bob, &since, &u).await;
    assert_eq!(c, json!({"presence": "offline"}));
    set_status(&s, &u, "online", Some("still here")).await;
    let (_, events) = sync(&s, &bob, Some(&since), 1000).await;
    assert!(presence_of(&events, &u).is_none(), "{events:?}");
    assert_eq!(get_status(&s, &bob, &u).await.0, 403);
}

#[tokio::test]
async fn configs_survive_a_restart() {
    let mut s = TestServer::start().await;
    let u = s.register("u").await;
    let bob = s.register("bob").await;
    let alice = s.register("alice").await;
    room_with(&s, &u, &[&bob]).await;
    set_config(
        &s,
        &u,
        UNSTABLE,
        json!({"denied_users": ["@bob:localhost"], "allowed_users": ["@alice:localhost"]}),
    )
    .await;
    set_status(&s, &u, "online", Some("here")).await;
    s.kill9_and_restart().await;
    set_status(&s, &u, "online", Some("back")).await;
    assert_eq!(get_status(&s, &bob, &u).await.0, 403);
    assert!(!initial_sees(&s, &bob, &u).await);
    assert_eq!(get_status(&s, &alice, &u).await.0, 200);
    assert!(initial_sees(&s, &alice, &u).await);
}

#[tokio::test]
async fn the_audience_preview() {
    let s = TestServer::start().await;
    let u = s.register("u").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    let alice = s.register("alice").await;
    room_with(&s, &u, &[&bob, &carol]).await;
    // Unauthenticated: 401.
    let (st, _) = s.get(AUDIENCE, None).await;
    assert_eq!(st, 401);
    // No config: everyone sharing a room.
    let (st, a) = s.get(AUDIENCE, Some(&u.token)).await;
    assert_eq!(st, 200, "{a}");
    assert_eq!(a["policy"], "default");
    assert_eq!(a["local_users"], json!([bob.user_id, carol.user_id]));
    assert_eq!(a["local_user_count"], 2);
    assert_eq!(a["remote_servers"], json!({}));
    set_config(
        &s,
        &u,
        STABLE,
        json!({"denied_users": ["@carol:localhost"], "allowed_users": ["@alice:localhost", "@z*:localhost"]}),
    )
    .await;
    let (_, a) = s.get(&format!("{AUDIENCE}?limit=1"), Some(&u.token)).await;
    assert_eq!(a["policy"], "config");
    assert_eq!(a["local_users"], json!([alice.user_id]));
    assert_eq!(a["local_user_count"], 2);
    assert_eq!(a["limited"], true);
    assert_eq!(a["allowed_globs"], json!(["@z*:localhost"]));
    // Preview a candidate: nothing stored, nothing changes.
    let (st, p) = s
        .post(
            AUDIENCE,
            Some(&u.token),
            json!({"denied_users": ["@bob:localhost"]}),
        )
        .await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["local_users"], json!([carol.user_id]));
    assert_eq!(p["changes"]["gained"], json!([carol.user_id]));
    assert_eq!(p["changes"]["lost"], json!([alice.user_id, bob.user_id]));
    assert_eq!(p["changes"]["lost_count"], 2);
    let (_, a) = s.get(AUDIENCE, Some(&u.token)).await;
    assert_eq!(a["local_users"], json!([alice.user_id, bob.user_id]));
    // An invalid candidate is rejected like the PUT.
    let (st, e) = s
        .post(
            AUDIENCE,
            Some(&u.token),
            json!({"allowed_users": ["carol"]}),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(e["errcode"], "M_BAD_JSON");
    assert!(
        e["error"]
            .as_str()
            .unwrap_or_default()
            .contains("\"carol\""),
        "{e}"
    );
    // Bob's own audience is unaffected by U's config.
    let (_, b) = s.get(AUDIENCE, Some(&bob.token)).await;
    assert_eq!(b["local_users"], json!([carol.user_id, u.user_id]));
}

#[tokio::test]
async fn several_rooms_and_configs_every_pair_sees_what_the_rule_says() {
    // Rooms: R1 {a, b, c}, R2 {b, c, d}, R3 {a, d}.
    // a denies R1 → only d (via R3) sees a.
    // b denies everyone but d (by ID) → only d.
    // c has no config → everyone sharing a room: a, b, d.
    // d denies a by ID → b, c.
    let s = TestServer::start().await;
    let a = s.register("a").await;
    let b = s.register("b").await;
    let c = s.register("c").await;
    let d = s.register("d").await;
    let r1 = room_with(&s, &a, &[&b, &c]).await;
    room_with(&s, &b, &[&c, &d]).await;
    room_with(&s, &a, &[&d]).await;
    set_config(&s, &a, STABLE, json!({"denied_users": [r1]})).await;
    set_config(
        &s,
        &b,
        UNSTABLE,
        json!({"denied_users": ["@*:*"], "allowed_users": ["@d:localhost"]}),
    )
    .await;
    set_config(&s, &d, STABLE, json!({"denied_users": ["@a:localhost"]})).await;
    let users = [&a, &b, &c, &d];
    let sees = |owner: &str, viewer: &str| -> bool {
        matches!(
            (owner, viewer),
            ("a", "d")
                | ("b", "d")
                | ("c", "a")
                | ("c", "b")
                | ("c", "d")
                | ("d", "b")
                | ("d", "c")
        )
    };
    let name = |u: &User| u.user_id[1..2].to_owned();
    let mut since = Vec::new();
    for v in users {
        since.push(sync(&s, v, None, 0).await.0);
    }
    for owner in users {
        set_status(&s, owner, "online", Some("here")).await;
    }
    for owner in users {
        for viewer in users {
            if owner.user_id == viewer.user_id {
                continue;
            }
            let expected = sees(&name(owner), &name(viewer));
            assert_view(&s, owner, viewer, expected, expected).await;
        }
    }
    // Incrementally: each viewer's sync since before the updates carries exactly the owners
    // the rule allows.
    for (i, viewer) in users.iter().enumerate() {
        let (_, events) = sync(&s, viewer, Some(&since[i]), 0).await;
        let mut got: Vec<String> = events
            .iter()
            .filter_map(|e| e["sender"].as_str())
            .filter(|sender| *sender != viewer.user_id)
            .map(|sender| sender[1..2].to_owned())
            .collect();
        got.sort();
        let expected: Vec<String> = users
            .iter()
            .map(|o| name(o))
            .filter(|o| *o != name(viewer) && sees(o, &name(viewer)))
            .collect();
        assert_eq!(got, expected, "incremental sync of {}", viewer.user_id);
    }
}

#[tokio::test]
async fn ignored_users_never_see_the_owner_and_get_a_final_offline() {
    let s = TestServer::start().await;
    let u = s.register("u").await;
    let bob = s.register("bob").await;
    let carol = s.register("carol").await;
    room_with(&s, &u, &[&bob, &carol]).await;
    let (b0, _) = sync(&s, &bob, None, 0).await;
    set_status(&s, &u, "online", Some("hi")).await;
    let (_, b1) = next_presence_of(&s, &bob, &b0, &u).await;
    // U ignores bob (plain m.ignored_user_list, no sharing config): bob's view ends with
    // exactly one offline, carol is unaffected.
    set_config(
        &s,
        &u,
        "m.ignored_user_list",
        json!({"ignored_users": {"@bob:localhost": {}}}),
    )
    .await;
    let (c, b2) = next_presence_of(&s, &bob, &b1, &u).await;
    assert_eq!(c, json!({"presence": "offline"}));
    set_status(&s, &u, "unavailable", Some("away")).await;
    let (_, events) = sync(&s, &bob, Some(&b2), 1000).await;
    assert!(presence_of(&events, &u).is_none(), "{events:?}");
    assert_eq!(get_status(&s, &bob, &u).await.0, 403);
    assert!(!initial_sees(&s, &bob, &u).await);
    assert_eq!(get_status(&s, &carol, &u).await.0, 200);
    // The ignore list is applied again after a restart.
    let mut s = s;
    s.kill9_and_restart().await;
    assert_eq!(get_status(&s, &bob, &u).await.0, 403);
    // Un-ignoring gives bob the current state at once.
    let (b3, _) = sync(&s, &bob, None, 0).await;
    set_config(&s, &u, "m.ignored_user_list", json!({"ignored_users": {}})).await;
    let (c, _) = next_presence_of(&s, &bob, &b3, &u).await;
    assert_eq!(c["presence"], "unavailable");
    assert_eq!(get_status(&s, &bob, &u).await.0, 200);
}
