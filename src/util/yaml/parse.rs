//! A YAML reader for what people and LXD write: block mappings and sequences (compact forms
//! included), flow `[..]` and `{..}` collections, plain, single- and double-quoted scalars
//! (folded over lines, with YAML's escapes), literal and folded block scalars with their
//! chomping and indentation indicators, comments, `---`/`...` markers, anchors and aliases,
//! and the `!!str` tag (other tags are read and ignored). One document per text. Not taken:
//! complex (`?`) keys, merge keys (`<<`), several documents; each is a clear error.
//!
//! Input may be hostile (an image's metadata.yaml, a backup's index.yaml): nesting is bounded,
//! and so is the number of nodes aliases may copy (no "billion laughs").

use super::Node;

/// Deepest nesting of collections.
const MAX_DEPTH: usize = 128;
/// Most nodes that aliases may copy in one document.
const MAX_ALIAS_NODES: usize = 100_000;

pub(super) fn parse(text: &str) -> Result<Node, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let owned;
    let text = if text.contains('\r') {
        owned = text.replace("\r\n", "\n").replace('\r', "\n");
        owned.as_str()
    } else {
        text
    };
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        pos: 0,
        depth: 0,
        anchors: Vec::new(),
        alias_nodes: 0,
    };
    p.document()
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    depth: usize,
    anchors: Vec<(String, Node)>,
    alias_nodes: usize,
}

