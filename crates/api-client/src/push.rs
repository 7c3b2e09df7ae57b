//! Push over HTTP: thin handlers over [`::push::PushService`].
//!
//! * `GET /pushrules/` (`{"global": ruleset}`), `GET /pushrules/global/`,
//!   `GET/PUT/DELETE /pushrules/global/{kind}/{ruleId}` (`PUT` with `before`/`after`),
//!   `GET/PUT …/{ruleId}/enabled`, `GET/PUT …/{ruleId}/actions`. Only the `global` scope
//!   exists (400 `M_INVALID_PARAM` otherwise); an unknown rule, or an unknown `before`/`after`
//!   rule, is 404 `M_NOT_FOUND` (reading a rule of an unknown kind too; writing one is 400); server-default rules can be enabled/disabled and given
//!   actions but not replaced or deleted (400). Every change is stored as the account data
//!   `m.push_rules` and wakes the user's `/sync`.
//! * `GET /notifications` (`from`, `limit`, `only=highlight`).
//! * `GET /pushers`, `POST /pushers/set`: stored and listed; not delivered to gateways.
//! * [`sync_unread_counts`]: the `/sync` room sections' `unread_notifications` (and
//!   `unread_thread_notifications` when the filter asks).
use std::sync::Arc;

use ::push::PushError;
use ::push::rules::{insert_error, new_rule, parse_kind, rule_json};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::push::{Action, RuleKind};
use ruma::{RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::blocking::blocking;
use crate::error::{ApiResult, MatrixError};
use crate::extract::{Auth, JsonBody, Path, Query};
use crate::{AppState, AppStateRef, client_route};

impl From<PushError> for MatrixError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::NotFound(m) => MatrixError::not_found(m),
            PushError::InvalidParam(m) => MatrixError::invalid_param(m),
            PushError::MissingParam(m) => MatrixError::missing_param(m),
            PushError::BadJson(m) => MatrixError::bad_json(m),
            PushError::Storage(e) => e.into(),
            PushError::Account(e) => e.into(),
            PushError::Room(e) => e.into(),
        }
    }
}

pub fn routes() -> Router<Arc<AppState>> {
    let r = Router::new();
    let r = client_route(r, "/pushrules", get(get_all));
    let r = client_route(r, "/pushrules/{scope}", get(get_scope));
    let r = client_route(
        r,
        "/pushrules/{scope}/{kind}/{rule_id}",
        get(get_rule).put(put_rule).delete(delete_rule),
    );
    let r = client_route(
        r,
        "/pushrules/{scope}/{kind}/{rule_id}/{attr}",
        get(get_attr).put(put_attr),
    );
    let r = client_route(r, "/notifications", get(get_notifications));
    let r = client_route(r, "/pushers", get(get_pushers));
    client_route(r, "/pushers/set", post(set_pusher))
}

fn check_scope(scope: &str) -> ApiResult<()> {
    if scope != "global" {
        return Err(MatrixError::invalid_param(format!(
            "Unknown push rule scope {scope:?} (only \"global\" exists)"
        )));
    }
    Ok(())
}

fn unknown_rule() -> MatrixError {
    MatrixError::not_found("Unknown push rule")
}

async fn get_all(state: AppStateRef, auth: Auth) -> ApiResult<Json<Value>> {
    let push = state.push.clone();
    let rules = blocking(move || push.rules(&auth.user_id)).await??;
    Ok(Json(json!({ "global": rules })))
}

async fn get_scope(
    state: AppStateRef,
    auth: Auth,
    Path(scope): Path<String>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    let push = state.push.clone();
    let rules = blocking(move || push.rules(&auth.user_id)).await??;
    Ok(Json(
        serde_json::to_value(rules).map_err(MatrixError::internal)?,
    ))
}

