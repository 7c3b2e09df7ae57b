use super::*;
use crate::sharing::{IncomingRecipients, SharingConfig};
use proptest::prelude::*;
use ruma::{OwnedRoomId, RoomId, server_name, user_id};
use serde_json::{Value, json};

fn policy(content: Value) -> SharingPolicy {
    SharingPolicy::compile(&SharingConfig::from_json(&content).unwrap())
}

fn index(members: &[(&str, &str)]) -> AudienceIndex {
    let mut index = AudienceIndex::new();
    for (room, user) in members {
        index.apply_membership(
            &RoomId::parse(*room).unwrap(),
            &UserId::parse(*user).unwrap(),
            true,
        );
    }
    index
}

const LOCAL: &str = "home.org";

fn owner() -> &'static UserId {
    user_id!("@a:home.org")
}

#[test]
fn legacy_policy_routes_unrestricted_to_every_remote_server_in_a_room() {
    let idx = index(&[
        ("!r:home.org", "@a:home.org"),
        ("!r:home.org", "@b:home.org"),
        ("!r:home.org", "@x:one.org"),
        ("!r:home.org", "@y:two.org"),
    ]);
    let r = route_presence(
        owner(),
        server_name!("home.org"),
        &SharingPolicy::legacy(),
        &idx,
        |_| false,
    );
    assert_eq!(
        r.destinations
            .keys()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        ["one.org", "two.org"]
    );
    assert!(
        r.destinations
            .values()
            .all(|k| *k == RouteKind::Unrestricted)
    );
}

#[test]
fn restricted_update_skips_untrusted_server_with_a_disallowed_user() {
    let idx = index(&[
        ("!r:home.org", "@a:home.org"),
        ("!r:home.org", "@x:one.org"),
        ("!r:home.org", "@z:one.org"),
        ("!r:home.org", "@y:two.org"),
    ]);
    let p = policy(json!({"allowed_users": ["!r:home.org"], "denied_users": ["@z:one.org"]}));
    let untrusted = route_presence(owner(), server_name!("home.org"), &p, &idx, |_| false);
    // one.org would show it to @z, who is denied: nothing goes there.
    assert!(!untrusted.destinations.contains_key(server_name!("one.org")));
    assert_eq!(
        untrusted.destinations.get(server_name!("two.org")),
        Some(&RouteKind::Restricted(vec![vec!["@y:two.org".into()]]))
    );
    // Once one.org is known to honour the field it gets the update for @x only.
    let trusted = route_presence(owner(), server_name!("home.org"), &p, &idx, |s| {
        s == "one.org"
    });
    assert_eq!(
        trusted.destinations.get(server_name!("one.org")),
        Some(&RouteKind::Restricted(vec![vec!["@x:one.org".into()]]))
    );
    assert_eq!(
        trusted.viewers[server_name!("one.org")],
        BTreeSet::from([user_id!("@x:one.org").to_owned()])
    );
}

#[test]
fn only_self_and_denied_servers_get_nothing() {
    let idx = index(&[
        ("!r:home.org", "@a:home.org"),
        ("!r:home.org", "@x:one.org"),
    ]);
    let p = SharingPolicy::only_self();
    assert!(
        route_presence(owner(), server_name!("home.org"), &p, &idx, |_| true)
            .destinations
            .is_empty()
    );
    let p = policy(json!({"denied_users": ["@*:one.org"]}));
    assert!(
        route_presence(owner(), server_name!("home.org"), &p, &idx, |_| true)
            .destinations
            .is_empty()
    );
}

#[test]
fn allowed_recipients_are_chunked_at_256() {
    let mut members = vec![("!r:home.org".to_owned(), "@a:home.org".to_owned())];
    for i in 0..600 {
        members.push(("!r:home.org".into(), format!("@u{i}:one.org")));
    }
    let members: Vec<(&str, &str)> = members
        .iter()
        .map(|(r, u)| (r.as_str(), u.as_str()))
        .collect();
    let idx = index(&members);
    // A room grant, with a deny that keeps the glob from covering everyone.
    let p = policy(json!({"allowed_users": ["!r:home.org"], "denied_users": ["@u0:one.org"]}));
    let r = route_presence(owner(), server_name!("home.org"), &p, &idx, |_| true);
    let RouteKind::Restricted(chunks) = &r.destinations[server_name!("one.org")] else {
        panic!("restricted expected");
    };
    assert_eq!(
        chunks.iter().map(Vec::len).collect::<Vec<_>>(),
        [256, 256, 87]
    );
}

