//! What clients look up, through the real binary: `/search` (keys, AND of words, rank and
//! recent order, `next_batch`, context, history visibility, redactions), relations and
//! threads (pagination both ways, sync tokens, bundled aggregations), the user directory
//! (shared and public rooms, global names only, `limited`, membership and join-rule
//! changes, a restart) and content reports.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{TestServer, User, enc};
use serde_json::{Value, json};

const V3: &str = "/_matrix/client/v3";
const V1: &str = "/_matrix/client/v1";

static TXN: AtomicU64 = AtomicU64::new(0);

async fn send(s: &TestServer, u: &User, room: &str, kind: &str, content: Value) -> String {
    let txn = TXN.fetch_add(1, Ordering::Relaxed);
    let (st, body) = s
        .put(
            &format!("{V3}/rooms/{}/send/{kind}/t{txn}", enc(room)),
            Some(&u.token),
            content,
        )
        .await;
    assert_eq!(st, 200, "send: {body}");
    body["event_id"].as_str().expect("event_id").to_owned()
}

async fn msg(s: &TestServer, u: &User, room: &str, body: &str) -> String {
    send(
        s,
        u,
        room,
        "m.room.message",
        json!({"msgtype": "m.text", "body": body}),
    )
    .await
}

async fn search(s: &TestServer, u: &User, room_events: Value, next: Option<&str>) -> (u16, Value) {
    let q = next
        .map(|n| format!("?next_batch={}", enc(n)))
        .unwrap_or_default();
    let (st, body) = s
        .post(
            &format!("{V3}/search{q}"),
            Some(&u.token),
            json!({"search_categories": {"room_events": room_events}}),
        )
        .await;
    (st, body["search_categories"]["room_events"].clone())
}