async fn get_rule(
    state: AppStateRef,
    auth: Auth,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    // A kind this server does not have (e.g. MSC4306's `postcontent`) has no rules: 404, so
    // clients probing for a rule learn it is absent.
    let kind = parse_kind(&kind).map_err(|_| unknown_rule())?;
    let push = state.push.clone();
    let rules = blocking(move || push.rules(&auth.user_id)).await??;
    rule_json(&rules, &kind, &rule_id)
        .map(Json)
        .ok_or_else(unknown_rule)
}

#[derive(Debug, Deserialize)]
struct Position {
    before: Option<String>,
    after: Option<String>,
}

/// Edit the caller's rules on the blocking pool, then wake their syncs.
async fn edit(
    state: &Arc<AppState>,
    user: &UserId,
    f: impl FnOnce(&mut ruma::push::Ruleset) -> ::push::Result<()> + Send + 'static,
) -> ApiResult<Json<Value>> {
    let st = state.clone();
    let user = user.to_owned();
    blocking(move || -> ApiResult<()> {
        let ((), pos) = st.push.edit_rules(&user, f)?;
        st.notifier.wake([&*user], pos);
        Ok(())
    })
    .await??;
    Ok(Json(json!({})))
}

async fn put_rule(
    state: AppStateRef,
    auth: Auth,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
    Query(pos): Query<Position>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    let kind = parse_kind(&kind)?;
    if rule_id.starts_with('.') {
        return Err(MatrixError::invalid_param(
            "Rule IDs starting with '.' are reserved for server-default rules",
        ));
    }
    if !body.is_object() {
        return Err(MatrixError::bad_json("The body must be a JSON object"));
    }
    let rule = new_rule(&kind, &rule_id, &body)?;
    edit(&state.0, &auth.user_id, move |rules| {
        rules
            .insert(rule, pos.after.as_deref(), pos.before.as_deref())
            .map_err(insert_error)
    })
    .await
}

