//! MSC4325 presence sharing: who may see a user's presence.
//!
//! A user controls sharing with the `m.presence_sharing_config` account data
//! (unstable: `events.matrix-community.presence_sharing_config`):
//!
//! ```json
//! { "allowed_users": ["@alice:example.org", "@b*:example.org", "!room:example.org"],
//!   "denied_users":  ["@bob:example.org"] }
//! ```
//!
//! Entries are user IDs, user-ID globs (`*` and `?`) and room IDs. [`SharingConfig::from_json`]
//! validates the content (for the account-data PUT); [`SharingPolicy`] is the compiled form.
//!
//! ## The decision: may viewer V see user U?
//!
//! 1. V = U: always.
//! 2. No config at all: legacy behaviour, V must share a joined room with U.
//!    A stored config that cannot be parsed fails closed: nobody but U.
//! 3. If any user pattern (exact ID or glob, in either list) matches V, the most specific
//!    matching pattern decides: an exact ID beats every glob, among globs more literal
//!    characters win, and at equal specificity deny wins.
//! 4. Otherwise rooms decide: V may see U if they share at least one joined room that is not
//!    listed in `denied_users`. (A room in `allowed_users` that U is in is such a room, unless
//!    it is also denied; listed rooms U is not in are ignored, as MSC4325 asks, because the
//!    server's view of their membership may be stale.)
//! 5. Otherwise no.
//!
//! Consequences, each a unit test: `@b*:example.org` allowed and `@bob:example.org` denied
//! hides U from bob but not from `@bea:example.org`; `denied_users: ["@*:*"]` with
//! `allowed_users: ["@alice:example.org"]` shares with alice only, even without a shared room;
//! `@*:matrix.org` allowed beats `@*:*` denied; a denied room does not hide U from someone met
//! in another room.
//!
//! ## Federation
//!
//! [`SharingPolicy::allowed_recipients`] computes the `allowed_recipients` of an outgoing
//! update for one destination; [`IncomingRecipients`] filters the local recipients of an
//! incoming one.

mod glob;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt,
};

use globset::{GlobSet, GlobSetBuilder};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, ServerName, UserId};
use serde_json::Value;

pub use glob::{UserGlob, glob_match};

/// Account-data type of the sharing config.
pub const EVENT_TYPE: &str = "m.presence_sharing_config";
/// Unstable account-data type (also the `/versions` unstable feature flag).
pub const UNSTABLE_EVENT_TYPE: &str = "events.matrix-community.presence_sharing_config";
/// Longest entry, in bytes (the Matrix ID limit; Synapse caps MSC4155 globs the same way).
pub const MAX_ENTRY_BYTES: usize = 255;
/// Most entries per list. Bounds the cost of compiling and matching a policy.
pub const MAX_ENTRIES_PER_LIST: usize = 1000;
/// Most `allowed_recipients` per presence update sent over federation (MSC4325's advice).
pub const MAX_RECIPIENTS_PER_EDU: usize = 256;
/// Work (dynamic-programming cells, the product of two pattern lengths) that may be spent on
/// deciding which allowed globs can be sent as globs: once when compiling a policy, and once per
/// destination. Past it no glob is sent, only user IDs — always correct, just longer. This keeps
/// a config of 1,000 maximal globs per list from costing seconds per presence update.
pub const GLOB_ANALYSIS_BUDGET: usize = 1 << 20;
/// Most entries of an incoming `allowed_recipients` that are considered; later ones are
/// ignored, which can only deliver to fewer users.
pub const MAX_INCOMING_RECIPIENTS: usize = 4 * MAX_RECIPIENTS_PER_EDU;
/// Most globs of an incoming `allowed_recipients` that are considered; later ones are ignored.
/// Each push entry compiles its own matcher, so a remote server must not be able to make that
/// expensive; a sender needs few globs (ours sends only those no deny carves into).
pub const MAX_INCOMING_GLOBS: usize = 16;

/// One entry of `allowed_users` / `denied_users`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SharingEntry {
    /// An exact user ID.
    User(OwnedUserId),
    /// A user-ID glob (contains `*` or `?`).
    UserGlob(UserGlob),
    /// A room ID: its joined members.
    Room(OwnedRoomId),
}

