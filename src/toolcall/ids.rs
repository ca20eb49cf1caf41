//! Gateway tool-call ids: `call_` + 24 random `[A-Za-z0-9]`, unique within a response (4.4).

use rand::Rng;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Hands out ids that are unique within one response.
#[derive(Debug, Default)]
pub(crate) struct IdGen {
    issued: Vec<String>,
}

impl IdGen {
    pub fn next(&mut self) -> String {
        let mut rng = rand::rng();
        loop {
            let mut id = String::with_capacity(29);
            id.push_str("call_");
            for _ in 0..24 {
                let k = rng.random_range(0..ALPHABET.len());
                id.push(char::from(ALPHABET.get(k).copied().unwrap_or(b'x')));
            }
            if !self.issued.contains(&id) {
                self.issued.push(id.clone());
                return id;
            }
        }
    }
}

/// True for `^call_[A-Za-z0-9]{24}$`.
pub fn is_gateway_call_id(id: &str) -> bool {
    id.strip_prefix("call_")
        .is_some_and(|r| r.len() == 24 && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}
