//! Durability: everything a client got a 200 for survives `kill -9` and a restart.
mod common;

use common::{TestServer, enc};
use serde_json::json;

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let mut s = TestServer::start().await;
    let alice = s.register("alice").await;
    let bob = s.register("bob").await;
    let room = s
        .create_room(&alice, json!({"preset": "public_chat", "name": "durable"}))
        .await;
    let (st, _) = s
        .post(
            &format!("/_matrix/client/v3/join/{}", enc(&room)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(st, 200);
    let mut sent = Vec::new();
    for i in 0..20 {
        let (st, body) = s
            .put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}",
                    enc(&room)
                ),
                Some(&alice.token),
                json!({"msgtype": "m.text", "body": format!("message {i}")}),
            )
            .await;
        assert_eq!(st, 200, "{body}");
        sent.push(body["event_id"].as_str().expect("event_id").to_owned());
    }
    let (st, _) = s
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.test",
                enc(&alice.user_id)
            ),
            Some(&alice.token),
            json!({"kept": true}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id)),
            Some(&alice.token),
            json!({"presence": "online", "status_msg": "surviving"}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _) = s
        .put(
            &format!(
                "/_matrix/client/v1/presence/{}/override",
                enc(&alice.user_id)
            ),
            Some(&alice.token),
            json!({"presence_override": "org.matrix.msc3026.busy"}),
        )
        .await;
    assert_eq!(st, 200);
    // Bob's status message has no override hiding it.
    let (st, _) = s
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&bob.user_id)),
            Some(&bob.token),
            json!({"presence": "unavailable", "status_msg": "also surviving"}),
        )
        .await;
    assert_eq!(st, 200);

    s.kill9_and_restart().await;

    // The old token still works, and login works.
    let (st, who) = s
        .get("/_matrix/client/v3/account/whoami", Some(&alice.token))
        .await;
    assert_eq!(st, 200, "{who}");
    assert_eq!(who["user_id"], alice.user_id.as_str());
    let (st, _) = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "password"}),
        )
        .await;
    assert_eq!(st, 200);
    // Every message is there, in order.
    let (st, msgs) = s
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                enc(&room)
            ),
            Some(&bob.token),
        )
        .await;
    assert_eq!(st, 200, "{msgs}");
    let got: Vec<&str> = msgs["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    let mut expected: Vec<&str> = sent.iter().map(String::as_str).collect();
    expected.reverse();
    assert_eq!(got, expected);
    // Membership and state.
    let (st, members) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
            Some(&bob.token),
        )
        .await;
    assert_eq!(st, 200);
    assert!(members["joined"].get(&bob.user_id).is_some(), "{members}");
    let (st, name) = s
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room)),
            Some(&bob.token),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(name["name"], "durable");
    // Account data.
    let (st, ad) = s
        .get(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.test",
                enc(&alice.user_id)
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(ad["kept"], true);
    // Presence: the override and the status message.
    let (st, ov) = s
        .get(
            &format!(
                "/_matrix/client/v1/presence/{}/override",
                enc(&alice.user_id)
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(ov["presence_override"], "org.matrix.msc3026.busy");
    let (st, presence) = s
        .get(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&bob.user_id)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(st, 200, "{presence}");
    assert_eq!(presence["status_msg"], "also surviving", "{presence}");
    assert_eq!(presence["presence"], "unavailable", "{presence}");
    // The override hides Alice's own status message (it replaces the whole visible
    // presence); clearing it shows the message stored before the restart.
    let (st, _) = s
        .put(
            &format!(
                "/_matrix/client/v1/presence/{}/override",
                enc(&alice.user_id)
            ),
            Some(&alice.token),
            json!({"presence_override": ""}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, presence) = s
        .get(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id)),
            Some(&bob.token),
        )
        .await;
    assert_eq!(st, 200, "{presence}");
    assert_eq!(presence["status_msg"], "surviving", "{presence}");
    // Sending with a used transaction ID still returns the original event (idempotency survives).
    let (st, again) = s
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/t0",
                enc(&room)
            ),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "message 0"}),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(again["event_id"], sent[0].as_str());
}