fn ids(v: &Value, path: &str) -> Vec<String> {
    v.pointer(path)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    e.get("result")
                        .unwrap_or(e)
                        .get("event_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn search_finds_visible_events_by_every_word_with_pages_and_context() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(
            &alice,
            json!({"preset": "private_chat", "topic": "Gardening"}),
        )
        .await;
    let mut sent = Vec::new();
    for i in 0..12 {
        sent.push(msg(&s, &alice, &room, &format!("Message number {i}")).await);
    }
    let hello = msg(&s, &alice, &room, "hello, world").await;
    let filter = json!({"rooms": [room]});

    // Every word must occur; the result carries the event.
    let (st, r) = search(
        &s,
        &alice,
        json!({"search_term": "WORLD hello", "keys": ["content.body"], "filter": filter}),
        None,
    )
    .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["count"], 1);
    assert_eq!(r["results"][0]["result"]["event_id"], hello.as_str());
    assert_eq!(r["results"][0]["result"]["content"]["body"], "hello, world");

    // Recent order pages newest first, with context.
    let (_, r) = search(
        &s,
        &alice,
        json!({"search_term": "message", "order_by": "recent",
               "filter": {"rooms": [room], "limit": 5},
               "event_context": {"before_limit": 1, "after_limit": 1}}),
        None,
    )
    .await;
    assert_eq!(r["count"], 12);
    assert_eq!(
        ids(&r, "/results"),
        sent[7..].iter().rev().cloned().collect::<Vec<_>>()
    );
    assert_eq!(
        r["results"][1]["context"]["events_before"][0]["event_id"],
        sent[9].as_str()
    );
    assert_eq!(
        r["results"][1]["context"]["events_after"][0]["event_id"],
        sent[11].as_str()
    );
    let mut seen = ids(&r, "/results");
    let mut next = r["next_batch"].as_str().map(str::to_owned);
    while let Some(n) = next {
        let (st, r) = search(
            &s,
            &alice,
            json!({"search_term": "message", "order_by": "recent",
                   "filter": {"rooms": [room], "limit": 5}}),
            Some(&n),
        )
        .await;
        assert_eq!(st, 200);
        seen.extend(ids(&r, "/results"));
        next = r["next_batch"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, sent.iter().rev().cloned().collect::<Vec<_>>());

    // Rank order pages by offset and finds the same set.
    let mut ranked = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let (_, r) = search(
            &s,
            &alice,
            json!({"search_term": "number", "filter": {"rooms": [room], "limit": 7}}),
            next.as_deref(),
        )
        .await;
        ranked.extend(ids(&r, "/results"));
        match r["next_batch"].as_str() {
            Some(n) => next = Some(n.to_owned()),
            None => break,
        }
    }
    ranked.sort();
    let mut all = sent.clone();
    all.sort();
    assert_eq!(ranked, all);

    // A full last page still has a `next_batch` (as Synapse); the page after it is empty
    // and has none.
    let page = |n: Option<String>| {
        let s = &s;
        let alice = &alice;
        let room = room.clone();
        async move {
            search(
                s,
                alice,
                json!({"search_term": "message", "order_by": "recent",
                       "filter": {"rooms": [room], "limit": 6}}),
                n.as_deref(),
            )
            .await
            .1
        }
    };
    let first = page(None).await;
    let second = page(first["next_batch"].as_str().map(str::to_owned)).await;
    assert_eq!(ids(&second, "/results").len(), 6);
    let n = second["next_batch"].as_str().map(str::to_owned);
    assert!(n.is_some(), "{second}");
    let third = page(n).await;
    assert_eq!(ids(&third, "/results").len(), 0);
    assert!(third.get("next_batch").is_none(), "{third}");

    // Topics are searched under content.topic only.
    let (_, r) = search(
        &s,
        &alice,
        json!({"search_term": "gardening", "keys": ["content.body"]}),
        None,
    )
    .await;
    assert_eq!(r["count"], 0);
    let (_, r) = search(
        &s,
        &alice,
        json!({"search_term": "gardening", "keys": ["content.topic"], "include_state": true}),
        None,
    )
    .await;
    assert_eq!(r["count"], 1);
    assert!(
        r["state"][room.as_str()]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );

    // Bob is not in the room: he finds nothing.
    let (_, r) = search(&s, &bob, json!({"search_term": "hello"}), None).await;
    assert_eq!(r["results"].as_array().map(Vec::len), Some(0));

    // A redacted event leaves the results.
    let (st, _) = s
        .put(
            &format!("{V3}/rooms/{}/redact/{}/r1", enc(&room), enc(&hello)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, r) = search(&s, &alice, json!({"search_term": "hello"}), None).await;
    assert_eq!(r["count"], 0);

    // History visibility: with `joined`, Bob (joining later) finds only what came after.
    let (st, _) = s
        .put(
            &format!("{V3}/rooms/{}/state/m.room.history_visibility/", enc(&room)),
            Some(&alice.token),
            json!({"history_visibility": "joined"}),
        )
        .await;
    assert_eq!(st, 200);
    msg(&s, &alice, &room, "secret plan").await;
    s.post(
        &format!("{V3}/rooms/{}/invite", enc(&room)),
        Some(&alice.token),
        json!({"user_id": bob.user_id}),
    )
    .await;
    let (st, _) = s
        .post(
            &format!("{V3}/join/{}", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let later = msg(&s, &alice, &room, "plan revealed").await;
    let (_, r) = search(&s, &bob, json!({"search_term": "plan"}), None).await;
    assert_eq!(ids(&r, "/results"), vec![later]);

    // Bad requests are Matrix errors.
    let (st, _) = search(
        &s,
        &alice,
        json!({"search_term": "x", "order_by": "sideways"}),
        None,
    )
    .await;
    assert_eq!(st, 400);
    let (st, _) = search(
        &s,
        &alice,
        json!({"search_term": "x", "keys": ["content.url"]}),
        None,
    )
    .await;
    assert_eq!(st, 400);
    let (st, _) = search(&s, &alice, json!({"search_term": "x"}), Some("garbage")).await;
    assert_eq!(st, 400);
    let (st, _) = s
        .post(
            &format!("{V3}/search"),
            Some(&alice.token),
            json!({"nope": 1}),
        )
        .await;
    assert_eq!(st, 400);
}

fn chunk_ids(v: &Value) -> Vec<String> {
    ids(v, "/chunk")
}

#[tokio::test]
async fn relations_and_threads_paginate_and_bundle() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let eve = s.register("eve").await;
    let room = s
        .create_room(&alice, json!({"preset": "public_chat"}))
        .await;
    let root = msg(&s, &alice, &room, "root").await;
    let (_, sync) = s
        .get(&format!("{V3}/sync?timeout=0"), Some(&alice.token))
        .await;
    let since = sync["next_batch"].as_str().expect("next_batch").to_owned();
    let thread = |i: usize| {
        json!({"msgtype": "m.text", "body": format!("reply {i}"),
               "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
    };
    let mut replies = Vec::new();
    for i in 0..6 {
        replies.push(send(&s, &alice, &room, "m.room.message", thread(i)).await);
    }
    let edit = send(
        &s,
        &alice,
        &room,
        "m.room.message",
        json!({"body": "* edited", "m.new_content": {"body": "edited"},
               "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
    )
    .await;
    let base = format!("{V1}/rooms/{}/relations/{}", enc(&room), enc(&root));

    // Backwards (default) in pages of 4.
    let (st, r) = s.get(&format!("{base}?limit=4"), Some(&alice.token)).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        chunk_ids(&r),
        vec![
            edit.clone(),
            replies[5].clone(),
            replies[4].clone(),
            replies[3].clone()
        ]
    );
    let next = r["next_batch"].as_str().expect("next_batch");
    let (_, r) = s
        .get(
            &format!("{base}?limit=4&from={}", enc(next)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(
        chunk_ids(&r),
        replies[..3].iter().rev().cloned().collect::<Vec<_>>()
    );
    assert!(r.get("next_batch").is_none());

    // Forwards from a sync token: only what came after it, oldest first.
    let (_, r) = s
        .get(
            &format!("{base}/m.thread?dir=f&limit=4&from={}", enc(&since)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(chunk_ids(&r), replies[..4].to_vec());
    let next = r["next_batch"].as_str().expect("next_batch");
    let (_, r) = s
        .get(
            &format!("{base}/m.thread?dir=f&limit=4&from={}", enc(next)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(chunk_ids(&r), replies[4..].to_vec());

    // Narrowed by event type.
    let (_, r) = s
        .get(
            &format!("{base}/m.replace/m.room.message"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(chunk_ids(&r), vec![edit.clone()]);
    let (_, r) = s
        .get(&format!("{base}/m.thread/m.dummy"), Some(&alice.token))
        .await;
    assert!(chunk_ids(&r).is_empty());

    // /event, /context and /messages bundle the aggregations too.
    let (st, e) = s
        .get(
            &format!("{V3}/rooms/{}/event/{}", enc(&room), enc(&root)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["unsigned"]["m.relations"]["m.thread"]["count"], 6, "{e}");
    assert_eq!(
        e["unsigned"]["m.relations"]["m.replace"]["event_id"],
        edit.as_str()
    );
    let (_, c) = s
        .get(
            &format!(
                "{V3}/rooms/{}/context/{}?limit=2",
                enc(&room),
                enc(&replies[0])
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(c["events_before"][0]["event_id"], root.as_str(), "{c}");
    assert_eq!(
        c["events_before"][0]["unsigned"]["m.relations"]["m.thread"]["count"],
        6
    );
    let (_, m) = s
        .get(
            &format!("{V3}/rooms/{}/messages?dir=b&limit=50", enc(&room)),
            Some(&alice.token),
        )
        .await;
    let root_in_messages = m["chunk"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["event_id"] == root.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        root_in_messages["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"],
        replies[5].as_str(),
        "{m}"
    );

    // /sync timelines bundle them as well.
    let (_, sync) = s
        .get(
            &format!(
                "{V3}/sync?timeout=0&filter={}",
                enc(r#"{"room": {"timeline": {"limit": 50}}}"#)
            ),
            Some(&alice.token),
        )
        .await;
    let root_in_sync = sync["rooms"]["join"][room.as_str()]["timeline"]["events"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["event_id"] == root.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        root_in_sync["unsigned"]["m.relations"]["m.thread"]["count"], 6,
        "{sync}"
    );

    // MSC3874 relation filters in /messages.
    let messages_with = |filter: &str| {
        format!(
            "{V3}/rooms/{}/messages?dir=b&limit=50&filter={}",
            enc(&room),
            enc(filter)
        )
    };
    let (st, m) = s
        .get(
            &messages_with(r#"{"org.matrix.msc3874.rel_types": ["m.thread"]}"#),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{m}");
    assert_eq!(
        chunk_ids(&m),
        replies.iter().rev().cloned().collect::<Vec<_>>()
    );
    let (_, m) = s
        .get(
            &messages_with(r#"{"org.matrix.msc3874.not_rel_types": ["m.thread"]}"#),
            Some(&alice.token),
        )
        .await;
    let left = chunk_ids(&m);
    assert!(left.contains(&root) && left.contains(&edit), "{m}");
    assert!(!replies.iter().any(|r| left.contains(r)));
    let (st, _) = s
        .get(
            &messages_with(r#"{"org.matrix.msc3874.rel_types": "m.thread"}"#),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 400);

    // /threads lists the roots with their bundled summaries, latest reply first.
    let (st, _) = s
        .post(
            &format!("{V3}/join/{}", enc(&room)),
            Some(&eve.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let other = msg(&s, &alice, &room, "other root").await;
    let o1 = send(
        &s,
        &eve,
        &room,
        "m.room.message",
        json!({"body": "x", "m.relates_to": {"rel_type": "m.thread", "event_id": other}}),
    )
    .await;
    let threads = format!("{V1}/rooms/{}/threads", enc(&room));
    let (st, r) = s.get(&threads, Some(&alice.token)).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(chunk_ids(&r), vec![other.clone(), root.clone()]);
    let t = &r["chunk"][1]["unsigned"]["m.relations"];
    assert_eq!(t["m.thread"]["count"], 6, "{t}");
    assert_eq!(
        t["m.thread"]["latest_event"]["event_id"],
        replies[5].as_str()
    );
    assert_eq!(t["m.thread"]["current_user_participated"], true);
    assert_eq!(t["m.replace"]["event_id"], edit.as_str());
    assert_eq!(
        r["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"],
        o1.as_str()
    );
    // Eve took part only in the other thread.
    let (_, r) = s
        .get(&format!("{threads}?include=participated"), Some(&eve.token))
        .await;
    assert_eq!(chunk_ids(&r), vec![other.clone()]);
    // Pages of one.
    let (_, r) = s
        .get(&format!("{threads}?limit=1"), Some(&alice.token))
        .await;
    assert_eq!(chunk_ids(&r), vec![other.clone()]);
    let next = r["next_batch"].as_str().expect("next_batch");
    let (_, r) = s
        .get(
            &format!("{threads}?limit=1&from={}", enc(next)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(chunk_ids(&r), vec![root.clone()]);
    assert!(r.get("next_batch").is_none(), "{r}");
    // A new reply moves the first thread back to the front.
    let newest = send(&s, &alice, &room, "m.room.message", thread(9)).await;
    let (_, r) = s.get(&threads, Some(&alice.token)).await;
    assert_eq!(chunk_ids(&r), vec![root.clone(), other.clone()]);
    assert_eq!(
        r["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"],
        newest.as_str()
    );

    // Outsiders see nothing; bad parameters are 400.
    let mallory = s.register("mallory").await;
    let private = s
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    let secret = msg(&s, &alice, &private, "secret").await;
    let (st, _) = s
        .get(
            &format!("{V1}/rooms/{}/relations/{}", enc(&private), enc(&secret)),
            Some(&mallory.token),
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .get(
            &format!("{V1}/rooms/{}/threads", enc(&private)),
            Some(&mallory.token),
        )
        .await;
    assert_eq!(st, 403);
    let (st, _) = s.get(&format!("{base}?dir=x"), Some(&alice.token)).await;
    assert_eq!(st, 400);
    let (st, _) = s.get(&format!("{base}?from=zzz"), Some(&alice.token)).await;
    assert_eq!(st, 400);
    let (st, _) = s
        .get(&format!("{threads}?include=some"), Some(&alice.token))
        .await;
    assert_eq!(st, 400);
}

async fn directory(s: &TestServer, u: &User, term: &str, limit: Option<u64>) -> Value {
    let mut body = json!({"search_term": term});
    if let Some(l) = limit {
        body["limit"] = json!(l);
    }
    let (st, r) = s
        .post(&format!("{V3}/user_directory/search"), Some(&u.token), body)
        .await;
    assert_eq!(st, 200, "{r}");
    r
}

fn user_ids(r: &Value) -> Vec<String> {
    r["results"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u["user_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn user_directory_shows_shared_and_public_room_members_by_global_name() {
    let mut s = TestServer::start().await;
    let alice = s.register("dir-alice").await;
    let bob = s.register("dir-bob").await;
    let eve = s.register("dir-eve").await;
    let (st, _) = s
        .put(
            &format!("{V3}/profile/{}/displayname", enc(&alice.user_id)),
            Some(&alice.token),
            json!({"displayname": "Alice Cooper"}),
        )
        .await;
    assert_eq!(st, 200);
    let public = s
        .create_room(
            &alice,
            json!({"visibility": "public", "preset": "public_chat"}),
        )
        .await;
    let private = s
        .create_room(
            &bob,
            json!({"preset": "private_chat", "invite": [alice.user_id]}),
        )
        .await;
    let (st, _) = s
        .post(
            &format!("{V3}/join/{}", enc(&private)),
            Some(&alice.token),
            json!({"displayname": "Freddy"}),
        )
        .await;
    assert_eq!(st, 200);

    // Eve finds Alice (public room) by name and by ID, not by her room-specific name.
    let r = directory(&s, &eve, "alice coo", None).await;
    assert_eq!(user_ids(&r), vec![alice.user_id.clone()]);
    assert_eq!(r["results"][0]["display_name"], "Alice Cooper");
    assert_eq!(r["limited"], false);
    assert_eq!(
        user_ids(&directory(&s, &eve, "dir-ali", None).await),
        vec![alice.user_id.clone()]
    );
    assert!(user_ids(&directory(&s, &eve, "Freddy", None).await).is_empty());
    // Bob shares only a private room with Alice: Alice finds him, Eve does not.
    assert_eq!(
        user_ids(&directory(&s, &alice, "bob", None).await),
        vec![bob.user_id.clone()]
    );
    assert!(user_ids(&directory(&s, &eve, "bob", None).await).is_empty());
    // limit and limited.
    let r = directory(&s, &alice, "dir", Some(1)).await;
    assert_eq!(user_ids(&r).len(), 1);
    assert_eq!(r["limited"], true);
    // A profile change is found under the new name.
    s.put(
        &format!("{V3}/profile/{}/displayname", enc(&alice.user_id)),
        Some(&alice.token),
        json!({"displayname": "Vincent"}),
    )
    .await;
    assert_eq!(
        user_ids(&directory(&s, &eve, "vincent", None).await),
        vec![alice.user_id.clone()]
    );
    assert!(user_ids(&directory(&s, &eve, "cooper", None).await).is_empty());
    // The directory is rebuilt on start.
    s.kill9_and_restart().await;
    assert_eq!(
        user_ids(&directory(&s, &eve, "vincent", None).await),
        vec![alice.user_id.clone()]
    );
    assert_eq!(
        user_ids(&directory(&s, &alice, "bob", None).await),
        vec![bob.user_id.clone()]
    );
    // The public room turns invite-only: Eve no longer finds Alice; Bob leaves: Alice no
    // longer finds him.
    let (st, _) = s
        .put(
            &format!("{V3}/rooms/{}/state/m.room.join_rules/", enc(&public)),
            Some(&alice.token),
            json!({"join_rule": "invite"}),
        )
        .await;
    assert_eq!(st, 200);
    assert!(user_ids(&directory(&s, &eve, "vincent", None).await).is_empty());
    s.post(
        &format!("{V3}/rooms/{}/leave", enc(&private)),
        Some(&bob.token),
        json!({}),
    )
    .await;
    assert!(user_ids(&directory(&s, &alice, "bob", None).await).is_empty());
    let (st, _) = s
        .post(
            &format!("{V3}/user_directory/search"),
            Some(&alice.token),
            json!({"limit": 3}),
        )
        .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn reports_need_a_visible_event_or_a_known_room() {
    let mut s = TestServer::start().await;
    // An admin, made with the CLI while the server is stopped.
    s.kill9();
    let out = std::process::Command::new(common::BIN)
        .args(["register-user", "--config"])
        .arg(s.config_path())
        .args(["root", "--password", "root-pw", "--admin"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.start_again().await;
    let (st, login) = s
        .post(
            &format!("{V3}/login"),
            None,
            json!({"type": "m.login.password", "user": "root", "password": "root-pw"}),
        )
        .await;
    assert_eq!(st, 200, "{login}");
    let admin_token = login["access_token"].as_str().expect("token").to_owned();
    let alice = s.register("alice").await;
    let mallory = s.register("mallory").await;
    let room = s
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    let ev = msg(&s, &alice, &room, "spam").await;
    let report = format!("{V3}/rooms/{}/report/{}", enc(&room), enc(&ev));
    let (st, r) = s
        .post(
            &report,
            Some(&alice.token),
            json!({"reason": "spam", "score": -100}),
        )
        .await;
    assert_eq!((st, r), (200, json!({})));
    let (st, _) = s
        .post(&report, Some(&alice.token), json!({"score": 5}))
        .await;
    assert_eq!(st, 400);
    let (st, _) = s
        .post(&report, Some(&mallory.token), json!({"reason": "x"}))
        .await;
    assert_eq!(st, 404, "not visible to mallory");
    let (st, _) = s
        .post(
            &format!("{V3}/rooms/{}/report/%24nope", enc(&room)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .post(
            &format!("{V3}/rooms/{}/report", enc(&room)),
            Some(&mallory.token),
            json!({"reason": "bad room"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .post(
            &format!("{V3}/rooms/{}/report", enc("!unknown:localhost")),
            Some(&mallory.token),
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(st, 404);

    // Admins list them, newest first; others may not.
    let list = "/_synapse/admin/v1/event_reports";
    let (st, _) = s.get(list, Some(&alice.token)).await;
    assert_eq!(st, 403);
    let (st, r) = s.get(list, Some(&admin_token)).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["total"], 2);
    assert_eq!(r["event_reports"][0]["reason"], "bad room");
    assert!(r["event_reports"][0]["event_id"].is_null());
    assert_eq!(r["event_reports"][1]["event_id"], ev.as_str());
    assert_eq!(r["event_reports"][1]["score"], -100);
    assert_eq!(r["event_reports"][1]["user_id"], alice.user_id.as_str());
    let (_, r) = s
        .get(&format!("{list}?limit=1&dir=f"), Some(&admin_token))
        .await;
    assert_eq!(r["event_reports"][0]["reason"], "spam");
    assert_eq!(r["next_token"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_state_events_carry_their_bundled_aggregations() {
    let s = TestServer::start().await;
    let alice = s.register("alice").await;
    let room = s
        .create_room(&alice, json!({"preset": "private_chat"}))
        .await;
    let (st, body) = s
        .put(
            &format!("{V3}/rooms/{}/state/m.room.topic", enc(&room)),
            Some(&alice.token),
            json!({"topic": "threads welcome"}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let topic = body["event_id"].as_str().expect("event_id").to_owned();
    for i in 0..2 {
        send(
            &s,
            &alice,
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": format!("about the topic {i}"),
                   "m.relates_to": {"rel_type": "m.thread", "event_id": topic}}),
        )
        .await;
    }
    for i in 0..3 {
        send(
            &s,
            &alice,
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": format!("later {i}")}),
        )
        .await;
    }
    // A timeline of 2: the topic change is in the state section, with its thread.
    let filter = json!({"room": {"timeline": {"limit": 2}}}).to_string();
    let (st, sync) = s
        .get(
            &format!("{V3}/sync?timeout=0&filter={}", enc(&filter)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{sync}");
    let joined = &sync["rooms"]["join"][room.as_str()];
    let in_state = joined["state"]["events"]
        .as_array()
        .expect("state")
        .iter()
        .find(|e| e["event_id"] == topic.as_str())
        .unwrap_or_else(|| panic!("topic in state: {joined}"))
        .clone();
    let thread = &in_state["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["count"], 2, "{in_state}");
    assert_eq!(thread["current_user_participated"], true);
    assert_eq!(
        thread["latest_event"]["content"]["body"], "about the topic 1",
        "{in_state}"
    );
}
