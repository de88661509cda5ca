//! Topic-exchange patterns, as RabbitMQ's: a routing key and a pattern are words separated
//! by dots; in a pattern, a word that is exactly `*` matches one word, and a word that is
//! exactly `#` matches zero or more. Any other word (`a*` too) matches itself exactly.
//!
//! `orders.*.eu` matches `orders.new.eu`; `orders.#` matches `orders`, `orders.new` and
//! `orders.new.eu`; `#` matches every key. Keys and patterns split on every dot, so the
//! empty key is one empty word (matched by `*` and `#`).

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    words: Vec<Word>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Exact(String),
    One,
    Any,
}

impl Pattern {
    pub fn parse(src: &str) -> Pattern {
        let mut words: Vec<Word> = Vec::new();
        for word in src.split('.') {
            let word = match word {
                "*" => Word::One,
                "#" => Word::Any,
                w => Word::Exact(w.to_owned()),
            };
            // `#.#` matches what `#` matches; one is enough and keeps matching linear.
            if word == Word::Any && words.last() == Some(&Word::Any) {
                continue;
            }
            words.push(word);
        }
        Pattern { words }
    }

    /// Whether `key` (already split on dots) matches.
    ///
    /// Greedy matching that backtracks to the last `#` only: O(pattern × key) at worst.
    pub fn matches(&self, key: &[&str]) -> bool {
        let (mut p, mut k) = (0, 0);
        // Where to resume after the last `#`: its index and the key position it reached.
        let mut resume: Option<(usize, usize)> = None;
        while k < key.len() {
            match self.words.get(p) {
                Some(Word::Any) => {
                    resume = Some((p, k));
                    p += 1;
                }
                Some(Word::One) => {
                    p += 1;
                    k += 1;
                }
                Some(Word::Exact(w)) if w == key[k] => {
                    p += 1;
                    k += 1;
                }
                _ => {
                    // Mismatch: let the last `#` swallow one more word, or fail.
                    let Some((star, reached)) = resume else {
                        return false;
                    };
                    resume = Some((star, reached + 1));
                    p = star + 1;
                    k = reached + 1;
                }
            }
        }
        self.words[p..].iter().all(|w| *w == Word::Any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: &str) -> bool {
        let key: Vec<&str> = key.split('.').collect();
        Pattern::parse(pattern).matches(&key)
    }

    #[test]
    fn exact_and_star() {
        assert!(m("orders.new.eu", "orders.new.eu"));
        assert!(!m("orders.new.eu", "orders.new"));
        assert!(m("orders.*.eu", "orders.new.eu"));
        assert!(!m("orders.*.eu", "orders.eu"));
        assert!(!m("orders.*.eu", "orders.a.b.eu"));
        assert!(m("*", "x"));
        assert!(!m("*", "x.y"));
        assert!(!m("a*", "ab"));
        assert!(m("a*", "a*"));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(m("orders.#", "orders"));
        assert!(m("orders.#", "orders.new"));
        assert!(m("orders.#", "orders.new.eu"));
        assert!(!m("orders.#", "invoices.new"));
        assert!(m("#", "anything.at.all"));
        assert!(m("#", ""));
        assert!(m("#.eu", "eu"));
        assert!(m("#.eu", "a.b.eu"));
        assert!(!m("#.eu", "a.eu.b"));
        assert!(m("a.#.b.#.c", "a.b.c"));
        assert!(m("a.#.b.#.c", "a.x.b.y.z.c"));
        assert!(!m("a.#.b.#.c", "a.x.y.c"));
        assert!(m("#.*", "x"));
        assert!(m("#.*", "")); // the empty key is one empty word
        assert!(!m("*.#.*", "x"));
        assert!(m("*.#.*", "x.y"));
        assert!(m("#.#.a", "a"));
    }

    #[test]
    fn backtracking_finds_late_matches() {
        assert!(m("#.a.b", "a.a.a.b"));
        assert!(m("#.a.*.c", "a.x.a.y.c"));
        assert!(!m("#.a.*.c", "a.x.a.c"));
    }

    #[test]
    fn empty_words() {
        assert!(m("*", ""));
        assert!(m("a..b", "a..b"));
        assert!(m("a.*.b", "a..b"));
    }
}
