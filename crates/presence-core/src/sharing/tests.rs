use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use ruma::{owned_room_id, room_id, server_name, user_id};
use serde_json::json;

use super::*;

/// Joined rooms per user, for the policy's room facts.
#[derive(Default, Clone, Debug)]
struct Rooms(BTreeMap<OwnedUserId, BTreeSet<OwnedRoomId>>);

impl Rooms {
    fn join(mut self, user: &UserId, room: &RoomId) -> Self {
        self.0
            .entry(user.to_owned())
            .or_default()
            .insert(room.to_owned());
        self
    }

    /// `(room, member)` pairs of `owner`'s rooms, as the federation side is given them.
    fn shared_members(&self, owner: &UserId) -> Vec<(OwnedRoomId, OwnedUserId)> {
        let owner_rooms = self.0.get(owner).cloned().unwrap_or_default();
        self.0
            .iter()
            .flat_map(|(user, rooms)| {
                rooms
                    .iter()
                    .filter(|r| owner_rooms.contains(*r))
                    .map(move |r| (r.clone(), user.clone()))
            })
            .collect()
    }
}

impl RoomFacts for Rooms {
    fn joined_rooms<'a>(&'a self, user: &'a UserId) -> impl Iterator<Item = &'a RoomId> + 'a {
        self.0.get(user).into_iter().flatten().map(|r| &**r)
    }

    fn is_joined(&self, user: &UserId, room: &RoomId) -> bool {
        self.0.get(user).is_some_and(|rooms| rooms.contains(room))
    }
}

fn policy(content: serde_json::Value) -> SharingPolicy {
    SharingPolicy::compile(&SharingConfig::from_json(&content).expect("valid config"))
}

fn owner() -> &'static UserId {
    user_id!("@u:example.org")
}

// ---- validation ---------------------------------------------------------------------------

#[test]
fn valid_config_parses_every_kind_of_entry() {
    let config = SharingConfig::from_json(&json!({
        "allowed_users": ["@alice:example.org", "@b*:example.org", "@*:matrix.org", "!co1dcoffee"],
        "denied_users": ["@bob:example.org", "!room:example.org"],
        "some_future_key": true,
    }))
    .unwrap();
    assert!(matches!(config.allowed_users[0], SharingEntry::User(_)));
    assert!(matches!(config.allowed_users[1], SharingEntry::UserGlob(_)));
    assert!(matches!(config.allowed_users[3], SharingEntry::Room(_)));
    assert_eq!(config.denied_users[1].as_str(), "!room:example.org");
    assert_eq!(
        SharingConfig::from_json(&json!({})).unwrap(),
        SharingConfig::default()
    );
}

#[test]
fn validation_errors_name_the_offending_entry() {
    let cases = [
        (json!([]), "must be a JSON object"),
        (
            json!({"allowed_users": "@a:b"}),
            "`allowed_users` must be an array",
        ),
        (
            json!({"denied_users": null}),
            "`denied_users` must be an array",
        ),
        (
            json!({"denied_users": ["@a:b", 7]}),
            "`denied_users[1]` must be a string, found a number",
        ),
        (
            json!({"allowed_users": ["#alias:example.org"]}),
            "`allowed_users[0]` \"#alias:example.org\" is neither",
        ),
        (
            json!({"allowed_users": ["@nocolon"]}),
            "`allowed_users[0]` \"@nocolon\" is not a valid user ID",
        ),
        (json!({"allowed_users": ["alice"]}), "\"alice\" is neither"),
        (
            json!({"allowed_users": [""]}),
            "`allowed_users[0]` \"\" is neither",
        ),
    ];
    for (content, expected) in cases {
        let err = SharingConfig::from_json(&content).unwrap_err().to_string();
        assert!(err.contains(expected), "{content}: {err}");
    }
}

