//! Profiles: display name and avatar URL, stored in the user record.
use super::*;

impl AccountService {
    /// A local user's profile; `None` if the user does not exist.
    pub fn profile(&self, user: &UserId) -> Result<Option<Profile>, StorageError> {
        Ok(self.user_record(user)?.map(|r| r.profile))
    }

    pub(crate) fn update_profile(
        &self,
        user: &UserId,
        change: impl FnOnce(&mut Profile),
    ) -> Result<Profile> {
        let _guard = lock(&self.write_lock);
        let Some(mut record) = self.user_record(user)? else {
            return Err(AccountError::UnknownUser);
        };
        change(&mut record.profile);
        let mut batch = Batch::new();
        batch.put_json(Cf::Users, keys::user(user), &record);
        self.db.write(batch)?;
        Ok(record.profile)
    }

    /// Set (or with `None` / an empty string, remove) the display name. Returns the new profile.
    pub fn set_displayname(&self, user: &UserId, displayname: Option<String>) -> Result<Profile> {
        let displayname = displayname.filter(|d| !d.is_empty());
        if let Some(d) = &displayname
            && d.chars().count() > MAX_DISPLAYNAME_LEN
        {
            return Err(AccountError::InvalidParam(format!(
                "displayname is longer than {MAX_DISPLAYNAME_LEN} characters"
            )));
        }
        self.update_profile(user, |p| p.displayname = displayname)
    }

    /// Set (or with `None` / an empty string, remove) the avatar URL. Returns the new profile.
    pub fn set_avatar_url(&self, user: &UserId, avatar_url: Option<String>) -> Result<Profile> {
        let avatar_url = avatar_url.filter(|d| !d.is_empty());
        if let Some(a) = &avatar_url
            && a.len() > MAX_AVATAR_URL_LEN
        {
            return Err(AccountError::InvalidParam(format!(
                "avatar_url is longer than {MAX_AVATAR_URL_LEN} bytes"
            )));
        }
        self.update_profile(user, |p| p.avatar_url = avatar_url)
    }
}
