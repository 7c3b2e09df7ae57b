//! Presence values: the wire-level [`PresenceState`], the narrower [`DeviceState`] a single
//! device may report, and the validated [`StatusMsg`].

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Wire string of the MSC3026 busy state (unstable prefix; there is no stable name yet).
pub const BUSY_WIRE: &str = "org.matrix.msc3026.busy";
/// Wire string of the MSC4042 disabled state (unstable prefix).
pub const DISABLED_WIRE: &str = "support.feline.msc4042.v1.disabled";

/// Longest accepted `status_msg`, in bytes of UTF-8.
///
/// The spec sets no limit; without one a client can make every presence EDU and every `/sync`
/// of every viewer arbitrarily large. 1 KiB is generous for a human-written status and keeps a
/// full 50-entry presence EDU well under the 64 KiB per EDU proposed by MSC4514.
pub const MAX_STATUS_MSG_BYTES: usize = 1024;

/// A presence state as it appears in `m.presence` content and in the presence APIs.
///
/// `Busy` and `Disabled` are unstable (MSC3026, MSC4042) and use their prefixed wire strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceState {
    /// `online`: connected and (recently) active.
    Online,
    /// `unavailable`: connected but idle, or explicitly away.
    Unavailable,
    /// `offline`: not connected, or appearing offline.
    Offline,
    /// `org.matrix.msc3026.busy`: connected but does not want to be disturbed.
    Busy,
    /// `support.feline.msc4042.v1.disabled`: no presence data is available for this user.
    /// Only ever the result of a user's override; no device can report it.
    Disabled,
}

impl PresenceState {
    /// All states, for tests and exhaustive tables.
    pub const ALL: [PresenceState; 5] = [
        PresenceState::Online,
        PresenceState::Unavailable,
        PresenceState::Offline,
        PresenceState::Busy,
        PresenceState::Disabled,
    ];

    /// The string used on the wire.
    pub fn as_wire_str(self) -> &'static str {
        match self {
            PresenceState::Online => "online",
            PresenceState::Unavailable => "unavailable",
            PresenceState::Offline => "offline",
            PresenceState::Busy => BUSY_WIRE,
            PresenceState::Disabled => DISABLED_WIRE,
        }
    }
}

impl fmt::Display for PresenceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_wire_str())
    }
}

/// A presence string that is not one of the five known wire values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown presence state {0:?}")]
pub struct UnknownPresenceState(pub String);

impl FromStr for PresenceState {
    type Err = UnknownPresenceState;

    /// Accepts exactly the wire strings. Unprefixed `busy`/`disabled` are rejected: neither MSC is
    /// stable, and accepting a guessed stable name would make us emit states no one else reads.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PresenceState::ALL
            .into_iter()
            .find(|state| state.as_wire_str() == s)
            .ok_or_else(|| UnknownPresenceState(s.to_owned()))
    }
}

impl Serialize for PresenceState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_wire_str())
    }
}

impl<'de> Deserialize<'de> for PresenceState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What one device can report about its user: everything except `disabled`, which only an
/// override can set (MSC4042 means "there is no data", which a device that is reporting data
/// cannot truthfully say).
///
/// Ordered by aggregation priority: `Offline < Unavailable < Online < Busy`, so the user's
/// state is the maximum over the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceState {
    /// `offline`.
    Offline,
    /// `unavailable`.
    Unavailable,
    /// `online`.
    Online,
    /// `org.matrix.msc3026.busy`.
    Busy,
}

impl DeviceState {
    /// The same state in the wider wire type.
    pub fn presence(self) -> PresenceState {
        match self {
            DeviceState::Offline => PresenceState::Offline,
            DeviceState::Unavailable => PresenceState::Unavailable,
            DeviceState::Online => PresenceState::Online,
            DeviceState::Busy => PresenceState::Busy,
        }
    }
}

impl From<DeviceState> for PresenceState {
    fn from(state: DeviceState) -> Self {
        state.presence()
    }
}

/// `disabled` was given where only a device state is allowed (`/sync?set_presence=`,
/// `PUT /presence/{userId}/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the disabled presence state can only be set as an override")]
pub struct DisabledIsNotADeviceState;

impl TryFrom<PresenceState> for DeviceState {
    type Error = DisabledIsNotADeviceState;

    fn try_from(state: PresenceState) -> Result<Self, Self::Error> {
        match state {
            PresenceState::Online => Ok(DeviceState::Online),
            PresenceState::Unavailable => Ok(DeviceState::Unavailable),
            PresenceState::Offline => Ok(DeviceState::Offline),
            PresenceState::Busy => Ok(DeviceState::Busy),
            PresenceState::Disabled => Err(DisabledIsNotADeviceState),
        }
    }
}

