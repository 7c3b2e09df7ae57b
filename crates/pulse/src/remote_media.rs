//! Glue: the client API's [`RemoteMedia`] hook over the federation client — the federation
//! media endpoints (spec v1.11), whose `multipart/mixed` answers are read with `multer`
//! (the multipart parser axum uses).
//!
//! The answer's first part is JSON metadata (ignored: it is `{}` today); the second is the
//! content, or a `Location` header pointing elsewhere. Pulse does not follow `Location`: it
//! would be a request to an arbitrary URL on a remote server's word, outside the federation
//! IP filter's discovery path; such an answer is a failed fetch (Synapse and Pulse both send
//! the content inline).
use api_client::media_remote::{RemoteContent, RemoteFetch, RemoteMedia};
use federation_client::{FederationClient, percent_encode_segment};
use futures::future::BoxFuture;
use media::ThumbnailMethod;
use ruma::OwnedServerName;

pub struct Remote(pub FederationClient);

impl Remote {
    async fn fetch(&self, server: OwnedServerName, path: String, max_bytes: usize) -> RemoteFetch {
        // Room for the multipart framing around the content.
        let limit = max_bytes.saturating_add(64 * 1024);
        let resp = match self.0.get_raw(server.as_str(), &path, limit).await {
            Ok(r) => r,
            Err(e) => return RemoteFetch::Failed(e.to_string()),
        };
        match resp.status {
            200 => {}
            404 => return RemoteFetch::NotFound,
            s => return RemoteFetch::Failed(format!("{server} answered {s}")),
        }
        let Some(content_type) = resp.content_type else {
            return RemoteFetch::Failed("no Content-Type".into());
        };
        match parse_multipart(&content_type, resp.bytes, max_bytes).await {
            Ok(c) => RemoteFetch::Found(c),
            Err(why) => RemoteFetch::Failed(why),
        }
    }
}

impl RemoteMedia for Remote {
    fn download(
        &self,
        server: OwnedServerName,
        media_id: String,
        max_bytes: usize,
    ) -> BoxFuture<'_, RemoteFetch> {
        let path = format!(
            "/_matrix/federation/v1/media/download/{}",
            percent_encode_segment(&media_id)
        );
        Box::pin(self.fetch(server, path, max_bytes))
    }

    fn thumbnail(
        &self,
        server: OwnedServerName,
        media_id: String,
        (w, h, method): (u32, u32, ThumbnailMethod),
        max_bytes: usize,
    ) -> BoxFuture<'_, RemoteFetch> {
        let method = match method {
            ThumbnailMethod::Scale => "scale",
            ThumbnailMethod::Crop => "crop",
        };
        let path = format!(
            "/_matrix/federation/v1/media/thumbnail/{}?width={w}&height={h}&method={method}",
            percent_encode_segment(&media_id)
        );
        Box::pin(self.fetch(server, path, max_bytes))
    }
}

/// The file name of a `Content-Disposition` value (`filename*=utf-8''…` or `filename="…"`).
fn disposition_filename(value: &str) -> Option<String> {
    let mut plain = None;
    for part in value.split(';').map(str::trim) {
        if let Some(enc) = part.strip_prefix("filename*=") {
            let enc = enc.trim_matches('"');
            let raw = enc
                .strip_prefix("utf-8''")
                .or_else(|| enc.strip_prefix("UTF-8''"))?;
            return percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .ok()
                .map(|s| s.into_owned());
        }
        if let Some(name) = part.strip_prefix("filename=") {
            plain = Some(name.trim_matches('"').to_owned());
        }
    }
    plain.filter(|n| !n.is_empty() && n.len() <= 255)
}

/// The boundary of a `multipart/*` content type (`multer::parse_boundary` accepts only
/// `multipart/form-data`; the federation answer is `multipart/mixed`).
fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';').map(str::trim);
    let essence = params.next()?.to_ascii_lowercase();
    if !essence.starts_with("multipart/") {
        return None;
    }
    params
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty() && b.len() <= 70)
}

/// The content part of a federation media answer, at most `max_bytes`.
async fn parse_multipart(
    content_type: &str,
    body: Vec<u8>,
    max_bytes: usize,
) -> Result<RemoteContent, String> {
    let boundary = multipart_boundary(content_type)
        .ok_or_else(|| format!("not a multipart answer: {content_type:?}"))?;
    let stream =
        futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(body)) });
    let constraints =
        multer::Constraints::new().size_limit(multer::SizeLimit::new().per_field(max_bytes as u64));
    let mut parts = multer::Multipart::with_constraints(stream, boundary, constraints);
    // The metadata part.
    if parts
        .next_field()
        .await
        .map_err(|e| format!("{e}"))?
        .is_none()
    {
        return Err("empty multipart answer".into());
    }
    let Some(field) = parts.next_field().await.map_err(|e| format!("{e}"))? else {
        return Err("no content part".into());
    };
    if field.headers().contains_key(http::header::LOCATION) {
        return Err("the content is behind a Location redirect (not followed)".into());
    }
    let content_type = field
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let filename = field
        .headers()
        .get(http::header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(disposition_filename);
    let bytes = field.bytes().await.map_err(|e| format!("{e}"))?.to_vec();
    Ok(RemoteContent {
        content_type,
        filename,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_back_what_the_federation_endpoint_sends() {
        let disposition = media::disposition("image/png", Some("naïve pic.png"));
        let (ct, body) = media::remote::multipart_answer("image/png", &disposition, b"\x89PNG");
        let c = parse_multipart(&ct, body, 1000).await.expect("parsed");
        assert_eq!(c.content_type, "image/png");
        assert_eq!(c.filename.as_deref(), Some("naïve pic.png"));
        assert_eq!(c.bytes, b"\x89PNG");
        let (ct, body) = media::remote::multipart_answer("text/plain", "attachment", b"x");
        let c = parse_multipart(&ct, body, 1000).await.expect("parsed");
        assert_eq!((c.filename, c.bytes), (None, b"x".to_vec()));
    }

    #[tokio::test]
    async fn refuses_oversized_redirected_and_malformed_answers() {
        let (ct, body) = media::remote::multipart_answer("text/plain", "attachment", &[0; 100]);
        assert!(
            parse_multipart(&ct, body, 10).await.is_err(),
            "over the limit"
        );
        let redirect = b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\nLocation: https://elsewhere/x\r\n\r\n\r\n--b--\r\n";
        let err = parse_multipart("multipart/mixed; boundary=b", redirect.to_vec(), 1000)
            .await
            .expect_err("redirect");
        assert!(err.contains("Location"), "{err}");
        assert!(
            parse_multipart("multipart/mixed; boundary=b", b"garbage".to_vec(), 1000)
                .await
                .is_err()
        );
        assert!(
            parse_multipart("image/png", b"x".to_vec(), 1000)
                .await
                .is_err()
        );
    }

    #[test]
    fn file_names_from_dispositions() {
        assert_eq!(
            disposition_filename("inline; filename=\"a b.png\"").as_deref(),
            Some("a b.png")
        );
        assert_eq!(
            disposition_filename("attachment; filename*=utf-8''na%C3%AFve.txt").as_deref(),
            Some("naïve.txt")
        );
        assert_eq!(disposition_filename("attachment"), None);
    }
}
