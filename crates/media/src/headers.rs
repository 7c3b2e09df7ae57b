//! Response headers of media downloads, shared by the client API and the federation media
//! endpoints (one owner of the rules against stored XSS).

/// Types a browser shows without running script: these may be `inline`.
pub fn inline_safe(content_type: &str) -> bool {
    let base = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        base.as_str(),
        "text/plain"
            | "text/csv"
            | "application/json"
            | "application/ld+json"
            | "image/jpeg"
            | "image/gif"
            | "image/png"
            | "image/apng"
            | "image/webp"
            | "image/avif"
            | "video/mp4"
            | "video/webm"
            | "video/ogg"
            | "video/quicktime"
            | "audio/mp4"
            | "audio/webm"
            | "audio/aac"
            | "audio/mpeg"
            | "audio/ogg"
            | "audio/wave"
            | "audio/wav"
            | "audio/x-wav"
            | "audio/x-pn-wav"
            | "audio/flac"
            | "audio/x-flac"
    )
}

/// `Content-Disposition` with the file name, RFC 6266 (`filename*` for non-ASCII names).
pub fn disposition(content_type: &str, filename: Option<&str>) -> String {
    let kind = if inline_safe(content_type) {
        "inline"
    } else {
        "attachment"
    };
    match filename {
        None => kind.to_owned(),
        Some(name)
            if name.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                && !name.contains('"')
                && !name.contains('\\') =>
        {
            format!("{kind}; filename=\"{name}\"")
        }
        Some(name) => {
            let enc: String =
                percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            format!("{kind}; filename*=utf-8''{enc}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_are_inline_only_for_safe_types_and_encode_names() {
        assert_eq!(
            disposition("image/png", Some("a.png")),
            "inline; filename=\"a.png\""
        );
        assert_eq!(disposition("text/html", None), "attachment");
        assert_eq!(
            disposition("application/octet-stream", Some("naïve.txt")),
            "attachment; filename*=utf-8''na%C3%AFve%2Etxt"
        );
        assert!(disposition("text/plain; charset=utf-8", Some("x")).starts_with("inline"));
        assert!(
            disposition("image/svg+xml", None).starts_with("attachment"),
            "SVG can script"
        );
    }
}