#[test]
fn entries_over_255_bytes_are_rejected() {
    let long = format!("@{}:example.org", "a".repeat(250));
    let err =
        SharingConfig::from_json(&json!({"allowed_users": ["@ok:example.org", long]})).unwrap_err();
    match err {
        SharingConfigError::InvalidEntry {
            list,
            index,
            entry,
            reason,
        } => {
            assert_eq!((list, index), (SharingList::AllowedUsers, 1));
            assert!(entry.starts_with("@aaa") && entry.ends_with('…'));
            assert_eq!(
                reason,
                EntryError::TooLong {
                    len: long.len(),
                    max: 255
                }
            );
        }
        other => panic!("{other:?}"),
    }
    let glob = format!("@{}*", "a".repeat(254));
    assert!(SharingEntry::parse(&glob).is_err());
    assert!(SharingEntry::parse(&glob[1..]).is_err());
}

#[test]
fn more_than_1000_entries_are_rejected() {
    let entries: Vec<String> = (0..1001).map(|i| format!("@u{i}:example.org")).collect();
    assert_eq!(
        SharingConfig::from_json(&json!({ "denied_users": entries })),
        Err(SharingConfigError::TooManyEntries {
            list: SharingList::DeniedUsers,
            count: 1001,
            max: 1000
        })
    );
    assert!(SharingConfig::from_json(&json!({ "denied_users": entries[..1000] })).is_ok());
}

// ---- decisions: the must-hold examples ----------------------------------------------------

#[test]
fn glob_allowed_exact_denied() {
    let p = policy(json!({
        "allowed_users": ["@b*:example.org"],
        "denied_users": ["@bob:example.org"],
    }));
    let rooms = Rooms::default();
    assert!(!p.may_see(owner(), user_id!("@bob:example.org"), &rooms));
    assert!(p.may_see(owner(), user_id!("@bea:example.org"), &rooms));
}

#[test]
fn deny_everyone_allow_alice_without_shared_room() {
    let p = policy(json!({
        "allowed_users": ["@alice:example.org"],
        "denied_users": ["@*:*"],
    }));
    let room = room_id!("!shared:example.org");
    let rooms = Rooms::default()
        .join(owner(), room)
        .join(user_id!("@carol:example.org"), room);
    assert!(p.may_see(owner(), user_id!("@alice:example.org"), &rooms));
    assert!(!p.may_see(owner(), user_id!("@carol:example.org"), &rooms));
    assert!(!p.may_see(owner(), user_id!("@dave:matrix.org"), &rooms));
    assert_eq!(
        p.explicitly_allowed_users().collect::<Vec<_>>(),
        vec![user_id!("@alice:example.org")]
    );
}

#[test]
fn server_glob_allowed_beats_catch_all_denied() {
    let p = policy(json!({
        "allowed_users": ["@*:matrix.org"],
        "denied_users": ["@*:*"],
    }));
    let rooms = Rooms::default();
    assert!(p.may_see(owner(), user_id!("@anyone:matrix.org"), &rooms));
    assert!(!p.may_see(owner(), user_id!("@anyone:example.org"), &rooms));
}

#[test]
fn denied_room_does_not_hide_someone_met_elsewhere() {
    let (big, small) = (room_id!("!big:example.org"), room_id!("!small:example.org"));
    let p = policy(json!({ "denied_users": ["!big:example.org"] }));
    let carol = user_id!("@carol:example.org");
    let dave = user_id!("@dave:example.org");
    let rooms = Rooms::default()
        .join(owner(), big)
        .join(owner(), small)
        .join(carol, big)
        .join(carol, small)
        .join(dave, big);
    assert!(
        p.may_see(owner(), carol, &rooms),
        "shares the non-denied room"
    );
    assert!(
        !p.may_see(owner(), dave, &rooms),
        "only shares the denied room"
    );
}

// ---- decisions: the rest of the rule ------------------------------------------------------

#[test]
fn everyone_sees_themselves() {
    let rooms = Rooms::default();
    for p in [
        SharingPolicy::legacy(),
        SharingPolicy::only_self(),
        policy(json!({"denied_users": ["@*:*", "@u:example.org"]})),
    ] {
        assert!(p.may_see(owner(), owner(), &rooms));
    }
}

#[test]
fn no_config_is_legacy_shared_room_visibility() {
    let p = SharingPolicy::from_account_data(None);
    assert!(p.is_legacy());
    let room = room_id!("!r:example.org");
    let rooms = Rooms::default()
        .join(owner(), room)
        .join(user_id!("@in:example.org"), room);
    assert!(p.may_see(owner(), user_id!("@in:example.org"), &rooms));
    assert!(!p.may_see(owner(), user_id!("@out:example.org"), &rooms));
}

