//! The version 2 migration on a database written in the version 1 layout (tokens in
//! clear), built here by hand the way version 1 wrote it.
use std::path::Path;

use serde_json::{Value, json};

use super::*;

const OLD_TOKEN: &str = "syt_OldPlainTokenWrittenByVersion1xyz";

fn service_on(db: Db) -> AccountService {
    AccountService::new(
        Arc::new(db),
        "example.org".try_into().expect("server name"),
        PasswordHashing::insecure_fast(),
    )
}

/// Register a user, then rewrite its session the way schema version 1 stored it: `Tokens`
/// keyed by the token, the device record listing it in clear, schema version 1.
fn write_v1_database(path: &Path) -> (OwnedUserId, OwnedDeviceId) {
    let svc = service_on(Db::open(path, false).expect("open"));
    let r = svc
        .register("olduser", Some("pw"), NewDevice::default(), false, true)
        .expect("register");
    let device = r.device_id.expect("device");
    let new_token = r.access_token.expect("token");
    let key = keys::device(&r.user_id, &device);
    let mut record: Value = svc
        .db
        .get_json(Cf::Devices, &key)
        .expect("read")
        .expect("device record");
    let obj = record.as_object_mut().expect("object");
    obj.remove("token_hashes");
    obj.insert("tokens".into(), json!([OLD_TOKEN]));
    let mut b = Batch::new();
    b.put_json(Cf::Devices, &key, &record);
    b.delete(Cf::Tokens, keys::TokenHash::of(&new_token).as_key());
    b.put_json(
        Cf::Tokens,
        OLD_TOKEN,
        &Session {
            user_id: r.user_id.clone(),
            device_id: device.clone(),
            expires_ts: None,
            refresh: false,
        },
    );
    b.put(Cf::Meta, "schema_version", 1u64.to_be_bytes().to_vec());
    svc.db.write(b).expect("write v1 layout");
    // Some of it in an SST file, some only in the WAL, as a running server leaves it.
    svc.db.flush().expect("flush");
    (r.user_id, device)
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        if bytes.windows(needle.len()).any(|w| w == needle) {
            out.push(path.display().to_string());
        }
    }
    out
}

#[test]
fn a_version_1_database_migrates_and_the_old_token_still_authenticates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (user, device) = write_v1_database(dir.path());
    assert!(
        !files_containing(dir.path(), OLD_TOKEN.as_bytes()).is_empty(),
        "the test's version 1 database must hold the token in clear"
    );
    assert!(matches!(
        Db::open(dir.path(), false),
        Err(StorageError::MigrationMissing { .. })
    ));

    let db = Db::open_migrating(dir.path(), false, MIGRATIONS).expect("migrate");
    assert_eq!(
        db.schema_version().expect("version"),
        storage::SCHEMA_VERSION
    );
    let svc = service_on(db);
    let session = svc.authenticate(OLD_TOKEN).expect("auth").expect("session");
    assert_eq!((session.user_id, session.device_id), (user.clone(), device));
    assert_eq!(
        files_containing(dir.path(), OLD_TOKEN.as_bytes()),
        Vec::<String>::new(),
        "the token in clear is still in the database files"
    );
    // The device record lists the hash: logging out revokes the migrated token.
    assert!(svc.logout(OLD_TOKEN).expect("logout"));
    assert!(svc.authenticate(OLD_TOKEN).expect("auth").is_none());
    assert!(svc.devices(&user).expect("devices").is_empty());
}

#[test]
fn new_tokens_are_stored_only_as_hashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svc = service_on(Db::open(dir.path(), false).expect("open"));
    let r = svc
        .register("fresh", Some("pw"), NewDevice::default(), false, true)
        .expect("register");
    let token = r.access_token.expect("token");
    let login = svc
        .login_password("fresh", "pw", NewDevice::default(), None)
        .expect("login");
    svc.db.flush().expect("flush");
    for t in [&token, &login.access_token] {
        assert!(svc.authenticate(t).expect("auth").is_some());
        assert_eq!(
            files_containing(dir.path(), t.as_bytes()),
            Vec::<String>::new()
        );
    }
    // Changing the password and logging out the other devices keeps only this token.
    svc.change_password(&r.user_id, "pw2", true, Some(&token))
        .expect("change password");
    assert!(svc.authenticate(&token).expect("auth").is_some());
    assert!(
        svc.authenticate(&login.access_token)
            .expect("auth")
            .is_none()
    );
}