fn count(n: &Node) -> usize {
    match n {
        Node::Seq(v) => 1 + v.iter().map(count).sum::<usize>(),
        Node::Map(m) => 1 + m.iter().map(|(_, v)| 1 + count(v)).sum::<usize>(),
        _ => 1,
    }
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Plain scalars that are null (yaml.v2 gives a string field "" for them).
fn is_null(s: &str) -> bool {
    matches!(s, "" | "~" | "null" | "Null" | "NULL")
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn at(&self, i: usize) -> Option<u8> {
        self.s.get(i).copied()
    }

    fn line_no(&self) -> usize {
        1 + self.s[..self.pos.min(self.s.len())]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    }

    fn err<T>(&self, msg: impl std::fmt::Display) -> Result<T, String> {
        Err(format!("yaml: line {}: {msg}", self.line_no()))
    }

    fn line_start(&self, pos: usize) -> usize {
        self.s[..pos]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1)
    }

    fn col(&self) -> usize {
        self.pos - self.line_start(self.pos)
    }

    fn eol(&self) -> bool {
        matches!(self.peek(), None | Some(b'\n'))
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.pos += 1;
        }
    }

    /// After blanks: a comment or the end of the line.
    fn at_line_end(&mut self) -> bool {
        self.skip_blanks();
        match self.peek() {
            None | Some(b'\n') => true,
            Some(b'#') => {
                while !self.eol() {
                    self.pos += 1;
                }
                true
            }
            _ => false,
        }
    }

    /// The rest of this line must be blank or a comment.
    fn end_line(&mut self) -> Result<(), String> {
        if !self.at_line_end() {
            return self.err(format!(
                "did not find expected end of line near {:?}",
                self.snippet()
            ));
        }
        Ok(())
    }

    fn snippet(&self) -> String {
        let end = self.s[self.pos..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(self.s.len(), |i| self.pos + i);
        self.text[self.pos..end].chars().take(20).collect()
    }

    /// Move to the first content of the next line that has any (skipping blank and comment
    /// lines): its column, or `None` at the end of the text. The position is left at the line's
    /// start (its indentation not consumed).
    fn next_content_line(&mut self) -> Result<Option<usize>, String> {
        loop {
            if self.pos >= self.s.len() {
                return Ok(None);
            }
            let start = self.line_start(self.pos);
            if start != self.pos {
                // Mid-line: only a comment may be left on it.
                self.end_line()?;
                if self.peek() == Some(b'\n') {
                    self.pos += 1;
                }
                continue;
            }
            let mut i = self.pos;
            while self.at(i) == Some(b' ') {
                i += 1;
            }
            match self.at(i) {
                None => {
                    self.pos = i;
                    return Ok(None);
                }
                Some(b'\n') => self.pos = i + 1,
                Some(b'#') => {
                    self.pos = i;
                    self.at_line_end();
                }
                Some(b'\t') => {
                    // A tab after the indentation: allowed only on a line with nothing else.
                    let mut j = i;
                    while self.at(j).is_some_and(is_blank) {
                        j += 1;
                    }
                    match self.at(j) {
                        None | Some(b'\n') | Some(b'#') => {
                            self.pos = j;
                            self.at_line_end();
                        }
                        _ => {
                            self.pos = i;
                            return self.err("found a tab character that violates indentation");
                        }
                    }
                }
                Some(_) => return Ok(Some(i - self.pos)),
            }
        }
    }

    fn document(&mut self) -> Result<Node, String> {
        // Directives and the start marker.
        loop {
            match self.next_content_line()? {
                None => return Ok(Node::Null),
                Some(0) if self.s[self.pos..].starts_with(b"%") => {
                    while !self.eol() {
                        self.pos += 1;
                    }
                }
                Some(0) if self.marker(b"---") => {
                    self.pos += 3;
                    if !self.at_line_end() {
                        // Content on the marker's line: a scalar or flow node.
                        let n = self.inline_value(-1)?;
                        return self.finish(n);
                    }
                    break;
                }
                Some(_) => break,
            }
        }
        let n = self.block_node(-1)?;
        self.finish(n)
    }

    fn marker(&self, m: &[u8]) -> bool {
        self.s[self.pos..].starts_with(m)
            && matches!(self.at(self.pos + 3), None | Some(b' ' | b'\t' | b'\n'))
    }

    fn finish(&mut self, n: Node) -> Result<Node, String> {
        match self.next_content_line()? {
            None => Ok(n),
            Some(0) if self.marker(b"...") => {
                self.pos += 3;
                self.end_line()?;
                match self.next_content_line()? {
                    None => Ok(n),
                    Some(_) => self.err("more than one YAML document is not supported"),
                }
            }
            Some(0) if self.marker(b"---") => {
                self.err("more than one YAML document is not supported")
            }
            Some(_) => {
                self.skip_blanks();
                let near = self.snippet();
                self.err(format!("did not find expected key near {near:?}"))
            }
        }
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err(format!("nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    /// A node in block context, on the following lines, indented more than `parent`
    /// (`-1` at the top). Nothing there: null.
    fn block_node(&mut self, parent: isize) -> Result<Node, String> {
        let Some(col) = self.next_content_line()? else {
            return Ok(Node::Null);
        };
        if col as isize <= parent {
            return Ok(Node::Null);
        }
        self.pos += col;
        if col == 0 && (self.marker(b"---") || self.marker(b"...")) {
            return Ok(Node::Null);
        }
        self.node_here(col, parent)
    }

    /// A node starting at the current position, column `col`, in block context.
    fn node_here(&mut self, col: usize, parent: isize) -> Result<Node, String> {
        if self.is_seq_entry() {
            return self.block_seq(col);
        }
        if self.key_ahead() {
            return self.block_map(col);
        }
        self.inline_value(parent)
    }

    fn is_seq_entry(&self) -> bool {
        self.peek() == Some(b'-')
            && matches!(self.at(self.pos + 1), None | Some(b' ' | b'\t' | b'\n'))
    }

    /// Whether a mapping key (`key:` then a blank or the line's end) starts here.
    fn key_ahead(&self) -> bool {
        let mut i = self.pos;
        match self.at(i) {
            Some(q @ (b'"' | b'\'')) => {
                i += 1;
                loop {
                    match self.at(i) {
                        None | Some(b'\n') => return false,
                        Some(b'\\') if q == b'"' => i += 2,
                        Some(c) if c == q => {
                            if q == b'\'' && self.at(i + 1) == Some(b'\'') {
                                i += 2;
                                continue;
                            }
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                while self.at(i).is_some_and(is_blank) {
                    i += 1;
                }
                self.at(i) == Some(b':')
                    && matches!(self.at(i + 1), None | Some(b' ' | b'\t' | b'\n'))
            }
            Some(b'[' | b'{' | b'#' | b'|' | b'>' | b'*' | b'&' | b'!' | b'%' | b'@' | b'`') => {
                false
            }
            _ => loop {
                match self.at(i) {
                    None | Some(b'\n') => return false,
                    Some(b'#') if i > self.pos && self.at(i - 1).is_some_and(is_blank) => {
                        return false
                    }
                    Some(b':') if matches!(self.at(i + 1), None | Some(b' ' | b'\t' | b'\n')) => {
                        return true
                    }
                    _ => i += 1,
                }
            },
        }
    }

    fn block_seq(&mut self, indent: usize) -> Result<Node, String> {
        self.enter()?;
        let mut items = Vec::new();
        loop {
            // At a `-` in column `indent`.
            self.pos += 1;
            self.skip_blanks();
            let item = if self.at_line_end() {
                self.block_node(indent as isize)?
            } else {
                let col = self.col();
                self.node_here(col, indent as isize)?
            };
            items.push(item);
            match self.next_content_line()? {
                Some(c) if c == indent => {
                    self.pos += c;
                    if !self.is_seq_entry() {
                        self.pos -= c;
                        break;
                    }
                }
                Some(c) if c > indent => {
                    self.pos += c;
                    return self.err("bad indentation of a sequence entry");
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Ok(Node::Seq(items))
    }

    fn block_map(&mut self, indent: usize) -> Result<Node, String> {
        self.enter()?;
        let mut pairs: Vec<(String, Node)> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        loop {
            // At a key in column `indent`.
            let key = self.key()?;
            if !seen.insert(key.clone()) {
                return self.err(format!("mapping key {key:?} already defined"));
            }
            self.skip_blanks();
            let value = if self.at_line_end() {
                // A sequence may sit at the key's own indentation.
                match self.next_content_line()? {
                    Some(c)
                        if c == indent && {
                            self.pos += c;
                            let seq = self.is_seq_entry();
                            self.pos -= c;
                            seq
                        } =>
                    {
                        self.pos += c;
                        self.block_seq(c)?
                    }
                    _ => self.block_node(indent as isize)?,
                }
            } else {
                self.inline_value(indent as isize)?
            };
            pairs.push((key, value));
            match self.next_content_line()? {
                Some(c) if c == indent => {
                    self.pos += c;
                    if self.marker(b"---") || self.marker(b"...") || !self.key_ahead() {
                        if self.is_seq_entry() || self.marker(b"---") || self.marker(b"...") {
                            self.pos -= c;
                            break;
                        }
                        return self.err(format!(
                            "could not find expected ':' near {:?}",
                            self.snippet()
                        ));
                    }
                }
                Some(c) if c > indent => {
                    self.pos += c;
                    return self.err(format!(
                        "mapping values are not allowed in this context near {:?}",
                        self.snippet()
                    ));
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Ok(Node::Map(pairs))
    }

    /// A block mapping's key and its `:`.
    fn key(&mut self) -> Result<String, String> {
        let quoted = matches!(self.peek(), Some(b'"' | b'\''));
        let key = match self.peek() {
            Some(b'"') => self.double_quoted()?,
            Some(b'\'') => self.single_quoted()?,
            _ => {
                let start = self.pos;
                while !(self.peek() == Some(b':')
                    && matches!(self.at(self.pos + 1), None | Some(b' ' | b'\t' | b'\n')))
                {
                    self.pos += 1;
                }
                self.text[start..self.pos].trim_end().to_string()
            }
        };
        self.skip_blanks();
        if self.peek() != Some(b':') {
            return self.err("could not find expected ':'");
        }
        self.pos += 1;
        if !quoted && key == "<<" {
            return self.err("merge keys (<<) are not supported");
        }
        if !quoted && (key == "?" || key.starts_with("? ")) {
            return self.err("complex keys (?) are not supported");
        }
        Ok(key)
    }

    /// Anchors and tags before a node: `(anchor, forced string)`.
    fn properties(&mut self) -> Result<(Option<String>, bool), String> {
        let mut anchor = None;
        let mut string = false;
        loop {
            match self.peek() {
                Some(b'&') => {
                    self.pos += 1;
                    anchor = Some(self.name()?);
                }
                Some(b'!') => {
                    let start = self.pos;
                    while self.peek().is_some_and(|b| !b" \t\n,[]{}".contains(&b)) {
                        self.pos += 1;
                    }
                    string |= &self.text[start..self.pos] == "!!str";
                }
                _ => return Ok((anchor, string)),
            }
            self.skip_blanks();
        }
    }

    fn name(&mut self) -> Result<String, String> {
        let start = self.pos;
        while self.peek().is_some_and(|b| !b" \t\n,[]{}".contains(&b)) {
            self.pos += 1;
        }
        if start == self.pos {
            return self.err("an anchor or alias needs a name");
        }
        Ok(self.text[start..self.pos].to_string())
    }

    /// An anchor's node, kept for its aliases (its copy counts against the same budget).
    fn remember(&mut self, name: String, node: &Node) -> Result<(), String> {
        self.alias_nodes += count(node);
        if self.alias_nodes > MAX_ALIAS_NODES {
            return self.err("anchors and aliases copy too many nodes");
        }
        self.anchors.push((name, node.clone()));
        Ok(())
    }

    fn alias(&mut self) -> Result<Node, String> {
        self.pos += 1;
        let name = self.name()?;
        let Some((_, n)) = self.anchors.iter().rev().find(|(a, _)| *a == name) else {
            return self.err(format!("unknown anchor {name:?} referenced"));
        };
        self.alias_nodes += count(n);
        if self.alias_nodes > MAX_ALIAS_NODES {
            return self.err("anchors and aliases copy too many nodes");
        }
        Ok(n.clone())
    }

    /// A node on the current line (a scalar or flow collection, or a block node below it when
    /// only properties are here), whose continuation lines are indented more than `parent`.
    fn inline_value(&mut self, parent: isize) -> Result<Node, String> {
        let (anchor, string) = self.properties()?;
        let node = if self.at_line_end() {
            self.block_node(parent)?
        } else {
            match self.peek() {
                Some(b'*') => {
                    let n = self.alias()?;
                    self.end_line()?;
                    n
                }
                Some(b'"') => {
                    let s = self.double_quoted()?;
                    self.end_line()?;
                    Node::Str(s)
                }
                Some(b'\'') => {
                    let s = self.single_quoted()?;
                    self.end_line()?;
                    Node::Str(s)
                }
                Some(b'[' | b'{') => {
                    let n = self.flow_node()?;
                    self.end_line()?;
                    n
                }
                Some(b'|' | b'>') => Node::Str(self.block_scalar(parent)?),
                Some(b'-') if self.is_seq_entry() => {
                    return self.err("block sequence entries are not allowed in this context")
                }
                _ => self.plain_block(parent)?,
            }
        };
        let node = match node {
            Node::Plain(s) if string => Node::Str(s),
            Node::Null if string => Node::Str(String::new()),
            n => n,
        };
        if let Some(a) = anchor {
            self.remember(a, &node)?;
        }
        Ok(node)
    }

    /// A plain scalar in block context, folded over the lines below it that are indented more
    /// than `parent`.
    fn plain_block(&mut self, parent: isize) -> Result<Node, String> {
        let mut out = String::new();
        let mut pending_breaks = 0usize;
        loop {
            let start = self.pos;
            loop {
                match self.peek() {
                    None | Some(b'\n') => break,
                    Some(b'#') if self.pos > start && is_blank(self.s[self.pos - 1]) => break,
                    Some(b':')
                        if matches!(self.at(self.pos + 1), None | Some(b' ' | b'\t' | b'\n')) =>
                    {
                        return self.err("mapping values are not allowed in this context")
                    }
                    _ => self.pos += 1,
                }
            }
            let piece = self.text[start..self.pos].trim_end_matches([' ', '\t']);
            if !out.is_empty() {
                if pending_breaks == 0 {
                    out.push(' ');
                }
                for _ in 0..pending_breaks {
                    out.push('\n');
                }
            }
            out.push_str(piece);
            if self.peek() == Some(b'#') {
                // A comment ends a plain scalar.
                self.at_line_end();
                break;
            }
            // Continuation: the next non-empty line, indented more than the parent.
            let save = self.pos;
            let mut breaks = 0;
            let mut i = self.pos;
            let next = loop {
                if self.at(i) != Some(b'\n') {
                    break None;
                }
                i += 1;
                let ls = i;
                while self.at(i).is_some_and(is_blank) {
                    i += 1;
                }
                match self.at(i) {
                    Some(b'\n') => breaks += 1,
                    None => break None,
                    Some(_) => break Some((ls, i)),
                }
            };
            match next {
                Some((ls, i))
                    if (i - ls) as isize > parent
                        && self.s[ls..i].iter().all(|b| *b == b' ')
                        && self.at(i) != Some(b'#')
                        && !(i == ls
                            && (self.s[i..].starts_with(b"---")
                                || self.s[i..].starts_with(b"..."))) =>
                {
                    self.pos = i;
                    pending_breaks = breaks;
                }
                _ => {
                    self.pos = save;
                    break;
                }
            }
        }
        Ok(if is_null(&out) {
            Node::Null
        } else {
            Node::Plain(out)
        })
    }

    /// Fold a quoted scalar's line break: `text` gets a space, or the empty lines' newlines.
    fn fold_break(&mut self, out: &mut String) -> Result<(), String> {
        while out.ends_with([' ', '\t']) {
            out.pop();
        }
        let mut breaks = 0;
        while self.peek() == Some(b'\n') {
            self.pos += 1;
            breaks += 1;
            self.skip_blanks();
        }
        if self.peek().is_none() {
            return self.err("found unexpected end of stream in a quoted scalar");
        }
        if breaks == 1 {
            out.push(' ');
        } else {
            for _ in 1..breaks {
                out.push('\n');
            }
        }
        Ok(())
    }

    /// Move the character here (not at the end) to `out`.
    fn take_char(&mut self, out: &mut String) {
        let c = self.text[self.pos..]
            .chars()
            .next()
            .expect("not at the end");
        out.push(c);
        self.pos += c.len_utf8();
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return self.err("found unexpected end of stream in a quoted scalar"),
                Some(b'\'') if self.at(self.pos + 1) == Some(b'\'') => {
                    out.push('\'');
                    self.pos += 2;
                }
                Some(b'\'') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\n') => self.fold_break(&mut out)?,
                Some(_) => self.take_char(&mut out),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return self.err("found unexpected end of stream in a quoted scalar"),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\n') => self.fold_break(&mut out)?,
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(e) = self.peek() else {
                        return self.err("found unexpected end of stream in a quoted scalar");
                    };
                    self.pos += 1;
                    let simple = match e {
                        b'0' => Some('\0'),
                        b'a' => Some('\x07'),
                        b'b' => Some('\x08'),
                        b't' | b'\t' => Some('\t'),
                        b'n' => Some('\n'),
                        b'v' => Some('\x0b'),
                        b'f' => Some('\x0c'),
                        b'r' => Some('\r'),
                        b'e' => Some('\x1b'),
                        b' ' => Some(' '),
                        b'"' => Some('"'),
                        b'/' => Some('/'),
                        b'\\' => Some('\\'),
                        b'N' => Some('\u{85}'),
                        b'_' => Some('\u{a0}'),
                        b'L' => Some('\u{2028}'),
                        b'P' => Some('\u{2029}'),
                        _ => None,
                    };
                    if let Some(c) = simple {
                        out.push(c);
                        continue;
                    }
                    let len = match e {
                        b'x' => 2,
                        b'u' => 4,
                        b'U' => 8,
                        b'\n' => {
                            // An escaped line break: joined without a space.
                            self.skip_blanks();
                            while self.peek() == Some(b'\n') {
                                out.push('\n');
                                self.pos += 1;
                                self.skip_blanks();
                            }
                            continue;
                        }
                        _ => {
                            return self
                                .err("found unknown escape character in a double-quoted scalar")
                        }
                    };
                    let hex = self.text.get(self.pos..self.pos + len).unwrap_or("");
                    let c = u32::from_str_radix(hex, 16)
                        .ok()
                        .filter(|_| hex.len() == len && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                        .and_then(char::from_u32);
                    let Some(c) = c else {
                        return self.err("found an invalid escape in a double-quoted scalar");
                    };
                    out.push(c);
                    self.pos += len;
                }
                Some(_) => self.take_char(&mut out),
            }
        }
    }

    /// `|` or `>` with its indicators, then the lines below indented more than `parent`.
    fn block_scalar(&mut self, parent: isize) -> Result<String, String> {
        let folded = self.peek() == Some(b'>');
        self.pos += 1;
        let mut chomp = 0i8; // -1 strip, 0 clip, 1 keep
        let mut explicit: Option<usize> = None;
        for _ in 0..2 {
            match self.peek() {
                Some(b'-') if chomp == 0 => chomp = -1,
                Some(b'+') if chomp == 0 => chomp = 1,
                Some(d @ b'1'..=b'9') if explicit.is_none() => explicit = Some((d - b'0') as usize),
                _ => break,
            }
            self.pos += 1;
        }
        self.end_line()?;
        if self.peek() == Some(b'\n') {
            self.pos += 1;
        }
        let base = parent.max(-1);
        // The lines of the block: (indentation, text after the content indentation).
        let mut indent = explicit.map(|d| if base >= 0 { base as usize + d } else { d });
        let mut lines: Vec<&str> = Vec::new();
        loop {
            if self.pos >= self.s.len() {
                break;
            }
            let ls = self.pos;
            let le = self.s[ls..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(self.s.len(), |i| ls + i);
            let line = &self.text[ls..le];
            let spaces = line.len() - line.trim_start_matches(' ').len();
            // A line of spaces is empty unless it has more than the content's indentation.
            let empty =
                line.trim_start_matches(' ').is_empty() && indent.is_none_or(|i| spaces <= i);
            if empty {
                lines.push("");
                self.pos = (le + 1).min(self.s.len());
                if le == self.s.len() {
                    break;
                }
                continue;
            }
            let need = match indent {
                Some(i) => i,
                None => {
                    if (spaces as isize) <= base {
                        break;
                    }
                    indent = Some(spaces);
                    spaces
                }
            };
            if spaces < need {
                break;
            }
            lines.push(&line[need..]);
            self.pos = (le + 1).min(self.s.len());
            if le == self.s.len() {
                break;
            }
        }
        // Trailing empty lines belong to chomping; the position goes back before them so that
        // the next line is read again.
        let trailing = lines.iter().rev().take_while(|l| l.is_empty()).count();
        let body = &lines[..lines.len() - trailing];
        let mut out = String::new();
        if folded {
            // Between two lines of text a break becomes a space (empty lines between them give
            // one newline each); breaks next to a more-indented line are kept.
            let mut prev: Option<&str> = None;
            let mut breaks = 0usize;
            for l in body {
                if l.is_empty() {
                    breaks += 1;
                    if prev.is_none() {
                        out.push('\n');
                    }
                    continue;
                }
                if let Some(p) = prev {
                    let more = |x: &str| x.starts_with([' ', '\t']);
                    if more(p) || more(l) {
                        out.push_str(&"\n".repeat(breaks + 1));
                    } else if breaks == 0 {
                        out.push(' ');
                    } else {
                        out.push_str(&"\n".repeat(breaks));
                    }
                }
                out.push_str(l);
                prev = Some(l);
                breaks = 0;
            }
        } else {
            out = body.join("\n");
        }
        if !body.is_empty() {
            match chomp {
                -1 => {}
                0 => out.push('\n'),
                _ => {
                    out.push('\n');
                    for _ in 0..trailing {
                        out.push('\n');
                    }
                }
            }
        } else if chomp == 1 {
            for _ in 0..trailing {
                out.push('\n');
            }
        }
        Ok(out)
    }

    // --- flow context ---

    /// Skip blanks, line breaks and comments inside a flow collection.
    fn flow_space(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n') => self.pos += 1,
                Some(b'#') => {
                    while !self.eol() {
                        self.pos += 1;
                    }
                }
                _ => return,
            }
        }
    }

    /// Before a flow collection's entry: `true` at its closing `close` (consumed).
    fn flow_closed(&mut self, close: u8) -> Result<bool, String> {
        self.flow_space();
        match self.peek() {
            Some(c) if c == close => {
                self.pos += 1;
                Ok(true)
            }
            None => self.err(format!("did not find expected ',' or '{}'", close as char)),
            _ => Ok(false),
        }
    }

    /// After a flow collection's entry: its `,`, or the closing `close` (left in place).
    fn flow_separator(&mut self, close: u8) -> Result<(), String> {
        self.flow_space();
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(())
            }
            Some(c) if c == close => Ok(()),
            Some(b':') if close == b']' => {
                self.err("single-pair mappings in a flow sequence are not supported")
            }
            _ => self.err(format!("did not find expected ',' or '{}'", close as char)),
        }
    }

    fn flow_node(&mut self) -> Result<Node, String> {
        self.flow_space();
        let (anchor, string) = self.properties()?;
        self.flow_space();
        let node = match self.peek() {
            Some(b'[') => {
                self.enter()?;
                self.pos += 1;
                let mut items = Vec::new();
                while !self.flow_closed(b']')? {
                    items.push(self.flow_node()?);
                    self.flow_separator(b']')?;
                }
                self.depth -= 1;
                Node::Seq(items)
            }
            Some(b'{') => {
                self.enter()?;
                self.pos += 1;
                let mut pairs: Vec<(String, Node)> = Vec::new();
                let mut seen = std::collections::BTreeSet::new();
                while !self.flow_closed(b'}')? {
                    let key = match self.flow_node()? {
                        Node::Str(s) | Node::Plain(s) => s,
                        Node::Null => String::new(),
                        _ => return self.err("a flow mapping key must be a scalar"),
                    };
                    if !seen.insert(key.clone()) {
                        return self.err(format!("mapping key {key:?} already defined"));
                    }
                    self.flow_space();
                    let value = if self.peek() == Some(b':') {
                        self.pos += 1;
                        self.flow_space();
                        if matches!(self.peek(), Some(b',' | b'}')) {
                            Node::Null
                        } else {
                            self.flow_node()?
                        }
                    } else {
                        Node::Null
                    };
                    pairs.push((key, value));
                    self.flow_separator(b'}')?;
                }
                self.depth -= 1;
                Node::Map(pairs)
            }
            Some(b'"') => Node::Str(self.double_quoted()?),
            Some(b'\'') => Node::Str(self.single_quoted()?),
            Some(b'*') => self.alias()?,
            _ => {
                // A plain scalar ends at a flow indicator, `: `, ` #` or the line's end (lines
                // folded with a space).
                let mut out = String::new();
                loop {
                    match self.peek() {
                        None | Some(b',' | b'[' | b']' | b'{' | b'}') => break,
                        Some(b':')
                            if matches!(
                                self.at(self.pos + 1),
                                None | Some(b' ' | b'\t' | b'\n' | b',' | b']' | b'}')
                            ) =>
                        {
                            break
                        }
                        Some(b'#') if out.ends_with([' ', '\t', '\n']) => break,
                        Some(b'\n') => {
                            self.pos += 1;
                            if !out.ends_with(' ') {
                                out.push(' ');
                            }
                        }
                        Some(_) => self.take_char(&mut out),
                    }
                }
                let s = out.trim_matches([' ', '\t']).to_string();
                if is_null(&s) {
                    Node::Null
                } else {
                    Node::Plain(s)
                }
            }
        };
        let node = match node {
            Node::Plain(s) if string => Node::Str(s),
            n => n,
        };
        if let Some(a) = anchor {
            self.remember(a, &node)?;
        }
        Ok(node)
    }
}
