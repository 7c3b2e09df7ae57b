use serde_json::json;

use super::*;

fn service() -> (tempfile::TempDir, AccountService) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), false).expect("open db"));
    let svc = AccountService::new(
        db,
        "example.org".try_into().expect("server name"),
        PasswordHashing::insecure_fast(),
    );
    (dir, svc)
}

fn uid(s: &str) -> OwnedUserId {
    s.try_into().expect("user id")
}

fn rid(s: &str) -> OwnedRoomId {
    s.try_into().expect("room id")
}

fn register(svc: &AccountService, localpart: &str, password: &str) -> Registered {
    svc.register(localpart, Some(password), NewDevice::default(), false, true)
        .expect("register")
}

#[test]
fn register_and_authenticate() {
    let (_d, svc) = service();
    let r = svc
        .register(
            "Alice",
            Some("secret"),
            NewDevice {
                device_id: Some("PHONE".into()),
                display_name: Some("My phone".into()),
                ..Default::default()
            },
            false,
            true,
        )
        .expect("register");
    assert_eq!(r.user_id, uid("@alice:example.org"));
    assert_eq!(r.device_id.as_deref().map(|d| d.as_str()), Some("PHONE"));
    let token = r.access_token.expect("token");
    assert!(token.len() >= 32);
    let session = svc.authenticate(&token).expect("auth").expect("valid");
    assert_eq!(session.user_id, r.user_id);
    assert_eq!(session.device_id.as_str(), "PHONE");
    assert!(svc.authenticate("nope").expect("auth").is_none());
    assert!(svc.authenticate("").expect("auth").is_none());
    let dev = svc
        .device(&r.user_id, "PHONE".into())
        .expect("device")
        .expect("exists");
    assert_eq!(dev.display_name.as_deref(), Some("My phone"));
    assert!(dev.last_seen_ts.is_some());
    // Default display name is the localpart.
    assert_eq!(
        svc.profile(&r.user_id)
            .expect("profile")
            .expect("exists")
            .displayname
            .as_deref(),
        Some("alice")
    );
    assert!(svc.user_exists(&r.user_id).expect("exists"));
    assert!(!svc.is_admin(&r.user_id).expect("admin"));
}

#[test]
fn register_without_login_and_as_admin() {
    let (_d, svc) = service();
    let r = svc
        .register("root", Some("pw"), NewDevice::default(), true, false)
        .expect("register");
    assert!(r.device_id.is_none() && r.access_token.is_none());
    assert!(svc.is_admin(&r.user_id).expect("admin"));
    assert!(svc.devices(&r.user_id).expect("devices").is_empty());
}

#[test]
fn username_rules() {
    let (_d, svc) = service();
    for ok in ["a", "q3._=-/+", "user-UPPER", "12345"] {
        assert!(svc.validate_localpart(ok).is_ok(), "{ok}");
    }
    assert_eq!(
        svc.validate_localpart("User-UPPER").expect("ok"),
        "user-upper"
    );
    for bad in [
        "", "us,er", "a b", "é", "user:x", "@x", "a!b", "a\nb", "£", "a'b", "a\\b", "[", "]", "{",
        "|", "}", "?", "\"",
    ] {
        assert!(
            matches!(
                svc.validate_localpart(bad),
                Err(AccountError::InvalidUsername(_))
            ),
            "{bad:?}"
        );
    }
    // "@" + lp + ":" + "example.org" (11) <= 255 → lp <= 242
    assert!(svc.validate_localpart(&"a".repeat(242)).is_ok());
    assert!(matches!(
        svc.validate_localpart(&"a".repeat(243)),
        Err(AccountError::InvalidUsername(_))
    ));
}

#[test]
fn username_taken_case_insensitively() {
    let (_d, svc) = service();
    register(&svc, "bob", "pw");
    assert!(matches!(
        svc.register("BOB", Some("pw2"), NewDevice::default(), false, true),
        Err(AccountError::UserInUse)
    ));
    assert!(matches!(
        svc.check_username_available("Bob"),
        Err(AccountError::UserInUse)
    ));
    assert!(svc.check_username_available("carol").is_ok());
    let lp = svc.generate_localpart().expect("generate");
    assert!(svc.validate_localpart(&lp).is_ok());
}