#[test]
fn revocation_sends_final_offline_and_new_viewers_get_current() {
    let p = policy(json!({"allowed_users": ["@x:one.org", "@y:two.org"]}));
    let idx = index(&[
        ("!r:home.org", "@a:home.org"),
        ("!r:home.org", "@x:one.org"),
        ("!r:home.org", "@y:two.org"),
    ]);
    let before = route_presence(owner(), server_name!("home.org"), &p, &idx, |s| {
        s == "one.org"
    });
    let p2 = policy(json!({"allowed_users": ["@y:two.org"], "denied_users": ["@x:one.org"]}));
    let after = route_presence(owner(), server_name!("home.org"), &p2, &idx, |s| {
        s == "one.org"
    });
    let change = routing_change(&before, &after, |s| s == "one.org");
    assert_eq!(
        change.final_offline.get(server_name!("one.org")),
        Some(&RouteKind::Restricted(vec![vec!["@x:one.org".into()]]))
    );
    assert!(change.send_current.is_empty());

    // A new remote user joins: their server gets current presence.
    let mut idx2 = idx.clone();
    idx2.apply_membership(
        &OwnedRoomId::try_from("!r:home.org").unwrap(),
        user_id!("@n:three.org"),
        true,
    );
    let legacy = SharingPolicy::legacy();
    let b = route_presence(owner(), server_name!("home.org"), &legacy, &idx, |_| false);
    let a = route_presence(owner(), server_name!("home.org"), &legacy, &idx2, |_| false);
    let change = routing_change(&b, &a, |_| false);
    assert_eq!(
        change.send_current,
        BTreeSet::from([server_name!("three.org").to_owned()])
    );
    assert!(change.final_offline.is_empty());
}

#[test]
fn untrusted_server_dropping_out_gets_unrestricted_final_offline() {
    let idx = index(&[
        ("!r:home.org", "@a:home.org"),
        ("!r:home.org", "@x:one.org"),
        ("!r:home.org", "@z:one.org"),
    ]);
    let before = route_presence(
        owner(),
        server_name!("home.org"),
        &SharingPolicy::legacy(),
        &idx,
        |_| false,
    );
    let p = policy(json!({"denied_users": ["@z:one.org"]}));
    let after = route_presence(owner(), server_name!("home.org"), &p, &idx, |_| false);
    assert!(after.destinations.is_empty());
    let change = routing_change(&before, &after, |_| false);
    assert_eq!(
        change.final_offline.get(server_name!("one.org")),
        Some(&RouteKind::Unrestricted)
    );
}

#[test]
fn an_ignored_user_makes_their_server_restricted_even_under_the_legacy_policy() {
    let idx = index(&[
        ("!r:home.org", "@a:home.org"),
        ("!r:home.org", "@x:one.org"),
        ("!r:home.org", "@z:one.org"),
        ("!r:home.org", "@y:two.org"),
    ]);
    let ignored = |u: &UserId| u == user_id!("@z:one.org");
    let legacy = SharingPolicy::legacy();
    // An untrusted one.org would show the update to @z: it gets nothing; two.org is untouched.
    let untrusted = route_presence_ignoring(
        owner(),
        server_name!("home.org"),
        &legacy,
        &idx,
        ignored,
        |_| false,
    );
    assert!(!untrusted.destinations.contains_key(server_name!("one.org")));
    assert_eq!(
        untrusted.destinations.get(server_name!("two.org")),
        Some(&RouteKind::Unrestricted)
    );
    // A trusted one.org gets it addressed to @x alone.
    let trusted = route_presence_ignoring(
        owner(),
        server_name!("home.org"),
        &legacy,
        &idx,
        ignored,
        |_| true,
    );
    assert_eq!(
        trusted.destinations.get(server_name!("one.org")),
        Some(&RouteKind::Restricted(vec![vec!["@x:one.org".to_owned()]]))
    );
    assert_eq!(
        trusted.viewers.get(server_name!("one.org")),
        Some(&BTreeSet::from([user_id!("@x:one.org").to_owned()]))
    );
    // Starting to ignore @z: an untrusted one.org gets a final offline for everyone there.
    let before = route_presence(owner(), server_name!("home.org"), &legacy, &idx, |_| false);
    let change = routing_change(&before, &untrusted, |_| false);
    assert_eq!(
        change.final_offline.get(server_name!("one.org")),
        Some(&RouteKind::Unrestricted)
    );
}