#[test]
fn unparseable_stored_config_fails_closed() {
    let room = room_id!("!r:example.org");
    let rooms = Rooms::default()
        .join(owner(), room)
        .join(user_id!("@in:example.org"), room);
    for stored in [
        json!("nope"),
        json!({"allowed_users": [1]}),
        json!({"denied_users": {}}),
    ] {
        let p = SharingPolicy::from_account_data(Some(&stored));
        assert!(!p.is_legacy());
        assert!(
            !p.may_see(owner(), user_id!("@in:example.org"), &rooms),
            "{stored}"
        );
        assert!(p.may_see(owner(), owner(), &rooms));
    }
}

#[test]
fn config_without_patterns_still_shares_with_room_members() {
    let room = room_id!("!r:example.org");
    let rooms = Rooms::default()
        .join(owner(), room)
        .join(user_id!("@in:example.org"), room);
    let p = policy(json!({}));
    assert!(p.may_see(owner(), user_id!("@in:example.org"), &rooms));
    assert!(!p.may_see(owner(), user_id!("@out:example.org"), &rooms));
}

#[test]
fn exact_id_beats_any_glob() {
    let rooms = Rooms::default();
    let p = policy(
        json!({"allowed_users": ["@bob:example.org"], "denied_users": ["@bob:example.or?"]}),
    );
    assert!(p.may_see(owner(), user_id!("@bob:example.org"), &rooms));
    let p = policy(
        json!({"allowed_users": ["@bob:example.or?"], "denied_users": ["@bob:example.org"]}),
    );
    assert!(!p.may_see(owner(), user_id!("@bob:example.org"), &rooms));
}

#[test]
fn more_literal_glob_wins_and_ties_deny() {
    let rooms = Rooms::default();
    let alice = user_id!("@alice:example.org");
    let p =
        policy(json!({"allowed_users": ["@al*:example.org"], "denied_users": ["@a*:example.org"]}));
    assert!(p.may_see(owner(), alice, &rooms));
    let p =
        policy(json!({"allowed_users": ["@a*:example.org"], "denied_users": ["@al*:example.org"]}));
    assert!(!p.may_see(owner(), alice, &rooms));
    // "@a*:example.org" and "@*e:example.org" both have 14 literal characters.
    let p =
        policy(json!({"allowed_users": ["@a*:example.org"], "denied_users": ["@*e:example.org"]}));
    assert!(!p.may_see(owner(), alice, &rooms));
    // Exact allow and exact deny of the same user: deny.
    let p = policy(json!({"allowed_users": [alice], "denied_users": [alice]}));
    assert!(!p.may_see(owner(), alice, &rooms));
    assert_eq!(p.explicitly_allowed_users().count(), 0);
}

#[test]
fn a_user_pattern_decides_before_rooms() {
    let room = room_id!("!r:example.org");
    let carol = user_id!("@carol:example.org");
    let rooms = Rooms::default().join(owner(), room).join(carol, room);
    // A matching deny glob hides carol although she shares an allowed room.
    let p = policy(json!({"allowed_users": ["!r:example.org"], "denied_users": ["@c*:*"]}));
    assert!(!p.may_see(owner(), carol, &rooms));
}

#[test]
fn listed_rooms_the_owner_is_not_in_are_ignored() {
    let room = room_id!("!r:example.org");
    let carol = user_id!("@carol:example.org");
    let rooms = Rooms::default().join(carol, room);
    let p = policy(json!({"allowed_users": ["!r:example.org"]}));
    assert!(!p.may_see(owner(), carol, &rooms));
}

#[test]
fn room_both_allowed_and_denied_is_denied() {
    let room = room_id!("!r:example.org");
    let carol = user_id!("@carol:example.org");
    let rooms = Rooms::default().join(owner(), room).join(carol, room);
    let p =
        policy(json!({"allowed_users": ["!r:example.org"], "denied_users": ["!r:example.org"]}));
    assert!(!p.may_see(owner(), carol, &rooms));
}

