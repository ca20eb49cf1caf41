//! Request ids: accept a client's `x-request-id` when it is safe to echo and log, else make one.

use rand::Rng;

pub fn from_client(raw: Option<&http::HeaderValue>) -> String {
    raw.and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .filter(|s| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        })
        .map(str::to_owned)
        .unwrap_or_else(generate)
}

pub fn generate() -> String {
    let n: u128 = rand::rng().random();
    format!("req-{n:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitises() {
        let ok = http::HeaderValue::from_static("abc-123_x.y:z");
        assert_eq!(from_client(Some(&ok)), "abc-123_x.y:z");
        let bad = http::HeaderValue::from_static("a b<script>");
        assert!(from_client(Some(&bad)).starts_with("req-"));
        assert!(from_client(None).starts_with("req-"));
    }
}
