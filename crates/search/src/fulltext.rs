//! Full-text search of room events with tantivy (`POST /search`, `room_events`).
//!
//! One tantivy index under `<data_dir>/search`. A document per searchable event: the
//! `content.body` of messages, `content.name` of `m.room.name`, `content.topic` of
//! `m.room.topic`, with the event ID, room, key and stream position. The index follows the
//! room timeline ([`rooms::RoomService::timeline_events_between`]): [`FullText::catch_up`]
//! indexes every timeline event after the position stored in the last commit's payload, so
//! the cursor and the documents are committed together (a crash re-indexes from the last
//! commit; a document is deleted by event ID before it is added, so re-indexing is
//! idempotent). A redaction deletes its target's document.
use std::ops::Bound;
use std::path::Path;
use std::sync::Mutex;

use rooms::{RoomService, StoredEvent};
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, Value,
};
use tantivy::{
    DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, TantivyDocument, Term,
};

use crate::{Error, Result};

/// The event keys a search may name.
pub const KEYS: [&str; 3] = ["content.body", "content.name", "content.topic"];

/// How many timeline events one catch-up step reads.
const STEP: usize = 512;

#[derive(Clone, Copy)]
struct Fields {
    event_id: Field,
    room_id: Field,
    key: Field,
    text: Field,
    pos: Field,
}

/// The searchable text of an event: (key, text).
pub fn searchable(ev: &StoredEvent) -> Option<(&'static str, &str)> {
    let (key, field) = match ev.kind() {
        "m.room.message" => ("content.body", "body"),
        "m.room.name" => ("content.name", "name"),
        "m.room.topic" => ("content.topic", "topic"),
        _ => return None,
    };
    let text = ev.content_str(field)?;
    (!text.trim().is_empty()).then_some((key, text))
}

/// Which page of results a search asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order2 {
    /// By relevance (BM25); pages are offsets.
    Rank,
    /// Newest first; pages continue below a stream position.
    Recent,
}

/// One hit: the event ID, its room, its stream position and its score (rank order).
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub event_id: String,
    pub room_id: String,
    pub pos: u64,
    pub score: f32,
}

/// A search request below the HTTP layer.
pub struct Query2<'a> {
    pub term: &'a str,
    pub keys: &'a [String],
    pub rooms: &'a [String],
    pub order: Order2,
    /// Rank: skip this many hits. Recent: only hits below this position.
    pub offset: usize,
    pub below_pos: Option<u64>,
    pub limit: usize,
}

pub struct FullText {
    index: Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    /// Serialises catch-ups (one writer of the cursor).
    catch_up: Mutex<()>,
}

