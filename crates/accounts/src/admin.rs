//! What a server admin may see and change about accounts (the admin API and `pulse admin`):
//! listing users, one user's details, the admin flag, and reactivating a deactivated
//! account with a new password. Callers check that the caller is an admin.
use ruma::{OwnedUserId, UserId};
use serde::Serialize;
use storage::{Batch, Cf, StorageError};

use crate::users::check_password_len;
use crate::{AccountError, AccountService, Result, keys, lock};

/// One account as the admin API shows it (the fields of Synapse's user list that admin
/// tools read).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserSummary {
    pub name: OwnedUserId,
    pub admin: bool,
    pub deactivated: bool,
    pub creation_ts: u64,
    pub has_password: bool,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

/// Which accounts a listing includes.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Only users whose ID or display name contains this (case-insensitive).
    pub name: Option<String>,
    /// Include deactivated accounts.
    pub deactivated: bool,
    /// `Some(true)`: admins only; `Some(false)`: non-admins only.
    pub admins: Option<bool>,
}

impl AccountService {
    /// One account's details, `None` for an unknown user.
    pub fn user_summary(&self, user: &UserId) -> Result<Option<UserSummary>, StorageError> {
        Ok(self.user_record(user)?.map(|r| UserSummary {
            name: user.to_owned(),
            admin: r.admin,
            deactivated: r.deactivated,
            creation_ts: r.created_ts,
            has_password: r.password_hash.is_some(),
            displayname: r.profile.displayname,
            avatar_url: r.profile.avatar_url,
        }))
    }

    /// Accounts matching `filter` in user-ID order: `limit` of them after skipping `from`,
    /// and how many match in all.
    pub fn list_users(
        &self,
        filter: &UserFilter,
        from: usize,
        limit: usize,
    ) -> Result<(Vec<UserSummary>, usize), StorageError> {
        let needle = filter.name.as_ref().map(|n| n.to_lowercase());
        let mut page = Vec::new();
        let mut total = 0;
        for (k, _) in self.db.scan_prefix(Cf::Users, [])? {
            let Some(user) = keys::parse_user(&k).and_then(|s| OwnedUserId::try_from(s).ok())
            else {
                continue;
            };
            let Some(s) = self.user_summary(&user)? else {
                continue;
            };
            if (s.deactivated && !filter.deactivated) || filter.admins.is_some_and(|a| a != s.admin)
            {
                continue;
            }
            if let Some(n) = &needle {
                let in_name = s.name.as_str().to_lowercase().contains(n.as_str());
                let in_display = s
                    .displayname
                    .as_ref()
                    .is_some_and(|d| d.to_lowercase().contains(n.as_str()));
                if !in_name && !in_display {
                    continue;
                }
            }
            if total >= from && page.len() < limit {
                page.push(s);
            }
            total += 1;
        }
        Ok((page, total))
    }

    /// Make a user a server admin or not. A deactivated account cannot be made admin.
    pub fn set_admin(&self, user: &UserId, admin: bool) -> Result<()> {
        let _guard = lock(&self.write_lock);
        let Some(mut record) = self.user_record(user)? else {
            return Err(AccountError::UnknownUser);
        };
        if admin && record.deactivated {
            return Err(AccountError::UserDeactivated);
        }
        if record.admin == admin {
            return Ok(());
        }
        record.admin = admin;
        let mut batch = Batch::new();
        batch.put_json(Cf::Users, keys::user(user), &record);
        self.db.write(batch)?;
        tracing::info!(%user, admin, "admin flag changed");
        Ok(())
    }

    /// Reactivate a deactivated account with a new password (as Synapse requires one:
    /// deactivation dropped the old). A no-op for an active account.
    pub fn reactivate(&self, user: &UserId, password: &str) -> Result<()> {
        check_password_len(password)?;
        if password.is_empty() {
            return Err(AccountError::InvalidParam(
                "reactivating an account needs a password".into(),
            ));
        }
        let hash = self
            .hashing_slot(|| self.hashing.hash(password))?
            .map_err(AccountError::Hashing)?;
        let _guard = lock(&self.write_lock);
        let Some(mut record) = self.user_record(user)? else {
            return Err(AccountError::UnknownUser);
        };
        if !record.deactivated {
            return Ok(());
        }
        record.deactivated = false;
        record.password_hash = Some(hash);
        let mut batch = Batch::new();
        batch.put_json(Cf::Users, keys::user(user), &record);
        self.db.write(batch)?;
        tracing::info!(%user, "reactivated user");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewDevice, PasswordHashing};
    use std::sync::Arc;

    fn svc() -> (tempfile::TempDir, AccountService) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(storage::Db::open(dir.path(), false).expect("open"));
        let name = ruma::ServerName::parse("x").expect("name");
        (
            dir,
            AccountService::new(db, name, PasswordHashing::insecure_fast()),
        )
    }

    #[test]
    fn listing_filters_pages_and_counts() {
        let (_d, s) = svc();
        for (name, admin) in [
            ("alice", true),
            ("bob", false),
            ("carol", false),
            ("dave", false),
        ] {
            s.register(name, Some("pw"), NewDevice::default(), admin, false)
                .expect("register");
        }
        let dave: OwnedUserId = "@dave:x".try_into().expect("id");
        s.deactivate(&dave).expect("deactivate");
        let all = UserFilter::default();
        let (page, total) = s.list_users(&all, 0, 2).expect("list");
        assert_eq!(total, 3, "deactivated left out by default");
        assert_eq!(
            page.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            ["@alice:x", "@bob:x"]
        );
        let (page, _) = s.list_users(&all, 2, 2).expect("list");
        assert_eq!(page.len(), 1);
        let with_deactivated = UserFilter {
            deactivated: true,
            ..Default::default()
        };
        assert_eq!(s.list_users(&with_deactivated, 0, 10).expect("list").1, 4);
        let admins = UserFilter {
            admins: Some(true),
            ..Default::default()
        };
        assert_eq!(s.list_users(&admins, 0, 10).expect("list").1, 1);
        let named = UserFilter {
            name: Some("CAR".into()),
            ..Default::default()
        };
        let (page, total) = s.list_users(&named, 0, 10).expect("list");
        assert_eq!((total, page[0].name.as_str()), (1, "@carol:x"));
    }

    #[test]
    fn admin_flag_and_reactivation() {
        let (_d, s) = svc();
        s.register("bob", Some("pw"), NewDevice::default(), false, false)
            .expect("register");
        let bob: OwnedUserId = "@bob:x".try_into().expect("id");
        s.set_admin(&bob, true).expect("admin");
        assert!(s.is_admin(&bob).expect("read"));
        s.deactivate(&bob).expect("deactivate");
        assert!(matches!(
            s.set_admin(&bob, true),
            Err(AccountError::UserDeactivated)
        ));
        assert!(matches!(
            s.reactivate(&bob, ""),
            Err(AccountError::InvalidParam(_))
        ));
        s.reactivate(&bob, "new password").expect("reactivate");
        let summary = s.user_summary(&bob).expect("read").expect("exists");
        assert!(!summary.deactivated && summary.has_password && !summary.admin);
        s.check_password(&bob, "new password")
            .expect("the new password works");
        let ghost: OwnedUserId = "@ghost:x".try_into().expect("id");
        assert!(matches!(
            s.set_admin(&ghost, true),
            Err(AccountError::UnknownUser)
        ));
    }
}
