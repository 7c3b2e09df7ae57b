//! Matrix globs over user IDs: `*` matches any run of characters, `?` exactly one, and every
//! other character is literal (spec appendix "Glob-style matching"; there is no escaping, so a
//! user ID containing `*` or `?` cannot be named exactly).
//!
//! Lists of globs are matched with one `globset::GlobSet`, which has a richer syntax; the
//! translation escapes everything else so `[`, `{`, `\` stay literal. Beyond matching, two
//! globs can be tested for a common match, which is how the federation side decides whether a
//! glob can match a given server's users at all, and whether a deny could carve users out of it.

use globset::{Glob, GlobBuilder};

/// One element of a parsed glob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum GlobToken {
    Literal(char),
    /// `?`
    AnyChar,
    /// `*`
    AnyString,
}

/// A user-ID glob: starts with `@` and has at least one wildcard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserGlob {
    pattern: String,
    tokens: Vec<GlobToken>,
    literal_chars: usize,
}

impl UserGlob {
    /// Whether `entry` is a glob rather than a plain ID (it contains a wildcard).
    pub(crate) fn is_glob(entry: &str) -> bool {
        entry.contains(['*', '?'])
    }

    /// Parses a user glob. The caller has checked the sigil and that it is a glob.
    pub(crate) fn new(pattern: &str) -> UserGlob {
        let tokens = tokenize(pattern);
        let literal_chars = tokens
            .iter()
            .filter(|t| matches!(t, GlobToken::Literal(_)))
            .count();
        UserGlob {
            pattern: pattern.to_owned(),
            tokens,
            literal_chars,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Number of literal (non-wildcard) characters: how specific the glob is.
    pub fn literal_chars(&self) -> usize {
        self.literal_chars
    }

    /// Whether the glob matches `candidate` (character-wise; used where no `GlobSet` is built
    /// and for non-ASCII IDs, where `globset`'s byte-wise `?` would differ).
    pub fn is_match(&self, candidate: &str) -> bool {
        intersects(&self.tokens, &tokenize_literal(candidate))
    }

    /// Whether some string matches both globs.
    pub(crate) fn intersects(&self, other: &UserGlob) -> bool {
        intersects(&self.tokens, &other.tokens)
    }

    /// Whether the glob can match a user ID on `server` (`@<anything>:<server>`).
    pub fn can_match_server(&self, server: &str) -> bool {
        let mut on_server = vec![
            GlobToken::Literal('@'),
            GlobToken::AnyString,
            GlobToken::Literal(':'),
        ];
        on_server.extend(server.chars().map(GlobToken::Literal));
        intersects(&self.tokens, &on_server)
    }

    /// Length in characters (the cost unit of [`intersects`](Self::intersects) and friends:
    /// they take O(len · other len)).
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The equivalent `globset` glob.
    pub(crate) fn to_globset(&self) -> Result<Glob, globset::Error> {
        let mut translated = String::with_capacity(self.pattern.len() + 8);
        let mut previous_was_star = false;
        for token in &self.tokens {
            match *token {
                // Runs of `*` collapse into one: same meaning in a Matrix glob, and `globset`
                // would read `**` next to a `/` (legal in localparts) as a recursive wildcard.
                GlobToken::AnyString if previous_was_star => continue,
                GlobToken::AnyString => translated.push('*'),
                GlobToken::AnyChar => translated.push('?'),
                GlobToken::Literal(c) => {
                    if matches!(c, '[' | ']' | '{' | '}' | '\\' | '*' | '?' | '!' | ',') {
                        translated.push('\\');
                    }
                    translated.push(c);
                }
            }
            previous_was_star = *token == GlobToken::AnyString;
        }
        GlobBuilder::new(&translated)
            .literal_separator(false)
            .backslash_escape(true)
            .case_insensitive(false)
            .build()
    }
}

/// Whether a Matrix glob (`*` any run, `?` one character) matches `value`, character-wise.
/// The one glob matcher of Pulse: also used for sync filters' event types.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    if !UserGlob::is_glob(pattern) {
        return pattern == value;
    }
    intersects(&tokenize(pattern), &tokenize_literal(value))
}

fn tokenize(pattern: &str) -> Vec<GlobToken> {
    pattern
        .chars()
        .map(|c| match c {
            '*' => GlobToken::AnyString,
            '?' => GlobToken::AnyChar,
            c => GlobToken::Literal(c),
        })
        .collect()
}

fn tokenize_literal(s: &str) -> Vec<GlobToken> {
    s.chars().map(GlobToken::Literal).collect()
}