impl FullText {
    /// Open (or create) the index in `dir`.
    pub fn open(dir: &Path) -> Result<FullText> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Index(format!("{}: {e}", dir.display())))?;
        let mut b = Schema::builder();
        let fields = Fields {
            event_id: b.add_text_field("event_id", STRING | STORED),
            room_id: b.add_text_field("room_id", STRING | STORED),
            key: b.add_text_field("key", STRING),
            text: b.add_text_field("text", TEXT),
            pos: b.add_u64_field("pos", INDEXED | FAST | STORED),
        };
        let schema = b.build();
        let mmap = tantivy::directory::MmapDirectory::open(dir).map_err(Error::index)?;
        let index = Index::open_or_create(mmap, schema).map_err(Error::index)?;
        // One indexing thread with tantivy's smallest arena: the machine is shared and the
        // index is fed in small steps.
        let writer = index
            .writer_with_num_threads(1, 15_000_000)
            .map_err(Error::index)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(Error::index)?;
        Ok(FullText {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
            catch_up: Mutex::new(()),
        })
    }

    /// The stream position the index has seen everything up to (its last commit's payload).
    pub fn cursor(&self) -> Result<u64> {
        let metas = self.index.load_metas().map_err(Error::index)?;
        Ok(metas
            .payload
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0))
    }

    /// Index every timeline event up to the room engine's current position. Returns how
    /// many documents were added.
    pub fn catch_up(&self, rooms: &RoomService) -> Result<usize> {
        let _one = self.catch_up.lock().map_err(|_| Error::poisoned())?;
        let upto = rooms.current_position();
        let mut cursor = self.cursor()?;
        if cursor >= upto {
            return Ok(0);
        }
        let mut writer = self.writer.lock().map_err(|_| Error::poisoned())?;
        let mut added = 0;
        while cursor < upto {
            let (events, last) = rooms.timeline_events_between(cursor, upto, STEP)?;
            for c in &events {
                added += self.apply(&writer, &c.event)?;
            }
            cursor = last;
        }
        let mut commit = writer.prepare_commit().map_err(Error::index)?;
        commit.set_payload(&cursor.to_string());
        commit.commit().map_err(Error::index)?;
        drop(writer);
        self.reader.reload().map_err(Error::index)?;
        Ok(added)
    }

    fn apply(&self, writer: &IndexWriter, ev: &StoredEvent) -> Result<usize> {
        let f = self.fields;
        if let Some(target) = ev.redacts() {
            writer.delete_term(Term::from_field_text(f.event_id, target));
            return Ok(0);
        }
        let Some((key, text)) = searchable(ev) else {
            return Ok(0);
        };
        // Idempotent when a crash makes us index the same range twice.
        writer.delete_term(Term::from_field_text(f.event_id, ev.event_id.as_str()));
        let mut doc = TantivyDocument::default();
        doc.add_text(f.event_id, ev.event_id.as_str());
        doc.add_text(f.room_id, &*ev.room_id());
        doc.add_text(f.key, key);
        doc.add_text(f.text, text);
        doc.add_u64(f.pos, ev.pos);
        writer.add_document(doc).map_err(Error::index)?;
        Ok(1)
    }

    /// The words of a search term, as the index splits and lowercases them.
    fn words(&self, term: &str) -> Result<Vec<String>> {
        let mut analyzer = self
            .index
            .tokenizer_for_field(self.fields.text)
            .map_err(Error::index)?;
        let mut stream = analyzer.token_stream(term);
        let mut out = Vec::new();
        while stream.advance() {
            let w = stream.token().text.clone();
            if !out.contains(&w) {
                out.push(w);
            }
        }
        Ok(out)
    }

    /// Search: every word of the term must occur (in one of `keys`), in one of `rooms`.
    /// Returns the total number of matching documents and one page of hits.
    pub fn search(&self, q: &Query2<'_>) -> Result<(usize, Vec<Hit>)> {
        let f = self.fields;
        let words = self.words(q.term)?;
        if words.is_empty() || q.rooms.is_empty() || q.keys.is_empty() {
            return Ok((0, Vec::new()));
        }
        let term_query = |field: Field, value: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::WithFreqs,
            ))
        };
        let any_of = |field: Field, values: &[String]| -> Box<dyn Query> {
            Box::new(BooleanQuery::new(
                values
                    .iter()
                    .map(|v| (Occur::Should, term_query(field, v)))
                    .collect(),
            ))
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|w| (Occur::Must, term_query(f.text, w)))
            .collect();
        clauses.push((Occur::Must, any_of(f.room_id, q.rooms)));
        clauses.push((Occur::Must, any_of(f.key, q.keys)));
        let count_query =
            BooleanQuery::new(clauses.iter().map(|(o, c)| (*o, c.box_clone())).collect());
        if let (Order2::Recent, Some(below)) = (q.order, q.below_pos) {
            clauses.push((
                Occur::Must,
                Box::new(RangeQuery::new(
                    Bound::Unbounded,
                    Bound::Excluded(Term::from_field_u64(f.pos, below)),
                )),
            ));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let total = searcher
            .search(&count_query, &Count)
            .map_err(Error::index)?;
        let limit = q.limit.max(1);
        let addrs: Vec<(f32, DocAddress)> = match q.order {
            Order2::Rank => searcher
                .search(&query, &TopDocs::with_limit(limit).and_offset(q.offset))
                .map_err(Error::index)?,
            Order2::Recent => searcher
                .search(
                    &query,
                    &TopDocs::with_limit(limit).order_by_u64_field("pos", Order::Desc),
                )
                .map_err(Error::index)?
                .into_iter()
                .map(|(_, a)| (0.0, a))
                .collect(),
        };
        let mut hits = Vec::with_capacity(addrs.len());
        for (score, addr) in addrs {
            let doc: TantivyDocument = searcher.doc(addr).map_err(Error::index)?;
            let text = |field| {
                doc.get_first(field)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            let (Some(event_id), Some(room_id), Some(pos)) = (
                text(f.event_id),
                text(f.room_id),
                doc.get_first(f.pos).and_then(|v| v.as_u64()),
            ) else {
                continue;
            };
            hits.push(Hit {
                event_id,
                room_id,
                pos,
                score,
            });
        }
        Ok((total, hits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{setup, user};
    use rooms::Preset;
    use serde_json::json;

    fn send(rooms: &RoomService, u: &ruma::UserId, room: &ruma::RoomId, body: &str) -> String {
        rooms
            .send_message_event(u, room, "m.room.message", json!({"body": body}), None)
            .expect("send")
            .event_id
            .to_string()
    }

    fn q<'a>(term: &'a str, rooms: &'a [String], keys: &'a [String], order: Order2) -> Query2<'a> {
        Query2 {
            term,
            keys,
            rooms,
            order,
            offset: 0,
            below_pos: None,
            limit: 10,
        }
    }

    #[test]
    fn indexes_new_events_matches_every_word_and_drops_redacted_events() {
        let (dir, rooms) = setup();
        let ft = FullText::open(&dir.path().join("search")).expect("open");
        let alice = user("alice");
        let room = rooms
            .create_room(
                &alice,
                rooms::CreateRoomRequest {
                    preset: Some(Preset::PrivateChat),
                    topic: Some("Gardening tips".into()),
                    ..Default::default()
                },
            )
            .expect("create");
        let hello = send(&rooms, &alice, &room, "Hello, World");
        let other = send(&rooms, &alice, &room, "hello there");
        assert!(ft.catch_up(&rooms).expect("catch up") >= 3);
        let r = [room.to_string()];
        let body = ["content.body".to_owned()];
        let (n, hits) = ft
            .search(&q("WORLD hello", &r, &body, Order2::Rank))
            .expect("search");
        assert_eq!(n, 1);
        assert_eq!(hits[0].event_id, hello);
        let (n, hits) = ft
            .search(&q("hello", &r, &body, Order2::Recent))
            .expect("search");
        assert_eq!(n, 2);
        assert_eq!(hits[0].event_id, other, "newest first");
        // Keys: the topic is found only under content.topic.
        assert_eq!(
            ft.search(&q("gardening", &r, &body, Order2::Rank))
                .expect("s")
                .0,
            0
        );
        let topic = ["content.topic".to_owned()];
        assert_eq!(
            ft.search(&q("gardening", &r, &topic, Order2::Rank))
                .expect("s")
                .0,
            1
        );
        // Other rooms are not searched.
        let none = ["!nope:example.org".to_owned()];
        assert_eq!(
            ft.search(&q("hello", &none, &body, Order2::Rank))
                .expect("s")
                .0,
            0
        );
        // A redaction removes the event from the index.
        let id = ruma::OwnedEventId::try_from(hello.as_str()).expect("id");
        rooms
            .redact(&alice, &room, &id, None, None)
            .expect("redact");
        ft.catch_up(&rooms).expect("catch up");
        let (n, hits) = ft
            .search(&q("hello", &r, &body, Order2::Rank))
            .expect("search");
        assert_eq!(n, 1);
        assert_eq!(hits[0].event_id, other);
        // Reopening keeps the cursor and the documents.
        let cursor = ft.cursor().expect("cursor");
        assert_eq!(cursor, rooms.current_position());
        drop(ft);
        let ft = FullText::open(&dir.path().join("search")).expect("reopen");
        assert_eq!(ft.cursor().expect("cursor"), cursor);
        assert_eq!(ft.catch_up(&rooms).expect("nothing new"), 0);
        assert_eq!(
            ft.search(&q("hello", &r, &body, Order2::Rank))
                .expect("s")
                .0,
            1
        );
    }

    #[test]
    fn recent_order_pages_below_a_position() {
        let (dir, rooms) = setup();
        let ft = FullText::open(&dir.path().join("search")).expect("open");
        let alice = user("alice");
        let room = rooms
            .create_room(
                &alice,
                rooms::CreateRoomRequest {
                    preset: Some(Preset::PrivateChat),
                    ..Default::default()
                },
            )
            .expect("create");
        let ids: Vec<String> = (0..5)
            .map(|i| send(&rooms, &alice, &room, &format!("note {i}")))
            .collect();
        ft.catch_up(&rooms).expect("catch up");
        let r = [room.to_string()];
        let body = ["content.body".to_owned()];
        let mut query = q("note", &r, &body, Order2::Recent);
        query.limit = 2;
        let (n, first) = ft.search(&query).expect("search");
        assert_eq!(n, 5);
        assert_eq!(
            first.iter().map(|h| h.event_id.clone()).collect::<Vec<_>>(),
            vec![ids[4].clone(), ids[3].clone()]
        );
        query.below_pos = Some(first[1].pos);
        let (_, second) = ft.search(&query).expect("search");
        assert_eq!(
            second
                .iter()
                .map(|h| h.event_id.clone())
                .collect::<Vec<_>>(),
            vec![ids[2].clone(), ids[1].clone()]
        );
    }
}

#[cfg(test)]
mod measure {
    use super::*;
    use crate::tests::{setup, user};
    use rooms::Preset;
    use serde_json::json;
    use std::time::Instant;

    /// `cargo test -p search --release -- --ignored --nocapture measure`: indexing and
    /// query times for N messages (N from `PULSE_MEASURE_N`, default 5000).
    #[test]
    #[ignore]
    fn measure_indexing_and_queries() {
        let n: usize = std::env::var("PULSE_MEASURE_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5000);
        let (dir, rooms) = setup();
        let alice = user("alice");
        let room = rooms
            .create_room(
                &alice,
                rooms::CreateRoomRequest {
                    preset: Some(Preset::PrivateChat),
                    ..Default::default()
                },
            )
            .expect("create");
        let words = [
            "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
        ];
        let t = Instant::now();
        for i in 0..n {
            let body = format!(
                "message {i} {} {} {}",
                words[i % 7],
                words[(i / 7) % 7],
                words[(i / 49) % 7]
            );
            rooms
                .send_message_event(&alice, &room, "m.room.message", json!({"body": body}), None)
                .expect("send");
        }
        let sent = t.elapsed();
        let ft = FullText::open(&dir.path().join("search")).expect("open");
        let t = Instant::now();
        let added = ft.catch_up(&rooms).expect("catch up");
        let indexed = t.elapsed();
        let r = [room.to_string()];
        let keys = [KEYS[0].to_owned()];
        for (term, order) in [
            ("alpha", Order2::Rank),
            ("alpha bravo", Order2::Rank),
            ("alpha", Order2::Recent),
        ] {
            let t = Instant::now();
            let rounds = 100;
            let mut count = 0;
            for _ in 0..rounds {
                count = ft
                    .search(&Query2 {
                        term,
                        keys: &keys,
                        rooms: &r,
                        order,
                        offset: 0,
                        below_pos: None,
                        limit: 10,
                    })
                    .expect("search")
                    .0;
            }
            println!(
                "query {term:?} {order:?}: {count} hits, {:?} per query",
                t.elapsed() / rounds
            );
        }
        // One new event after a full index: the cost a read pays to catch up.
        rooms
            .send_message_event(
                &alice,
                &room,
                "m.room.message",
                json!({"body": "late"}),
                None,
            )
            .expect("send");
        let t = Instant::now();
        ft.catch_up(&rooms).expect("catch up");
        let one = t.elapsed();
        println!(
            "{n} messages: sent in {sent:?}; {added} documents indexed in {indexed:?} \
             ({:.0} docs/s); catching up one new event: {one:?}",
            added as f64 / indexed.as_secs_f64()
        );
    }
}
