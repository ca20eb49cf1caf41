//! A key never carries more rights than its owner: its models and limits are clamped to
//! the owner's, when the key is created or changed (403 when it asks for more) and again
//! at every authentication (so narrowing an account narrows its keys at once).
//!
//! Stored model lists use `[]` for "no restriction". Glob containment is decided
//! conservatively: a glob is covered by `*`, by an equal glob, by a `prefix*` glob whose
//! prefix it starts with (and that has no other wildcard), or, for a plain model id, by any
//! glob matching it. Anything else counts as not covered, which can only deny.

use crate::principal::glob_match;

fn has_wildcard(g: &str) -> bool {
    g.contains(['*', '?'])
}

/// Is every model matched by `glob` also matched by `outer`?
fn glob_covers(outer: &str, glob: &str) -> bool {
    if outer == "*" || outer == glob {
        return true;
    }
    if !has_wildcard(glob) {
        return glob_match(outer, glob);
    }
    match outer.strip_suffix('*') {
        Some(prefix) if !has_wildcard(prefix) => glob.starts_with(prefix),
        _ => false,
    }
}

/// Is `glob` within the owner's list (`[]` = everything)?
pub fn covered(owner: &[String], glob: &str) -> bool {
    owner.is_empty() || owner.iter().any(|o| glob_covers(o, glob))
}

/// The models a key may use: the part of its list within the owner's, and the part of
/// the owner's within its list. `None`: every model.
pub fn effective_models(key: &[String], owner: &[String]) -> Option<Vec<String>> {
    match (key.is_empty(), owner.is_empty()) {
        (true, true) => None,
        (false, true) => Some(key.to_vec()),
        (true, false) => Some(owner.to_vec()),
        (false, false) => {
            let mut out: Vec<String> = key
                .iter()
                .filter(|k| covered(owner, k))
                .chain(owner.iter().filter(|o| covered(key, o)))
                .cloned()
                .collect();
            out.sort();
            out.dedup();
            Some(out)
        }
    }
}

/// The tighter of two limits (`None` = unlimited).
pub fn min_limit<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn containment_is_conservative() {
        assert!(covered(&[], "anything*"));
        assert!(covered(&v(&["qwen*"]), "qwen3-8b"));
        assert!(covered(&v(&["qwen*"]), "qwen3*"));
        assert!(!covered(&v(&["qwen*"]), "*"));
        assert!(!covered(&v(&["a?c"]), "a*c"));
        assert!(!covered(&v(&["qwen3-8b"]), "qwen*"));
        assert_eq!(
            effective_models(&v(&["qwen*"]), &v(&["qwen3-8b", "llama"])),
            Some(v(&["qwen3-8b"]))
        );
        assert_eq!(
            effective_models(&v(&["*-8b"]), &v(&["qwen*"])),
            Some(vec![])
        );
        assert_eq!(effective_models(&[], &[]), None);
        assert_eq!(min_limit(Some(5), None), Some(5));
        assert_eq!(min_limit(Some(5), Some(3)), Some(3));
    }
}