#[test]
fn question_mark_is_one_character_even_beyond_ascii() {
    let rooms = Rooms::default();
    let p = policy(json!({"allowed_users": ["@?:example.org"], "denied_users": ["@*:*"]}));
    let accented = UserId::parse("@é:example.org").unwrap();
    assert!(p.may_see(owner(), &accented, &rooms));
    assert!(p.may_see(owner(), user_id!("@e:example.org"), &rooms));
    assert!(!p.may_see(owner(), user_id!("@ee:example.org"), &rooms));
}

// ---- federation: allowed_recipients -------------------------------------------------------

fn recipients(p: &SharingPolicy, server: &ServerName, rooms: &Rooms) -> AllowedRecipients {
    let pairs = rooms.shared_members(owner());
    p.allowed_recipients(owner(), server, pairs.iter().map(|(r, u)| (&**r, &**u)))
}

#[test]
fn no_config_sends_legacy_updates_and_fail_closed_sends_none() {
    let rooms = Rooms::default();
    let server = server_name!("example.org");
    assert_eq!(
        recipients(&SharingPolicy::legacy(), server, &rooms),
        AllowedRecipients::Legacy
    );
    assert_eq!(
        recipients(&SharingPolicy::only_self(), server, &rooms),
        AllowedRecipients::Nobody
    );
}

#[test]
fn recipients_resolve_rooms_and_respect_denies() {
    let room = room_id!("!r:home.org");
    let mut rooms = Rooms::default().join(owner(), room);
    for u in [
        "@bob:remote.org",
        "@bea:remote.org",
        "@carl:remote.org",
        "@zed:other.org",
    ] {
        rooms = rooms.join(&UserId::parse(u).unwrap(), room);
    }
    let p = policy(json!({
        "allowed_users": ["@b*:remote.org", "!r:home.org", "@far:remote.org"],
        "denied_users": ["@bob:remote.org"],
    }));
    // The glob is unsafe (bob is denied inside it), so members are listed one by one; bob is
    // not; far is listed without a shared room; other.org's member is not for remote.org.
    assert_eq!(
        recipients(&p, server_name!("remote.org"), &rooms),
        AllowedRecipients::Chunks(vec![vec![
            "@bea:remote.org".to_owned(),
            "@carl:remote.org".to_owned(),
            "@far:remote.org".to_owned(),
        ]])
    );
    assert_eq!(
        recipients(&p, server_name!("other.org"), &rooms),
        AllowedRecipients::Chunks(vec![vec!["@zed:other.org".to_owned()]])
    );
}

#[test]
fn safe_globs_are_sent_as_globs() {
    let room = room_id!("!r:home.org");
    let rooms = Rooms::default()
        .join(owner(), room)
        .join(user_id!("@ann:matrix.org"), room)
        .join(user_id!("@eve:example.org"), room);
    let p = policy(json!({"allowed_users": ["@*:matrix.org"], "denied_users": ["@*:*"]}));
    assert_eq!(
        recipients(&p, server_name!("matrix.org"), &rooms),
        AllowedRecipients::Chunks(vec![vec!["@*:matrix.org".to_owned()]]),
        "the glob covers ann, and no deny as specific can exclude anyone from it"
    );
    assert_eq!(
        recipients(&p, server_name!("example.org"), &rooms),
        AllowedRecipients::Nobody
    );
}

#[test]
fn denied_room_members_are_not_recipients() {
    let denied = room_id!("!denied:home.org");
    let rooms = Rooms::default()
        .join(owner(), denied)
        .join(user_id!("@x:remote.org"), denied);
    let p = policy(json!({"denied_users": ["!denied:home.org"]}));
    assert_eq!(
        recipients(&p, server_name!("remote.org"), &rooms),
        AllowedRecipients::Nobody
    );
}

#[test]
fn recipients_are_chunked_at_256() {
    let room = owned_room_id!("!r:home.org");
    let mut rooms = Rooms::default().join(owner(), &room);
    for i in 0..600 {
        rooms = rooms.join(
            &UserId::parse(format!("@u{i:03}:remote.org")).unwrap(),
            &room,
        );
    }
    let p = policy(json!({"denied_users": ["@someone:else.org"]}));
    let AllowedRecipients::Chunks(chunks) = recipients(&p, server_name!("remote.org"), &rooms)
    else {
        panic!("expected chunks");
    };
    assert_eq!(
        chunks.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![256, 256, 88]
    );
    let all: BTreeSet<&String> = chunks.iter().flatten().collect();
    assert_eq!(all.len(), 600);
}

