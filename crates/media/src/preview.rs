//! URL previews: OpenGraph data from a fetched page, and the cache of previews.
//!
//! [`parse_html`] reads `<meta property="og:…" content="…">` (and `name=` for the pages
//! that write it so), falling back to `<title>` for `og:title` and `<meta
//! name="description">` for `og:description`, as Synapse does. The HTML is parsed with
//! `scraper` (html5ever, the parser Servo uses): pages are untrusted and often malformed,
//! and a real HTML5 tree builder reads them as a browser would, where hand-written tag
//! matching would be fooled by comments, scripts or attribute quoting. `og:image` (and
//! `og:url`) relative to the page are made absolute against it.
//!
//! The cache (`Cf::Media`, `"~preview" url` → [`CachedPreview`]) keeps each URL's latest
//! preview with the time it was fetched; see [`CachedPreview::serves`] for `ts`.
use scraper::{Html, Selector};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use storage::{Batch, Cf, Key};

use crate::{MediaService, Result};

/// Longest value kept from a tag (a page can put anything in `content`).
pub const MAX_VALUE_CHARS: usize = 1_000;
/// Most `og:*` tags kept from one page.
pub const MAX_TAGS: usize = 50;

/// A stored preview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedPreview {
    /// When the page was fetched (ms since the epoch).
    pub fetched_ms: u64,
    pub og: Map<String, Value>,
}

impl CachedPreview {
    /// Whether this preview answers a request for the page as of `at` (ms): it does unless
    /// it had expired by then (`ttl_ms` after it was fetched). A request for a time before
    /// the fetch gets this newer version, which the spec allows (`ts` is a preference).
    pub fn serves(&self, at: u64, ttl_ms: u64) -> bool {
        at < self.fetched_ms.saturating_add(ttl_ms)
    }
}

fn cache_key(url: &str) -> Key {
    Key::new().str("~preview").str(url)
}

fn clip(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(MAX_VALUE_CHARS) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// The OpenGraph data of an HTML page fetched from `page_url` (relative URLs are dropped
/// when `page_url` does not parse).
pub fn parse_html(html: &str, page_url: &str) -> Map<String, Value> {
    let page_url = url::Url::parse(page_url).ok();
    let doc = Html::parse_document(html);
    let mut og = Map::new();
    // Selectors are constants: parsing them cannot fail.
    let (Ok(meta), Ok(title)) = (Selector::parse("meta"), Selector::parse("title")) else {
        return og;
    };
    let mut description = None;
    for el in doc.select(&meta) {
        let attrs = el.value();
        let Some(content) = attrs.attr("content") else {
            continue;
        };
        let key = attrs.attr("property").or_else(|| attrs.attr("name"));
        match key {
            // The first of a repeated tag wins (og:image may be listed several times).
            Some(k)
                if k.starts_with("og:")
                    && k.len() > 3
                    && og.len() < MAX_TAGS
                    && !og.contains_key(k) =>
            {
                og.insert(k.to_owned(), Value::String(clip(content)));
            }
            Some(k) if k.eq_ignore_ascii_case("description") => {
                description.get_or_insert_with(|| clip(content));
            }
            _ => {}
        }
    }
    if !og.contains_key("og:title")
        && let Some(t) = doc.select(&title).next()
    {
        let text = clip(&t.text().collect::<String>());
        if !text.is_empty() {
            og.insert("og:title".into(), Value::String(text));
        }
    }
    if !og.contains_key("og:description")
        && let Some(d) = description.filter(|d| !d.is_empty())
    {
        og.insert("og:description".into(), Value::String(d));
    }
    for k in ["og:image", "og:url"] {
        let absolute = og.get(k).and_then(Value::as_str).map(|v| match &page_url {
            Some(base) => base.join(v).map(|u| u.to_string()),
            None => url::Url::parse(v).map(|u| u.to_string()),
        });
        match absolute {
            Some(Ok(u)) => {
                og.insert(k.into(), Value::String(u));
            }
            Some(Err(_)) => {
                og.remove(k);
            }
            None => {}
        }
    }
    og
}

/// The width and height of an image, if its format is one the thumbnailer reads.
pub fn image_size(bytes: &[u8]) -> Option<(u32, u32)> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

impl MediaService {
    /// The cached preview of `url`, if any (fresh or not: see [`CachedPreview::serves`]).
    pub fn cached_preview(&self, url: &str) -> Result<Option<CachedPreview>> {
        Ok(self.db.get_json(Cf::Media, cache_key(url))?)
    }

    /// Store the preview of `url` (replacing an older one).
    pub fn store_preview(&self, url: &str, preview: &CachedPreview) -> Result<()> {
        let mut batch = Batch::new();
        batch.put_json(Cf::Media, cache_key(url), preview);
        self.db.write(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> &'static str {
        "http://example.org/films/rock.html"
    }

    #[test]
    fn opengraph_tags_title_and_relative_images() {
        let html = r#"<html prefix="og: http://ogp.me/ns#"><head>
            <title>The Rock (1996)</title>
            <meta property="og:title" content="The Rock" />
            <meta property="og:type" content="video.movie" />
            <meta property="og:image" content="img/test.png" />
            <meta property="og:image" content="second.png" />
            <meta name="description" content="A film">
            <!-- <meta property="og:title" content="in a comment"> -->
            </head><body><script>document.write('<meta property="og:type" content="x">')</script></body></html>"#;
        let og = parse_html(html, page());
        assert_eq!(og["og:title"], "The Rock");
        assert_eq!(og["og:type"], "video.movie");
        assert_eq!(og["og:image"], "http://example.org/films/img/test.png");
        assert_eq!(og["og:description"], "A film");
    }

    #[test]
    fn title_is_the_fallback_and_garbage_is_harmless() {
        let og = parse_html("<title> Just a page </title><p>hi", page());
        assert_eq!(og.get("og:title"), Some(&Value::from("Just a page")));
        assert_eq!(og.len(), 1);
        assert!(parse_html("<<<>>>\0\u{fffd}<meta content>", page()).is_empty());
        let long = format!("<meta property='og:title' content='{}'>", "x".repeat(5000));
        let og = parse_html(&long, page());
        assert_eq!(og["og:title"].as_str().map(str::len), Some(MAX_VALUE_CHARS));
    }

    #[test]
    fn a_cached_preview_serves_until_it_expires() {
        let p = CachedPreview {
            fetched_ms: 1_000,
            og: Map::new(),
        };
        assert!(p.serves(500, 100), "an older ts gets the newer version");
        assert!(p.serves(1_099, 100));
        assert!(!p.serves(1_100, 100));
    }
}
