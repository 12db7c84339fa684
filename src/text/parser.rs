//! The `.bnn` parser (nom 8): source text to [`ast::File`](super::ast::File).
//!
//! The grammar is in `ir-spec/language.md`; each function below carries its rule.
//! The language is LL(1) after whitespace, so the parser never backtracks over a
//! committed production: every error is final (a nom `Failure`) and points at
//! the first token that does not fit, with what was expected there.
//!
//! Offsets: every input slice is a suffix of the whole source, so a position is
//! `source.len() - rest.len()`; spans need no located-input wrapper.

use nom::branch::alt;
use nom::bytes::complete::{tag, take_while, take_while1};
use nom::character::complete::{char, digit1, one_of};
use nom::combinator::{opt, recognize};
use nom::{IResult, Parser as _};

use super::ast::*;

/// Expressions nest at most this deep; deeper input is rejected instead of
/// overflowing the stack.
pub const MAX_DEPTH: usize = 64;

/// Words with a meaning of their own; not usable as names, though a dotted
/// name may contain them (`input.scale`, `a.choose`).
pub const KEYWORDS: [&str; 6] = ["model", "cell", "input", "output", "return", "choose"];

/// A syntax error: where, and what was expected there.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntaxError {
    /// Byte span of the offending token.
    pub span: Span,
    /// The message, e.g. "expected `)` or `,`, found `=`".
    pub message: String,
    /// A short label for the caret.
    pub label: String,
    /// A related place, such as the bracket still open when the error is on a
    /// later line.
    pub secondary: Option<(Span, String)>,
}

/// nom's error type for this parser: the remaining input length, a message and
/// an optional related span.
#[derive(Clone, Debug, PartialEq)]
pub struct PErr {
    remaining: usize,
    expected: String,
    secondary: Option<(Span, String)>,
}

impl<'a> nom::error::ParseError<&'a str> for PErr {
    fn from_error_kind(input: &'a str, kind: nom::error::ErrorKind) -> Self {
        PErr {
            remaining: input.len(),
            expected: format!("{kind:?}"),
            secondary: None,
        }
    }

    fn append(_: &'a str, _: nom::error::ErrorKind, other: Self) -> Self {
        other
    }

    fn or(self, other: Self) -> Self {
        // Keep whichever got further.
        if other.remaining < self.remaining {
            other
        } else {
            self
        }
    }
}

type PResult<'a, T> = IResult<&'a str, T, PErr>;

/// Parses a whole file.
pub fn parse_file(source: &str) -> Result<File, SyntaxError> {
    let p = Parser { source };
    match p.file(source) {
        Ok((_, file)) => Ok(file),
        Err(nom::Err::Error(e) | nom::Err::Failure(e)) => Err(p.syntax_error(source, e)),
        Err(nom::Err::Incomplete(_)) => Err(SyntaxError {
            span: Span::new(source.len(), source.len()),
            message: "unexpected end of file".into(),
            label: "the file ends here".into(),
            secondary: None,
        }),
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_continue(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Skips whitespace and `#` comments.
fn skip(mut i: &str) -> &str {
    loop {
        let trimmed = i.trim_start();
        if let Some(rest) = trimmed.strip_prefix('#') {
            i = rest.find('\n').map_or("", |n| &rest[n..]);
        } else {
            return trimmed;
        }
    }
}

/// IDENT = [A-Za-z_] [A-Za-z0-9_]*
fn ident_lexeme(i: &str) -> PResult<'_, &str> {
    recognize((take_while1(is_ident_start), take_while(is_ident_continue))).parse(i)
}

/// NUMBER = "-"? DIGITS ("." DIGITS)? ([eE] [+-]? DIGITS)?
fn number_lexeme(i: &str) -> PResult<'_, &str> {
    recognize((
        opt(char('-')),
        digit1,
        opt((char('.'), digit1)),
        opt((one_of("eE"), opt(one_of("+-")), digit1)),
    ))
    .parse(i)
}

/// NAME = IDENT ("." (IDENT | DIGITS))*
fn name_lexeme(i: &str) -> PResult<'_, &str> {
    recognize((
        ident_lexeme,
        nom::multi::many0((char('.'), alt((ident_lexeme, digit1)))),
    ))
    .parse(i)
}