// ---- federation: incoming -----------------------------------------------------------------

#[test]
fn incoming_absent_null_or_empty_is_legacy() {
    for field in [None, Some(json!(null)), Some(json!([]))] {
        let r = IncomingRecipients::from_json(field.as_ref());
        assert!(matches!(r, IncomingRecipients::Legacy));
        assert!(r.allows(user_id!("@anyone:here.org")));
    }
}

#[test]
fn incoming_list_filters_local_recipients() {
    let field = json!([
        "@alice:here.org",
        "@b*:here.org",
        "!room:here.org",
        5,
        "junk"
    ]);
    let r = IncomingRecipients::from_json(Some(&field));
    assert!(r.allows(user_id!("@alice:here.org")));
    assert!(r.allows(user_id!("@bob:here.org")));
    assert!(!r.allows(user_id!("@carol:here.org")));
}

#[test]
fn incoming_malformed_list_delivers_to_nobody() {
    for field in [
        json!("@alice:here.org"),
        json!({}),
        json!(["!room:here.org"]),
        json!([1]),
    ] {
        let r = IncomingRecipients::from_json(Some(&field));
        assert!(!r.allows(user_id!("@alice:here.org")), "{field}");
    }
}

// ---- properties ---------------------------------------------------------------------------

const LOCALS: [&str; 6] = ["a", "b", "ab", "ba", "bb", "a/b"];
const SERVERS: [&str; 2] = ["s.org", "t.org"];

fn universe() -> Vec<OwnedUserId> {
    SERVERS
        .iter()
        .flat_map(|s| {
            LOCALS
                .iter()
                .map(move |l| UserId::parse(format!("@{l}:{s}")).unwrap())
        })
        .collect()
}

fn rooms_universe() -> Vec<OwnedRoomId> {
    (0..3)
        .map(|i| RoomId::parse(format!("!r{i}:home.org")).unwrap())
        .collect()
}

fn entry() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(universe()).prop_map(|u| u.to_string()),
        prop::sample::select(vec![
            "@*:*",
            "@*:s.org",
            "@a*:s.org",
            "@b*:*",
            "@?:s.org",
            "@*b:*",
            "@a?:*",
            "@*/*:s.org",
            "@*.org",
        ])
        .prop_map(str::to_owned),
        prop::sample::select(rooms_universe()).prop_map(|r| r.to_string()),
    ]
}

fn scenario() -> impl Strategy<Value = (Vec<String>, Vec<String>, Rooms)> {
    let memberships = prop::collection::vec((0..universe().len() + 1, 0..3usize), 0..20);
    (
        prop::collection::vec(entry(), 0..5),
        prop::collection::vec(entry(), 0..5),
        memberships,
    )
        .prop_map(|(allowed, denied, memberships)| {
            let users = universe();
            let rooms = rooms_universe();
            let mut facts = Rooms::default();
            for (user, room) in memberships {
                let user = users.get(user).map_or(owner(), |u| &**u);
                facts = facts.join(user, &rooms[room]);
            }
            (allowed, denied, facts)
        })
}

/// The decision rule written the slow, obvious way.
fn reference_may_see(
    allowed: &[String],
    denied: &[String],
    owner: &UserId,
    viewer: &UserId,
    rooms: &Rooms,
) -> bool {
    if owner == viewer {
        return true;
    }
    let best = |list: &[String]| -> Option<(u8, usize)> {
        list.iter()
            .filter_map(|e| match SharingEntry::parse(e).unwrap() {
                SharingEntry::User(u) if u == viewer => Some((1, 0)),
                SharingEntry::UserGlob(g) if g.is_match(viewer.as_str()) => {
                    Some((0, g.literal_chars()))
                }
                _ => None,
            })
            .max()
    };
    match (best(allowed), best(denied)) {
        (Some(a), Some(d)) => return a > d,
        (Some(_), None) => return true,
        (None, Some(_)) => return false,
        (None, None) => {}
    }
    rooms
        .joined_rooms(owner)
        .any(|r| !denied.iter().any(|e| e == r.as_str()) && rooms.is_joined(viewer, r))
}

