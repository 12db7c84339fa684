//! The syntax tree of a `.bnn` file, with byte spans into the source.
//!
//! The tree is exactly what was written: names are unresolved, calls are not
//! yet ops, cells are not yet instantiated. [`lower`](super::lower) turns it into IR.

/// A byte range `start..end` in the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The span `start..end`.
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// The range, for diagnostics.
    pub fn range(self) -> std::ops::Range<usize> {
        self.start..self.end
    }
}

/// A name with where it was written. Binding and reference names may be
/// dotted (`s1.batchnorm`); model, cell, op and keyword names may not.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    /// The text.
    pub name: String,
    /// Where.
    pub span: Span,
}

/// A whole file: cell definitions and one model, in any order.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    /// The items in source order.
    pub items: Vec<Item>,
}

/// A top-level item.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// `model NAME { ... }`
    Model(Model),
    /// `cell NAME(params) { ... return expr }`
    Cell(Cell),
}

/// `model NAME { stmt* }`
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The model's name.
    pub name: Ident,
    /// Statements in source order.
    pub body: Vec<Stmt>,
}

/// `cell NAME(p, ...) { binding* return expr }`
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// The cell's name, called like an op.
    pub name: Ident,
    /// Parameter names (tensors or numbers, decided by the caller's arguments).
    pub params: Vec<Ident>,
    /// `partial(x, c, K)`: PC-DARTS's partial channel connection.
    pub partial: Option<Partial>,
    /// Bindings in source order.
    pub body: Vec<Binding>,
    /// The result.
    pub ret: Expr,
}

/// `partial(x, c, K)` after a cell's parameters: an instance computes its body
/// on the first `c/K` channels of its tensor parameter `x` (and `c/K` in place
/// of `c`); the other channels bypass it, and the joined channels are
/// shuffled in `K` groups (language.md §5.1).
#[derive(Clone, Debug, PartialEq)]
pub struct Partial {
    /// The tensor parameter whose channels are split.
    pub input: Ident,
    /// The integer parameter that is its channel count.
    pub channels: Ident,
    /// The ratio `K`, with its span.
    pub ratio: (i64, Span),
    /// The whole clause.
    pub span: Span,
}

/// A statement of a model body.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `input NAME: DTYPE[d, ...]`
    Input(InputDecl),
    /// `output NAME, ...`
    Output(Vec<Ident>),
    /// `NAME = expr`
    Binding(Binding),
}

/// `input NAME: DTYPE[d, ...] [normalize(mean=M, std=S)]`
#[derive(Clone, Debug, PartialEq)]
pub struct InputDecl {
    /// The input's name.
    pub name: Ident,
    /// The element type as written (`f32`).
    pub dtype: Ident,
    /// The dimensions as written, each with its span.
    pub dims: Vec<(Literal, Span)>,
    /// The `normalize(mean=…, std=…)` clause, a call expression, if any.
    pub normalize: Option<Expr>,
}

/// `NAME = expr`
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// The bound name.
    pub name: Ident,
    /// The value.
    pub value: Expr,
}

/// A numeric literal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Literal {
    /// Written without a point or exponent.
    Int(i64),
    /// Written with a point or exponent.
    Float(f64),
}

/// An expression with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where.
    pub span: Span,
}

/// The forms of expression.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A reference to a binding, input or cell parameter, or a word such as `channel`.
    Name(String),
    /// A number.
    Literal(Literal),
    /// `(a, b)`: a `(height, width)` pair.
    Pair(Box<Expr>, Box<Expr>),
    /// `callee(args)`: an op or a cell.
    Call {
        /// The op or cell name.
        callee: Ident,
        /// The arguments in source order.
        args: Vec<Arg>,
    },
    /// `choose { alt, ... }`
    Choose(Vec<Expr>),
}

/// An argument: positional (`x`) or keyword (`kernel=3`).
#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    /// The keyword, if any.
    pub keyword: Option<Ident>,
    /// The value.
    pub value: Expr,
}
