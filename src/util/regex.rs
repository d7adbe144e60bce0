//! The part of Go's regular expressions that LXD's filters use (lxc's `list` filters, the
//! API's `?filter=`), matched by a small backtracking matcher of our own: no regex crate.

/// Whether `re` (the part of Go's regular expressions that list filters use: literals, `.`,
/// `[...]` and `[^...]` with ranges, `\d \w \s` and escaped characters, groups `(...)`,
/// alternatives `|`, `* + ?` after any of them, `^ $`) matches somewhere in `text`, as Go's
/// `MatchString`. A pattern that does not parse matches nothing (lxc then compares plainly).
/// Backtracking, on the short names and values of a listing; no regex crate.
pub fn is_match(re: &str, text: &str) -> bool {
    Regex::new(re, false).is_some_and(|r| r.is_match(text))
}

/// A parsed pattern.
pub struct Regex(Node);

impl Regex {
    /// `re` parsed (`None` when it does not), its letters matching either case when `fold`
    /// (Go's `(?i)`, for ASCII letters).
    pub fn new(re: &str, fold: bool) -> Option<Regex> {
        let chars: Vec<char> = re.chars().collect();
        let mut pos = 0;
        let alts = parse_alts(&chars, &mut pos)?;
        if pos != chars.len() {
            return None;
        }
        let node = Node::Group(alts);
        Some(Regex(if fold { fold_case(node) } else { node }))
    }

    /// Whether it matches somewhere in `text` (Go's `MatchString`).
    pub fn is_match(&self, text: &str) -> bool {
        let t: Vec<char> = text.chars().collect();
        (0..=t.len()).any(|i| match_one(&self.0, &t, i, &mut |_| true))
    }
}

/// `n` with every ASCII letter, alone or in a class range, matching both cases.
fn fold_case(n: Node) -> Node {
    let other = |c: char| {
        if c.is_ascii_lowercase() {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        }
    };
    match n {
        Node::Char(c) if c.is_ascii_alphabetic() => {
            Node::Class(vec![(c, c), (other(c), other(c))], false)
        }
        Node::Class(ranges, neg) => {
            let mut all = ranges.clone();
            for (a, b) in ranges {
                for (lo, hi) in [('a', 'z'), ('A', 'Z')] {
                    let (x, y) = (a.max(lo), b.min(hi));
                    if x <= y {
                        all.push((other(x), other(y)));
                    }
                }
            }
            Node::Class(all, neg)
        }
        Node::Group(alts) => Node::Group(
            alts.into_iter()
                .map(|seq| seq.into_iter().map(fold_case).collect())
                .collect(),
        ),
        Node::Repeat(inner, min, max) => Node::Repeat(Box::new(fold_case(*inner)), min, max),
        other => other,
    }
}

/// A pattern's parts.
enum Node {
    Char(char),
    Any,
    /// Ranges, and whether the class is negated.
    Class(Vec<(char, char)>, bool),
    Group(Vec<Vec<Node>>),
    Start,
    End,
    /// The node, at least `min` times, at most `max` (`None`: no bound).
    Repeat(Box<Node>, usize, Option<usize>),
}

fn parse_alts(p: &[char], pos: &mut usize) -> Option<Vec<Vec<Node>>> {
    let mut alts = vec![Vec::new()];
    while let Some(&c) = p.get(*pos) {
        let atom = match c {
            ')' => break,
            '|' => {
                *pos += 1;
                alts.push(Vec::new());
                continue;
            }
            '(' => {
                *pos += 1;
                if p.get(*pos..*pos + 2) == Some(&['?', ':']) {
                    *pos += 2;
                }
                let inner = parse_alts(p, pos)?;
                if p.get(*pos) != Some(&')') {
                    return None;
                }
                *pos += 1;
                Node::Group(inner)
            }
            '[' => parse_class(p, pos)?,
            '\\' => {
                *pos += 1;
                let e = *p.get(*pos)?;
                *pos += 1;
                escape(e)
            }
            '*' | '+' | '?' => return None,
            _ => {
                *pos += 1;
                match c {
                    '.' => Node::Any,
                    '^' => Node::Start,
                    '$' => Node::End,
                    c => Node::Char(c),
                }
            }
        };
        let (min, max) = match p.get(*pos) {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            _ => {
                alts.last_mut()?.push(atom);
                continue;
            }
        };
        *pos += 1;
        // Go's lazy form (`*?`) matches what the greedy one does for a yes or no.
        if p.get(*pos) == Some(&'?') {
            *pos += 1;
        }
        alts.last_mut()?
            .push(Node::Repeat(Box::new(atom), min, max));
    }
    Some(alts)
}