#[test]
fn a_glob_allowing_an_ignored_user_is_replaced_by_exact_ids() {
    let idx = index(&[
        ("!r:home.org", "@a:home.org"),
        ("!r:home.org", "@x:one.org"),
        ("!r:home.org", "@z:one.org"),
    ]);
    let p = policy(json!({"allowed_users": ["@*:one.org"], "denied_users": ["@*:*"]}));
    let r = route_presence_ignoring(
        owner(),
        server_name!("home.org"),
        &p,
        &idx,
        |u| u == user_id!("@z:one.org"),
        |_| true,
    );
    assert_eq!(
        r.destinations.get(server_name!("one.org")),
        Some(&RouteKind::Restricted(vec![vec!["@x:one.org".to_owned()]]))
    );
    // Ignoring the only user there: nothing is sent.
    let r = route_presence_ignoring(
        owner(),
        server_name!("home.org"),
        &p,
        &idx,
        |u| u.server_name() == "one.org",
        |_| true,
    );
    assert!(r.destinations.is_empty());
}

// ---- property test against an independent model ----

const USERS: [&str; 8] = [
    "@a:home.org",
    "@b:home.org",
    "@x:one.org",
    "@xy:one.org",
    "@z:one.org",
    "@y:two.org",
    "@yy:two.org",
    "@w:three.org",
];
const ROOMS: [&str; 3] = ["!r1:home.org", "!r2:home.org", "!r3:home.org"];
const ENTRIES: [&str; 9] = [
    "@x:one.org",
    "@z:one.org",
    "@y:two.org",
    "@w:three.org",
    "@x*:one.org",
    "@*:two.org",
    "!r1:home.org",
    "!r2:home.org",
    "!r3:home.org",
];

/// (room, user) joins; `None` = no config, else (allowed, denied) entry indices; trust bits.
type Scenario = (Vec<(usize, usize)>, Option<(Vec<usize>, Vec<usize>)>, u8);

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::collection::vec((0..ROOMS.len(), 1..USERS.len()), 0..14),
        proptest::option::of((
            proptest::collection::vec(0..ENTRIES.len(), 0..4),
            proptest::collection::vec(0..ENTRIES.len(), 0..3),
        )),
        any::<u8>(),
    )
}

/// The model: who at `server` shares a room with the owner; whether the server is routed;
/// and that the allowed_recipients of a routed restricted update admit exactly the users
/// there who may see the owner, among the candidates.
fn model_routed(
    server: &ServerName,
    p: &SharingPolicy,
    idx: &AudienceIndex,
    trusted: bool,
) -> (bool, BTreeSet<OwnedUserId>) {
    let on_server = USERS
        .iter()
        .map(|u| UserId::parse(*u).unwrap())
        .filter(|u| u.server_name() == server);
    let sharers: BTreeSet<OwnedUserId> = on_server
        .clone()
        .filter(|u| idx.shares_room(owner(), u))
        .collect();
    // Candidates: room sharers and users named exactly in allowed_users (a glob alone does
    // not make a server a destination: issue 17 item 3).
    let seeing: BTreeSet<OwnedUserId> = on_server
        .filter(|u| idx.shares_room(owner(), u) || p.explicitly_allowed_users().any(|e| e == *u))
        .filter(|u| p.may_see(owner(), u, idx))
        .collect();
    if p.is_legacy() {
        return (!sharers.is_empty(), sharers);
    }
    let routed = !seeing.is_empty() && (trusted || sharers.is_subset(&seeing));
    (routed, if trusted { seeing } else { sharers })
}

