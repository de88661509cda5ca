//! Header match expressions: parsed once, evaluated per message.
//!
//! # Grammar
//! ```text
//! expr    = and { ("||" | "or") and }
//! and     = unary { ("&&" | "and") unary }
//! unary   = ("!" | "not") unary | primary
//! primary = "(" expr ")"
//!         | "exists" "(" name ")"
//!         | name ("==" | "=") value
//!         | name ("!=" | "<>") value
//!         | name ["not"] "in" "(" value { "," value } ")"
//! name    = identifier | `back-quoted`
//! value   = "double quoted" | 'single quoted' | number
//! ```
//! Keywords (`and`, `or`, `not`, `in`, `exists`) are case-insensitive. An identifier starts
//! with a letter or `_` and goes on with letters, digits, `_`, `-`, `.` and `:`, so
//! `content-type` and `x.region` are names; a header named like a keyword, or with other
//! characters, is written in back quotes. Strings take `\"`, `\'` and `\\` escapes. A number
//! (`5`, `-1.5`) is taken as its text: values always compare as strings, exactly.
//!
//! # Semantics
//! A header's value is its first occurrence. A missing header compares as not equal to
//! everything: `h == v` and `h in (...)` are false, `h != v` and `h not in (...)` are true.
//! `exists(h)` is true when the header is present, even with an empty value. `&&` and `||`
//! short-circuit, and each header is read from the host at most once per message.

use std::fmt;

/// Deepest nesting of parentheses and `!` accepted, so that evaluation cannot exhaust the
/// guest's stack.
const MAX_DEPTH: usize = 64;

/// A parsed expression, with the header names it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    root: Node,
    /// Distinct header names, indexed by `Node`'s `name` fields.
    names: Vec<String>,
    /// Per name: read by more than one node, so fetched once and compared in the plugin.
    /// A name read by one node is compared by the host instead (`header-eq`,
    /// `header-index`, `has-header`), which copies nothing into the plugin.
    shared: Vec<bool>,
}

/// How an expression reads a message's headers: the first value of a name. The comparing
/// methods let a host answer without handing the value over; by default they fetch it.
pub trait Headers {
    fn get(&self, name: &str) -> Option<String>;

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn eq(&self, name: &str, value: &str) -> bool {
        self.get(name).is_some_and(|v| v == value)
    }

    fn index(&self, name: &str, values: &[String]) -> Option<usize> {
        let found = self.get(name)?;
        values.iter().position(|v| *v == found)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Or(Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Exists { name: usize },
    Eq { name: usize, value: String },
    In { name: usize, values: Vec<String> },
}

/// Why an expression did not parse, and where (1-based character column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "syntax error at column {}: {}",
            self.column, self.message
        )
    }
}

impl Expr {
    /// Parses `src`.
    pub fn parse(src: &str) -> Result<Expr, SyntaxError> {
        let tokens = lex(src)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            depth: 0,
            names: Vec::new(),
            uses: Vec::new(),
        };
        let root = parser.or()?;
        let shared = parser.uses.iter().map(|&n| n > 1).collect();
        let end = parser.peek();
        if end.kind != Kind::End {
            return Err(end.error(format!(
                "expected `&&`, `||` or the end, found {}",
                end.kind
            )));
        }
        Ok(Expr {
            root,
            names: parser.names,
            shared,
        })
    }

    /// Evaluates against a message's headers. Each distinct name is read from `headers` at
    /// most once: by one comparing call when one node reads it, else by one `get`.
    pub fn eval(&self, headers: &impl Headers) -> bool {
        let mut eval = Eval {
            expr: self,
            headers,
            fetched: Vec::new(),
        };
        eval.node(&self.root)
    }
}

/// One evaluation: the values of shared names, fetched on first use.
struct Eval<'a, H> {
    expr: &'a Expr,
    headers: &'a H,
    /// Indexed by name; empty until a shared name is first read.
    fetched: Vec<Option<Option<String>>>,
}

