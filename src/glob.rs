//! Model-id globs (`*` any run, also empty; `?` one character), used by the tool-call
//! format rules (case-insensitive) and by model permissions (case-sensitive). Matching runs
//! on the request path, so it walks both strings by byte offset without allocating.

/// The character at byte offset `i` and the offset after it.
fn char_at(s: &str, i: usize) -> Option<(char, usize)> {
    let c = s.get(i..)?.chars().next()?;
    Some((c, i + c.len_utf8()))
}

/// Whether `glob` matches all of `text`; `fold_case` compares ASCII letters
/// case-insensitively.
pub fn matches(glob: &str, text: &str, fold_case: bool) -> bool {
    let same = |g: char, t: char| g == '?' || g == t || (fold_case && g.eq_ignore_ascii_case(&t));
    let (mut gi, mut ti) = (0usize, 0usize);
    // The last `*` seen, and where in the text its run is next tried to end.
    let mut star: Option<(usize, usize)> = None;
    while let Some((tc, t_next)) = char_at(text, ti) {
        match char_at(glob, gi) {
            Some(('*', g_next)) => {
                star = Some((gi, ti));
                gi = g_next;
                continue;
            }
            Some((gc, g_next)) if same(gc, tc) => {
                gi = g_next;
                ti = t_next;
                continue;
            }
            _ => {}
        }
        let Some((sg, st)) = star else {
            return false;
        };
        let Some((_, st_next)) = char_at(text, st) else {
            return false;
        };
        gi = sg + 1;
        ti = st_next;
        star = Some((sg, st_next));
    }
    glob.get(gi..)
        .is_some_and(|rest| rest.bytes().all(|b| b == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The obvious recursive definition, as the reference.
    fn reference(g: &[char], t: &[char], fold: bool) -> bool {
        match (g.first(), t.first()) {
            (None, None) => true,
            (Some('*'), _) => {
                reference(&g[1..], t, fold) || (!t.is_empty() && reference(g, &t[1..], fold))
            }
            (Some(&gc), Some(&tc)) => {
                (gc == '?' || gc == tc || (fold && gc.eq_ignore_ascii_case(&tc)))
                    && reference(&g[1..], &t[1..], fold)
            }
            _ => false,
        }
    }

    #[test]
    fn anchored_and_case_rules() {
        assert!(matches("qwen*", "qwen3-8b", false));
        assert!(matches("*", "", false));
        assert!(matches("a?c", "abc", false));
        assert!(!matches("qwen*", "Qwen3", false));
        assert!(matches("qwen*", "Qwen3", true));
        assert!(!matches("qwen", "qwen3", true));
        assert!(
            matches("*é?", "café!", false),
            "? is one character, not one byte"
        );
        assert!(matches(
            "meta-llama/*-Instruct",
            "meta-llama/Llama-3.1-8B-Instruct",
            false
        ));
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference(g in "[ab*?É]{0,8}", t in "[abAÉé]{0,10}", fold: bool) {
            let gc: Vec<char> = g.chars().collect();
            let tc: Vec<char> = t.chars().collect();
            prop_assert_eq!(matches(&g, &t, fold), reference(&gc, &tc, fold));
        }
    }
}
