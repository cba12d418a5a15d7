//! "Did you mean …?" hints for misspelt keys and keywords.
//!
//! A typo in a config key is the most common config mistake and the cheapest to fix when the
//! error names the intended key, so unknown keys and unknown keyword values both get a hint.

/// Edit distance between two strings, by characters: Levenshtein (insertions, deletions,
/// substitutions) plus swapping two adjacent characters as one edit, the commonest typo
/// (`tpc` for `tcp`).
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j] = distance between a[..i] and b[..j]. Keys are short, so the full table is fine.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate `word` was most likely meant to be, if one is close enough to be a typo rather
/// than a different word: same letters in another case, or at most a third of its length in edits
/// (at least 1, at most 3).
pub(super) fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|&c| {
            let d = if c.to_lowercase() == lower {
                0
            } else {
                edit_distance(&lower, &c.to_lowercase())
            };
            (d, c)
        })
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// `a`, `b` or `c` — for "use one of" lists in messages.
pub(super) fn one_of(candidates: &[&str]) -> String {
    let quoted: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// "unknown X `word`; did you mean `y`? use one of …": the message for a keyword value that is
/// not one of the accepted keywords.
pub(super) fn unknown_keyword(what: &str, word: &str, candidates: &[&str]) -> String {
    match did_you_mean(word, candidates) {
        Some(guess) => format!(
            "unknown {what} `{word}`; did you mean `{guess}`? (use {})",
            one_of(candidates)
        ),
        None => format!("unknown {what} `{word}`; use {}", one_of(candidates)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("protcol", "protocol"), 1);
        assert_eq!(edit_distance("wieght", "weight"), 1);
        assert_eq!(edit_distance("tpc", "tcp"), 1);
        assert_eq!(edit_distance("é", "e"), 1);
    }

    #[test]
    fn suggestions() {
        let keys = ["name", "listen", "protocol", "scheduler", "backend"];
        assert_eq!(did_you_mean("protcol", &keys), Some("protocol"));
        assert_eq!(did_you_mean("Listen", &keys), Some("listen"));
        assert_eq!(did_you_mean("backends", &keys), Some("backend"));
        assert_eq!(did_you_mean("colour", &keys), None);
        // Short words allow only one edit, so unrelated short keys are not "suggested".
        assert_eq!(did_you_mean("nm", &keys), None);
    }

    #[test]
    fn lists() {
        assert_eq!(one_of(&[]), "");
        assert_eq!(one_of(&["tcp"]), "`tcp`");
        assert_eq!(one_of(&["tcp", "udp"]), "`tcp` or `udp`");
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
        assert_eq!(
            unknown_keyword("protocol", "tpc", &["tcp", "udp"]),
            "unknown protocol `tpc`; did you mean `tcp`? (use `tcp` or `udp`)"
        );
        assert_eq!(
            unknown_keyword("protocol", "sctp", &["tcp", "udp"]),
            "unknown protocol `sctp`; use `tcp` or `udp`"
        );
    }
}