/// Whether some string matches both token sequences. Dynamic programming over positions
/// `(i, j)`; every step advances `i + j`, so the state graph is acyclic and memoisation makes
/// it O(|a| · |b|).
fn intersects(a: &[GlobToken], b: &[GlobToken]) -> bool {
    let width = b.len() + 1;
    let mut memo: Vec<Option<bool>> = vec![None; (a.len() + 1) * width];
    fn go(
        a: &[GlobToken],
        b: &[GlobToken],
        i: usize,
        j: usize,
        memo: &mut [Option<bool>],
        width: usize,
    ) -> bool {
        if let Some(known) = memo[i * width + j] {
            return known;
        }
        let result = if i == a.len() && j == b.len() {
            true
        } else {
            let a_star = a.get(i) == Some(&GlobToken::AnyString);
            let b_star = b.get(j) == Some(&GlobToken::AnyString);
            // A `*` may match nothing more.
            (a_star && go(a, b, i + 1, j, memo, width))
                || (b_star && go(a, b, i, j + 1, memo, width))
                // Or both sides consume one common character (a `*` stays in place). Two stars
                // consuming together is never needed: skipping one of them covers it.
                || match (a.get(i), b.get(j)) {
                    (Some(x), Some(y)) if !(a_star && b_star) => {
                        let compatible = match (x, y) {
                            (GlobToken::Literal(p), GlobToken::Literal(q)) => p == q,
                            _ => true,
                        };
                        compatible
                            && go(
                                a,
                                b,
                                if a_star { i } else { i + 1 },
                                if b_star { j } else { j + 1 },
                                memo,
                                width,
                            )
                    }
                    _ => false,
                }
        };
        memo[i * width + j] = Some(result);
        result
    }
    go(a, b, 0, 0, &mut memo, width)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn glob(p: &str) -> UserGlob {
        UserGlob::new(p)
    }

    #[test]
    fn matrix_glob_semantics() {
        let g = glob("@b*:example.org");
        assert!(g.is_match("@bob:example.org"));
        assert!(g.is_match("@b:example.org"));
        assert!(!g.is_match("@alice:example.org"));
        assert!(!g.is_match("@bob:example.org.evil"));
        let q = glob("@b?b:example.org");
        assert!(q.is_match("@bob:example.org"));
        assert!(!q.is_match("@bb:example.org"));
        assert_eq!(glob("@*:*").literal_chars(), 2);
        assert_eq!(glob("@b*:example.org").literal_chars(), 14);
    }

    #[test]
    fn globset_metacharacters_are_literal() {
        for (pattern, yes, no) in [
            ("@[ab]*:x", "@[ab]c:x", "@a:x"),
            ("@{a,b}*:x", "@{a,b}:x", "@a:x"),
            ("@a\\*:x", "@a\\z:x", "@az:x"),
            ("@a/**/b?:x", "@a/z/bc:x", "@a/bc:x"),
            ("@!*:x", "@!a:x", "@a:x"),
        ] {
            let g = glob(pattern);
            let compiled = g.to_globset().unwrap().compile_matcher();
            assert!(compiled.is_match(yes), "{pattern} should match {yes}");
            assert!(!compiled.is_match(no), "{pattern} should not match {no}");
            assert!(g.is_match(yes) && !g.is_match(no));
        }
    }

    #[test]
    fn server_reach() {
        assert!(glob("@*:*").can_match_server("matrix.org"));
        assert!(glob("@*:matrix.org").can_match_server("matrix.org"));
        assert!(!glob("@*:matrix.org").can_match_server("example.org"));
        assert!(glob("@a*").can_match_server("example.org"));
        assert!(glob("@*.org").can_match_server("example.org"));
        assert!(!glob("@*.com").can_match_server("example.org"));
        assert!(glob("@b*:example.org").intersects(&glob("@*b:*")));
        assert!(!glob("@a*:example.org").intersects(&glob("@b*:*")));
    }

    fn glob_text() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!['a', 'b', ':', '*', '?', '[', '/']),
            0..7,
        )
        .prop_map(|cs| format!("@{}", cs.into_iter().collect::<String>()))
    }

    fn id_text() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!['a', 'b', ':', '[', '/']), 0..7)
            .prop_map(|cs| format!("@{}", cs.into_iter().collect::<String>()))
    }

    fn short_glob() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!['a', ':', '*', '?']), 0..=4)
            .prop_map(|cs| format!("@{}", cs.into_iter().collect::<String>()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// `globset` (after translation) and the token matcher agree.
        #[test]
        fn globset_agrees_with_token_matcher(pattern in glob_text(), candidate in id_text()) {
            let g = glob(&pattern);
            let compiled = g.to_globset().unwrap().compile_matcher();
            prop_assert_eq!(compiled.is_match(&candidate), g.is_match(&candidate));
        }

        /// A common match of two globs exists iff `intersects` says so (checked by brute force
        /// over every string of up to eight characters; `z` stands for any other character).
        #[test]
        fn intersection_is_exact(a in short_glob(), b in short_glob()) {
            let (ga, gb) = (glob(&a), glob(&b));
            let mut found = false;
            let mut frontier = vec![String::from("@")];
            // Each character of a shortest common match advances at least one pattern past a
            // non-`*` token, so with at most four tokens after `@` on each side a witness needs
            // at most eight characters after `@`.
            for _ in 0..=8 {
                let mut next = Vec::new();
                for s in &frontier {
                    found |= ga.is_match(s) && gb.is_match(s);
                    for c in ['a', ':', 'z'] {
                        next.push(format!("{s}{c}"));
                    }
                }
                frontier = next;
            }
            prop_assert_eq!(ga.intersects(&gb), found);
        }
    }
}