/// Why an entry is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Over [`MAX_ENTRY_BYTES`].
    #[error("is {len} bytes long, entries are limited to {max} bytes")]
    TooLong {
        /// Length of the entry in bytes.
        len: usize,
        /// [`MAX_ENTRY_BYTES`].
        max: usize,
    },
    /// Starts with neither `@` nor `!`.
    #[error("is neither a user ID, a user ID glob nor a room ID")]
    NotUserOrRoom,
    /// Starts with `@`, has no wildcard, and is not a valid user ID.
    #[error("is not a valid user ID ({0})")]
    InvalidUserId(String),
    /// Starts with `!` and is not a valid room ID.
    #[error("is not a valid room ID ({0})")]
    InvalidRoomId(String),
}

impl SharingEntry {
    /// Classifies and validates one entry. `*` and `?` make an `@…` entry a glob; room IDs are
    /// never globbed (MSC4325: room IDs share no useful patterns).
    pub fn parse(entry: &str) -> Result<SharingEntry, EntryError> {
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLong {
                len: entry.len(),
                max: MAX_ENTRY_BYTES,
            });
        }
        if entry.starts_with('@') {
            if UserGlob::is_glob(entry) {
                Ok(SharingEntry::UserGlob(UserGlob::new(entry)))
            } else {
                UserId::parse(entry)
                    .map(SharingEntry::User)
                    .map_err(|e| EntryError::InvalidUserId(e.to_string()))
            }
        } else if entry.starts_with('!') {
            RoomId::parse(entry)
                .map(SharingEntry::Room)
                .map_err(|e| EntryError::InvalidRoomId(e.to_string()))
        } else {
            Err(EntryError::NotUserOrRoom)
        }
    }

    /// The entry as written.
    pub fn as_str(&self) -> &str {
        match self {
            SharingEntry::User(user) => user.as_str(),
            SharingEntry::UserGlob(glob) => glob.as_str(),
            SharingEntry::Room(room) => room.as_str(),
        }
    }
}

/// Which list an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharingList {
    /// `allowed_users`.
    AllowedUsers,
    /// `denied_users`.
    DeniedUsers,
}

impl SharingList {
    /// The JSON key.
    pub fn key(self) -> &'static str {
        match self {
            SharingList::AllowedUsers => "allowed_users",
            SharingList::DeniedUsers => "denied_users",
        }
    }
}

impl fmt::Display for SharingList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Why a sharing config is invalid. Every variant names the list, and entry errors name the
/// index and (a prefix of) the entry itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharingConfigError {
    /// The content is not a JSON object.
    #[error("the presence sharing config must be a JSON object")]
    NotAnObject,
    /// A list is present but not an array.
    #[error("`{list}` must be an array of strings")]
    NotAnArray {
        /// The list.
        list: SharingList,
    },
    /// A list has more than [`MAX_ENTRIES_PER_LIST`] entries.
    #[error("`{list}` has {count} entries, at most {max} are allowed")]
    TooManyEntries {
        /// The list.
        list: SharingList,
        /// Its length.
        count: usize,
        /// [`MAX_ENTRIES_PER_LIST`].
        max: usize,
    },
    /// An entry is not a string.
    #[error("`{list}[{index}]` must be a string, found {found}")]
    NotAString {
        /// The list.
        list: SharingList,
        /// Position of the entry.
        index: usize,
        /// The JSON type found.
        found: &'static str,
    },
    /// An entry is a string but not a valid entry.
    #[error("`{list}[{index}]` {entry:?} {reason}")]
    InvalidEntry {
        /// The list.
        list: SharingList,
        /// Position of the entry.
        index: usize,
        /// The entry (cut to 64 bytes).
        entry: String,
        /// What is wrong with it.
        reason: EntryError,
    },
}

/// The parsed content of `m.presence_sharing_config`. Missing lists are empty; other keys are
/// ignored (forward compatibility).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharingConfig {
    /// `allowed_users`.
    pub allowed_users: Vec<SharingEntry>,
    /// `denied_users`.
    pub denied_users: Vec<SharingEntry>,
}