fn escape(e: char) -> Node {
    match e {
        'd' => Node::Class(vec![('0', '9')], false),
        'D' => Node::Class(vec![('0', '9')], true),
        'w' => Node::Class(vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')], false),
        'W' => Node::Class(vec![('a', 'z'), ('A', 'Z'), ('0', '9'), ('_', '_')], true),
        's' => Node::Class(vec![(' ', ' '), ('\t', '\r')], false),
        'S' => Node::Class(vec![(' ', ' '), ('\t', '\r')], true),
        c => Node::Char(c),
    }
}

fn parse_class(p: &[char], pos: &mut usize) -> Option<Node> {
    *pos += 1;
    let negated = p.get(*pos) == Some(&'^');
    if negated {
        *pos += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *p.get(*pos)?;
        if c == ']' && !first {
            *pos += 1;
            return Some(Node::Class(ranges, negated));
        }
        first = false;
        *pos += 1;
        let lo = if c == '\\' {
            let e = *p.get(*pos)?;
            *pos += 1;
            if let Node::Class(r, false) = escape(e) {
                ranges.extend(r);
                continue;
            }
            e
        } else {
            c
        };
        if p.get(*pos) == Some(&'-') && p.get(*pos + 1).is_some_and(|&n| n != ']') {
            let hi = *p.get(*pos + 1)?;
            *pos += 2;
            if hi < lo {
                return None;
            }
            ranges.push((lo, hi));
        } else {
            ranges.push((lo, lo));
        }
    }
}

/// Match `seq` from `t[i]`, then `k` with where it ended.
fn match_seq(seq: &[Node], t: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    let Some((first, rest)) = seq.split_first() else {
        return k(i);
    };
    match first {
        Node::Repeat(n, min, max) => repeat(n, (*min, *max), rest, t, (i, 0), k),
        _ => match_one(first, t, i, &mut |j| match_seq(rest, t, j, k)),
    }
}

fn match_one(n: &Node, t: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match n {
        Node::Char(c) => t.get(i) == Some(c) && k(i + 1),
        Node::Any => i < t.len() && t[i] != '\n' && k(i + 1),
        Node::Class(ranges, negated) => {
            t.get(i)
                .is_some_and(|c| ranges.iter().any(|(a, b)| a <= c && c <= b) != *negated)
                && k(i + 1)
        }
        Node::Start => i == 0 && k(i),
        Node::End => i == t.len() && k(i),
        Node::Group(alts) => alts.iter().any(|seq| match_seq(seq, t, i, k)),
        Node::Repeat(..) => match_seq(std::slice::from_ref(n), t, i, k),
    }
}

/// `n` repeated greedily (`count` times so far), then `rest`.
fn repeat(
    n: &Node,
    (min, max): (usize, Option<usize>),
    rest: &[Node],
    t: &[char],
    (i, count): (usize, usize),
    k: &mut dyn FnMut(usize) -> bool,
) -> bool {
    if max.is_none_or(|m| count < m)
        && match_one(n, t, i, &mut |j| {
            // An empty repetition cannot go on (it would loop).
            j != i && repeat(n, (min, max), rest, t, (j, count + 1), k)
        })
    {
        return true;
    }
    count >= min && match_seq(rest, t, i, k)
}

/// A filter value as lxc matches it: a whole-value pattern unless it anchors itself.
pub fn anchored(v: &str) -> String {
    if v.contains('^') || v.contains('$') {
        v.to_string()
    } else {
        format!("^{v}$")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax() {
        assert!(is_match("^web.$", "web1"));
        assert!(!is_match("^eb", "web1"));
        for (re, text, want) in [
            ("^c[12]$", "c1", true),
            ("^c[12]$", "c3", false),
            ("c1|c2", "c2", true),
            ("^(ab)*$", "ababab", true),
            ("^(ab)*$", "aba", false),
            ("^a?b+c*$", "bbb", true),
            ("^[-a]+$", "a-a", true),
            (r"^\.x$", ".x", true),
            (r"^\.x$", "ax", false),
            ("^(a*)*$", "aaaa", true),
            (r"^\w+\s\d$", "ab_1 7", true),
            ("x(", "x(", false),
            ("[z-a]", "a", false),
            ("*a", "a", false),
        ] {
            assert_eq!(is_match(re, text), want, "{re} ~ {text}");
        }
    }

    #[test]
    fn folded_as_go_case_insensitive() {
        let m = |re: &str, t: &str| Regex::new(re, true).is_some_and(|r| r.is_match(t));
        assert!(m("^QA.*$", "qa1") && m("^qa$", "QA") && m("^[a-c]x$", "Bx"));
        assert!(m("^[^a-c]x$", "dX") && !m("^[^a-c]x$", "BX"));
        assert!(m(r"^\d+$", "12") && !m("^qa$", "qb"));
        assert!(Regex::new("x(", true).is_none());
    }
}