proptest! {
    #[test]
    fn routing_matches_model((members, config, trust) in scenario()) {
        let mut idx = AudienceIndex::new();
        idx.apply_membership(&RoomId::parse(ROOMS[0]).unwrap(), owner(), true);
        for (room, user) in &members {
            idx.apply_membership(&RoomId::parse(ROOMS[*room]).unwrap(), &UserId::parse(USERS[*user]).unwrap(), true);
        }
        let p = match &config {
            None => SharingPolicy::legacy(),
            Some((allowed, denied)) => policy(json!({
                "allowed_users": allowed.iter().map(|i| ENTRIES[*i]).collect::<Vec<_>>(),
                "denied_users": denied.iter().map(|i| ENTRIES[*i]).collect::<Vec<_>>(),
            })),
        };
        let servers = ["one.org", "two.org", "three.org"];
        let trusted = |s: &ServerName| servers.iter().position(|x| *x == s.as_str()).is_some_and(|i| trust & (1 << i) != 0);
        let local = ServerName::parse(LOCAL).unwrap();
        let r = route_presence(owner(), &local, &p, &idx, trusted);
        prop_assert!(!r.destinations.contains_key(&local));
        for s in servers {
            let s = ServerName::parse(s).unwrap();
            let (routed, viewers) = model_routed(&s, &p, &idx, trusted(&s));
            prop_assert_eq!(r.destinations.contains_key(&s), routed, "server {}", s);
            if !routed { continue; }
            prop_assert_eq!(&r.viewers[&s], &viewers);
            match &r.destinations[&s] {
                RouteKind::Unrestricted => prop_assert!(p.is_legacy()),
                RouteKind::Restricted(chunks) => {
                    let filter = IncomingRecipients::from_entries(chunks.iter().flatten().map(String::as_str));
                    // Never a leak: every user on that server the field admits may see the owner,
                    // and every viewer is admitted.
                    for u in USERS.iter().map(|u| UserId::parse(*u).unwrap()).filter(|u| u.server_name() == s) {
                        if filter.allows(&u) {
                            prop_assert!(p.may_see(owner(), &u, &idx) || !idx.shares_room(owner(), &u) && !p.explicitly_allowed_users().any(|e| e == u), "leak to {}", u);
                        }
                        if viewers.contains(&u) {
                            prop_assert!(filter.allows(&u), "viewer {} not admitted", u);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn revocation_offline_reaches_exactly_who_lost_sight(
        (members, config, trust) in scenario(),
        (members2, config2, _) in scenario(),
    ) {
        let build = |members: &Vec<(usize, usize)>| {
            let mut idx = AudienceIndex::new();
            idx.apply_membership(&RoomId::parse(ROOMS[0]).unwrap(), owner(), true);
            for (room, user) in members {
                idx.apply_membership(&RoomId::parse(ROOMS[*room]).unwrap(), &UserId::parse(USERS[*user]).unwrap(), true);
            }
            idx
        };
        let pol = |config: &Option<(Vec<usize>, Vec<usize>)>| match config {
            None => SharingPolicy::legacy(),
            Some((allowed, denied)) => policy(json!({
                "allowed_users": allowed.iter().map(|i| ENTRIES[*i]).collect::<Vec<_>>(),
                "denied_users": denied.iter().map(|i| ENTRIES[*i]).collect::<Vec<_>>(),
            })),
        };
        let servers = ["one.org", "two.org", "three.org"];
        let trusted = |s: &ServerName| servers.iter().position(|x| *x == s.as_str()).is_some_and(|i| trust & (1 << i) != 0);
        let local = ServerName::parse(LOCAL).unwrap();
        let before = route_presence(owner(), &local, &pol(&config), &build(&members), trusted);
        let after = route_presence(owner(), &local, &pol(&config2), &build(&members2), trusted);
        let change = routing_change(&before, &after, trusted);
        for s in servers {
            let s = ServerName::parse(s).unwrap();
            let old = before.viewers.get(&s).cloned().unwrap_or_default();
            let new = after.viewers.get(&s).cloned().unwrap_or_default();
            let lost: BTreeSet<_> = old.difference(&new).cloned().collect();
            match change.final_offline.get(&s) {
                Some(RouteKind::Restricted(chunks)) => {
                    let got: BTreeSet<String> = chunks.iter().flatten().cloned().collect();
                    prop_assert_eq!(got, lost.iter().map(|u| u.to_string()).collect::<BTreeSet<_>>());
                }
                Some(RouteKind::Unrestricted) => prop_assert!(!trusted(&s) && !lost.is_empty() && !after.destinations.contains_key(&s)),
                None => prop_assert!(lost.is_empty() || (!trusted(&s) && after.destinations.contains_key(&s))),
            }
            prop_assert_eq!(change.send_current.contains(&s), new.difference(&old).next().is_some());
        }
    }
}