#[test]
fn login_by_localpart_or_mxid_any_case() {
    let (_d, svc) = service();
    register(&svc, "dave", "übers3kr1t");
    for who in ["dave", "DAVE", "@dave:example.org", "@DaVe:example.org"] {
        let l = svc
            .login_password(who, "übers3kr1t", NewDevice::default(), Some("10.0.0.1"))
            .expect(who);
        assert_eq!(l.user_id, uid("@dave:example.org"));
        assert!(svc.authenticate(&l.access_token).expect("auth").is_some());
        let dev = svc
            .device(&l.user_id, &l.device_id)
            .expect("dev")
            .expect("exists");
        assert_eq!(dev.last_seen_ip.as_deref(), Some("10.0.0.1"));
    }
    assert_eq!(
        svc.devices(&uid("@dave:example.org"))
            .expect("devices")
            .len(),
        5
    );
    for (who, pw) in [
        ("dave", "wrong"),
        ("nobody", "übers3kr1t"),
        ("@dave:other.org", "übers3kr1t"),
        ("@dave", "übers3kr1t"),
        ("bad user", "x"),
    ] {
        assert!(
            matches!(
                svc.login_password(who, pw, NewDevice::default(), None),
                Err(AccountError::Forbidden)
            ),
            "{who}"
        );
    }
}

#[test]
fn login_with_existing_device_id_revokes_its_old_tokens() {
    let (_d, svc) = service();
    let r = register(&svc, "erin", "pw");
    let dev = NewDevice {
        device_id: Some("LAPTOP".into()),
        display_name: Some("first".into()),
        ..Default::default()
    };
    let a = svc
        .login_password("erin", "pw", dev.clone(), None)
        .expect("login");
    let b = svc
        .login_password(
            "erin",
            "pw",
            NewDevice {
                display_name: Some("second".into()),
                ..dev
            },
            None,
        )
        .expect("login");
    assert_eq!(a.device_id, b.device_id);
    assert_ne!(a.access_token, b.access_token);
    // The device's old token is revoked (issue 13 item 6); the existing device keeps its name.
    assert!(svc.authenticate(&a.access_token).expect("auth").is_none());
    assert!(svc.authenticate(&b.access_token).expect("auth").is_some());
    assert_eq!(
        svc.device(&r.user_id, "LAPTOP".into())
            .expect("dev")
            .expect("exists")
            .display_name
            .as_deref(),
        Some("first")
    );
    assert_eq!(svc.devices(&r.user_id).expect("devices").len(), 2);
    // Deleting the device revokes both.
    assert!(
        svc.delete_device(&r.user_id, "LAPTOP".into())
            .expect("delete")
    );
    assert!(svc.authenticate(&a.access_token).expect("auth").is_none());
    assert!(svc.authenticate(&b.access_token).expect("auth").is_none());
    assert!(
        !svc.delete_device(&r.user_id, "LAPTOP".into())
            .expect("delete")
    );
}

#[test]
fn logout_and_logout_all() {
    let (_d, svc) = service();
    let r = register(&svc, "frank", "pw");
    let t1 = r.access_token.expect("token");
    let l2 = svc
        .login_password("frank", "pw", NewDevice::default(), None)
        .expect("login");
    let l3 = svc
        .login_password("frank", "pw", NewDevice::default(), None)
        .expect("login");
    assert_eq!(svc.devices(&r.user_id).expect("devices").len(), 3);
    assert!(svc.logout(&l2.access_token).expect("logout"));
    assert!(!svc.logout(&l2.access_token).expect("logout again"));
    assert!(svc.authenticate(&l2.access_token).expect("auth").is_none());
    assert!(
        svc.device(&r.user_id, &l2.device_id)
            .expect("dev")
            .is_none()
    );
    assert_eq!(svc.devices(&r.user_id).expect("devices").len(), 2);
    svc.logout_all(&r.user_id).expect("logout all");
    assert!(svc.authenticate(&t1).expect("auth").is_none());
    assert!(svc.authenticate(&l3.access_token).expect("auth").is_none());
    assert!(svc.devices(&r.user_id).expect("devices").is_empty());
}