proptest! {
    /// The compiled policy (GlobSet, hash sets) decides exactly like the reference.
    #[test]
    fn compiled_policy_matches_reference((allowed, denied, rooms) in scenario()) {
        let p = policy(json!({"allowed_users": allowed, "denied_users": denied}));
        for viewer in universe() {
            prop_assert_eq!(
                p.may_see(owner(), &viewer, &rooms),
                reference_may_see(&allowed, &denied, owner(), &viewer, &rooms),
                "viewer {}", viewer
            );
        }
    }

    /// `allowed_recipients` never leaks (every user of the server it admits may see the owner)
    /// and never drops a shared-room member or explicitly allowed user who may.
    #[test]
    fn allowed_recipients_are_sound_and_complete((allowed, denied, rooms) in scenario()) {
        let p = policy(json!({"allowed_users": allowed, "denied_users": denied}));
        for server in SERVERS {
            let server = ServerName::parse(server).unwrap();
            let result = recipients(&p, &server, &rooms);
            let filter = match &result {
                AllowedRecipients::Legacy => panic!("a config is never legacy"),
                AllowedRecipients::Nobody => None,
                AllowedRecipients::Chunks(chunks) => {
                    prop_assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= MAX_RECIPIENTS_PER_EDU));
                    Some(IncomingRecipients::from_entries(chunks.iter().flatten().map(String::as_str)))
                }
            };
            let candidates: BTreeSet<OwnedUserId> = rooms
                .shared_members(owner())
                .into_iter()
                .map(|(_, u)| u)
                .chain(p.explicitly_allowed_users().map(ToOwned::to_owned))
                .collect();
            for viewer in universe().into_iter().filter(|u| u.server_name() == &*server) {
                let admitted = filter.as_ref().is_some_and(|f| f.allows(&viewer));
                let may_see = p.may_see(owner(), &viewer, &rooms);
                prop_assert!(!admitted || may_see, "{} admitted but may not see", viewer);
                if candidates.contains(&viewer) {
                    prop_assert_eq!(admitted, may_see, "candidate {}", viewer);
                }
            }
        }
    }
}

/// The largest config a user may store still decides correctly: its globs cannot be sent
/// safely, so the one remote member is named by ID. (What it costs to compile and decide is
/// measured by `cargo bench -p bench --bench sharing_compile`, not here.)
#[test]
fn maximal_config_falls_back_to_ids() {
    let glob = |i: usize, tail: &str| {
        let mut g = format!("@{i:04}*{tail}");
        while g.len() < MAX_ENTRY_BYTES - 1 {
            g.push(if g.len() % 7 == 0 { '?' } else { 'x' });
        }
        g.push('*');
        g
    };
    let allowed: Vec<String> = (0..MAX_ENTRIES_PER_LIST).map(|i| glob(i, "a")).collect();
    let denied: Vec<String> = (0..MAX_ENTRIES_PER_LIST).map(|i| glob(i, "b")).collect();
    let p = policy(json!({"allowed_users": allowed, "denied_users": denied}));

    let room = room_id!("!r:home.org");
    let member = user_id!("@m:remote.org");
    let rooms = Rooms::default().join(owner(), room).join(member, room);
    assert_eq!(
        recipients(&p, server_name!("remote.org"), &rooms),
        AllowedRecipients::Chunks(vec![vec!["@m:remote.org".to_owned()]])
    );
    assert!(p.may_see(owner(), member, &rooms));
}

#[test]
fn incoming_globs_are_capped() {
    let mut field: Vec<String> = (0..MAX_INCOMING_GLOBS)
        .map(|i| format!("@g{i}*:here.org"))
        .collect();
    field.push("@late*:here.org".to_owned());
    field.push("@exact:here.org".to_owned());
    let r = IncomingRecipients::from_json(Some(&json!(field)));
    assert!(r.allows(user_id!("@g0x:here.org")));
    assert!(r.allows(user_id!("@exact:here.org")));
    assert!(
        !r.allows(user_id!("@latex:here.org")),
        "globs past the cap are ignored"
    );
}
