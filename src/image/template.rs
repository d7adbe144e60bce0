//! The pongo2 subset that real LXD image templates use, rendered with autoescape off.
//!
//! Supported: `{{ expr }}`, `{% if %}/{% elif %}/{% else %}/{% endif %}`, `{% for x in xs %}` /
//! `{% for k, v in map %}` (with `{% empty %}` and `forloop.Counter/Counter0/First/Last`),
//! `{# comments #}`, whitespace control (`{%-`, `-%}`, `{{-`, `-}}`), `{% autoescape %}` (ignored),
//! expressions with `or and not == != < > <= >= in`, `+ -`, string/number/bool literals, dotted and
//! `[...]` lookups, filters (`default`, `default_if_none`, `lower`, `upper`, `capfirst`, `title`,
//! `length`, `join`, `first`, `last`, `safe`, `escape`, `trim`, `integer`, `string`), and the
//! function `config_get("key", default)`. Errors carry the template name and line.
//! Nothing here touches the filesystem.

use std::collections::BTreeMap;
use std::fmt;

use crate::api;

/// What a template sees.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub name: String,
    pub architecture: String,
    pub privileged: bool,
    pub ephemeral: bool,
    /// The instance's expanded config.
    pub config: api::StringMap,
    pub devices: api::Devices,
}