#[test]
fn deleting_a_device_removes_its_transaction_ids() {
    let (_d, svc) = service();
    let r = register(&svc, "gina", "pw");
    let device = r.device_id.expect("device");
    let mut b = Batch::new();
    b.put(
        Cf::Txns,
        storage::device_scope(r.user_id.as_str(), device.as_str()).str("txn1"),
        b"$e".to_vec(),
    );
    b.put(
        Cf::Txns,
        storage::device_scope(r.user_id.as_str(), "OTHER").str("txn1"),
        b"$f".to_vec(),
    );
    svc.db.write(b).expect("write");
    svc.delete_device(&r.user_id, &device).expect("delete");
    assert_eq!(
        svc.db
            .scan_prefix(Cf::Txns, keys::user_prefix(&r.user_id))
            .expect("scan")
            .len(),
        1
    );
}

#[test]
fn update_device_display_name() {
    let (_d, svc) = service();
    let r = register(&svc, "hank", "pw");
    let device = r.device_id.expect("device");
    svc.update_device(&r.user_id, &device, Some("renamed".into()))
        .expect("update");
    assert_eq!(
        svc.device(&r.user_id, &device)
            .expect("dev")
            .expect("exists")
            .display_name
            .as_deref(),
        Some("renamed")
    );
    svc.update_device(&r.user_id, &device, None).expect("no-op");
    assert_eq!(
        svc.device(&r.user_id, &device)
            .expect("dev")
            .expect("exists")
            .display_name
            .as_deref(),
        Some("renamed")
    );
    assert!(matches!(
        svc.update_device(&r.user_id, "NOPE".into(), Some("x".into())),
        Err(AccountError::UnknownDevice)
    ));
    // Another user's device is unknown too.
    let other = register(&svc, "ivy", "pw");
    assert!(matches!(
        svc.update_device(&other.user_id, &device, Some("x".into())),
        Err(AccountError::UnknownDevice)
    ));
}

#[test]
fn touch_device_updates_last_seen() {
    let (_d, svc) = service();
    let r = register(&svc, "jack", "pw");
    let device = r.device_id.expect("device");
    svc.touch_device(&r.user_id, &device, Some("192.0.2.7"))
        .expect("touch");
    let d = svc
        .device(&r.user_id, &device)
        .expect("dev")
        .expect("exists");
    assert_eq!(d.last_seen_ip.as_deref(), Some("192.0.2.7"));
    // Unknown devices are ignored.
    svc.touch_device(&r.user_id, "GONE".into(), Some("192.0.2.8"))
        .expect("touch");
    assert!(
        svc.device(&r.user_id, "GONE".into())
            .expect("dev")
            .is_none()
    );
}

#[test]
fn change_password_logs_out_other_devices() {
    let (_d, svc) = service();
    let r = register(&svc, "kim", "old");
    let keep = r.access_token.expect("token");
    let other = svc
        .login_password("kim", "old", NewDevice::default(), None)
        .expect("login");
    svc.change_password(&r.user_id, "new", true, Some(&keep))
        .expect("change");
    assert!(svc.authenticate(&keep).expect("auth").is_some());
    assert!(
        svc.authenticate(&other.access_token)
            .expect("auth")
            .is_none()
    );
    assert_eq!(svc.devices(&r.user_id).expect("devices").len(), 1);
    assert!(matches!(
        svc.check_password(&r.user_id, "old"),
        Err(AccountError::Forbidden)
    ));
    svc.check_password(&r.user_id, "new")
        .expect("new password works");
    // Keeping other devices.
    let other = svc
        .login_password("kim", "new", NewDevice::default(), None)
        .expect("login");
    svc.change_password(&r.user_id, "newer", false, Some(&keep))
        .expect("change");
    assert!(
        svc.authenticate(&other.access_token)
            .expect("auth")
            .is_some()
    );
}

