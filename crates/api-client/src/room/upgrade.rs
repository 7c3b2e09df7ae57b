//! `POST /_matrix/client/v3/rooms/{roomId}/upgrade` ([`rooms::RoomService::upgrade_room`]
//! does the work), and what a user carries into a room's successor: when a local user
//! joins (or creates) a room whose create event names a `predecessor`, their push rules
//! for the old room are copied to the new one, however the upgrade was done (this
//! endpoint, by hand, or on another server).
use std::sync::Arc;

use axum::Json;
use axum::routing::post;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{blocking, hide_unknown, parse_room_id, route, wake};
use crate::AppState;
use crate::AppStateRef;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path};

/// Most `additional_creators` an upgrade accepts.
const MAX_ADDITIONAL_CREATORS: usize = 100;

pub(super) fn routes(r: axum::Router<Arc<AppState>>) -> axum::Router<Arc<AppState>> {
    route(r, "/rooms/{room_id}/upgrade", post(upgrade))
}

#[derive(Deserialize)]
struct UpgradeBody {
    new_version: Option<Value>,
    #[serde(default)]
    additional_creators: Option<Value>,
}

async fn upgrade(
    auth: Auth,
    state: AppStateRef,
    Path(room_id): Path<String>,
    JsonBody(body): JsonBody<UpgradeBody>,
) -> ApiResult<Json<Value>> {
    let state = state.0;
    let room = parse_room_id(&room_id)?;
    let version = match body.new_version {
        Some(Value::String(v)) => v,
        Some(_) => return Err(MatrixError::bad_json("new_version must be a string")),
        None => return Err(MatrixError::missing_param("Missing new_version")),
    };
    let creators: Vec<OwnedUserId> = match body.additional_creators {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) if list.len() <= MAX_ADDITIONAL_CREATORS => list
            .iter()
            .map(|v| {
                v.as_str()
                    .and_then(|s| OwnedUserId::try_from(s).ok())
                    .ok_or_else(|| {
                        MatrixError::invalid_param("additional_creators must be user IDs")
                    })
            })
            .collect::<ApiResult<_>>()?,
        Some(_) => {
            return Err(MatrixError::invalid_param(format!(
                "additional_creators must be a list of at most {MAX_ADDITIONAL_CREATORS} user IDs"
            )));
        }
    };
    let accounts::Profile {
        displayname,
        avatar_url,
    } = state.accounts.profile(&auth.user_id)?.unwrap_or_default();
    let profile = rooms::MemberProfile {
        displayname,
        avatar_url,
    };
    let (user, r) = (auth.user_id.clone(), room.clone());
    let done = blocking(&state, move |rooms| {
        rooms.upgrade_room(&user, &r, &version, creators, profile)
    })
    .await
    .map_err(hide_unknown)?;
    wake(&state, &room, done.old_room_pos, &[]).await;
    let invited: Vec<&UserId> = done.invited.iter().map(|u| &**u).collect();
    wake(&state, &done.new_room, done.new_room_pos, &invited).await;
    carry_over(&state, &auth.user_id, &done.new_room).await;
    Ok(Json(json!({ "replacement_room": done.new_room })))
}

/// The predecessor named by `room`'s create event, if the room's state is here.
fn predecessor_of(rooms: &rooms::RoomService, room: &RoomId) -> Option<OwnedRoomId> {
    let create = rooms
        .current_state_event(room, "m.room.create", "")
        .ok()
        .flatten()?;
    let content = create.content();
    content
        .get("predecessor")?
        .get("room_id")?
        .as_str()
        .and_then(|r| OwnedRoomId::try_from(r).ok())
}

/// `rules` (push rules as JSON, `{"override": [...], "room": [...], ...}`) with a copy of
/// every room rule for `old` as a rule for `new`, or `None` when there is nothing to copy
/// (no rule for `old`, or `new` has one already).
fn rules_with_copy(rules: &Value, old: &str, new: &str) -> Option<Value> {
    let room = rules.get("room")?.as_array()?;
    let source = room
        .iter()
        .find(|r| r.get("rule_id").and_then(Value::as_str) == Some(old))?;
    if room
        .iter()
        .any(|r| r.get("rule_id").and_then(Value::as_str) == Some(new))
    {
        return None;
    }
    let mut copy = source.clone();
    copy["rule_id"] = Value::from(new);
    let mut out = rules.clone();
    out["room"].as_array_mut()?.push(copy);
    Some(out)
}

/// Copies `user`'s push rules for `room`'s predecessor to `room` (see the module docs).
/// Best effort: a failure is logged, the join or upgrade stands.
pub(crate) async fn carry_over(state: &Arc<AppState>, user: &UserId, room: &RoomId) {
    let who = user.to_string();
    let (st, user, room) = (state.clone(), user.to_owned(), room.to_owned());
    let done = crate::blocking::blocking(move || -> Result<(), String> {
        let Some(old) = predecessor_of(&st.rooms, &room) else {
            return Ok(());
        };
        let current = st.push.rules(&user).map_err(|e| e.to_string())?;
        let json = serde_json::to_value(&current).map_err(|e| e.to_string())?;
        if rules_with_copy(&json, old.as_str(), room.as_str()).is_none() {
            return Ok(());
        }
        let (changed, pos) = st
            .push
            .edit_rules(&user, |rules| {
                let json = serde_json::to_value(&*rules)
                    .map_err(|e| push::PushError::BadJson(e.to_string()))?;
                let Some(copied) = rules_with_copy(&json, old.as_str(), room.as_str()) else {
                    return Ok(false);
                };
                *rules = serde_json::from_value(copied)
                    .map_err(|e| push::PushError::BadJson(e.to_string()))?;
                Ok(true)
            })
            .map_err(|e| e.to_string())?;
        if changed {
            st.notifier.wake([&*user], pos);
        }
        Ok(())
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(user = %who, error = %e, "push rules not carried over"),
        Err(_) => tracing::warn!("push rule carry-over task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_rules_are_copied_once() {
        let rules = json!({"room": [
            {"rule_id": "!old:x", "actions": ["dont_notify"], "enabled": true, "default": false}
        ], "override": []});
        let out = rules_with_copy(&rules, "!old:x", "!new:x").unwrap();
        let room = out["room"].as_array().unwrap();
        assert_eq!(room.len(), 2);
        assert_eq!(room[1]["rule_id"], "!new:x");
        assert_eq!(room[1]["actions"], json!(["dont_notify"]));
        assert!(rules_with_copy(&out, "!old:x", "!new:x").is_none());
        assert!(rules_with_copy(&rules, "!other:x", "!new:x").is_none());
    }
}