/// A template value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    fn truthy(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
        }
    }
    fn from_map(m: &api::StringMap) -> Value {
        Value::Map(crate::util::sort::map(
            m.iter().map(|(k, v)| (k.clone(), Value::Str(v.clone()))),
        ))
    }
    fn len(&self) -> i64 {
        match self {
            Value::Str(s) => s.chars().count() as i64,
            Value::List(l) => l.len() as i64,
            Value::Map(m) => m.len() as i64,
            _ => 0,
        }
    }
    fn equals(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Nil, Value::Nil) => true,
            (Value::Nil, _) | (_, Value::Nil) => false,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (a, b) => a.to_string() == b.to_string(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => Ok(()),
            Value::Bool(true) => f.write_str("True"),
            Value::Bool(false) => f.write_str("False"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => f.write_str(s),
            Value::List(l) => {
                f.write_str("[")?;
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(m) => {
                f.write_str("{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// The variables LXD gives a template (`templateApplyNow` in LXD's driver_lxc.go).
/// A map of template values under static names.
fn named<const N: usize>(pairs: [(&str, Value); N]) -> BTreeMap<String, Value> {
    crate::util::sort::map(pairs.into_iter().map(|(k, v)| (k.to_string(), v)))
}

pub fn variables(ctx: &Context, trigger: &str, path: &str, properties: &api::StringMap) -> Value {
    let b = |v: bool| Value::Str(if v { "true" } else { "false" }.into());
    let inst = named([
        ("name", Value::Str(ctx.name.clone())),
        ("type", Value::Str("container".into())),
        ("architecture", Value::Str(ctx.architecture.clone())),
        ("privileged", b(ctx.privileged)),
        ("ephemeral", b(ctx.ephemeral)),
    ]);
    let devices = Value::Map(crate::util::sort::map(
        ctx.devices
            .iter()
            .map(|(k, v)| (k.clone(), Value::from_map(v))),
    ));
    let vars = named([
        ("trigger", Value::Str(trigger.into())),
        ("path", Value::Str(path.into())),
        ("container", Value::Map(inst.clone())),
        ("instance", Value::Map(inst)),
        ("config", Value::from_map(&ctx.config)),
        ("devices", devices),
        ("properties", Value::from_map(properties)),
    ]);
    Value::Map(vars)
}

/// A template error: file, line, message.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "template {} line {}: {}", self.file, self.line, self.msg)
    }
}

type R<T> = std::result::Result<T, (usize, String)>;

/// Bounds on what an image's template may make the daemon do (a real one needs a few tokens per
/// expression, a few levels of nesting and a few hundred steps): the parser, the evaluator and
/// the drop of an expression recurse once per level, and the daemon renders on a thread with a
/// 2 MiB stack; loops multiply.
const MAX_EXPR_TOKENS: usize = 256;
/// Parentheses, `not`, `[...]` and call arguments nested in one expression.
const MAX_EXPR_DEPTH: usize = 32;
/// `{% if %}`, `{% for %}` and `{% autoescape %}` blocks nested.
const MAX_BLOCK_DEPTH: usize = 32;
/// Nodes rendered and loop turns taken, in all.
const MAX_STEPS: u64 = 1_000_000;
/// Bytes of output (and of any one value).
const MAX_OUTPUT: usize = 16 << 20;

// ---------------------------------------------------------------------------------------------
// Lexing the template into text, `{{ }}` and `{% %}` pieces.

#[derive(Debug)]
enum Piece {
    Text(String),
    Var(String, usize),
    Tag(String, usize),
}

fn lex(src: &str) -> R<Vec<Piece>> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut line = 1usize;
    let mut trim_next = false;
    loop {
        // One scan to the next tag (not one per kind of tag over the whole rest: that made a
        // template with many tags take quadratic time).
        let next = rest
            .as_bytes()
            .windows(2)
            .position(|w| w[0] == b'{' && matches!(w[1], b'{' | b'%' | b'#'));
        let Some(at) = next else {
            push_text(&mut out, rest, trim_next);
            return Ok(out);
        };
        let text = &rest[..at];
        let open = &rest[at..at + 2];
        let mut inner_start = at + 2;
        let trim_prev = rest[inner_start..].starts_with('-');
        if trim_prev {
            inner_start += 1;
        }
        let text = if trim_prev { text.trim_end() } else { text };
        push_text(&mut out, text, trim_next);
        line += rest[..at].matches('\n').count();
        let close = match open {
            "{{" => "}}",
            "{%" => "%}",
            _ => "#}",
        };
        let end = rest[inner_start..]
            .find(close)
            .map(|i| i + inner_start)
            .ok_or_else(|| (line, format!("unterminated {open}")))?;
        let mut inner = &rest[inner_start..end];
        trim_next = inner.ends_with('-');
        if trim_next {
            inner = &inner[..inner.len() - 1];
        }
        match open {
            "{{" => out.push(Piece::Var(inner.trim().to_string(), line)),
            "{%" => out.push(Piece::Tag(inner.trim().to_string(), line)),
            _ => {}
        }
        line += rest[at..end + 2].matches('\n').count();
        rest = &rest[end + 2..];
    }
}

fn push_text(out: &mut Vec<Piece>, text: &str, trim_start: bool) {
    let text = if trim_start { text.trim_start() } else { text };
    if !text.is_empty() {
        out.push(Piece::Text(text.to_string()));
    }
}

// ---------------------------------------------------------------------------------------------
// Expressions.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Op(&'static str),
}

fn tokenize(s: &str, line: usize) -> R<Vec<Tok>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    const OPS: [&str; 20] = [
        "==", "!=", "<=", ">=", "&&", "||", "<", ">", "|", ":", ".", ",", "(", ")", "[", "]", "+",
        "-", "!", "=",
    ];
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'"' || c == b'\'' {
            let mut j = i + 1;
            let mut v = String::new();
            loop {
                match b.get(j) {
                    None => return Err((line, format!("unterminated string in {s:?}"))),
                    Some(&q) if q == c => break,
                    Some(b'\\') => {
                        // The escaped character may be any one, several bytes long.
                        let e = s[j + 1..]
                            .chars()
                            .next()
                            .ok_or((line, "bad escape".to_string()))?;
                        v.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                        j += 1 + e.len_utf8();
                        continue;
                    }
                    Some(_) => {
                        let ch = s[j..].chars().next().expect("in bounds");
                        v.push(ch);
                        j += ch.len_utf8();
                        continue;
                    }
                }
            }
            out.push(Tok::Str(v));
            i = j + 1;
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            out.push(Tok::Int(
                s[i..j]
                    .parse()
                    .map_err(|_| (line, format!("bad number in {s:?}")))?,
            ));
            i = j;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            out.push(Tok::Ident(s[i..j].to_string()));
            i = j;
        } else {
            // ok_or_else: the message quotes the whole expression, which must not be formatted
            // for every operator (that made a long expression take quadratic time).
            let op = OPS
                .iter()
                .find(|op| s[i..].starts_with(**op))
                .ok_or_else(|| {
                    (
                        line,
                        format!("unexpected character {:?} in {s:?}", c as char),
                    )
                })?;
            out.push(Tok::Op(op));
            i += op.len();
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
enum Expr {
    Lit(Value),
    Var(String),
    Attr(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
    Filter(Box<Expr>, String, Option<Box<Expr>>),
    Not(Box<Expr>),
    Bin(&'static str, Box<Expr>, Box<Expr>),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    line: usize,
    /// Levels of `expr` and `not` being parsed.
    depth: usize,
}

impl Parser {
    fn new(s: &str, line: usize) -> R<Parser> {
        let toks = tokenize(s, line)?;
        if toks.len() > MAX_EXPR_TOKENS {
            return Err((
                line,
                format!("expression longer than {MAX_EXPR_TOKENS} tokens"),
            ));
        }
        Ok(Parser {
            toks,
            pos: 0,
            line,
            depth: 0,
        })
    }
    /// Run `f` one level deeper, refusing more than [`MAX_EXPR_DEPTH`] levels.
    fn nested(&mut self, f: impl FnOnce(&mut Parser) -> R<Expr>) -> R<Expr> {
        if self.depth >= MAX_EXPR_DEPTH {
            return self.err(format!(
                "expression nested deeper than {MAX_EXPR_DEPTH} levels"
            ));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn err<T>(&self, msg: impl Into<String>) -> R<T> {
        Err((self.line, msg.into()))
    }
    fn eat_op(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn eat_word(&mut self, w: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Ident(i)) if i == w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_op(&mut self, op: &str) -> R<()> {
        if self.eat_op(op) {
            Ok(())
        } else {
            self.err(format!("expected {op:?}, found {:?}", self.peek()))
        }
    }
    fn ident(&mut self) -> R<String> {
        match self.peek().cloned() {
            Some(Tok::Ident(i)) => {
                self.pos += 1;
                Ok(i)
            }
            other => self.err(format!("expected a name, found {other:?}")),
        }
    }
    fn done(&self) -> R<()> {
        match self.peek() {
            None => Ok(()),
            Some(t) => self.err(format!("unexpected {t:?}")),
        }
    }
    fn expr(&mut self) -> R<Expr> {
        self.nested(Parser::or)
    }
    fn or(&mut self) -> R<Expr> {
        let mut l = self.and()?;
        while self.eat_word("or") || self.eat_op("||") {
            let r = self.and()?;
            l = Expr::Bin("or", Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn and(&mut self) -> R<Expr> {
        let mut l = self.not()?;
        while self.eat_word("and") || self.eat_op("&&") {
            let r = self.not()?;
            l = Expr::Bin("and", Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn not(&mut self) -> R<Expr> {
        if self.eat_word("not") || self.eat_op("!") {
            return Ok(Expr::Not(Box::new(self.nested(Parser::not)?)));
        }
        self.cmp()
    }
    fn cmp(&mut self) -> R<Expr> {
        let l = self.add()?;
        for op in ["==", "!=", "<=", ">=", "<", ">"] {
            if self.eat_op(op) {
                let r = self.add()?;
                return Ok(Expr::Bin(op, Box::new(l), Box::new(r)));
            }
        }
        if self.eat_word("in") {
            let r = self.add()?;
            return Ok(Expr::Bin("in", Box::new(l), Box::new(r)));
        }
        if matches!(self.peek(), Some(Tok::Ident(i)) if i == "not")
            && matches!(self.toks.get(self.pos + 1), Some(Tok::Ident(i)) if i == "in")
        {
            self.pos += 2;
            let r = self.add()?;
            return Ok(Expr::Not(Box::new(Expr::Bin(
                "in",
                Box::new(l),
                Box::new(r),
            ))));
        }
        Ok(l)
    }
    fn add(&mut self) -> R<Expr> {
        let mut l = self.filtered()?;
        loop {
            if self.eat_op("+") {
                l = Expr::Bin("+", Box::new(l), Box::new(self.filtered()?));
            } else if self.eat_op("-") {
                l = Expr::Bin("-", Box::new(l), Box::new(self.filtered()?));
            } else {
                return Ok(l);
            }
        }
    }
    fn filtered(&mut self) -> R<Expr> {
        let mut e = self.postfix()?;
        while self.eat_op("|") {
            let name = self.ident()?;
            let arg = if self.eat_op(":") {
                Some(Box::new(self.postfix()?))
            } else {
                None
            };
            e = Expr::Filter(Box::new(e), name, arg);
        }
        Ok(e)
    }
    fn postfix(&mut self) -> R<Expr> {
        let mut e = self.primary()?;
        loop {
            if self.eat_op(".") {
                let name = match self.peek().cloned() {
                    Some(Tok::Ident(i)) => i,
                    Some(Tok::Int(n)) => n.to_string(),
                    other => {
                        return self.err(format!("expected a name after '.', found {other:?}"))
                    }
                };
                self.pos += 1;
                e = Expr::Attr(Box::new(e), name);
            } else if self.eat_op("[") {
                let i = self.expr()?;
                self.expect_op("]")?;
                e = Expr::Index(Box::new(e), Box::new(i));
            } else {
                return Ok(e);
            }
        }
    }
    fn primary(&mut self) -> R<Expr> {
        match self.peek().cloned() {
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(Expr::Lit(Value::Str(s)))
            }
            Some(Tok::Int(i)) => {
                self.pos += 1;
                Ok(Expr::Lit(Value::Int(i)))
            }
            Some(Tok::Op("-")) => {
                self.pos += 1;
                match self.peek().cloned() {
                    Some(Tok::Int(i)) => {
                        self.pos += 1;
                        Ok(Expr::Lit(Value::Int(-i)))
                    }
                    other => self.err(format!("expected a number after '-', found {other:?}")),
                }
            }
            Some(Tok::Op("(")) => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect_op(")")?;
                Ok(e)
            }
            Some(Tok::Ident(i)) => {
                self.pos += 1;
                match i.as_str() {
                    "true" | "True" => return Ok(Expr::Lit(Value::Bool(true))),
                    "false" | "False" => return Ok(Expr::Lit(Value::Bool(false))),
                    "nil" | "None" => return Ok(Expr::Lit(Value::Nil)),
                    _ => {}
                }
                if self.eat_op("(") {
                    let mut args = Vec::new();
                    if !self.eat_op(")") {
                        loop {
                            args.push(self.expr()?);
                            if self.eat_op(")") {
                                break;
                            }
                            self.expect_op(",")?;
                        }
                    }
                    return Ok(Expr::Call(i, args));
                }
                Ok(Expr::Var(i))
            }
            other => self.err(format!("expected an expression, found {other:?}")),
        }
    }
}

fn parse_expr(s: &str, line: usize) -> R<Expr> {
    let mut p = Parser::new(s, line)?;
    if p.peek().is_none() {
        return Err((line, "empty expression".into()));
    }
    let e = p.expr()?;
    p.done()?;
    Ok(e)
}

// ---------------------------------------------------------------------------------------------
// Template tree.

#[derive(Debug)]
enum Node {
    Text(String),
    Out(Expr, usize),
    If(Vec<(Expr, usize, Vec<Node>)>, Vec<Node>),
    For {
        key: Option<String>,
        var: String,
        iter: Expr,
        body: Vec<Node>,
        empty: Vec<Node>,
        line: usize,
    },
}

/// A compiled template.
#[derive(Debug)]
pub struct Template {
    name: String,
    nodes: Vec<Node>,
}

fn keyword(tag: &str) -> (&str, &str) {
    let tag = tag.trim();
    match tag.find(char::is_whitespace) {
        Some(i) => (&tag[..i], tag[i..].trim()),
        None => (tag, ""),
    }
}

/// The tag that ended a block: keyword, rest of the tag, line.
type StopTag = (String, String, usize);

/// Parse nodes until one of `stops` (a tag keyword); returns the nodes and the stop tag met.
/// `depth`: the blocks around these nodes.
fn parse_nodes(
    pieces: &mut std::iter::Peekable<std::vec::IntoIter<Piece>>,
    stops: &[&str],
    depth: usize,
) -> R<(Vec<Node>, Option<StopTag>)> {
    let mut nodes = Vec::new();
    while let Some(p) = pieces.next() {
        match p {
            Piece::Text(t) => nodes.push(Node::Text(t)),
            Piece::Var(e, line) => nodes.push(Node::Out(parse_expr(&e, line)?, line)),
            Piece::Tag(tag, line) => {
                let (kw, rest) = keyword(&tag);
                if stops.contains(&kw) {
                    return Ok((nodes, Some((kw.to_string(), rest.to_string(), line))));
                }
                if depth >= MAX_BLOCK_DEPTH && matches!(kw, "if" | "for" | "autoescape") {
                    return Err((
                        line,
                        format!("blocks nested deeper than {MAX_BLOCK_DEPTH} levels"),
                    ));
                }
                match kw {
                    "if" => {
                        let mut branches = Vec::new();
                        let mut cond = parse_expr(rest, line)?;
                        let mut cond_line = line;
                        let mut otherwise = Vec::new();
                        loop {
                            let (body, stop) =
                                parse_nodes(pieces, &["elif", "else", "endif"], depth + 1)?;
                            let Some((kw, rest, l)) = stop else {
                                return Err((line, "{% if %} without {% endif %}".into()));
                            };
                            branches.push((cond, cond_line, body));
                            match kw.as_str() {
                                "elif" => {
                                    cond = parse_expr(&rest, l)?;
                                    cond_line = l;
                                }
                                "else" => {
                                    let (body, stop) = parse_nodes(pieces, &["endif"], depth + 1)?;
                                    if stop.is_none() {
                                        return Err((line, "{% if %} without {% endif %}".into()));
                                    }
                                    otherwise = body;
                                    break;
                                }
                                _ => break,
                            }
                        }
                        nodes.push(Node::If(branches, otherwise));
                    }
                    "for" => {
                        let (vars, iter) = rest.split_once(" in ").ok_or_else(|| {
                            (
                                line,
                                format!("bad for loop {tag:?}: expected 'for x in list'"),
                            )
                        })?;
                        let names: Vec<String> =
                            vars.split(',').map(|v| v.trim().to_string()).collect();
                        let valid = |n: &String| {
                            !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_')
                        };
                        let (key, var) = match names.as_slice() {
                            [v] if valid(v) => (None, v.clone()),
                            [k, v] if valid(k) && valid(v) => (Some(k.clone()), v.clone()),
                            _ => return Err((line, format!("bad loop variables {vars:?}"))),
                        };
                        let iter = parse_expr(iter, line)?;
                        let (body, stop) = parse_nodes(pieces, &["empty", "endfor"], depth + 1)?;
                        let mut empty = Vec::new();
                        match stop {
                            None => return Err((line, "{% for %} without {% endfor %}".into())),
                            Some((kw, _, _)) if kw == "empty" => {
                                let (b, stop) = parse_nodes(pieces, &["endfor"], depth + 1)?;
                                if stop.is_none() {
                                    return Err((line, "{% for %} without {% endfor %}".into()));
                                }
                                empty = b;
                            }
                            _ => {}
                        }
                        nodes.push(Node::For {
                            key,
                            var,
                            iter,
                            body,
                            empty,
                            line,
                        });
                    }
                    "autoescape" => {
                        let (body, stop) = parse_nodes(pieces, &["endautoescape"], depth + 1)?;
                        if stop.is_none() {
                            return Err((
                                line,
                                "{% autoescape %} without {% endautoescape %}".into(),
                            ));
                        }
                        nodes.extend(body);
                    }
                    other => return Err((line, format!("unknown or unexpected tag {other:?}"))),
                }
            }
        }
    }
    Ok((nodes, None))
}

impl Template {
    /// Compile `src`; `name` is used in errors.
    pub fn compile(name: &str, src: &str) -> Result<Template, TemplateError> {
        let err = |(line, msg)| TemplateError {
            file: name.to_string(),
            line,
            msg,
        };
        let pieces = lex(src).map_err(err)?;
        let mut it = pieces.into_iter().peekable();
        let (nodes, stop) = parse_nodes(&mut it, &[], 0).map_err(err)?;
        debug_assert!(stop.is_none());
        Ok(Template {
            name: name.to_string(),
            nodes,
        })
    }

    /// Render with `vars` (a `Value::Map`, see `variables`).
    pub fn render(&self, vars: &Value) -> Result<String, TemplateError> {
        let mut scope = Scope {
            frames: vec![vars.clone()],
            steps: 0,
        };
        let mut out = String::new();
        render_nodes(&self.nodes, &mut scope, &mut out).map_err(|(line, msg)| TemplateError {
            file: self.name.clone(),
            line,
            msg,
        })?;
        Ok(out)
    }
}

/// Compile and render in one step.
pub fn render(name: &str, src: &str, vars: &Value) -> Result<String, TemplateError> {
    Template::compile(name, src)?.render(vars)
}

struct Scope {
    frames: Vec<Value>,
    /// Nodes rendered and loop turns taken so far.
    steps: u64,
}

impl Scope {
    /// Count `n` steps, refusing more than [`MAX_STEPS`] in all or an output past [`MAX_OUTPUT`].
    fn step(&mut self, n: u64, line: usize, out: &str) -> R<()> {
        self.steps = self.steps.saturating_add(n);
        if self.steps > MAX_STEPS {
            return Err((
                line,
                format!("the template takes more than {MAX_STEPS} steps to render"),
            ));
        }
        if out.len() > MAX_OUTPUT {
            return Err((
                line,
                format!("the template renders more than {} MiB", MAX_OUTPUT >> 20),
            ));
        }
        Ok(())
    }
    fn get(&self, name: &str) -> Value {
        for f in self.frames.iter().rev() {
            if let Value::Map(m) = f {
                if let Some(v) = m.get(name) {
                    return v.clone();
                }
            }
        }
        Value::Nil
    }
}

fn render_nodes(nodes: &[Node], scope: &mut Scope, out: &mut String) -> R<()> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Out(e, line) => {
                scope.step(1, *line, out)?;
                out.push_str(&eval(e, scope, *line)?.to_string());
                scope.step(0, *line, out)?;
            }
            Node::If(branches, otherwise) => {
                if let Some((_, line, _)) = branches.first() {
                    scope.step(1, *line, out)?;
                }
                let mut done = false;
                for (cond, line, body) in branches {
                    if eval(cond, scope, *line)?.truthy() {
                        render_nodes(body, scope, out)?;
                        done = true;
                        break;
                    }
                }
                if !done {
                    render_nodes(otherwise, scope, out)?;
                }
            }
            Node::For {
                key,
                var,
                iter,
                body,
                empty,
                line,
            } => {
                let seq = eval(iter, scope, *line)?;
                // Every turn is a step: refuse a loop that would pass the budget before making
                // its items.
                let turns = match &seq {
                    Value::List(_) | Value::Map(_) | Value::Str(_) => seq.len(),
                    _ => 0,
                };
                scope.step(turns as u64, *line, out)?;
                let items: Vec<(Value, Value)> = match seq {
                    Value::List(l) => l.into_iter().map(|v| (v.clone(), v)).collect(),
                    Value::Map(m) => m.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
                    Value::Str(s) => s
                        .chars()
                        .map(|c| (Value::Str(c.into()), Value::Str(c.into())))
                        .collect(),
                    Value::Nil => Vec::new(),
                    other => return Err((*line, format!("cannot loop over {other}"))),
                };
                if items.is_empty() {
                    render_nodes(empty, scope, out)?;
                }
                let n = items.len();
                for (i, (k, v)) in items.into_iter().enumerate() {
                    let mut frame = BTreeMap::new();
                    match key {
                        Some(kn) => {
                            frame.insert(kn.clone(), k);
                            frame.insert(var.clone(), v);
                        }
                        None => {
                            frame.insert(var.clone(), v);
                        }
                    }
                    let fl = named([
                        ("Counter", Value::Int(i as i64 + 1)),
                        ("Counter0", Value::Int(i as i64)),
                        ("First", Value::Bool(i == 0)),
                        ("Last", Value::Bool(i + 1 == n)),
                    ]);
                    frame.insert("forloop".into(), Value::Map(fl));
                    scope.frames.push(Value::Map(frame));
                    let r = render_nodes(body, scope, out);
                    scope.frames.pop();
                    r?;
                    scope.step(0, *line, out)?;
                }
            }
        }
    }
    Ok(())
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Str(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(i64::from(*b)),
        _ => None,
    }
}

fn eval(e: &Expr, scope: &Scope, line: usize) -> R<Value> {
    Ok(match e {
        Expr::Lit(v) => v.clone(),
        Expr::Var(n) => scope.get(n),
        Expr::Attr(base, name) => match eval(base, scope, line)? {
            Value::Map(m) => m.get(name).cloned().unwrap_or(Value::Nil),
            Value::List(l) => name
                .parse::<usize>()
                .ok()
                .and_then(|i| l.get(i).cloned())
                .unwrap_or(Value::Nil),
            _ => Value::Nil,
        },
        Expr::Index(base, idx) => {
            let idx = eval(idx, scope, line)?;
            match eval(base, scope, line)? {
                Value::Map(m) => m.get(&idx.to_string()).cloned().unwrap_or(Value::Nil),
                Value::List(l) => as_int(&idx)
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| l.get(i).cloned())
                    .unwrap_or(Value::Nil),
                _ => Value::Nil,
            }
        }
        Expr::Call(name, args) => {
            let args: Vec<Value> = args
                .iter()
                .map(|a| eval(a, scope, line))
                .collect::<R<_>>()?;
            match name.as_str() {
                "config_get" => {
                    let (key, default) = match args.as_slice() {
                        [k] => (k.to_string(), Value::Nil),
                        [k, d] => (k.to_string(), d.clone()),
                        _ => return Err((line, "config_get takes (key, default)".into())),
                    };
                    match scope.get("config") {
                        Value::Map(m) => match m.get(&key) {
                            Some(v) => {
                                Value::Str(v.to_string().trim_end_matches(['\r', '\n']).to_string())
                            }
                            None => default,
                        },
                        _ => default,
                    }
                }
                other => return Err((line, format!("unknown function {other:?}"))),
            }
        }
        Expr::Filter(base, name, arg) => {
            let v = eval(base, scope, line)?;
            let arg = match arg {
                Some(a) => Some(eval(a, scope, line)?),
                None => None,
            };
            filter(v, name, arg).map_err(|m| (line, m))?
        }
        Expr::Not(x) => Value::Bool(!eval(x, scope, line)?.truthy()),
        Expr::Bin(op, l, r) => {
            let a = eval(l, scope, line)?;
            if *op == "and" {
                return Ok(if a.truthy() {
                    Value::Bool(eval(r, scope, line)?.truthy())
                } else {
                    Value::Bool(false)
                });
            }
            if *op == "or" {
                return Ok(if a.truthy() {
                    Value::Bool(true)
                } else {
                    Value::Bool(eval(r, scope, line)?.truthy())
                });
            }
            let b = eval(r, scope, line)?;
            match *op {
                "==" => Value::Bool(a.equals(&b)),
                "!=" => Value::Bool(!a.equals(&b)),
                "<" | ">" | "<=" | ">=" => {
                    let ord = match (as_int(&a), as_int(&b)) {
                        (Some(x), Some(y)) => x.cmp(&y),
                        _ => a.to_string().cmp(&b.to_string()),
                    };
                    Value::Bool(match *op {
                        "<" => ord.is_lt(),
                        ">" => ord.is_gt(),
                        "<=" => ord.is_le(),
                        _ => ord.is_ge(),
                    })
                }
                "in" => Value::Bool(match &b {
                    Value::List(l) => l.iter().any(|x| x.equals(&a)),
                    Value::Map(m) => m.contains_key(&a.to_string()),
                    Value::Str(s) => s.contains(&a.to_string()),
                    _ => false,
                }),
                "+" => match (&a, &b) {
                    (Value::Int(x), Value::Int(y)) => Value::Int(x.wrapping_add(*y)),
                    _ => {
                        let s = format!("{a}{b}");
                        if s.len() > MAX_OUTPUT {
                            return Err((
                                line,
                                format!("a value longer than {} MiB", MAX_OUTPUT >> 20),
                            ));
                        }
                        Value::Str(s)
                    }
                },
                "-" => match (as_int(&a), as_int(&b)) {
                    (Some(x), Some(y)) => Value::Int(x.wrapping_sub(y)),
                    _ => return Err((line, format!("cannot subtract {b} from {a}"))),
                },
                other => return Err((line, format!("unknown operator {other}"))),
            }
        }
    })
}

fn filter(v: Value, name: &str, arg: Option<Value>) -> std::result::Result<Value, String> {
    let s = || v.to_string();
    Ok(match name {
        "default" => {
            if v.truthy() {
                v
            } else {
                arg.ok_or("filter default needs an argument")?
            }
        }
        "default_if_none" => {
            if v == Value::Nil {
                arg.ok_or("filter default_if_none needs an argument")?
            } else {
                v
            }
        }
        "lower" => Value::Str(s().to_lowercase()),
        "upper" => Value::Str(s().to_uppercase()),
        "capfirst" => {
            let s = s();
            let mut c = s.chars();
            Value::Str(match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect(),
                None => String::new(),
            })
        }
        "title" => Value::Str(
            s().split(' ')
                .map(|w| {
                    let mut c = w.chars();
                    match c.next() {
                        Some(f) => f
                            .to_uppercase()
                            .chain(c.flat_map(|x| x.to_lowercase()))
                            .collect(),
                        None => String::new(),
                    }
                })
                .collect::<Vec<String>>()
                .join(" "),
        ),
        "length" => Value::Int(v.len()),
        "join" => {
            let sep = arg.map(|a| a.to_string()).unwrap_or_default();
            match v {
                Value::List(l) => Value::Str(
                    l.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(&sep),
                ),
                other => other,
            }
        }
        "first" => match v {
            Value::List(l) => l.into_iter().next().unwrap_or(Value::Nil),
            Value::Str(s) => s
                .chars()
                .next()
                .map(|c| Value::Str(c.into()))
                .unwrap_or(Value::Nil),
            _ => Value::Nil,
        },
        "last" => match v {
            Value::List(l) => l.into_iter().last().unwrap_or(Value::Nil),
            Value::Str(s) => s
                .chars()
                .last()
                .map(|c| Value::Str(c.into()))
                .unwrap_or(Value::Nil),
            _ => Value::Nil,
        },
        "safe" | "escape" | "e" => v, // autoescape is off in LXD templates
        "trim" => Value::Str(s().trim().to_string()),
        "integer" => Value::Int(as_int(&v).unwrap_or(0)),
        "string" => Value::Str(s()),
        other => return Err(format!("unknown filter {other:?}")),
    })
}

/// The context the fuzz target renders with: an instance with config keys, a nic and a disk.
fn fuzz_vars() -> Value {
    let config: api::StringMap = [
        ("user.meta-data", "#cloud-config\nlocal-hostname: c1\n"),
        ("user.network_mode", "link-local"),
        ("limits.cpu", "2"),
        ("security.nesting", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let dev = |kv: &[(&str, &str)]| -> api::StringMap {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut devices = api::Devices::new();
    devices.insert(
        "eth0".into(),
        dev(&[("type", "nic"), ("network", "lxdbr0"), ("name", "eth0")]),
    );
    devices.insert(
        "root".into(),
        dev(&[("type", "disk"), ("path", "/"), ("pool", "default")]),
    );
    let ctx = Context {
        name: "c1".into(),
        architecture: "x86_64".into(),
        privileged: false,
        ephemeral: false,
        config,
        devices,
    };
    let props = [("default".to_string(), "#cloud-config\n{}".to_string())]
        .into_iter()
        .collect();
    variables(&ctx, "create", "/etc/hostname", &props)
}

/// Fuzzing entry point (`tests/fuzz` target `template`, and the deterministic test): the bytes as
/// an image's template file (invalid UTF-8 replaced, as the file must be text), compiled and
/// rendered for a container. Must never panic.
#[doc(hidden)]
pub fn fuzz_template(data: &[u8]) {
    let src = String::from_utf8_lossy(data);
    if let Ok(t) = Template::compile("fuzz.tpl", &src) {
        let _ = t.render(&fuzz_vars());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Value {
        let mut config = api::StringMap::new();
        config.insert("user.meta-data".into(), "meta\n".into());
        config.insert("limits.cpu".into(), "2".into());
        let mut devices = api::Devices::new();
        devices.insert(
            "eth0".into(),
            [("type".to_string(), "nic".to_string())]
                .into_iter()
                .collect(),
        );
        let c = Context {
            name: "c1".into(),
            architecture: "x86_64".into(),
            privileged: false,
            ephemeral: true,
            config,
            devices,
        };
        let props = [("default".to_string(), "#cloud-config\n{}".to_string())]
            .into_iter()
            .collect();
        variables(&c, "create", "/etc/hostname", &props)
    }

    #[test]
    fn renders_table() {
        let cases: &[(&str, &str)] = &[
            ("plain text\n", "plain text\n"),
            ("{{ container.name }}\n", "c1\n"),
            ("{{ instance.name }}.{{ instance.type }}", "c1.container"),
            ("{{ instance.ephemeral }} {{ instance.privileged }}", "true false"),
            ("{{ trigger }} {{ path }}", "create /etc/hostname"),
            ("{{ container.name|upper }}", "C1"),
            ("{{ \"Hello\"|lower }}", "hello"),
            ("{{ \"hello world\"|capfirst }}", "Hello world"),
            ("{{ missing|default:\"dflt\" }}", "dflt"),
            ("{{ missing }}", ""),
            ("{{ container.name|length }}", "2"),
            ("{{ config_get(\"user.meta-data\", \"\") }}|", "meta|"),
            ("{{ config_get(\"user.user-data\", properties.default) }}", "#cloud-config\n{}"),
            ("{% if config_get(\"user.meta-data\", \"\") == \"\" %}empty{% else %}set{% endif %}", "set"),
            ("{% if config_get(\"user.nope\", \"\") == \"\" %}empty{% endif %}", "empty"),
            ("{% if instance.type == \"virtual-machine\" %}vm{% elif instance.type == \"container\" %}ct{% else %}?{% endif %}", "ct"),
            ("{% if not missing and trigger != \"copy\" %}yes{% endif %}", "yes"),
            ("{% if missing or 0 %}a{% else %}b{% endif %}", "b"),
            ("{% if config_get(\"limits.cpu\", \"1\") > 1 %}many{% endif %}", "many"),
            ("{% if \"eth0\" in devices %}nic{% endif %}", "nic"),
            ("{{ devices.eth0.type }}", "nic"),
            ("{{ config[\"limits.cpu\"] }}", "2"),
            ("{% for k, v in devices %}{{ k }}={{ v.type }}{% endfor %}", "eth0=nic"),
            ("{% for x in missing %}x{% empty %}none{% endfor %}", "none"),
            ("{% for c in \"ab\" %}{{ forloop.Counter }}{{ c }}{% if not forloop.Last %},{% endif %}{% endfor %}", "1a,2b"),
            ("a {# comment #}b", "a b"),
            ("a\n  {%- if true -%}\n  b\n{%- endif %}", "ab"),
            ("x  {{- \"y\" -}}  z", "xyz"),
            ("{% autoescape off %}<{{ \"&\" }}>{% endautoescape %}", "<&>"),
            ("{{ 1 + 2 }} {{ \"a\" + \"b\" }}", "3 ab"),
            ("{{ \"it's\"|safe|escape }}", "it's"),
        ];
        let vars = ctx();
        for (src, want) in cases {
            let got = render("t.tpl", src, &vars).unwrap_or_else(|e| panic!("{src:?}: {e}"));
            assert_eq!(&got, want, "{src:?}");
        }
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("line1\nline2 {{ container.name\n", 2, "unterminated {{"),
            ("a\nb\n{% if x %}\nc\n", 3, "without {% endif %}"),
            ("\n\n\n{{ x|frobnicate }}", 4, "unknown filter"),
            ("{% bogus %}", 1, "unknown or unexpected tag"),
            ("\n{{ a == }}", 2, "expected an expression"),
            ("\n\n{{ nope(1) }}", 3, "unknown function"),
            ("{% endif %}", 1, "unexpected tag"),
        ];
        for (src, line, msg) in cases {
            let e = render("broken.tpl", src, &ctx()).expect_err(src);
            assert_eq!(e.file, "broken.tpl");
            assert_eq!(e.line, *line, "{src:?}: {e}");
            assert!(e.msg.contains(msg), "{src:?}: {e}");
            assert!(e
                .to_string()
                .starts_with(&format!("template broken.tpl line {line}: ")));
        }
    }

    #[test]
    fn escapes_any_character() {
        // A backslash before a character of several bytes: the tokenizer stepped into the middle
        // of it and panicked (found by the `template` fuzz target; an image's template could
        // abort the daemon).
        let got = render("t.tpl", "{{ \"\\é\\n\\\"x\" }}|{{ 'a\\€' }}", &ctx()).unwrap();
        assert_eq!(got, "é\n\"x|a€");
        let crash = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fuzz/corpus/template/crash_escaped_multibyte"),
        )
        .unwrap();
        fuzz_template(&crash);
    }

    /// Render `src` on a thread with the stack the daemon's operations get (2 MiB): a stack
    /// overflow would abort the test binary.
    fn render_on_small_stack(src: String) -> Result<String, TemplateError> {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || render("big.tpl", &src, &ctx()))
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn hostile_templates_are_bounded() {
        let long = "x".repeat(100);
        let cases: Vec<(String, &str)> = vec![
            // Recursion in the parser, the evaluator and the drop of an expression.
            (
                format!("{{{{ {}1{} }}}}", "(".repeat(50_000), ")".repeat(50_000)),
                "longer than 256 tokens",
            ),
            (
                format!("{{{{ {}1{} }}}}", "(".repeat(40), ")".repeat(40)),
                "nested deeper than 32 levels",
            ),
            (
                format!("{{{{ {}true }}}}", "not ".repeat(40)),
                "nested deeper than 32 levels",
            ),
            (
                format!("{{{{ 1{} }}}}", " + 1".repeat(50_000)),
                "longer than 256 tokens",
            ),
            (
                format!(
                    "{}x{}",
                    "{% if 1 %}".repeat(50_000),
                    "{% endif %}".repeat(50_000)
                ),
                "blocks nested deeper than 32 levels",
            ),
            // Loops that multiply: 100^4 turns, and 100^3 turns of 100 bytes.
            (
                format!(
                    "{}{}",
                    "{% for c in \"LONG\" %}".repeat(4).replace("LONG", &long),
                    "{% endfor %}".repeat(4)
                ),
                "more than 1000000 steps",
            ),
            (
                format!(
                    "{}{long}{}",
                    "{% for c in \"LONG\" %}".repeat(3).replace("LONG", &long),
                    "{% endfor %}".repeat(3)
                ),
                "renders more than 16 MiB",
            ),
        ];
        for (src, want) in cases {
            let t = std::time::Instant::now();
            let e = render_on_small_stack(src.clone()).expect_err(&src[..80.min(src.len())]);
            assert!(e.msg.contains(want), "{e}");
            assert!(t.elapsed().as_secs() < 10, "{want}: {:?}", t.elapsed());
        }
        // What real templates do stays well inside: nested loops over the devices and config.
        let ok = "{% for k, v in devices %}{% for c in k %}{% if c == \"e\" %}{{ (k|upper) + v.type }}{% endif %}{% endfor %}{% endfor %}";
        assert_eq!(render_on_small_stack(ok.into()).unwrap(), "ETH0nic");
    }

    #[test]
    fn fuzz_template_deterministic() {
        let tokens: &[&[u8]] = &[
            b"{{",
            b"}}",
            b"{%",
            b"%}",
            b"{#",
            b"#}",
            b"-",
            b"{{ container.name }}",
            b"{% if x %}",
            b"{% elif y %}",
            b"{% else %}",
            b"{% endif %}",
            b"{% for k, v in devices %}",
            b"{% for c in \"abc\" %}",
            b"{% empty %}",
            b"{% endfor %}",
            b"{% autoescape off %}",
            b"{% endautoescape %}",
            b"config_get(\"user.meta-data\", \"\")",
            b"|default:\"x\"",
            b"|title",
            b"|join:\",\"",
            b"|integer",
            b"forloop.Counter",
            b"[\"eth0\"]",
            b" not in ",
            b" and ",
            b" or ",
            b"((((",
            b"9223372036854775807",
            b"-",
            b"\"\\",
            b"\xc3\xa9",
        ];
        crate::http::fuzz::tests::fuzz_corpus_and_mutations(
            "template",
            0xbb67_ae85_84ca_a73b,
            tokens,
            fuzz_template,
        );
    }
}