/// Describes the token at the start of `i`, for "found ..." in messages.
fn describe(i: &str) -> String {
    if i.is_empty() {
        return "end of file".into();
    }
    if let Ok((_, t)) = name_lexeme(i) {
        return format!("`{t}`");
    }
    if let Ok((_, t)) = number_lexeme(i) {
        return format!("`{t}`");
    }
    match i.chars().next() {
        Some(c) if c.is_control() => format!("{c:?}"),
        Some(c) => format!("`{c}`"),
        None => "end of file".into(),
    }
}

/// Byte length of the token at the start of `i` (at least one character).
fn token_len(i: &str) -> usize {
    name_lexeme(i)
        .or_else(|_| number_lexeme(i))
        .map(|(_, t)| t.len())
        .unwrap_or_else(|_| i.chars().next().map_or(0, char::len_utf8))
}

struct Parser<'s> {
    /// The whole source; every input slice is a suffix of it.
    source: &'s str,
}

impl Parser<'_> {
    fn pos(&self, i: &str) -> usize {
        self.source.len() - i.len()
    }

    fn span(&self, start: &str, rest: &str) -> Span {
        Span::new(self.pos(start), self.pos(rest))
    }

    fn syntax_error(&self, source: &str, e: PErr) -> SyntaxError {
        let at = &source[source.len() - e.remaining..];
        let start = self.pos(at);
        SyntaxError {
            span: Span::new(start, start + token_len(at)),
            message: format!("expected {}, found {}", e.expected, describe(at)),
            label: format!("expected {}", e.expected),
            secondary: e.secondary,
        }
    }

    /// A committed failure at `i` (after whitespace).
    fn fail<T>(&self, i: &str, expected: impl Into<String>) -> PResult<'static, T> {
        Err(self.failure(i, expected))
    }

    /// The error of [`fail`](Self::fail).
    fn failure(&self, i: &str, expected: impl Into<String>) -> nom::Err<PErr> {
        nom::Err::Failure(PErr {
            remaining: skip(i).len(),
            expected: expected.into(),
            secondary: None,
        })
    }

    /// A committed failure at `i` inside the bracket at `open`, which must still
    /// be closed. When the failure is on a later line than the bracket, the
    /// bracket is shown too: the usual cause is that it was never closed.
    fn fail_inside<T>(
        &self,
        i: &str,
        expected: impl Into<String>,
        open: usize,
    ) -> PResult<'static, T> {
        let at = self.pos(skip(i));
        let bracket = &self.source[open..open + 1];
        let secondary = self.source[open..at].contains('\n').then(|| {
            (
                Span::new(open, open + 1),
                format!("this `{bracket}` is still open"),
            )
        });
        Err(nom::Err::Failure(PErr {
            remaining: skip(i).len(),
            expected: expected.into(),
            secondary,
        }))
    }

    /// The rest of a bracketed, comma-separated list whose opening bracket
    /// (at byte `open`) is consumed: `[ item { "," item } [","] ] close`.
    /// An empty list fails with `empty`, when given, as what was expected.
    fn list<'a, T>(
        &self,
        mut i: &'a str,
        open: usize,
        close: &str,
        empty: Option<&str>,
        mut item: impl FnMut(&'a str) -> PResult<'a, T>,
    ) -> PResult<'a, Vec<T>> {
        let mut items = Vec::new();
        loop {
            let (rest, closed) = self.accept(i, close);
            if closed {
                return match empty {
                    Some(what) if items.is_empty() => self.fail(i, what),
                    _ => Ok((rest, items)),
                };
            }
            let (rest, x) = item(i)?;
            items.push(x);
            let (rest, comma) = self.accept(rest, ",");
            i = rest;
            if !comma {
                let (rest, _) = self
                    .expect(i, close)
                    .or_else(|_| self.fail_inside(i, format!("`,` or `{close}`"), open))?;
                return Ok((rest, items));
            }
        }
    }

    /// Whether the next token is the punctuation or keyword `t`.
    fn peek(&self, i: &str, t: &str) -> bool {
        let i = skip(i);
        if !i.starts_with(t) {
            return false;
        }
        // A keyword must not run on into a longer identifier or a dotted name
        // (`input.scale` is a name).
        let is_word = t.chars().all(is_ident_continue);
        !(is_word && i[t.len()..].starts_with(|c: char| is_ident_continue(c) || c == '.'))
    }

    /// Consumes the token `t` or fails, expecting `t`.
    fn expect<'a>(&self, i: &'a str, t: &str) -> PResult<'a, ()> {
        if self.peek(i, t) {
            let i = skip(i);
            let (rest, _) = tag::<_, _, PErr>(t).parse(i)?;
            Ok((rest, ()))
        } else {
            self.fail(i, format!("`{t}`"))
        }
    }

    /// Consumes `t` if it is next.
    fn accept<'a>(&self, i: &'a str, t: &str) -> (&'a str, bool) {
        if self.peek(i, t) {
            (&skip(i)[t.len()..], true)
        } else {
            (i, false)
        }
    }

    /// An undotted identifier that is not a keyword; `what` names it in errors.
    fn ident<'a>(&self, i: &'a str, what: &str) -> PResult<'a, Ident> {
        let start = skip(i);
        let Ok((rest, name)) = ident_lexeme(start) else {
            return self.fail(i, what);
        };
        if rest.starts_with('.') {
            return self.fail(
                rest,
                format!("the end of {what} (dots are not allowed here)"),
            );
        }
        if KEYWORDS.contains(&name) {
            return self.fail(i, format!("{what} (`{name}` is a keyword)"));
        }
        Ok((
            rest,
            Ident {
                name: name.to_string(),
                span: self.span(start, rest),
            },
        ))
    }

    /// A possibly dotted name that is not a keyword.
    fn name<'a>(&self, i: &'a str, what: &str) -> PResult<'a, Ident> {
        let start = skip(i);
        let Ok((rest, name)) = name_lexeme(start) else {
            return self.fail(i, what);
        };
        if KEYWORDS.contains(&name) {
            return self.fail(i, format!("{what} (`{name}` is a keyword)"));
        }
        Ok((
            rest,
            Ident {
                name: name.to_string(),
                span: self.span(start, rest),
            },
        ))
    }

    /// file = { model | cell } EOF
    fn file<'a>(&self, mut i: &'a str) -> PResult<'a, File> {
        let mut items = Vec::new();
        loop {
            if skip(i).is_empty() {
                if items.is_empty() {
                    return self.fail(i, "a `model` or `cell` definition (the file has none)");
                }
                return Ok(("", File { items }));
            }
            if self.peek(i, "model") {
                let (rest, m) = self.model(i)?;
                items.push(Item::Model(m));
                i = rest;
            } else if self.peek(i, "cell") {
                let (rest, c) = self.cell(i)?;
                items.push(Item::Cell(c));
                i = rest;
            } else {
                return self.fail(i, "`model` or `cell`");
            }
        }
    }

    /// model = "model" IDENT "{" { stmt [";"] } "}"
    fn model<'a>(&self, i: &'a str) -> PResult<'a, Model> {
        let (i, _) = self.expect(i, "model")?;
        let (i, name) = self.ident(i, "a model name")?;
        let open = self.pos(skip(i));
        let (mut i, _) = self.expect(i, "{")?;
        let mut body = Vec::new();
        loop {
            let (rest, closed) = self.accept(i, "}");
            if closed {
                return Ok((rest, Model { name, body }));
            }
            if skip(i).is_empty() {
                return self.fail_inside(i, "`}` to close the model", open);
            }
            let (rest, stmt) = self.stmt(i)?;
            body.push(stmt);
            i = self.accept(rest, ";").0;
        }
    }

    /// stmt = "input" NAME ":" IDENT "[" INT { "," INT } [","] "]" [ "normalize" "(" args ")" ]
    ///      | "output" NAME { "," NAME }
    ///      | binding
    fn stmt<'a>(&self, i: &'a str) -> PResult<'a, Stmt> {
        self.not_misplaced(i)?;
        if self.peek(i, "input") {
            let (i, _) = self.expect(i, "input")?;
            let (i, name) = self.name(i, "an input name")?;
            let (i, _) = self.expect(i, ":")?;
            let (i, dtype) = self.ident(i, "an element type such as `f32`")?;
            let open = self.pos(skip(i));
            let (i, _) = self.expect(i, "[")?;
            const DIMENSION: &str = "a dimension (a positive integer)";
            let (i, dims) = self.list(i, open, "]", Some(DIMENSION), |i| {
                let start = skip(i);
                let (rest, lit) = self.literal(i, DIMENSION)?;
                // Rejected here, where the source text is at hand: `1e3`
                // reads better than the value it denotes.
                if let Literal::Float(_) = lit {
                    return self.fail(i, DIMENSION);
                }
                Ok((rest, (lit, self.span(start, rest))))
            })?;
            // An optional `normalize(...)` clause; `normalize = ...` on the
            // next line is a binding, not the clause.
            let (i, normalize) = match skip(i).strip_prefix("normalize") {
                Some(rest) if skip(rest).starts_with('(') => {
                    let (i, e) = self.expr(i, 0)?;
                    (i, Some(e))
                }
                _ => (i, None),
            };
            return Ok((
                i,
                Stmt::Input(InputDecl {
                    name,
                    dtype,
                    dims,
                    normalize,
                }),
            ));
        }
        if self.peek(i, "output") {
            let (i, _) = self.expect(i, "output")?;
            let (mut i, first) = self.name(i, "an output name")?;
            let mut names = vec![first];
            loop {
                let (rest, comma) = self.accept(i, ",");
                if !comma {
                    return Ok((i, Stmt::Output(names)));
                }
                let (rest, n) = self.name(rest, "an output name")?;
                names.push(n);
                i = rest;
            }
        }
        if self.peek(i, "return") {
            return self.fail(i, "a statement (`return` belongs in a cell)");
        }
        let (i, b) = self.binding(i, "a statement: `input`, `output` or `NAME = expression`")?;
        Ok((i, Stmt::Binding(b)))
    }

    /// Rejects, with a message saying why, two common mistakes where a statement
    /// should start: binding a keyword (`output = dense(h, 10)`, which would
    /// otherwise read as an `output` statement) and an infix operator left over
    /// from the previous expression (`y = a + b`).
    fn not_misplaced(&self, i: &str) -> Result<(), nom::Err<PErr>> {
        let start = skip(i);
        if let Ok((rest, word)) = ident_lexeme(start)
            && KEYWORDS.contains(&word)
            && self.peek(rest, "=")
        {
            return Err(self.failure(
                i,
                format!("a name (`{word}` is a keyword and cannot be bound)"),
            ));
        }
        if start.starts_with(['+', '-', '*', '/', '@']) {
            return Err(self.failure(
                i,
                "a new statement (there are no infix operators: write ops as calls, such as `add(a, b)`)",
            ));
        }
        Ok(())
    }

    /// binding = NAME "=" expr
    fn binding<'a>(&self, i: &'a str, what: &str) -> PResult<'a, Binding> {
        let (i, name) = self.name(i, what)?;
        let i = match self.expect(i, "=") {
            Ok((i, ())) => i,
            Err(_) => return self.fail(i, "`=`"),
        };
        let (i, value) = self.expr(i, 0)?;
        Ok((i, Binding { name, value }))
    }

    /// cell = "cell" IDENT "(" [ IDENT { "," IDENT } [","] ] ")" [ partial ]
    ///        "{" { binding [";"] } "return" expr [";"] "}"
    fn cell<'a>(&self, i: &'a str) -> PResult<'a, Cell> {
        let (i, _) = self.expect(i, "cell")?;
        let (i, name) = self.ident(i, "a cell name")?;
        let open = self.pos(skip(i));
        let (i, _) = self.expect(i, "(")?;
        let (i, params) = self.list(i, open, ")", None, |i| {
            self.ident(i, "a parameter name or `)`")
        })?;
        let (i, partial) = if self.peek(i, "partial") {
            let (i, p) = self.partial(i)?;
            (i, Some(p))
        } else {
            (i, None)
        };
        let open = self.pos(skip(i));
        let (mut i, _) = self.expect(i, "{")?;
        let mut body = Vec::new();
        loop {
            self.not_misplaced(i)?;
            if self.peek(i, "return") {
                let (rest, _) = self.expect(i, "return")?;
                let (rest, ret) = self.expr(rest, 0)?;
                let rest = self.accept(rest, ";").0;
                self.not_misplaced(rest)?;
                let (rest, _) = self
                    .expect(rest, "}")
                    .or_else(|_| self.fail(rest, "`}` (the cell ends after `return`)"))?;
                return Ok((
                    rest,
                    Cell {
                        name,
                        params,
                        partial,
                        body,
                        ret,
                    },
                ));
            }
            if skip(i).is_empty() {
                return self.fail_inside(i, "`return EXPRESSION` to end the cell", open);
            }
            if self.peek(i, "}") {
                return self.fail(i, "`return EXPRESSION` to end the cell");
            }
            let (rest, b) = self.binding(i, "`NAME = expression` or `return`")?;
            body.push(b);
            i = self.accept(rest, ";").0;
        }
    }

    /// partial = "partial" "(" IDENT "," IDENT "," INT ")"
    fn partial<'a>(&self, i: &'a str) -> PResult<'a, Partial> {
        let start = skip(i);
        let (i, _) = self.expect(i, "partial")?;
        let (i, _) = self.expect(i, "(")?;
        let (i, input) = self.ident(i, "the tensor parameter whose channels are split")?;
        let (i, _) = self.expect(i, ",")?;
        let (i, channels) = self.ident(i, "the parameter that is its channel count")?;
        let (i, _) = self.expect(i, ",")?;
        const RATIO: &str = "the ratio K (a positive integer)";
        let ratio_start = skip(i);
        let (i, lit) = self.literal(i, RATIO)?;
        let Literal::Int(k) = lit else {
            return self.fail(ratio_start, RATIO);
        };
        let ratio = (k, self.span(ratio_start, i));
        let (i, _) = self.expect(i, ")")?;
        Ok((
            i,
            Partial {
                input,
                channels,
                ratio,
                span: self.span(start, i),
            },
        ))
    }

    /// A number literal; `what` names it in errors.
    fn literal<'a>(&self, i: &'a str, what: &str) -> PResult<'a, Literal> {
        let start = skip(i);
        let Ok((rest, text)) = number_lexeme(start) else {
            return self.fail(i, what);
        };
        if rest.starts_with(is_ident_continue) || rest.starts_with('.') {
            return self.fail(rest, "the end of the number");
        }
        let lit = if text.contains(['.', 'e', 'E']) {
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Literal::Float(v),
                _ => return self.fail(i, "a finite number"),
            }
        } else {
            match text.parse::<i64>() {
                Ok(v) => Literal::Int(v),
                Err(_) => return self.fail(i, "an integer that fits in 64 bits"),
            }
        };
        Ok((rest, lit))
    }

    /// expr = "choose" "{" expr { "," expr } [","] "}"
    ///      | IDENT "(" [ arg { "," arg } [","] ] ")"
    ///      | "(" expr "," expr ")"
    ///      | NUMBER
    ///      | NAME
    fn expr<'a>(&self, i: &'a str, depth: usize) -> PResult<'a, Expr> {
        if depth > MAX_DEPTH {
            return self.fail(
                i,
                format!("a simpler expression (nesting deeper than {MAX_DEPTH} levels)"),
            );
        }
        let start = skip(i);
        if self.peek(i, "choose") {
            let (i, _) = self.expect(i, "choose")?;
            let open = self.pos(skip(i));
            let (i, _) = self
                .expect(i, "{")
                .or_else(|_| self.fail(i, "`{` after `choose`"))?;
            let empty = "at least one alternative in `choose { ... }`";
            let (rest, alts) = self.list(i, open, "}", Some(empty), |i| self.expr(i, depth + 1))?;
            let span = self.span(start, rest);
            return Ok((
                rest,
                Expr {
                    kind: ExprKind::Choose(alts),
                    span,
                },
            ));
        }
        if start.starts_with('(') {
            let open = self.pos(start);
            let (i, _) = self.expect(i, "(")?;
            let (i, a) = self.expr(i, depth + 1)?;
            let (i, _) = self.expect(i, ",").or_else(|_| {
                self.fail_inside(i, "`,` (a pair is written `(height, width)`)", open)
            })?;
            let (i, b) = self.expr(i, depth + 1)?;
            let (i, _) = self
                .expect(i, ")")
                .or_else(|_| self.fail_inside(i, "`)` (a pair has exactly two elements)", open))?;
            return Ok((
                i,
                Expr {
                    kind: ExprKind::Pair(Box::new(a), Box::new(b)),
                    span: self.span(start, i),
                },
            ));
        }
        if start.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
            let (rest, lit) = self.literal(i, "a number")?;
            return Ok((
                rest,
                Expr {
                    kind: ExprKind::Literal(lit),
                    span: self.span(start, rest),
                },
            ));
        }
        if start.starts_with(['"', '\'']) {
            return self.fail(
                i,
                "an expression (there are no strings: write words such as `channel` bare)",
            );
        }
        let (rest, name) = self.name(i, "an expression")?;
        if !self.peek(rest, "(") {
            return Ok((
                rest,
                Expr {
                    kind: ExprKind::Name(name.name),
                    span: name.span,
                },
            ));
        }
        if name.name.contains('.') {
            return self.fail(i, "an op or cell name (no dots) before `(`");
        }
        let open = self.pos(skip(rest));
        let (i, _) = self.expect(rest, "(")?;
        let (i, args) = self.list(i, open, ")", None, |i| self.arg(i, depth + 1))?;
        Ok((
            i,
            Expr {
                kind: ExprKind::Call { callee: name, args },
                span: self.span(start, i),
            },
        ))
    }

    /// arg = IDENT "=" expr | expr
    ///
    /// An argument name may be a keyword (`relu(input=x)`,
    /// `bdense(x, 10, output=threshold)`): before `=` it cannot mean anything else.
    fn arg<'a>(&self, i: &'a str, depth: usize) -> PResult<'a, Arg> {
        let start = skip(i);
        if let Ok((rest, word)) = ident_lexeme(start) {
            let after = skip(rest);
            if after.starts_with('=') && !after.starts_with("==") {
                let keyword = Ident {
                    name: word.to_string(),
                    span: self.span(start, rest),
                };
                let (rest, value) = self.expr(&after[1..], depth)?;
                return Ok((
                    rest,
                    Arg {
                        keyword: Some(keyword),
                        value,
                    },
                ));
            }
        }
        let (rest, value) = self.expr(i, depth)?;
        Ok((
            rest,
            Arg {
                keyword: None,
                value,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nested_calls_pairs_and_keywords() {
        let f = parse_file(
            "model m { input x: f32[1, 2, 3]\n y = conv2d(x, 4, kernel=(2,3)) # c\n output y }",
        )
        .unwrap();
        let Item::Model(m) = &f.items[0] else {
            panic!("expected a model")
        };
        assert_eq!(m.name.name, "m");
        assert_eq!(m.body.len(), 3);
        let Stmt::Binding(b) = &m.body[1] else {
            panic!("expected a binding")
        };
        let ExprKind::Call { callee, args } = &b.value.kind else {
            panic!("expected a call")
        };
        assert_eq!(callee.name, "conv2d");
        assert_eq!(args.len(), 3);
        assert_eq!(
            args[2].keyword.as_ref().map(|k| k.name.as_str()),
            Some("kernel")
        );
        assert!(matches!(args[2].value.kind, ExprKind::Pair(..)));
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let src = "model m {\n  y = conv2d(x 3)\n}";
        let e = parse_file(src).unwrap_err();
        assert_eq!(&src[e.span.range()], "3");
        assert_eq!(e.message, "expected `,` or `)`, found `3`");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let src = format!(
            "model m {{ y = {}x{} }}",
            "sign(".repeat(10_000),
            ")".repeat(10_000)
        );
        let e = parse_file(&src).unwrap_err();
        assert!(e.message.contains("nesting deeper"), "{}", e.message);
    }
}
