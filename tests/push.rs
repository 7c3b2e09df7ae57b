//! Push through the real binary: every `/pushrules/` endpoint and its errors, `m.push_rules`
//! in `/sync` (and the wake-up a rule change gives), the `unread_notifications` counts each
//! default rule gives (mention, keyword, one-to-one, encrypted, suppressed notice) and their
//! reset by a receipt, thread counts, `GET /notifications`, and pushers.
mod common;

use common::{TestServer, User, enc};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";

async fn sync(s: &TestServer, u: &User, query: &str) -> Value {
    let (st, body) = s.get(&format!("{V3}/sync?{query}"), Some(&u.token)).await;
    assert_eq!(st, 200, "{body}");
    body
}

fn push_rules(r: &Value) -> Option<&Value> {
    r["account_data"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .map(|e| &e["content"]["global"])
}

async fn send(s: &TestServer, u: &User, room: &str, kind: &str, content: Value) -> String {
    let (st, body) = s
        .req(
            "PUT",
            &format!("{V3}/rooms/{}/send/{kind}/{}", enc(room), rand_txn()),
            Some(&u.token),
            Some(content),
        )
        .await;
    assert_eq!(st, 200, "send: {body}");
    body["event_id"].as_str().expect("event_id").to_owned()
}

fn rand_txn() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}", N.fetch_add(1, Ordering::Relaxed))
}