impl<H: Headers> Eval<'_, H> {
    fn node(&mut self, node: &Node) -> bool {
        match node {
            Node::Or(a, b) => self.node(a) || self.node(b),
            Node::And(a, b) => self.node(a) && self.node(b),
            Node::Not(a) => !self.node(a),
            Node::Exists { name } => match self.shared(*name) {
                Some(value) => value.is_some(),
                None => self.headers.has(&self.expr.names[*name]),
            },
            Node::Eq { name, value } => match self.shared(*name) {
                Some(found) => found.is_some_and(|v| v == value),
                None => self.headers.eq(&self.expr.names[*name], value),
            },
            Node::In { name, values } => match self.shared(*name) {
                Some(found) => found.is_some_and(|v| values.iter().any(|x| x == v)),
                None => self
                    .headers
                    .index(&self.expr.names[*name], values)
                    .is_some(),
            },
        }
    }

    /// The value of a shared name (fetched once), or `None` when the name is not shared.
    fn shared(&mut self, name: usize) -> Option<Option<&str>> {
        if !self.expr.shared[name] {
            return None;
        }
        if self.fetched.is_empty() {
            self.fetched = vec![None; self.expr.names.len()];
        }
        let (names, headers) = (&self.expr.names, self.headers);
        let value = self.fetched[name].get_or_insert_with(|| headers.get(&names[name]));
        Some(value.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Name(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    Eq,
    NotEq,
    And,
    Or,
    Not,
    In,
    Exists,
    End,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Name(n) => write!(f, "name `{n}`"),
            Kind::Str(s) => write!(f, "string {s:?}"),
            Kind::LParen => f.write_str("`(`"),
            Kind::RParen => f.write_str("`)`"),
            Kind::Comma => f.write_str("`,`"),
            Kind::Eq => f.write_str("`==`"),
            Kind::NotEq => f.write_str("`!=`"),
            Kind::And => f.write_str("`&&`"),
            Kind::Or => f.write_str("`||`"),
            Kind::Not => f.write_str("`!`"),
            Kind::In => f.write_str("`in`"),
            Kind::Exists => f.write_str("`exists`"),
            Kind::End => f.write_str("the end"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    column: usize,
}

impl Token {
    fn error(&self, message: String) -> SyntaxError {
        SyntaxError {
            column: self.column,
            message,
        }
    }
}

fn lex(src: &str) -> Result<Vec<Token>, SyntaxError> {
    let chars: Vec<char> = src.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let err = |message: String| SyntaxError { column, message };
        let next = chars.get(i + 1).copied();
        let (kind, len) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('(', _) => (Kind::LParen, 1),
            (')', _) => (Kind::RParen, 1),
            (',', _) => (Kind::Comma, 1),
            ('=', Some('=')) => (Kind::Eq, 2),
            ('=', _) => (Kind::Eq, 1),
            ('!', Some('=')) | ('<', Some('>')) => (Kind::NotEq, 2),
            ('!', _) => (Kind::Not, 1),
            ('&', Some('&')) => (Kind::And, 2),
            ('|', Some('|')) => (Kind::Or, 2),
            ('"' | '\'', _) => lex_string(&chars, i).map_err(err)?,
            ('`', _) => lex_quoted_name(&chars, i).map_err(err)?,
            (c, Some(n)) if matches!(c, '-' | '+') && n.is_ascii_digit() => lex_number(&chars, i),
            (c, _) if c.is_ascii_digit() => lex_number(&chars, i),
            (c, _) if c.is_alphabetic() || c == '_' => lex_word(&chars, i),
            (c, _) => return Err(err(format!("unexpected character {c:?}"))),
        };
        tokens.push(Token { kind, column });
        i += len;
    }
    tokens.push(Token {
        kind: Kind::End,
        column: chars.len() + 1,
    });
    Ok(tokens)
}

fn lex_string(chars: &[char], start: usize) -> Result<(Kind, usize), String> {
    let quote = chars[start];
    let mut value = String::new();
    let mut i = start + 1;
    while let Some(&c) = chars.get(i) {
        match c {
            '\\' => match chars.get(i + 1) {
                Some(&e @ ('"' | '\'' | '\\')) => {
                    value.push(e);
                    i += 2;
                }
                Some(e) => return Err(format!("unknown escape `\\{e}` in string")),
                None => break,
            },
            c if c == quote => return Ok((Kind::Str(value), i + 1 - start)),
            c => {
                value.push(c);
                i += 1;
            }
        }
    }
    Err("string is not closed".to_owned())
}

fn lex_quoted_name(chars: &[char], start: usize) -> Result<(Kind, usize), String> {
    let rest = &chars[start + 1..];
    let Some(len) = rest.iter().position(|&c| c == '`') else {
        return Err("back-quoted name is not closed".to_owned());
    };
    if len == 0 {
        return Err("empty header name".to_owned());
    }
    Ok((Kind::Name(rest[..len].iter().collect()), len + 2))
}

fn lex_number(chars: &[char], start: usize) -> (Kind, usize) {
    let len = chars[start..]
        .iter()
        .enumerate()
        .take_while(|&(j, &c)| c.is_ascii_digit() || c == '.' || (j == 0 && (c == '-' || c == '+')))
        .count();
    (Kind::Str(chars[start..start + len].iter().collect()), len)
}

fn lex_word(chars: &[char], start: usize) -> (Kind, usize) {
    let len = chars[start..]
        .iter()
        .take_while(|&&c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        .count();
    let word: String = chars[start..start + len].iter().collect();
    let kind = match word.to_ascii_lowercase().as_str() {
        "and" => Kind::And,
        "or" => Kind::Or,
        "not" => Kind::Not,
        "in" => Kind::In,
        "exists" => Kind::Exists,
        _ => Kind::Name(word),
    };
    (kind, len)
}

fn at(column: usize, message: String) -> SyntaxError {
    SyntaxError { column, message }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    names: Vec<String>,
    /// How many nodes read each name.
    uses: Vec<u32>,
}

impl Parser {
    fn peek(&self) -> &Token {
        // `lex` always ends the list with `End`, and `bump` never moves past it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != Kind::End {
            self.pos += 1;
        }
        token
    }

    fn expect(&mut self, kind: Kind, what: &str) -> Result<(), SyntaxError> {
        let token = self.bump();
        if token.kind == kind {
            return Ok(());
        }
        Err(token.error(format!("expected {what}, found {}", token.kind)))
    }

    fn or(&mut self) -> Result<Node, SyntaxError> {
        let mut node = self.and()?;
        while self.peek().kind == Kind::Or {
            self.bump();
            node = Node::Or(Box::new(node), Box::new(self.and()?));
        }
        Ok(node)
    }

    fn and(&mut self) -> Result<Node, SyntaxError> {
        let mut node = self.unary()?;
        while self.peek().kind == Kind::And {
            self.bump();
            node = Node::And(Box::new(node), Box::new(self.unary()?));
        }
        Ok(node)
    }

    fn unary(&mut self) -> Result<Node, SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self
                .peek()
                .error(format!("nested more than {MAX_DEPTH} levels deep")));
        }
        let node = if self.peek().kind == Kind::Not {
            self.bump();
            Node::Not(Box::new(self.unary()?))
        } else {
            self.primary()?
        };
        self.depth -= 1;
        Ok(node)
    }

    fn primary(&mut self) -> Result<Node, SyntaxError> {
        let Token { kind, column } = self.bump();
        match kind {
            Kind::LParen => {
                let node = self.or()?;
                self.expect(Kind::RParen, "`)`")?;
                Ok(node)
            }
            Kind::Exists => {
                self.expect(Kind::LParen, "`(` after `exists`")?;
                let name = self.name()?;
                self.expect(Kind::RParen, "`)`")?;
                Ok(Node::Exists { name })
            }
            Kind::Name(name) => {
                let name = self.intern(name);
                self.comparison(name)
            }
            other => Err(at(
                column,
                format!("expected a header name, `exists`, `!` or `(`, found {other}"),
            )),
        }
    }

    fn comparison(&mut self, name: usize) -> Result<Node, SyntaxError> {
        let Token { kind, column } = self.bump();
        match kind {
            Kind::Eq => Ok(Node::Eq {
                name,
                value: self.value("`==`")?,
            }),
            Kind::NotEq => Ok(Node::Not(Box::new(Node::Eq {
                name,
                value: self.value("`!=`")?,
            }))),
            Kind::In => self.list(name),
            Kind::Not => {
                self.expect(Kind::In, "`in` after `not`")?;
                Ok(Node::Not(Box::new(self.list(name)?)))
            }
            other => Err(at(
                column,
                format!("expected `==`, `!=`, `in` or `not in` after a header name, found {other}"),
            )),
        }
    }

    fn list(&mut self, name: usize) -> Result<Node, SyntaxError> {
        self.expect(Kind::LParen, "`(` after `in`")?;
        let mut values = vec![self.value("`(`")?];
        while self.peek().kind == Kind::Comma {
            self.bump();
            values.push(self.value("`,`")?);
        }
        self.expect(Kind::RParen, "`,` or `)`")?;
        Ok(Node::In { name, values })
    }

    fn name(&mut self) -> Result<usize, SyntaxError> {
        let Token { kind, column } = self.bump();
        match kind {
            Kind::Name(name) => Ok(self.intern(name)),
            other => Err(at(column, format!("expected a header name, found {other}"))),
        }
    }

    fn value(&mut self, after: &str) -> Result<String, SyntaxError> {
        let Token { kind, column } = self.bump();
        match kind {
            Kind::Str(value) => Ok(value),
            other => Err(at(
                column,
                format!("expected a quoted string or a number after {after}, found {other}"),
            )),
        }
    }

    fn intern(&mut self, name: String) -> usize {
        if let Some(i) = self.names.iter().position(|n| *n == name) {
            self.uses[i] += 1;
            return i;
        }
        self.uses.push(1);
        self.names.push(name);
        self.names.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::cell::RefCell;

    /// Headers that count the reads of each name.
    struct Counted<'a> {
        headers: &'a [(&'a str, &'a str)],
        reads: RefCell<Vec<String>>,
    }

    impl<'a> Counted<'a> {
        fn new(headers: &'a [(&'a str, &'a str)]) -> Self {
            Counted {
                headers,
                reads: RefCell::new(Vec::new()),
            }
        }
    }

    impl Headers for Counted<'_> {
        fn get(&self, name: &str) -> Option<String> {
            self.reads.borrow_mut().push(format!("get {name}"));
            let mut headers = self.headers.iter();
            headers
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }

        fn eq(&self, name: &str, value: &str) -> bool {
            self.reads.borrow_mut().push(format!("eq {name}"));
            let mut headers = self.headers.iter();
            headers
                .find(|(n, _)| *n == name)
                .is_some_and(|(_, v)| *v == value)
        }
    }

    fn matches(src: &str, headers: &[(&str, &str)]) -> bool {
        let expr = Expr::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        expr.eval(&Counted::new(headers))
    }

    fn error(src: &str) -> String {
        Expr::parse(src).expect_err(src).to_string()
    }

    #[test]
    fn equality_and_membership() {
        let h = [("type", "invoice"), ("region", "eu")];
        assert!(matches(r#"type == "invoice" && region in ("eu","us")"#, &h));
        assert!(!matches(r#"type == "invoice" && region in ("us")"#, &h));
        assert!(matches(r#"region not in ("us", "ap")"#, &h));
        assert!(matches(r#"type != "order""#, &h));
        assert!(matches("type = 'invoice' AND region <> 'us'", &h));
    }

    #[test]
    fn missing_header_compares_as_not_equal() {
        let h = [("type", "invoice")];
        assert!(!matches(r#"region == "eu""#, &h));
        assert!(matches(r#"region != "eu""#, &h));
        assert!(!matches(r#"region in ("eu")"#, &h));
        assert!(matches(r#"region not in ("eu")"#, &h));
        assert!(!matches("exists(region)", &h));
        assert!(matches("exists(type) && !exists(region)", &h));
    }

    #[test]
    fn empty_value_exists() {
        assert!(matches("exists(x)", &[("x", "")]));
        assert!(matches(r#"x == """#, &[("x", "")]));
    }

    #[test]
    fn precedence_and_parentheses() {
        let h = [("a", "1"), ("b", "2")];
        // && binds tighter than ||.
        assert!(matches(r#"a == "9" && b == "9" || a == "1""#, &h));
        assert!(!matches(r#"a == "9" && (b == "9" || a == "1")"#, &h));
        assert!(matches(r#"!(a == "9") && not b == "3""#, &h));
        assert!(matches("!!exists(a)", &h));
    }

    #[test]
    fn numbers_compare_as_their_text() {
        assert!(matches("priority == 5", &[("priority", "5")]));
        assert!(!matches("priority == 5", &[("priority", "05")]));
        assert!(matches("delta in (-1, 2.5)", &[("delta", "-1")]));
    }

    #[test]
    fn names_with_punctuation_and_back_quotes() {
        let h = [("content-type", "json"), ("in", "x"), ("x.region", "eu")];
        assert!(matches(r#"content-type == "json""#, &h));
        assert!(matches(r#"`in` == "x" && x.region == "eu""#, &h));
    }

    #[test]
    fn escapes_in_strings() {
        assert!(matches(r#"q == "say \"hi\"""#, &[("q", "say \"hi\"")]));
        assert!(matches(r"q == 'a\\b'", &[("q", r"a\b")]));
    }

    #[test]
    fn each_header_is_read_once() {
        let expr = Expr::parse(r#"a == "1" || a == "2" || a in ("3") || exists(a)"#).unwrap();
        let headers = Counted::new(&[("a", "3")]);
        assert!(expr.eval(&headers));
        assert_eq!(
            headers.reads.into_inner(),
            ["get a"],
            "a shared name is fetched once"
        );

        let expr = Expr::parse(r#"a == "1" || b == "2" || b == "3""#).unwrap();
        let headers = Counted::new(&[("a", "1")]);
        assert!(expr.eval(&headers));
        assert_eq!(
            headers.reads.into_inner(),
            ["eq a"],
            "a name read once is compared"
        );
        let headers = Counted::new(&[("b", "3")]);
        assert!(expr.eval(&headers));
        assert_eq!(headers.reads.into_inner(), ["eq a", "get b"]);
    }

    #[test]
    fn syntax_errors_name_the_column() {
        assert_eq!(
            error(r#"type == "invoice" &&"#),
            "syntax error at column 21: expected a header name, `exists`, `!` or `(`, found the end"
        );
        assert_eq!(
            error(r#"type = = "x""#),
            "syntax error at column 8: expected a quoted string or a number after `==`, found `==`"
        );
        assert_eq!(
            error(r#"type == "x"#),
            "syntax error at column 9: string is not closed"
        );
        assert_eq!(
            error(r#"region in ("eu" "us")"#),
            "syntax error at column 17: expected `,` or `)`, found string \"us\""
        );
        assert_eq!(
            error(r#"(a == "1""#),
            "syntax error at column 10: expected `)`, found the end"
        );
        assert_eq!(
            error(r#"a == "1" b"#),
            "syntax error at column 10: expected `&&`, `||` or the end, found name `b`"
        );
        assert_eq!(
            error("a ~ 1"),
            "syntax error at column 3: unexpected character '~'"
        );
        assert_eq!(
            error(""),
            "syntax error at column 1: expected a header name, `exists`, `!` or `(`, found the end"
        );
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}exists(a){}", "(".repeat(100), ")".repeat(100));
        assert!(error(&deep).contains("nested more than 64 levels deep"));
        let ok = format!("{}exists(a){}", "(".repeat(50), ")".repeat(50));
        assert!(matches(&ok, &[("a", "")]));
    }
}
