//! # presence-core
//!
//! The presence logic of Pulse, with no I/O: no HTTP, no async runtime, no storage, and no
//! clock. Every call takes the current time as `u64` milliseconds since the Unix epoch, so
//! every rule is a plain unit test.
//!
//! ## What is here
//!
//! * [`PresenceEngine`] — folds what each device says into one *effective presence* per user,
//!   owns every presence timer of every user in one deadline queue, and is edge-triggered:
//!   each call returns a [`PresenceChange`] only when something a viewer can see changed.
//! * [`EffectivePresence::content`] / [`EffectivePresence::federation`] — the `m.presence`
//!   fields for a client (MSC4042-aware or legacy) or for a federation EDU at serving time.
//! * [`sharing`] — MSC4325 `m.presence_sharing_config`: parsing, validation, the compiled
//!   [`SharingPolicy`](sharing::SharingPolicy) deciding who may see whom, the per-destination
//!   `allowed_recipients`, and filtering of incoming updates.
//! * [`audience`] — [`AudienceIndex`](audience::AudienceIndex): who shares a joined room
//!   with whom, kept up to date from membership changes.
//!
//! ## Values
//!
//! [`PresenceState`] is the wire enum: `online`, `unavailable`, `offline`, busy
//! (`org.matrix.msc3026.busy`) and disabled (`support.feline.msc4042.v1.disabled`).
//! [`DeviceState`] is what a device may report (everything but `disabled`), ordered
//! `busy > online > unavailable > offline`. [`StatusMsg`] is a non-empty message of at most
//! [`MAX_STATUS_MSG_BYTES`]; an empty string from a client means "no message".
//!
//! ## How the server drives the engine
//!
//! ```
//! use presence_core::{DeviceState, PresenceConfig, PresenceEngine, PresenceState, Audience};
//! use ruma::user_id;
//!
//! let mut engine = PresenceEngine::new(PresenceConfig::default());
//! let alice = user_id!("@alice:example.org");
//!
//! // GET /sync (set_presence omitted) starts: alice's phone connects, she is online.
//! let started = engine.sync_started(alice, "PHONE", None, 1_000);
//! let change = started.change.expect("offline -> online is visible");
//! assert_eq!(change.current.state, PresenceState::Online);
//! // ...persist `change`, wake the audience's syncs, queue it for remote servers...
//!
//! // The long-poll returns. Nothing visible changes, so there is nothing to write or send.
//! assert!(engine.sync_ended(started.ticket.unwrap(), 11_000).is_none());
//!
//! // The server sleeps until the next deadline and then fires the timers:
//! // 30 s after the sync ended without a new one, the phone has dropped out.
//! let deadline = engine.next_deadline().unwrap();
//! assert_eq!(deadline, 41_000);
//! let changes = engine.advance(deadline);
//! assert_eq!(changes[0].current.state, PresenceState::Offline);
//! assert!(engine.advance(deadline).is_empty()); // idempotent
//!
//! // Serving an event: last_active_ago is computed at the moment of serving.
//! let content = engine.current(alice, 100_000).content(100_000, Audience::LegacyClient);
//! assert_eq!(content.last_active_ago, Some(99_000));
//! # let _ = DeviceState::Online;
//! ```
//!
//! Inputs, one call each: [`sync_started`](PresenceEngine::sync_started) /
//! [`sync_ended`](PresenceEngine::sync_ended) (with the returned [`SyncTicket`]),
//! [`set_status`](PresenceEngine::set_status) (`PUT /presence/{userId}/status`),
//! [`set_override`](PresenceEngine::set_override) (MSC4043),
//! [`activity`](PresenceEngine::activity) (sent events, receipts, read markers, typing),
//! [`device_removed`](PresenceEngine::device_removed), [`remove_user`](PresenceEngine::remove_user);
//! timers: [`next_deadline`](PresenceEngine::next_deadline) and
//! [`advance`](PresenceEngine::advance); reads: [`current`](PresenceEngine::current);
//! persistence: [`snapshot`](PresenceEngine::snapshot), [`restore`](PresenceEngine::restore),
//! [`take_dirty`](PresenceEngine::take_dirty).
//!
//! ## The rules (`docs/presence.md` has them as a tested truth table)
//!
//! * **Override first.** A user's override ([`PresenceOverride`]) is the whole visible
//!   presence — state and status message — and no timer or device moves it. Activity is
//!   hidden while it is set.
//! * **Otherwise devices.** A device counts while *connected*: a `/sync` is in flight, or its
//!   last sync, status update or activity was less than `sync_online_timeout` ago (30 s;
//!   `busy_timeout`, 1 h, for a busy device). It contributes its manual state if one holds,
//!   else its automatic one. The user's state is the highest contribution
//!   (busy > online > unavailable > offline), with the most recent manual `status_msg`.
//! * **Automatic signals** come from `/sync?set_presence=`: omitted means online, `unavailable`
//!   means idle, busy is accepted, and `offline` means the request does not count at all. A
//!   plain (omitted) sync never downgrades a busy the same device reported.
//! * **Manual states** come from `PUT /status` and belong to the device that set them. A manual
//!   state holds against plain syncs (which say only "I am here"); it ends when the same
//!   device sets another one, when the same device's *explicit* `set_presence` contradicts it
//!   (a newer statement), when the device drops out, or when it is removed. A manual busy
//!   ignores automatic signals entirely. Users who want a state no client can change use the
//!   override.
//! * **Active vs connected.** Activity (and becoming online or busy) sets `last_active_ts`;
//!   a sync by itself does not. `currently_active` is true for online/busy users active within
//!   `last_active_granularity` (60 s). An online user idle for `idle_timeout` (5 min) is
//!   shown `unavailable`; busy never idles.
//! * **Edge-triggered.** A change is reported when the state, the status message,
//!   `currently_active`, or whether activity is hidden changes — never for `last_active_ts`
//!   alone, which views compute at serving time.
//!
//! ## Sharing and audience, from the server's side
//!
//! ```
//! use presence_core::audience::AudienceIndex;
//! use presence_core::sharing::{AllowedRecipients, IncomingRecipients, SharingConfig, SharingPolicy};
//! use ruma::{room_id, server_name, user_id};
//! use serde_json::json;
//!
//! let (u, bob, bea) = (user_id!("@u:home.org"), user_id!("@bob:remote.org"), user_id!("@bea:remote.org"));
//! let room = room_id!("!r:home.org");
//!
//! // Membership changes keep the index current and say whose visibility changed.
//! let mut index = AudienceIndex::new();
//! index.apply_membership(room, u, true);
//! assert_eq!(index.apply_membership(room, bob, true).gained, vec![u.to_owned()]);
//! index.apply_membership(room, bea, true);
//!
//! // PUT account data: validate (a 400 names the bad entry), store, compile once.
//! let content = json!({"allowed_users": ["@b*:remote.org"], "denied_users": ["@bob:remote.org"]});
//! let policy = SharingPolicy::compile(&SharingConfig::from_json(&content).unwrap());
//!
//! // Local fan-out: the room audience (plus policy.explicitly_allowed_users()), filtered.
//! let viewers: Vec<_> = index.audience(u).filter(|v| policy.may_see(u, v, &index)).collect();
//! assert_eq!(viewers, vec![bea]);
//!
//! // Federation: one call per destination in index.audience_servers(u).
//! let remote = server_name!("remote.org");
//! let recipients = policy.allowed_recipients(u, remote, index.members_on_server(u, remote));
//! assert_eq!(recipients, AllowedRecipients::Chunks(vec![vec!["@bea:remote.org".to_owned()]]));
//!
//! // Receiving side: filter local delivery by the entry's `allowed_recipients`.
//! let incoming = IncomingRecipients::from_json(Some(&json!(["@bea:remote.org"])));
//! assert!(incoming.allows(bea) && !incoming.allows(bob));
//! ```

#![warn(missing_docs)]

pub mod audience;
mod config;
mod engine;
pub mod routing;
pub mod sharing;
mod state;
mod timers;
pub mod token_bucket;
mod view;

pub use config::PresenceConfig;
pub use engine::{
    DeviceSnapshot, EffectivePresence, OverrideSnapshot, PresenceChange, PresenceEngine,
    PresenceOverride, PresenceSnapshot, SyncStarted, SyncTicket,
};
pub use state::{
    BUSY_WIRE, DISABLED_WIRE, DeviceState, DisabledIsNotADeviceState, MAX_STATUS_MSG_BYTES,
    PresenceState, StatusMsg, StatusMsgError, UnknownPresenceState,
};
pub use timers::DeadlineQueue;
pub use view::{Audience, FederationPresence, PresenceContent};