#[test]
fn deactivation() {
    let (_d, svc) = service();
    let r = register(&svc, "leo", "pw");
    svc.deactivate(&r.user_id).expect("deactivate");
    assert!(
        svc.authenticate(r.access_token.as_deref().expect("token"))
            .expect("auth")
            .is_none()
    );
    assert!(matches!(
        svc.login_password("leo", "pw", NewDevice::default(), None),
        Err(AccountError::UserDeactivated)
    ));
    assert!(matches!(
        svc.register("leo", Some("pw"), NewDevice::default(), false, true),
        Err(AccountError::UserInUse)
    ));
    assert!(svc.is_deactivated(&r.user_id).expect("deactivated"));
    assert!(svc.devices(&r.user_id).expect("devices").is_empty());
}

#[test]
fn profiles() {
    let (_d, svc) = service();
    let r = register(&svc, "mia", "pw");
    let p = svc
        .set_displayname(&r.user_id, Some("Mia M.".into()))
        .expect("set");
    assert_eq!(p.displayname.as_deref(), Some("Mia M."));
    let p = svc
        .set_avatar_url(&r.user_id, Some("mxc://example.org/abc".into()))
        .expect("set");
    assert_eq!(
        p,
        Profile {
            displayname: Some("Mia M.".into()),
            avatar_url: Some("mxc://example.org/abc".into())
        }
    );
    assert_eq!(svc.profile(&r.user_id).expect("get"), Some(p));
    let p = svc
        .set_displayname(&r.user_id, Some(String::new()))
        .expect("clear");
    assert_eq!(p.displayname, None);
    assert!(matches!(
        svc.set_displayname(&r.user_id, Some("x".repeat(257))),
        Err(AccountError::InvalidParam(_))
    ));
    assert!(matches!(
        svc.set_displayname(&uid("@nobody:example.org"), Some("x".into())),
        Err(AccountError::UnknownUser)
    ));
    assert_eq!(svc.profile(&uid("@nobody:example.org")).expect("get"), None);
}

#[test]
fn account_data_and_change_log() {
    let (_d, svc) = service();
    let r = register(&svc, "nina", "pw");
    let u = &r.user_id;
    let room = rid("!room:example.org");
    let start = svc.db.current_position();
    let p1 = svc
        .set_account_data(u, None, "test.key", &json!({"value": "first"}))
        .expect("set");
    let p2 = svc
        .set_account_data(u, Some(&room), "test.key", &json!({"value": "room first"}))
        .expect("set");
    let p3 = svc
        .set_account_data(u, None, "test.key", &json!({"value": "second"}))
        .expect("set");
    assert!(start < p1 && p1 < p2 && p2 < p3);
    assert_eq!(
        svc.account_data(u, None, "test.key").expect("get"),
        Some(json!({"value": "second"}))
    );
    assert_eq!(
        svc.account_data(u, Some(&room), "test.key").expect("get"),
        Some(json!({"value": "room first"}))
    );
    assert_eq!(svc.account_data(u, None, "missing").expect("get"), None);

    // Everything since the start: latest content per (room, type), in position order.
    let all = svc.account_data_since(u, start, p3).expect("since");
    assert_eq!(
        all,
        vec![
            AccountDataChange {
                room_id: Some(room.clone()),
                event_type: "test.key".into(),
                content: json!({"value": "room first"})
            },
            AccountDataChange {
                room_id: None,
                event_type: "test.key".into(),
                content: json!({"value": "second"})
            },
        ]
    );
    // Only what changed after p2.
    let later = svc.account_data_since(u, p2, p3).expect("since");
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].content, json!({"value": "second"}));
    // Nothing in an empty window, nothing for another user.
    assert!(svc.account_data_since(u, p3, p3).expect("since").is_empty());
    assert!(
        svc.account_data_since(&uid("@x:example.org"), 0, p3)
            .expect("since")
            .is_empty()
    );
    // The log holds one entry per (room, type).
    assert_eq!(
        svc.db
            .scan_prefix(Cf::AccountDataLog, keys::user_prefix(u))
            .expect("scan")
            .len(),
        2
    );

    let mut everything = svc.all_account_data(u).expect("all");
    everything.sort_by_key(|c| c.room_id.is_some());
    assert_eq!(everything.len(), 2);
    assert_eq!(everything[0].room_id, None);
    assert_eq!(everything[1].room_id, Some(room));

    assert!(matches!(
        svc.set_account_data(u, None, "t", &json!([1])),
        Err(AccountError::BadJson(_))
    ));
    assert!(matches!(
        svc.set_account_data(u, None, "", &json!({})),
        Err(AccountError::InvalidParam(_))
    ));
}