async fn join(s: &TestServer, u: &User, room: &str) {
    let (st, body) = s
        .post(
            &format!("{V3}/join/{}", enc(room)),
            Some(&u.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200, "join: {body}");
}

/// (notification_count, highlight_count) of `room` in an initial sync of `u`.
async fn counts(s: &TestServer, u: &User, room: &str) -> (u64, u64) {
    let r = sync(s, u, "timeout=0").await;
    let n = &r["rooms"]["join"][room]["unread_notifications"];
    (
        n["notification_count"]
            .as_u64()
            .expect("notification_count"),
        n["highlight_count"].as_u64().expect("highlight_count"),
    )
}

#[tokio::test]
async fn push_rule_endpoints_follow_the_spec() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let t = Some(alice.token.as_str());

    let (st, all) = s.get(&format!("{V3}/pushrules/"), t).await;
    assert_eq!(st, 200, "{all}");
    let overrides = all["global"]["override"].as_array().expect("override");
    for id in [
        ".m.rule.master",
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.is_room_mention",
    ] {
        assert!(overrides.iter().any(|r| r["rule_id"] == id), "{id} missing");
    }
    let (st, global) = s.get(&format!("{V3}/pushrules/global/"), t).await;
    assert_eq!(st, 200);
    assert_eq!(global, all["global"]);

    // Two content rules, the second placed before the first.
    let put = |id: &'static str, query: &'static str, body: Value| {
        let s = &s;
        async move {
            s.req(
                "PUT",
                &format!("{V3}/pushrules/global/content/{id}{query}"),
                t,
                Some(body),
            )
            .await
        }
    };
    let (st, b) = put(
        "cake",
        "",
        json!({"actions": ["notify"], "pattern": "cake"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = put(
        "pie",
        "?before=cake",
        json!({"actions": ["notify"], "pattern": "pie"}),
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (_, all) = s.get(&format!("{V3}/pushrules/"), t).await;
    let ids: Vec<&str> = all["global"]["content"]
        .as_array()
        .expect("content")
        .iter()
        .filter_map(|r| r["rule_id"].as_str())
        .collect();
    let (pie, cake) = (
        ids.iter().position(|i| *i == "pie"),
        ids.iter().position(|i| *i == "cake"),
    );
    assert!(pie < cake && cake.is_some(), "{ids:?}");
    let (st, rule) = s
        .get(&format!("{V3}/pushrules/global/content/cake"), t)
        .await;
    assert_eq!(st, 200);
    assert_eq!(rule["pattern"], "cake");
    assert_eq!(rule["enabled"], true);
    assert_eq!(rule["default"], false);

    // Errors.
    let (st, b) = put("x", "?after=nope", json!({"actions": [], "pattern": "x"})).await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (st, b) = put("x", "", json!({"actions": []})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")));
    let (st, b) = put("x", "", json!({"actions": "notify", "pattern": "x"})).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let (st, b) = s
        .req(
            "PUT",
            &format!("{V3}/pushrules/global/override/.m.rule.master"),
            t,
            Some(json!({"actions": []})),
        )
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s
        .get(&format!("{V3}/pushrules/device/content/cake"), t)
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s
        .get(&format!("{V3}/pushrules/global/postcontent/cake"), t)
        .await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (st, b) = s
        .req(
            "PUT",
            &format!("{V3}/pushrules/global/bogus/cake"),
            t,
            Some(json!({"actions": []})),
        )
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s
        .get(&format!("{V3}/pushrules/global/content/nope"), t)
        .await;
    assert_eq!((st, b["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let (st, b) = s
        .req(
            "DELETE",
            &format!("{V3}/pushrules/global/override/.m.rule.master"),
            t,
            None,
        )
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, _) = s.get(&format!("{V3}/pushrules/"), None).await;
    assert_eq!(st, 401);

    // enabled and actions, on a user rule and on a server-default one.
    let path = format!("{V3}/pushrules/global/override/.m.rule.suppress_notices");
    let (st, b) = s
        .put(&format!("{path}/enabled"), t, json!({"enabled": false}))
        .await;
    assert_eq!(st, 200, "{b}");
    let (_, b) = s.get(&format!("{path}/enabled"), t).await;
    assert_eq!(b, json!({"enabled": false}));
    let (st, _) = s
        .put(
            &format!("{path}/actions"),
            t,
            json!({"actions": ["notify"]}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, b) = s.get(&format!("{path}/actions"), t).await;
    assert_eq!(b, json!({"actions": ["notify"]}));
    let (st, b) = s
        .put(&format!("{path}/enabled"), t, json!({"enabled": "no"}))
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let (st, _) = s
        .put(
            &format!("{V3}/pushrules/global/content/nope/enabled"),
            t,
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(st, 404);

    // Delete a user rule; deleting it again is 404.
    let del = format!("{V3}/pushrules/global/content/pie");
    assert_eq!(s.req("DELETE", &del, t, None).await.0, 200);
    assert_eq!(s.req("DELETE", &del, t, None).await.0, 404);
    assert_eq!(s.get(&del, t).await.0, 404);
}

#[tokio::test]
async fn push_rules_come_down_sync_and_a_change_wakes_it() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let first = sync(&s, &alice, "timeout=0&set_presence=offline").await;
    let rules = push_rules(&first).expect("m.push_rules in the initial sync");
    assert!(rules["override"].is_array());
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    let waiting = {
        let (url, token) = (
            s.url(&format!(
                "{V3}/sync?since={since}&timeout=20000&set_presence=offline"
            )),
            alice.token.clone(),
        );
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("sync");
            r.json::<Value>().await.expect("json")
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (st, _) = s
        .put(
            &format!("{V3}/pushrules/global/room/{}", enc("!foo:example.com")),
            Some(&alice.token),
            json!({"actions": ["dont_notify"]}),
        )
        .await;
    assert_eq!(st, 200);
    let woken = waiting.await.expect("joined");
    let rules = push_rules(&woken).expect("m.push_rules in the incremental sync");
    assert_eq!(rules["room"][0]["rule_id"], "!foo:example.com");
}

#[tokio::test]
async fn default_rules_give_the_counts_and_a_receipt_resets_them() {
    let s = TestServer::start().await;
    let (alice, bob, carol) = (
        s.register("alice").await,
        s.register("bob").await,
        s.register("carol").await,
    );
    let room = s
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    join(&s, &bob, &room).await;
    join(&s, &carol, &room).await;
    assert_eq!(counts(&s, &bob, &room).await, (0, 0), "joins do not notify");

    // .m.rule.message: a plain message notifies.
    send(
        &s,
        &alice,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "hi"}),
    )
    .await;
    assert_eq!(counts(&s, &bob, &room).await, (1, 0));
    // .m.rule.suppress_notices: a notice does not.
    send(
        &s,
        &alice,
        &room,
        "m.room.message",
        json!({"msgtype": "m.notice", "body": "bot"}),
    )
    .await;
    assert_eq!(counts(&s, &bob, &room).await, (1, 0));
    // .m.rule.is_user_mention: highlights.
    send(
        &s,
        &alice,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "hey", "m.mentions": {"user_ids": [bob.user_id]}}),
    )
    .await;
    assert_eq!(counts(&s, &bob, &room).await, (2, 1));
    // .m.rule.encrypted: notifies, no highlight.
    send(
        &s,
        &alice,
        &room,
        "m.room.encrypted",
        json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x"}),
    )
    .await;
    assert_eq!(counts(&s, &bob, &room).await, (3, 1));
    // A keyword (a content rule bob adds) highlights.
    let (st, _) = s
        .put(
            &format!("{V3}/pushrules/global/content/cake"),
            Some(&bob.token),
            json!({"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await;
    assert_eq!(st, 200);
    let last = send(
        &s,
        &alice,
        &room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "who wants cake?"}),
    )
    .await;
    assert_eq!(counts(&s, &bob, &room).await, (4, 2));
    assert_eq!(
        counts(&s, &carol, &room).await,
        (4, 0),
        "no cake rule, not mentioned"
    );
    assert_eq!(counts(&s, &alice, &room).await, (0, 0), "own messages");

    // GET /notifications: newest first, only=highlight.
    let (st, n) = s
        .get(&format!("{V3}/notifications?limit=2"), Some(&bob.token))
        .await;
    assert_eq!(st, 200, "{n}");
    let list = n["notifications"].as_array().expect("list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["event"]["event_id"], last.as_str());
    assert_eq!(list[0]["read"], false);
    assert_eq!(list[0]["room_id"], room.as_str());
    let next = n["next_token"].as_str().expect("next_token");
    let (_, more) = s
        .get(&format!("{V3}/notifications?from={next}"), Some(&bob.token))
        .await;
    assert_eq!(more["notifications"].as_array().expect("list").len(), 2);
    let (_, hl) = s
        .get(
            &format!("{V3}/notifications?only=highlight"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(hl["notifications"].as_array().expect("list").len(), 2);

    // Bob's read receipt on the last event resets his counts, not carol's.
    let (st, _) = s
        .post(
            &format!("{V3}/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(counts(&s, &bob, &room).await, (0, 0));
    assert_eq!(counts(&s, &carol, &room).await, (4, 0));
    let (_, n) = s
        .get(&format!("{V3}/notifications"), Some(&bob.token))
        .await;
    assert!(
        n["notifications"]
            .as_array()
            .expect("list")
            .iter()
            .all(|x| x["read"] == true)
    );
    // A private receipt resets as well.
    let (st, _) = s
        .post(
            &format!(
                "{V3}/rooms/{}/receipt/m.read.private/{}",
                enc(&room),
                enc(&last)
            ),
            Some(&carol.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(counts(&s, &carol, &room).await, (0, 0));
}

#[tokio::test]
async fn one_to_one_rooms_notify_and_threads_split_on_request() {
    let s = TestServer::start().await;
    let (alice, bob) = (s.register("alice").await, s.register("bob").await);
    let dm = s
        .create_room(
            &alice,
            json!({"preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true}),
        )
        .await;
    join(&s, &bob, &dm).await;
    // .m.rule.room_one_to_one: notifies (with a sound) even for a message the
    // three-member rule set would treat the same; check the action.
    send(
        &s,
        &alice,
        &dm,
        "m.room.message",
        json!({"msgtype": "m.text", "body": "psst"}),
    )
    .await;
    assert_eq!(counts(&s, &bob, &dm).await, (1, 0));
    let (_, n) = s
        .get(&format!("{V3}/notifications"), Some(&bob.token))
        .await;
    let actions = &n["notifications"][0]["actions"];
    assert!(
        actions
            .as_array()
            .expect("actions")
            .iter()
            .any(|a| a["set_tweak"] == "sound"),
        "{actions}"
    );

    // Threads: split only when the filter asks.
    let root = send(&s, &alice, &dm, "m.room.message", json!({"body": "root"})).await;
    for _ in 0..2 {
        send(
            &s,
            &alice,
            &dm,
            "m.room.message",
            json!({"body": "in thread", "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        )
        .await;
    }
    assert_eq!(counts(&s, &bob, &dm).await, (4, 0));
    let filter = enc(r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#);
    let r = sync(&s, &bob, &format!("timeout=0&filter={filter}")).await;
    let section = &r["rooms"]["join"][&dm];
    assert_eq!(section["unread_notifications"]["notification_count"], 2);
    assert_eq!(
        section["unread_thread_notifications"][&root]["notification_count"],
        2
    );
    // A receipt in the main timeline leaves the thread unread.
    let (st, _) = s
        .post(
            &format!("{V3}/rooms/{}/receipt/m.read/{}", enc(&dm), enc(&root)),
            Some(&bob.token),
            json!({"thread_id": "main"}),
        )
        .await;
    assert_eq!(st, 200);
    let r = sync(&s, &bob, &format!("timeout=0&filter={filter}")).await;
    let section = &r["rooms"]["join"][&dm];
    assert_eq!(section["unread_notifications"]["notification_count"], 0);
    assert_eq!(
        section["unread_thread_notifications"][&root]["notification_count"],
        2
    );
}

#[tokio::test]
async fn pushers_are_stored_listed_and_removed() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let t = Some(alice.token.as_str());
    let (st, b) = s.get(&format!("{V3}/pushers"), t).await;
    assert_eq!((st, b), (200, json!({"pushers": []})));
    let pusher = json!({
        "pushkey": "abc", "kind": "http", "app_id": "org.example.app",
        "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
        "data": {"url": "https://push.example.org/_matrix/push/v1/notify", "format": "event_id_only"}
    });
    let (st, b) = s
        .post(&format!("{V3}/pushers/set"), t, pusher.clone())
        .await;
    assert_eq!(st, 200, "{b}");
    let (_, b) = s.get(&format!("{V3}/pushers"), t).await;
    assert_eq!(b["pushers"], json!([pusher]));
    let mut bad = pusher.clone();
    bad["data"]["url"] = json!("https://push.example.org/elsewhere");
    let (st, b) = s.post(&format!("{V3}/pushers/set"), t, bad).await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let (st, b) = s
        .post(&format!("{V3}/pushers/set"), t, json!({"pushkey": "abc"}))
        .await;
    assert_eq!((st, b["errcode"].as_str()), (400, Some("M_MISSING_PARAM")));
    let mut remove = pusher.clone();
    remove["kind"] = Value::Null;
    let (st, _) = s.post(&format!("{V3}/pushers/set"), t, remove).await;
    assert_eq!(st, 200);
    let (_, b) = s.get(&format!("{V3}/pushers"), t).await;
    assert_eq!(b, json!({"pushers": []}));
}
