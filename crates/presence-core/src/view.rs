//! What a viewer is shown: `m.presence` content for clients, and the fields of a federation
//! presence update, computed from an [`EffectivePresence`] at the instant of serving.

use serde::Serialize;

use crate::{engine::EffectivePresence, state::PresenceState};

/// Who is looking, as far as presence vocabulary goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// A client that understands MSC4042 `disabled` (it advertised support, or it is our own
    /// client API with the unstable feature on).
    Msc4042Client,
    /// A client that only knows the stable states. `disabled` is shown as `offline` with
    /// nothing else, which is the closest stable meaning ("not connected, or suppressing").
    LegacyClient,
}

/// The `content` of an `m.presence` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceContent {
    /// The state.
    pub presence: PresenceState,
    /// The status message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_msg: Option<String>,
    /// Milliseconds since the last activity; absent when unknown or hidden.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_active_ago: Option<u64>,
    /// Only present for online/busy: the spec defines it for `online`, and MSC3026 busy is
    /// online-but-do-not-disturb.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currently_active: Option<bool>,
}

/// The fields of one entry of an `m.presence` EDU's `push` list (without `user_id` and the
/// MSC4325 `allowed_recipients`, which the sender adds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FederationPresence {
    /// The state; never `disabled` (not in the federation schema).
    pub presence: PresenceState,
    /// The status message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_msg: Option<String>,
    /// Required by the schema. Where activity is unknown or hidden this is the time since the
    /// presence last visibly changed: the receiver learns nothing it could not tell from when
    /// the update arrived.
    pub last_active_ago: u64,
    /// Defaults to false on the receiving side.
    pub currently_active: bool,
}

impl EffectivePresence {
    /// `m.presence` content for a client viewer at `now`.
    pub fn content(&self, now: u64, audience: Audience) -> PresenceContent {
        if self.state == PresenceState::Disabled {
            // No data means no data: no message, no activity, for every audience.
            let presence = match audience {
                Audience::Msc4042Client => PresenceState::Disabled,
                Audience::LegacyClient => PresenceState::Offline,
            };
            return PresenceContent {
                presence,
                status_msg: None,
                last_active_ago: None,
                currently_active: None,
            };
        }
        PresenceContent {
            presence: self.state,
            status_msg: self.status_msg.as_ref().map(|m| m.as_str().to_owned()),
            last_active_ago: self.last_active_ts.map(|t| now.saturating_sub(t)),
            currently_active: (!self.overridden
                && matches!(self.state, PresenceState::Online | PresenceState::Busy))
            .then_some(self.currently_active),
        }
    }

    /// The federation projection at `now` (legacy vocabulary: `disabled` becomes `offline`).
    pub fn federation(&self, now: u64) -> FederationPresence {
        let content = self.content(now, Audience::LegacyClient);
        FederationPresence {
            presence: content.presence,
            status_msg: content.status_msg,
            last_active_ago: content
                .last_active_ago
                .unwrap_or_else(|| now.saturating_sub(self.since_ts)),
            currently_active: content.currently_active.unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::state::StatusMsg;

    fn presence(state: PresenceState) -> EffectivePresence {
        EffectivePresence {
            state,
            status_msg: StatusMsg::new("at lunch").unwrap(),
            currently_active: true,
            last_active_ts: Some(1_000),
            overridden: false,
            since_ts: 500,
        }
    }

    #[test]
    fn online_content_has_every_field() {
        let content = presence(PresenceState::Online).content(4_000, Audience::Msc4042Client);
        assert_eq!(
            serde_json::to_value(&content).unwrap(),
            json!({"presence": "online", "status_msg": "at lunch", "last_active_ago": 3_000, "currently_active": true})
        );
    }

    #[test]
    fn currently_active_only_for_online_and_busy() {
        for state in [PresenceState::Unavailable, PresenceState::Offline] {
            assert_eq!(
                presence(state)
                    .content(2_000, Audience::LegacyClient)
                    .currently_active,
                None
            );
        }
        let busy = presence(PresenceState::Busy).content(2_000, Audience::LegacyClient);
        assert_eq!(busy.presence, PresenceState::Busy);
        assert_eq!(busy.currently_active, Some(true));
    }

    #[test]
    fn disabled_is_offline_and_empty_for_legacy_viewers() {
        let disabled = EffectivePresence {
            overridden: true,
            last_active_ts: None,
            currently_active: false,
            ..presence(PresenceState::Disabled)
        };
        assert_eq!(
            serde_json::to_value(disabled.content(9_000, Audience::LegacyClient)).unwrap(),
            json!({"presence": "offline"})
        );
        assert_eq!(
            serde_json::to_value(disabled.content(9_000, Audience::Msc4042Client)).unwrap(),
            json!({"presence": "support.feline.msc4042.v1.disabled"})
        );
        let fed = disabled.federation(9_000);
        assert_eq!(fed.presence, PresenceState::Offline);
        assert_eq!(fed.status_msg, None);
        assert_eq!(fed.last_active_ago, 8_500);
        assert!(!fed.currently_active);
    }

    #[test]
    fn federation_uses_real_activity_when_shown() {
        let fed = presence(PresenceState::Online).federation(1_250);
        assert_eq!(fed.last_active_ago, 250);
        assert!(fed.currently_active);
        assert_eq!(
            serde_json::to_value(&fed).unwrap(),
            json!({"presence": "online", "status_msg": "at lunch", "last_active_ago": 250, "currently_active": true})
        );
    }
}