impl SharingConfig {
    /// Parses and validates account-data content.
    pub fn from_json(content: &Value) -> Result<SharingConfig, SharingConfigError> {
        let object = content.as_object().ok_or(SharingConfigError::NotAnObject)?;
        let parse_list = |list: SharingList| -> Result<Vec<SharingEntry>, SharingConfigError> {
            let Some(value) = object.get(list.key()) else {
                return Ok(Vec::new());
            };
            let entries = value
                .as_array()
                .ok_or(SharingConfigError::NotAnArray { list })?;
            if entries.len() > MAX_ENTRIES_PER_LIST {
                return Err(SharingConfigError::TooManyEntries {
                    list,
                    count: entries.len(),
                    max: MAX_ENTRIES_PER_LIST,
                });
            }
            entries
                .iter()
                .enumerate()
                .map(|(index, entry)| {
                    let text = entry.as_str().ok_or(SharingConfigError::NotAString {
                        list,
                        index,
                        found: json_type(entry),
                    })?;
                    SharingEntry::parse(text).map_err(|reason| SharingConfigError::InvalidEntry {
                        list,
                        index,
                        entry: truncate(text, 64),
                        reason,
                    })
                })
                .collect()
        };
        Ok(SharingConfig {
            allowed_users: parse_list(SharingList::AllowedUsers)?,
            denied_users: parse_list(SharingList::DeniedUsers)?,
        })
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Facts about joined rooms that the policy needs, supplied by the caller (the
/// [`AudienceIndex`](crate::audience::AudienceIndex) implements it).
pub trait RoomFacts {
    /// The rooms `user` is joined to.
    fn joined_rooms<'a>(&'a self, user: &'a UserId) -> impl Iterator<Item = &'a RoomId> + 'a;
    /// Whether `user` is joined to `room`.
    fn is_joined(&self, user: &UserId, room: &RoomId) -> bool;
}

/// How specific a matching user pattern is. Ordered: any glob < exact; globs by literal count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    Glob(usize),
    Exact,
}

/// Exact IDs and globs of one list, globs compiled into one `GlobSet`.
#[derive(Debug, Clone)]
struct PatternList {
    exact: HashSet<OwnedUserId>,
    globs: Vec<UserGlob>,
    set: GlobSet,
}

impl PatternList {
    fn build(
        exact: HashSet<OwnedUserId>,
        globs: Vec<UserGlob>,
    ) -> Result<PatternList, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        for glob in &globs {
            builder.add(glob.to_globset()?);
        }
        Ok(PatternList {
            exact,
            globs,
            set: builder.build()?,
        })
    }

    fn from_entries(entries: &[SharingEntry]) -> Result<PatternList, globset::Error> {
        let mut exact = HashSet::new();
        let mut globs = Vec::new();
        for entry in entries {
            match entry {
                SharingEntry::User(user) => {
                    exact.insert(user.clone());
                }
                SharingEntry::UserGlob(glob) => globs.push(glob.clone()),
                SharingEntry::Room(_) => {}
            }
        }
        PatternList::build(exact, globs)
    }

    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    /// Indices of the globs matching `user`.
    fn matching_globs(&self, user: &UserId) -> Vec<usize> {
        if user.as_str().is_ascii() {
            self.set.matches(user.as_str())
        } else {
            // globset's `?` matches one byte; Matrix's matches one character. (Non-ASCII user
            // IDs are not valid per the spec, but ruma accepts them from federation.)
            (0..self.globs.len())
                .filter(|&i| self.globs[i].is_match(user.as_str()))
                .collect()
        }
    }

    /// The most specific pattern of this list matching `user`.
    fn best_match(&self, user: &UserId) -> Option<Specificity> {
        if self.exact.contains(user) {
            return Some(Specificity::Exact);
        }
        self.matching_globs(user)
            .into_iter()
            .map(|i| self.globs[i].literal_chars())
            .max()
            .map(Specificity::Glob)
    }
}

/// A countdown of analysis work; see [`GLOB_ANALYSIS_BUDGET`].
struct WorkBudget(usize);

impl WorkBudget {
    /// Pays for comparing patterns of lengths `a` and `b`; false once the budget is exhausted.
    fn spend(&mut self, a: usize, b: usize) -> bool {
        let cost = (a + 1).saturating_mul(b + 1);
        match self.0.checked_sub(cost) {
            Some(left) => {
                self.0 = left;
                true
            }
            None => {
                self.0 = 0;
                false
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Rules {
    allowed: PatternList,
    denied: PatternList,
    denied_rooms: HashSet<OwnedRoomId>,
    /// For each allowed glob, the denied globs at least as specific that have a match in
    /// common with it (such a deny could carve users out of it). `None` when working this out
    /// exceeded [`GLOB_ANALYSIS_BUDGET`]: then no glob is ever sent over federation.
    deny_overlaps: Option<Vec<Vec<usize>>>,
}

impl Rules {
    fn new(allowed: PatternList, denied: PatternList, denied_rooms: HashSet<OwnedRoomId>) -> Rules {
        let mut budget = WorkBudget(GLOB_ANALYSIS_BUDGET);
        let deny_overlaps = allowed
            .globs
            .iter()
            .map(|glob| {
                let mut overlapping = Vec::new();
                for (j, deny) in denied.globs.iter().enumerate() {
                    if deny.literal_chars() < glob.literal_chars() {
                        continue;
                    }
                    if !budget.spend(glob.len(), deny.len()) {
                        return None;
                    }
                    if glob.intersects(deny) {
                        overlapping.push(j);
                    }
                }
                Some(overlapping)
            })
            .collect();
        Rules {
            allowed,
            denied,
            denied_rooms,
            deny_overlaps,
        }
    }

    /// `Some(decision)` when a user pattern matches `viewer`.
    fn pattern_verdict(&self, viewer: &UserId) -> Option<bool> {
        match (
            self.allowed.best_match(viewer),
            self.denied.best_match(viewer),
        ) {
            (None, None) => None,
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            // At equal specificity deny wins.
            (Some(allow), Some(deny)) => Some(allow > deny),
        }
    }

    /// Indices of the allowed globs that may be sent to `server` as they are: they can match
    /// users there, and no deny at least as specific can match one of those users (otherwise
    /// the receiver would deliver to someone the deny excludes, and `allowed_recipients` cannot
    /// subtract). "Can match users there" is over-approximated for denies (the deny must reach
    /// the server and overlap the glob, not necessarily on that server), which errs towards
    /// leaving a glob out. Empty when the work budget runs out.
    fn emittable_globs(&self, server: &ServerName) -> HashSet<usize> {
        let Some(deny_overlaps) = &self.deny_overlaps else {
            return HashSet::new();
        };
        let server_name = server.as_str();
        let server_len = server_name.len() + 3;
        let mut budget = WorkBudget(GLOB_ANALYSIS_BUDGET);
        let denied_here: Vec<&OwnedUserId> = self
            .denied
            .exact
            .iter()
            .filter(|user| user.server_name() == server)
            .collect();
        let mut deny_reaches_server: HashMap<usize, bool> = HashMap::new();
        let mut emittable = HashSet::new();
        for (i, glob) in self.allowed.globs.iter().enumerate() {
            if !budget.spend(glob.len(), server_len) {
                return HashSet::new();
            }
            if !glob.can_match_server(server_name) {
                continue;
            }
            let mut safe = true;
            for user in &denied_here {
                if !budget.spend(glob.len(), user.as_str().len()) {
                    return HashSet::new();
                }
                if glob.is_match(user.as_str()) {
                    safe = false;
                    break;
                }
            }
            for &j in &deny_overlaps[i] {
                if !safe {
                    break;
                }
                let reaches = match deny_reaches_server.get(&j) {
                    Some(&known) => known,
                    None => {
                        let deny = &self.denied.globs[j];
                        if !budget.spend(deny.len(), server_len) {
                            return HashSet::new();
                        }
                        let known = deny.can_match_server(server_name);
                        deny_reaches_server.insert(j, known);
                        known
                    }
                };
                safe = !reaches;
            }
            if safe {
                emittable.insert(i);
            }
        }
        emittable
    }
}

#[derive(Debug, Clone)]
enum PolicyKind {
    /// No config: share with everyone who shares a joined room.
    Legacy,
    /// Unusable config: share with nobody (but yourself).
    OnlySelf,
    Rules(Box<Rules>),
}

/// A user's compiled sharing policy. Compile once per config change, use for every decision.
#[derive(Debug, Clone)]
pub struct SharingPolicy {
    kind: PolicyKind,
}

/// What to send to one destination server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedRecipients {
    /// No sharing config: send the update without `allowed_recipients` (legacy fan-out).
    Legacy,
    /// Nobody there may see the user: do not send the update to that server at all. (An empty
    /// `allowed_recipients` would mean "legacy" to the receiver.)
    Nobody,
    /// Send one copy of the update per chunk, with the chunk as `allowed_recipients`; each chunk
    /// has 1 to [`MAX_RECIPIENTS_PER_EDU`] entries.
    Chunks(Vec<Vec<String>>),
}

impl SharingPolicy {
    /// No config: legacy behaviour.
    pub fn legacy() -> Self {
        SharingPolicy {
            kind: PolicyKind::Legacy,
        }
    }

    /// Share with nobody but yourself.
    pub fn only_self() -> Self {
        SharingPolicy {
            kind: PolicyKind::OnlySelf,
        }
    }

    /// Compiles a validated config.
    pub fn compile(config: &SharingConfig) -> Self {
        let rooms = |entries: &[SharingEntry]| -> HashSet<OwnedRoomId> {
            entries
                .iter()
                .filter_map(|e| match e {
                    SharingEntry::Room(room) => Some(room.clone()),
                    _ => None,
                })
                .collect()
        };
        let allowed = PatternList::from_entries(&config.allowed_users);
        let denied = PatternList::from_entries(&config.denied_users);
        match (allowed, denied) {
            (Ok(allowed), Ok(denied)) => SharingPolicy {
                kind: PolicyKind::Rules(Box::new(Rules::new(
                    allowed,
                    denied,
                    rooms(&config.denied_users),
                ))),
            },
            // Unreachable with our escaping, but if a glob ever fails to compile, failing closed
            // is the only safe answer.
            _ => SharingPolicy::only_self(),
        }
    }

    /// The policy for stored account data: `None` (no config) is legacy; content that does
    /// not parse fails closed.
    pub fn from_account_data(content: Option<&Value>) -> Self {
        match content.map(SharingConfig::from_json) {
            None => SharingPolicy::legacy(),
            Some(Ok(config)) => SharingPolicy::compile(&config),
            Some(Err(_)) => SharingPolicy::only_self(),
        }
    }

    /// Whether this is the legacy (no config) policy.
    pub fn is_legacy(&self) -> bool {
        matches!(self.kind, PolicyKind::Legacy)
    }

    /// Users named exactly in `allowed_users`: they may see the owner without a shared room
    /// (unless an exact deny also names them), so fan-out must consider them besides the
    /// owner's room audience.
    pub fn explicitly_allowed_users(&self) -> impl Iterator<Item = &UserId> {
        let rules = match &self.kind {
            PolicyKind::Rules(rules) => Some(rules),
            _ => None,
        };
        rules.into_iter().flat_map(|r| {
            r.allowed
                .exact
                .iter()
                .filter(|u| !r.denied.exact.contains(*u))
                .map(|u| &**u)
        })
    }

    /// May `viewer` see `owner`'s presence?
    pub fn may_see(&self, owner: &UserId, viewer: &UserId, rooms: &impl RoomFacts) -> bool {
        if owner == viewer {
            return true;
        }
        match &self.kind {
            PolicyKind::Legacy => shares_room(rooms, owner, viewer, |_| true),
            PolicyKind::OnlySelf => false,
            PolicyKind::Rules(rules) => rules.pattern_verdict(viewer).unwrap_or_else(|| {
                shares_room(rooms, owner, viewer, |room| {
                    !rules.denied_rooms.contains(room)
                })
            }),
        }
    }

    /// The `allowed_recipients` for an update of `owner`'s presence sent to `server`.
    ///
    /// `shared_members` lists, for each room `owner` is joined to, that room's joined members
    /// on `server`, as `(room, member)` pairs (members on other servers are ignored).
    ///
    /// The result lists only entries that can match users of `server`: every member of
    /// `server` allowed to see `owner` by ID, room IDs resolved to those members, plus allowed
    /// globs that can match `server`'s users and that no equally or more specific deny could
    /// carve users out of (such a glob replaces the IDs it covers). A glob that is not safe is
    /// left out: users it alone would reach, without a shared room, do not get the update.
    pub fn allowed_recipients<'a>(
        &self,
        owner: &UserId,
        server: &ServerName,
        shared_members: impl IntoIterator<Item = (&'a RoomId, &'a UserId)>,
    ) -> AllowedRecipients {
        let rules = match &self.kind {
            PolicyKind::Legacy => return AllowedRecipients::Legacy,
            PolicyKind::OnlySelf => return AllowedRecipients::Nobody,
            PolicyKind::Rules(rules) => rules,
        };
        // Candidate → whether they share a room with the owner that is not denied.
        let mut candidates: HashMap<&UserId, bool> = HashMap::new();
        for (room, member) in shared_members {
            if member.server_name() != server || member == owner {
                continue;
            }
            *candidates.entry(member).or_default() |= !rules.denied_rooms.contains(room);
        }
        for user in &rules.allowed.exact {
            if user.server_name() == server && user != owner {
                candidates.entry(user).or_default();
            }
        }
        let emittable = rules.emittable_globs(server);
        let mut entries: BTreeSet<String> = candidates
            .into_iter()
            .filter(|&(user, shares_room)| rules.pattern_verdict(user).unwrap_or(shares_room))
            // A user covered by a glob that is sent needs no entry of their own.
            .filter(|(user, _)| {
                emittable.is_empty()
                    || !rules
                        .allowed
                        .matching_globs(user)
                        .iter()
                        .any(|i| emittable.contains(i))
            })
            .map(|(user, _)| user.as_str().to_owned())
            .collect();
        entries.extend(
            emittable
                .iter()
                .map(|&i| rules.allowed.globs[i].as_str().to_owned()),
        );
        if entries.is_empty() {
            return AllowedRecipients::Nobody;
        }
        let entries: Vec<String> = entries.into_iter().collect();
        AllowedRecipients::Chunks(
            entries
                .chunks(MAX_RECIPIENTS_PER_EDU)
                .map(<[String]>::to_vec)
                .collect(),
        )
    }
}

fn shares_room(
    rooms: &impl RoomFacts,
    owner: &UserId,
    viewer: &UserId,
    counts: impl Fn(&RoomId) -> bool,
) -> bool {
    rooms
        .joined_rooms(owner)
        .any(|room| counts(room) && rooms.is_joined(viewer, room))
}

/// The `allowed_recipients` of an incoming presence update, for filtering local delivery.
#[derive(Debug, Clone)]
pub enum IncomingRecipients {
    /// Absent, `null` or empty: deliver as before MSC4325.
    Legacy,
    /// Deliver only to local users matching one of these IDs or globs.
    Restricted(RecipientFilter),
}

/// The IDs and globs of a non-empty `allowed_recipients`.
#[derive(Debug, Clone)]
pub struct RecipientFilter {
    patterns: PatternList,
}

impl IncomingRecipients {
    /// Interprets the raw `allowed_recipients` field of one `push` entry. Entries that are not
    /// user IDs or user globs (room IDs, junk, over-long strings) match nobody; a field of the
    /// wrong type delivers to nobody: a sender that tried to restrict delivery must not get
    /// legacy fan-out by mistake.
    pub fn from_json(field: Option<&Value>) -> Self {
        match field {
            None | Some(Value::Null) => IncomingRecipients::Legacy,
            Some(Value::Array(entries)) => {
                IncomingRecipients::from_entries(entries.iter().map(|e| e.as_str().unwrap_or("")))
            }
            Some(_) => IncomingRecipients::nobody(),
        }
    }

    /// Interprets an already-deserialised list. Empty means legacy.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a str>) -> Self {
        let mut seen_any = false;
        let mut exact = HashSet::new();
        let mut globs = Vec::new();
        for entry in entries.into_iter().take(MAX_INCOMING_RECIPIENTS) {
            seen_any = true;
            match SharingEntry::parse(entry) {
                Ok(SharingEntry::User(user)) => {
                    exact.insert(user);
                }
                Ok(SharingEntry::UserGlob(glob)) if globs.len() < MAX_INCOMING_GLOBS => {
                    globs.push(glob)
                }
                Ok(SharingEntry::UserGlob(_) | SharingEntry::Room(_)) | Err(_) => {}
            }
        }
        if !seen_any {
            return IncomingRecipients::Legacy;
        }
        match PatternList::build(exact, globs) {
            Ok(patterns) => IncomingRecipients::Restricted(RecipientFilter { patterns }),
            Err(_) => IncomingRecipients::nobody(),
        }
    }

    fn nobody() -> Self {
        IncomingRecipients::Restricted(RecipientFilter {
            patterns: PatternList::build(HashSet::new(), Vec::new()).expect("empty set builds"),
        })
    }

    /// Whether the update may be delivered to `local_user`. This only filters: choosing the
    /// candidates (local users sharing a room with the sender, and users named in the list
    /// even without one, since the sender vouched for them) is the caller's part.
    pub fn allows(&self, local_user: &UserId) -> bool {
        match self {
            IncomingRecipients::Legacy => true,
            IncomingRecipients::Restricted(filter) => {
                !filter.patterns.is_empty() && filter.patterns.best_match(local_user).is_some()
            }
        }
    }
}