#[test]
fn account_data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = uid("@o:example.org");
    {
        let db = Arc::new(Db::open(dir.path(), false).expect("open"));
        let svc = AccountService::new(
            db,
            "example.org".try_into().expect("sn"),
            PasswordHashing::insecure_fast(),
        );
        svc.set_account_data(
            &user,
            None,
            "m.direct",
            &json!({"@p:example.org": ["!r:example.org"]}),
        )
        .expect("set");
    }
    let db = Arc::new(Db::open(dir.path(), false).expect("reopen"));
    let svc = AccountService::new(
        db,
        "example.org".try_into().expect("sn"),
        PasswordHashing::insecure_fast(),
    );
    assert_eq!(svc.all_account_data(&user).expect("all").len(), 1);
    assert_eq!(
        svc.account_data_since(&user, 0, svc.db.current_position())
            .expect("since")
            .len(),
        1
    );
}

#[test]
fn filters_round_trip() {
    let (_d, svc) = service();
    let u = uid("@p:example.org");
    let body = json!({"room": {"timeline": {"limit": 10}}, "custom": true});
    let id = svc.create_filter(&u, &body).expect("create");
    assert!(!id.starts_with('{'));
    assert_eq!(svc.filter_json(&u, &id).expect("get"), Some(body));
    assert_eq!(
        svc.filter(&u, &id)
            .expect("get")
            .expect("exists")
            .room
            .timeline
            .limit_u64(),
        Some(10)
    );
    assert!(
        svc.filter(&uid("@q:example.org"), &id)
            .expect("get")
            .is_none()
    );
    assert!(svc.filter(&u, "unknown").expect("get").is_none());
    assert!(matches!(
        svc.create_filter(&u, &json!({"presence": "x"})),
        Err(AccountError::BadJson(_))
    ));
}

#[test]
fn nonces_are_single_use() {
    let (_d, svc) = service();
    let n = svc.new_registration_nonce().expect("nonce");
    assert!(n.len() >= 16);
    assert!(svc.take_registration_nonce(&n));
    assert!(!svc.take_registration_nonce(&n));
    assert!(!svc.take_registration_nonce("made-up"));
}

#[test]
fn invalid_hashing_params_fall_back_to_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), false).expect("open"));
    let svc = AccountService::new(
        db,
        "example.org".try_into().expect("sn"),
        PasswordHashing {
            m_cost: 0,
            t_cost: 0,
            p_cost: 0,
        },
    );
    assert_eq!(svc.hashing(), PasswordHashing::default());
}

#[test]
fn overlong_inputs_are_rejected() {
    let (_d, svc) = service();
    let long_pw = "x".repeat(MAX_PASSWORD_LEN + 1);
    assert!(matches!(
        svc.register("r", Some(&long_pw), NewDevice::default(), false, true),
        Err(AccountError::InvalidParam(_))
    ));
    let dev = NewDevice {
        device_id: Some("d".repeat(MAX_DEVICE_ID_LEN + 1)),
        display_name: None,
        ..Default::default()
    };
    assert!(matches!(
        svc.register("r", Some("pw"), dev, false, true),
        Err(AccountError::InvalidParam(_))
    ));
    assert!(!svc.user_exists(&uid("@r:example.org")).expect("exists"));
}

#[test]
fn a_full_nonce_table_refuses_new_nonces_instead_of_flushing_live_ones() {
    let (_d, svc) = service();
    let first = svc.new_registration_nonce().expect("nonce");
    for _ in 1..MAX_NONCES {
        svc.new_registration_nonce().expect("nonce");
    }
    assert!(svc.new_registration_nonce().is_none(), "table is full");
    // The admin's nonce issued first is still valid.
    assert!(svc.take_registration_nonce(&first));
    assert!(svc.new_registration_nonce().is_some(), "a slot was freed");
}