async fn delete_rule(
    state: AppStateRef,
    auth: Auth,
    Path((scope, kind, rule_id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    check_scope(&scope)?;
    let kind = parse_kind(&kind)?;
    edit(&state.0, &auth.user_id, move |rules| {
        use ruma::push::RemovePushRuleError as E;
        rules.remove(kind, &rule_id).map_err(|e| match e {
            E::ServerDefault => {
                PushError::InvalidParam("Server-default rules cannot be deleted".into())
            }
            _ => PushError::NotFound("Unknown push rule".into()),
        })
    })
    .await
}

fn attr_of(attr: &str) -> ApiResult<bool> {
    match attr {
        "enabled" => Ok(true),
        "actions" => Ok(false),
        _ => Err(MatrixError::unrecognized(StatusCode::NOT_FOUND)),
    }
}

async fn get_attr(
    state: AppStateRef,
    auth: Auth,
    Path((scope, kind, rule_id, attr)): Path<(String, String, String, String)>,
) -> ApiResult<Json<Value>> {
    let enabled = attr_of(&attr)?;
    check_scope(&scope)?;
    let kind = parse_kind(&kind).map_err(|_| unknown_rule())?;
    let push = state.push.clone();
    let rules = blocking(move || push.rules(&auth.user_id)).await??;
    let rule = rules.get(kind, &rule_id).ok_or_else(unknown_rule)?;
    Ok(Json(if enabled {
        json!({ "enabled": rule.enabled() })
    } else {
        json!({ "actions": rule.actions() })
    }))
}

async fn put_attr(
    state: AppStateRef,
    auth: Auth,
    Path((scope, kind, rule_id, attr)): Path<(String, String, String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let enabled = attr_of(&attr)?;
    check_scope(&scope)?;
    let kind: RuleKind = parse_kind(&kind)?;
    if enabled {
        let value = match body.get("enabled") {
            Some(Value::Bool(b)) => *b,
            None => return Err(MatrixError::missing_param("Missing 'enabled'")),
            Some(_) => return Err(MatrixError::bad_json("'enabled' must be a boolean")),
        };
        edit(&state.0, &auth.user_id, move |rules| {
            rules
                .set_enabled(kind, &rule_id, value)
                .map_err(|_| PushError::NotFound("Unknown push rule".into()))
        })
        .await
    } else {
        let actions: Vec<Action> = match body.get("actions") {
            Some(a) => serde_json::from_value(a.clone())
                .map_err(|e| MatrixError::bad_json(format!("Invalid actions: {e}")))?,
            None => return Err(MatrixError::missing_param("Missing 'actions'")),
        };
        edit(&state.0, &auth.user_id, move |rules| {
            rules
                .set_actions(kind, &rule_id, actions)
                .map_err(|_| PushError::NotFound("Unknown push rule".into()))
        })
        .await
    }
}

#[derive(Debug, Deserialize)]
struct NotificationsQuery {
    from: Option<String>,
    limit: Option<String>,
    only: Option<String>,
}

async fn get_notifications(
    state: AppStateRef,
    auth: Auth,
    Query(q): Query<NotificationsQuery>,
) -> ApiResult<Json<Value>> {
    let from = match q.from.as_deref().filter(|f| !f.is_empty()) {
        None => None,
        Some(f) => Some(
            f.parse::<u64>()
                .map_err(|_| MatrixError::invalid_param(format!("Invalid 'from' token {f:?}")))?,
        ),
    };
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .map_err(|_| MatrixError::invalid_param("'limit' must be a non-negative integer"))?,
    };
    let only_highlight = q.only.as_deref() == Some("highlight");
    let st = state.0.clone();
    let (list, next) = blocking(move || -> ApiResult<_> {
        let now = st.rooms.current_position();
        let (list, next) =
            st.push
                .notifications(&auth.user_id, from, limit, only_highlight, now)?;
        let ts_now = crate::now_ms();
        let mut out = Vec::with_capacity(list.len());
        for n in list {
            let Some(ev) = st.rooms.event(&n.record.event_id)? else {
                continue;
            };
            out.push(json!({
                "actions": n.record.actions,
                "event": ev.to_client_event(None, ts_now),
                "read": n.read,
                "room_id": n.room_id,
                "ts": n.record.ts,
            }));
        }
        Ok((out, next))
    })
    .await??;
    let mut body = json!({ "notifications": list });
    if let Some(next) = next {
        body["next_token"] = json!(next.to_string());
    }
    Ok(Json(body))
}

async fn get_pushers(state: AppStateRef, auth: Auth) -> ApiResult<Json<Value>> {
    let push = state.push.clone();
    let pushers = blocking(move || push.pushers(&auth.user_id)).await??;
    let list: Vec<Value> = pushers.iter().map(::push::Pusher::to_json).collect();
    Ok(Json(json!({ "pushers": list })))
}

async fn set_pusher(
    state: AppStateRef,
    auth: Auth,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let change = ::push::pushers::parse_set(&body, auth.device_id.as_str())?;
    let push = state.push.clone();
    blocking(move || push.change_pusher(&auth.user_id, change)).await??;
    Ok(Json(json!({})))
}

/// Set `unread_notifications` (and, when the filter asks, `unread_thread_notifications`)
/// in each joined room section of a `/sync` response. Reads and writes storage.
pub(crate) fn sync_unread_counts(
    state: &AppState,
    user: &UserId,
    by_thread: bool,
    join: &mut Map<String, Value>,
    now: u64,
) -> ApiResult<()> {
    for (room_id, section) in join.iter_mut() {
        let Ok(room) = RoomId::parse(room_id) else {
            continue;
        };
        let counts = state.push.unread_counts(user, &room, now, by_thread)?;
        section["unread_notifications"] = json!(counts.main);
        // Only threads with something unread, and no field at all when none has.
        if by_thread && !counts.threads.is_empty() {
            section["unread_thread_notifications"] = json!(counts.threads);
        }
    }
    Ok(())
}

/// Store the user's push rules as account data if they are not yet, so an initial `/sync`
/// carries `m.push_rules` (called before the sync reads account data).
pub(crate) fn sync_ensure_rules(state: &AppState, user: &UserId) -> ApiResult<()> {
    state.push.ensure_rules_stored(user)?;
    Ok(())
}
