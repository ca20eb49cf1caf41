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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::rng().random();
    let mut id = String::with_capacity(36);
    id.push_str("req-");
    for shift in (0..32).rev() {
        id.push(char::from(HEX[((n >> (shift * 4)) & 0xf) as usize]));
    }
    id
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
        let made = from_client(None);
        assert!(made.starts_with("req-") && made.len() == 36, "{made}");
        assert!(made[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(made, generate());
    }
}