#[test]
fn filters_per_user_are_bounded() {
    let (_d, svc) = service();
    let u = register(&svc, "fil", "pw").user_id;
    let other = register(&svc, "fim", "pw").user_id;
    for _ in 0..MAX_FILTERS_PER_USER {
        svc.create_filter(&u, &json!({})).expect("create");
    }
    assert!(matches!(
        svc.create_filter(&u, &json!({})),
        Err(AccountError::QuotaExceeded(_))
    ));
    // Another user (whose ID sorts right after) is unaffected.
    svc.create_filter(&other, &json!({})).expect("other user");
}

#[test]
fn account_data_entries_per_user_are_bounded() {
    let (_d, svc) = service();
    let u = register(&svc, "ada", "pw").user_id;
    let room = rid("!r:example.org");
    for i in 0..MAX_ACCOUNT_DATA_PER_USER {
        let r = (i % 2 == 0).then_some(&*room);
        svc.set_account_data(&u, r, &format!("t.{i}"), &json!({}))
            .expect("set");
    }
    assert!(matches!(
        svc.set_account_data(&u, None, "t.new", &json!({})),
        Err(AccountError::QuotaExceeded(_))
    ));
    // Overwriting an existing type is still fine.
    svc.set_account_data(&u, None, "t.1", &json!({"v": 2}))
        .expect("overwrite");
}

#[test]
fn password_hashing_is_bounded_by_the_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Arc::new(Db::open(dir.path(), false).expect("open db"));
    let svc = AccountService::new(
        db,
        "example.org".try_into().expect("server name"),
        PasswordHashing::insecure_fast(),
    )
    .with_hashing_pool(HashingPool::new(1, Duration::from_millis(20)));
    register(&svc, "pia", "pw");
    let busy = svc.hash_pool.acquire().expect("the only slot");
    // Unknown users, wrong passwords and registrations all need a slot: refused, not queued
    // without bound.
    assert!(matches!(
        svc.login_password("nobody", "x", NewDevice::default(), None),
        Err(AccountError::HashingBusy)
    ));
    assert!(matches!(
        svc.login_password("pia", "x", NewDevice::default(), None),
        Err(AccountError::HashingBusy)
    ));
    assert!(matches!(
        svc.register("pib", Some("pw"), NewDevice::default(), false, true),
        Err(AccountError::HashingBusy)
    ));
    drop(busy);
    assert!(matches!(
        svc.login_password("nobody", "x", NewDevice::default(), None),
        Err(AccountError::Forbidden)
    ));
    svc.login_password("pia", "pw", NewDevice::default(), None)
        .expect("login once a slot is free");
}

/// Tokens resolved just before (so held by the token cache) stop working however they are
/// revoked: a re-login with the same device, device deletion, logout, logout of all
/// devices, a password change that logs out the other devices, deactivation.
#[test]
fn revocations_reach_tokens_in_the_token_cache() {
    let (_d, svc) = service();
    let r = register(&svc, "grace", "pw");
    let user = r.user_id.clone();
    let valid = |t: &str| svc.authenticate(t).expect("auth").is_some();
    let login = |device: &str| {
        let dev = NewDevice {
            device_id: Some(device.into()),
            display_name: None,
            ..Default::default()
        };
        svc.login_password("grace", "pw", dev, None)
            .expect("login")
            .access_token
    };
    let first = login("ONE");
    assert!(valid(&first) && valid(&first));
    let replaced_by = login("ONE");
    assert!(!valid(&first) && valid(&replaced_by));
    svc.delete_device(&user, "ONE".into()).expect("delete");
    assert!(!valid(&replaced_by));
    let two = login("TWO");
    assert!(valid(&two));
    assert!(svc.logout(&two).expect("logout"));
    assert!(!valid(&two));
    let (three, four) = (login("THREE"), login("FOUR"));
    assert!(valid(&three) && valid(&four));
    svc.change_password(&user, "pw2", true, Some(&three))
        .expect("password");
    assert!(valid(&three) && !valid(&four));
    svc.logout_all(&user).expect("logout all");
    assert!(!valid(&three));
    let five = svc
        .login_password("grace", "pw2", NewDevice::default(), None)
        .expect("login")
        .access_token;
    assert!(valid(&five));
    svc.deactivate(&user).expect("deactivate");
    assert!(!valid(&five));
}