impl Serialize for DeviceState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.presence().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for DeviceState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let state = PresenceState::deserialize(deserializer)?;
        DeviceState::try_from(state).map_err(serde::de::Error::custom)
    }
}

/// A status message that is known to be non-empty and at most [`MAX_STATUS_MSG_BYTES`] long.
///
/// "No status message" is `Option::<StatusMsg>::None`; an empty string is not a message, so
/// [`StatusMsg::parse`] turns it into `None` (this is how clients clear their status).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct StatusMsg(String);

/// Why a status message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusMsgError {
    /// Longer than [`MAX_STATUS_MSG_BYTES`].
    #[error("status_msg is {len} bytes long, the limit is {max} bytes")]
    TooLong {
        /// Length of the refused message in bytes.
        len: usize,
        /// The limit, [`MAX_STATUS_MSG_BYTES`].
        max: usize,
    },
}

impl StatusMsg {
    /// Validates a client-supplied `status_msg`. `None` and `""` both mean "no message".
    pub fn parse(msg: Option<String>) -> Result<Option<StatusMsg>, StatusMsgError> {
        match msg {
            None => Ok(None),
            Some(msg) if msg.is_empty() => Ok(None),
            Some(msg) if msg.len() > MAX_STATUS_MSG_BYTES => Err(StatusMsgError::TooLong {
                len: msg.len(),
                max: MAX_STATUS_MSG_BYTES,
            }),
            Some(msg) => Ok(Some(StatusMsg(msg))),
        }
    }

    /// Validates a message that must be present (e.g. in tests or from trusted storage).
    pub fn new(msg: impl Into<String>) -> Result<Option<StatusMsg>, StatusMsgError> {
        StatusMsg::parse(Some(msg.into()))
    }

    /// The message text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StatusMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StatusMsg {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        match StatusMsg::parse(Some(s)) {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => Err(serde::de::Error::custom("empty status_msg")),
            Err(e) => Err(serde::de::Error::custom(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_round_trip() {
        for state in PresenceState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_wire_str()));
            let back: PresenceState = serde_json::from_str(&json).unwrap();
            assert_eq!(back, state);
            assert_eq!(state.as_wire_str().parse::<PresenceState>(), Ok(state));
        }
        assert_eq!(PresenceState::Busy.to_string(), "org.matrix.msc3026.busy");
        assert_eq!(
            PresenceState::Disabled.to_string(),
            "support.feline.msc4042.v1.disabled"
        );
    }

    #[test]
    fn unknown_strings_are_rejected() {
        for bad in [
            "", "busy", "disabled", "Online", "away", "ONLINE", " online",
        ] {
            assert!(bad.parse::<PresenceState>().is_err(), "{bad:?} accepted");
            assert!(serde_json::from_str::<PresenceState>(&format!("{bad:?}")).is_err());
        }
    }

    #[test]
    fn device_state_excludes_disabled_and_orders_by_priority() {
        assert_eq!(
            DeviceState::try_from(PresenceState::Disabled),
            Err(DisabledIsNotADeviceState)
        );
        assert!(serde_json::from_str::<DeviceState>(&format!("{DISABLED_WIRE:?}")).is_err());
        assert!(DeviceState::Busy > DeviceState::Online);
        assert!(DeviceState::Online > DeviceState::Unavailable);
        assert!(DeviceState::Unavailable > DeviceState::Offline);
        for state in [
            DeviceState::Offline,
            DeviceState::Unavailable,
            DeviceState::Online,
            DeviceState::Busy,
        ] {
            assert_eq!(DeviceState::try_from(state.presence()), Ok(state));
        }
    }

    #[test]
    fn status_msg_validation() {
        assert_eq!(StatusMsg::parse(None), Ok(None));
        assert_eq!(StatusMsg::parse(Some(String::new())), Ok(None));
        let max = "é".repeat(MAX_STATUS_MSG_BYTES / 2);
        assert_eq!(StatusMsg::new(max.clone()).unwrap().unwrap().as_str(), max);
        let over = format!("{max}x");
        assert_eq!(
            StatusMsg::new(over),
            Err(StatusMsgError::TooLong {
                len: MAX_STATUS_MSG_BYTES + 1,
                max: MAX_STATUS_MSG_BYTES
            })
        );
        assert!(serde_json::from_str::<StatusMsg>("\"\"").is_err());
    }
}
